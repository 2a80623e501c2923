"""The convex experiments (swalp reproduce linreg|logreg): outputs, optimum, values, errors."""

import gzip
import json
import math

import numpy as np
import pytest
import torch

from swalp.cli import main
from swalp.experiments.convex import _runner as common
from swalp.experiments.convex import linreg, logreg

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _reproduce(tmp_path_factory, *args):
    out = tmp_path_factory.mktemp("convex")
    assert main(["reproduce", *args, "--quick", "--out", str(out)]) == 0
    return out, json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def linreg_quick(tmp_path_factory):
    return _reproduce(tmp_path_factory, "linreg")


@pytest.fixture(scope="module")
def logreg_quick(tmp_path_factory):
    return _reproduce(tmp_path_factory, "logreg")


@pytest.mark.parametrize("name, Fs, keys", [
    ("linreg", (4, 6, 8), {"method", "F", "T", "dist2"}),
    ("logreg", (4, 6, 8, 10), {"method", "F", "T", "dist2", "loss_gap"}),
])
def test_quick_run_writes_records_and_figures(name, Fs, keys, request):
    out, summary = request.getfixturevalue(f"{name}_quick")
    res = summary["results"]
    Ts = sorted({r["T"] for r in res})
    assert len(Ts) == 2 and Ts == sorted(summary["config"]["T_values"])
    assert all(set(r) == keys for r in res)
    for T in Ts:
        at_T = [r for r in res if r["T"] == T]
        # full-precision methods once per T (F null), low-precision ones once per F
        assert sorted((r["method"], r["F"] or 0) for r in at_T) == sorted(
            [("sgd_fp", 0), ("swa_fp", 0)] + [(m, F) for m in ("sgd_lp", "swalp") for F in Fs])
    assert all(math.isfinite(r["dist2"]) and r["dist2"] > 0 for r in res)
    for png in (f"convex_{name}_curves.png", f"convex_{name}_delta.png"):
        data = (out / png).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000
    table = (out / "table.md").read_text()
    assert "| SGD-LP / SWALP |" in table and "slope" in table


def test_quick_linreg_swalp_beats_sgd_lp(linreg_quick):
    res = linreg_quick[1]["results"]
    for F in (4, 6, 8):
        # at T = 1024 the prediction is about 25x (window of 512 steps, step 0.1); demand 5x
        assert common.lookup(res, "sgd_lp", F, 1024) > 5 * common.lookup(res, "swalp", F, 1024)
        assert common.lookup(res, "swalp", F, 1024) < common.lookup(res, "swalp", F, 512)
    lp = [common.lookup(res, "sgd_lp", F, 1024) for F in (4, 6, 8)]
    assert lp[0] > lp[1] > lp[2]  # the SGD-LP floor falls with more fractional bits


def test_quick_logreg_swalp_beats_sgd_lp(logreg_quick):
    summary = logreg_quick[1]
    assert summary["problem"]["grad_norm_at_w_star"] < 1e-10
    for F in (4, 6, 8, 10):
        # measured about 10x to 40x at T = 2048; demand 4x
        assert common.lookup(summary["results"], "sgd_lp", F, 2048, "loss_gap") > 4 * common.lookup(summary["results"], "swalp", F, 2048, "loss_gap")


def test_linreg_optimum_has_zero_gradient():
    cfg = linreg.LinRegConfig()
    problem, info = linreg.make_problem(cfg)
    full = torch.arange(cfg.n).unsqueeze(0)  # one "minibatch" holding every example
    g = problem.grad(problem.w_star.view(1, 1, -1), full)
    assert g.norm() < 1e-10
    assert info["w_star_max_abs"] < 1.5  # inside [-2, 2 - 2^-4] with room to spare


def test_logreg_optimum_has_zero_gradient_and_is_a_minimum():
    problem, info, cfg = logreg.make_problem(logreg.LogRegConfig.quick())
    n = problem.n
    g = problem.grad(problem.w_star.unsqueeze(0).unsqueeze(0), torch.arange(n).unsqueeze(0))
    assert g.norm() < 1e-10
    w = problem.w_star.unsqueeze(0).unsqueeze(0)
    bump = 1e-3 * torch.randn(1, 4, *problem.w_star.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    gaps = problem.loss(w + bump) - problem.f_star
    # strongly convex with lam: f(w* + v) - f* >= lam/2 |v|^2
    assert (gaps >= cfg.lam / 2 * bump.pow(2).sum((-2, -1)) * 0.999).all()
    assert info["step"] == pytest.approx(1 / (2 * info["L0"]))


def test_conjugate_gradient_solves_spd_system():
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(20, 20, generator=gen, dtype=torch.float64)
    H, b = A @ A.T + torch.eye(20, dtype=torch.float64), torch.randn(20, generator=gen, dtype=torch.float64)
    x = logreg._conjugate_gradient(lambda v: H @ v, b)
    torch.testing.assert_close(x, torch.linalg.solve(H, b), rtol=1e-10, atol=1e-10)


def test_runner_matches_hand_computed_trajectory():
    # f(w) = (w - 1)^2 / 2 with no data noise: w_t = 1 - (1 - a)^t exactly, and the
    # average over T/2 < t <= T is known in closed form.
    a, F = 0.25, 20
    problem = common.Problem("toy", 1, lambda W, idx: W - 1, torch.ones(1, dtype=torch.float64))
    spec = common.RunSpec((F,), (4, 8), a, 1, 1, 0)
    out = common.run_methods(problem, spec)
    for T in (4, 8):
        w_T = 1 - (1 - a) ** T
        avg = np.mean([1 - (1 - a) ** t for t in range(T // 2 + 1, T + 1)])
        assert common.lookup(out["results"], "sgd_fp", None, T) == pytest.approx((w_T - 1) ** 2, rel=1e-12)
        assert common.lookup(out["results"], "swa_fp", None, T) == pytest.approx((avg - 1) ** 2, rel=1e-12)
        # F = 20: rounding moves each iterate by < 2^-20
        assert common.lookup(out["results"], "sgd_lp", F, T) == pytest.approx((w_T - 1) ** 2, rel=1e-3)
    assert [t for t, _ in out["curves"]["swalp"][str(F)]] == [1, 2, 4, 8]


def test_low_precision_iterates_are_on_the_grid():
    # A problem whose "gradient" records the iterates it is called with.
    seen = []
    problem = common.Problem("toy", 1, lambda W, idx: seen.append(W.clone()) or (W - 0.3), torch.full((3,), 0.3, dtype=torch.float64))
    common.run_methods(problem, common.RunSpec((4, 6), (8,), 0.1, 1, 2, 0))
    for W in seen[1:]:
        assert torch.equal(W[:, 1] * 16, (W[:, 1] * 16).round())  # F = 4
        assert torch.equal(W[:, 2] * 64, (W[:, 2] * 64).round())  # F = 6
        assert not torch.equal(W[:, 0] * 64, (W[:, 0] * 64).round())  # fp is not


def test_runs_are_deterministic_and_seeded():
    cfg = linreg.LinRegConfig(T_values=(64, 128), replicates=2)
    a, b = linreg.run(cfg), linreg.run(cfg)
    assert a["results"] == b["results"] and a["curves"] == b["curves"]
    c = linreg.run(linreg.LinRegConfig(T_values=(64, 128), replicates=2, seed=1))
    assert c["results"] != a["results"]


def test_rounding_seeds_are_distinct():
    seeds = {common.rounding_seed(s, F, t) for s in (0, 1) for F in (4, 6, 8, 10) for t in range(1, 100)}
    assert len(seeds) == 2 * 4 * 99
    assert common.fixed_format(4).min_value == -2 and common.fixed_format(4).max_value == 2 - 2**-4


def _write_idx(path, array):
    dims = array.shape
    header = bytes([0, 0, 0x08, len(dims)]) + b"".join(int(d).to_bytes(4, "big") for d in dims)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_logreg_on_mnist_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(120) % 10
    # each class lights its own 5x5 patch, plus noise: separable, like digits
    images = rng.integers(0, 60, (120, 28, 28))
    for i, c in enumerate(labels):
        images[i, 2 * c:2 * c + 5, 2 * c:2 * c + 5] = 255
    for stem, arr in (("train-images-idx3-ubyte", images), ("train-labels-idx1-ubyte", labels),
                      ("t10k-images-idx3-ubyte", images[:20]), ("t10k-labels-idx1-ubyte", labels[:20])):
        _write_idx(tmp_path / f"{stem}.gz", arr)
    cfg = logreg.LogRegConfig(data="mnist", data_dir=str(tmp_path), T_values=(32, 64), replicates=1)
    summary = logreg.run(cfg)
    assert summary["problem"]["features"] == 785 and summary["problem"]["n"] == 120
    assert summary["problem"]["grad_norm_at_w_star"] < 1e-10
    assert len(summary["results"]) == 2 * (2 + 2 * 4) and all("loss_gap" in r for r in summary["results"])


@pytest.mark.parametrize("argv, message", [
    (["reproduce", "linregg"], "unknown experiment 'linregg'; accepted: 'linreg', 'logreg'"),
    (["reproduce", "logreg", "--data", "cifar10"], "unknown data 'cifar10'; accepted: 'digits', 'mnist'"),
    (["reproduce", "logreg", "--data", "mnist"], "--data mnist needs --data-dir"),
    (["reproduce", "linreg", "--data", "digits"], "--data and --data-dir apply to logreg only"),
    (["reproduce", "linreg", "--seed", "-1"], "--seed must be in [0, 2**24), got -1"),
])
def test_bad_input_is_a_clear_error(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "x")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_bad_spec_values_are_rejected():
    with pytest.raises(ValueError, match=r"power of two in \[2, 2\*\*31\], got 100"):
        common.RunSpec((4,), (100,), 0.1, 16, 1, 0)
    with pytest.raises(ValueError, match="seed must be in"):
        common.RunSpec((4,), (128,), 0.1, 16, 1, 2**24)
