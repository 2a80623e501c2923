"""Quantization health: swalp/ops/stats.py by hand, QuantizationStats, swalp train --stats-every."""

import copy
import json
import math

import pytest
import torch
from torch import nn

import swalp
from swalp import FP8_E4M3, BlockFloat, FixedPoint, MXFloat, PerAxis, PerGroup, QuantizationStats
from swalp.ops.stats import rounding_stats
from swalp.optim.health import Problem, advice, worst
from swalp.training import TrainConfig, resolve, train


def t(values):
    return torch.tensor(values, dtype=torch.float32)


# --- the figures, by hand ------------------------------------------------------------------


def test_fixed_point_figures_by_hand():
    # FixedPoint(4, 2): grid 0.25, range [-2, 1.75]; one step beyond: >= 2.0 or <= -2.25.
    x = t([3.0, 1.9, -2.3, -2.2, 0.1, 0.0, 0.5, 1.0])
    y = swalp.quantize(x, FixedPoint(4, 2), "nearest")  # 1.75 1.75 -2 -2 0 0 0.5 1
    s = rounding_stats(x, y, FixedPoint(4, 2))
    assert s["saturated"] == 2 / 8  # 3.0 and -2.3; 1.9 and -2.2 lie within a step of the range
    assert s["flushed"] == 1 / 7  # 0.1 of the seven nonzero
    signal = sum(v * v for v in x.tolist())
    noise = sum((a - b) ** 2 for a, b in zip(x.tolist(), y.tolist()))
    assert s["sqnr_db"] == pytest.approx(10 * math.log10(signal / noise), rel=1e-6)
    assert s["max_ratio"] == pytest.approx(3.0 / 1.75)
    assert s["numel"] == 8


def test_a_block_with_a_known_saturated_count():
    # ebits=2 clamps the shared exponent to 1: grid 2^(1-6) = 1/32, range up to 127/32;
    # row 0's 100 and 5 lie beyond 4.0 (one step past it), row 1 fits its own exponent.
    fmt = BlockFloat(8, ebits=2, block=PerAxis(0))
    x = t([[100.0, 5.0, 3.0, 0.5], [1.0, 0.5, 0.25, 0.125]])
    s = rounding_stats(x, swalp.quantize(x, fmt, "nearest"), fmt)
    assert s["saturated"] == 2 / 8 and s["flushed"] == 0.0


def test_small_elements_of_a_big_block_flush():
    # One exponent per tensor: max 64 -> grid 1; 0.1 and 0.2 round to 0, 0.6 to 1.
    fmt = BlockFloat(8)
    x = t([64.0, 0.1, 0.6, 0.2])
    s = rounding_stats(x, swalp.quantize(x, fmt, "nearest"), fmt)
    assert s["flushed"] == 2 / 4 and s["saturated"] == 0.0
    per_row = BlockFloat(8, block=PerAxis(0))  # an exponent per element keeps every one
    x2 = x.view(4, 1)
    assert rounding_stats(x2, swalp.quantize(x2, per_row, "nearest"), per_row)["flushed"] == 0.0


def test_sqnr_and_headroom_by_hand():
    assert rounding_stats(t([1.0, 2.0]), t([1.0, 2.5]), FP8_E4M3)["sqnr_db"] == pytest.approx(10 * math.log10(5 / 0.25))
    assert rounding_stats(t([224.0, -1.0]), t([224.0, -1.0]), FP8_E4M3)["max_ratio"] == 0.5  # E4M3's largest: 448
    assert rounding_stats(t([0.5]), t([0.5]), FP8_E4M3)["sqnr_db"] == math.inf  # exact


def test_mx_scale_clamps_the_top_of_a_block():
    # MXFP8 E4M3, one block: max 1.9 -> scale 2^(0 - 8), element range 448 * 2^-8 = 1.75, step
    # 32 * 2^-8 = 0.125: 1.9 lies beyond 1.875 (saturated), 1.8 within a step (not).
    fmt = MXFloat(FP8_E4M3, block=PerGroup(32))
    x = torch.full((32,), 0.5)
    x[0], x[1] = 1.9, 1.8
    s = rounding_stats(x, swalp.quantize(x, fmt, "nearest"), fmt)
    assert s["saturated"] == 1 / 32


def test_tiny_values_do_not_underflow_the_sums():
    x = torch.linspace(1, 2, 100) * 1e-30
    y = x * (1 + 2.0**-10)
    assert rounding_stats(x, y, BlockFloat(8))["sqnr_db"] == pytest.approx(20 * math.log10(2**10), rel=1e-4)


def test_non_finite_and_empty_inputs():
    s = rounding_stats(t([math.nan, 1.0, math.inf]), t([math.nan, 1.0, math.inf]), FP8_E4M3)
    assert s["numel"] == 1 and s["saturated"] == 0.0 and s["sqnr_db"] == math.inf
    s = rounding_stats(torch.zeros(3), torch.zeros(3), FP8_E4M3)
    assert s["flushed"] is None and s["sqnr_db"] is None and s["saturated"] == 0.0
    assert rounding_stats(torch.zeros(0), torch.zeros(0), FP8_E4M3)["saturated"] is None
    with pytest.raises(ValueError, match="one shape"):
        rounding_stats(torch.zeros(3), torch.zeros(4), FP8_E4M3)


# --- the collector -------------------------------------------------------------------------


def net_and_opt(recipe="paper", storage="simulated", seed=0):
    torch.manual_seed(seed)
    net = swalp.quantize_model(nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                                             nn.Linear(16, 3)), recipe)
    opt = swalp.LowPrecisionOptimizer(torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4),
                                      seed=seed, storage=storage)
    return net, opt


def train_steps(net, opt, steps, seed=1):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(32, 6, generator=gen), torch.randint(0, 3, (32,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()


def state(net, opt):
    momentum = [opt.state[p].get("momentum_buffer") for p in net.parameters()]
    packed = [opt.packed.get(p, {}).get("momentum_buffer") for p in net.parameters()]
    momentum = [m if m is not None else (None if q is None else q.unpack()) for m, q in zip(momentum, packed)]
    with swalp.nn.unpacked(net):
        return [p.detach().clone() for p in net.parameters()] + momentum


@pytest.mark.parametrize("recipe", ["paper", "fixed8", "mx"])
@pytest.mark.parametrize("storage", ["simulated", "packed"])
def test_measuring_changes_no_number(recipe, storage):
    plain = net_and_opt(recipe, storage)
    train_steps(*plain, 5)
    watched = net_and_opt(recipe, storage)
    with QuantizationStats(*watched, every=2) as stats:
        train_steps(*watched, 5)
    assert [r["step"] for r in stats.records] == [1, 3, 5]
    for a, b in zip(state(*plain), state(*watched)):
        assert torch.equal(a, b)
    layer = stats.records[0]["layers"]["0"]
    assert list(layer) == ["activation", "error", "grad", "momentum", "acc"]
    assert list(stats.records[0]["layers"]) == ["0", "2", "4"]  # the logits' layer has no Quantizer, only roles
    assert "activation" not in stats.records[0]["layers"]["4"]


def test_a_record_holds_the_figures_of_that_rounding():
    # nearest rounding and full-precision weights: the roundings of step 1 are redone by hand
    recipe = swalp.Recipe(activation=FixedPoint(8, 4), error=FixedPoint(8, 12), grad=FixedPoint(8, 8),
                          rounding="nearest", name="fx")
    net, opt = net_and_opt(recipe)
    w, b = net[0].weight.detach().clone(), net[0].bias.detach().clone()
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(1))
    with QuantizationStats(net, opt) as stats:
        net[0](x).sum().backward()  # layer 0 alone: its forward hook runs its Quantizer
        grads = torch.cat([net[0].weight.grad.flatten(), net[0].bias.grad])
        opt.step()
    record = stats.records[0]["layers"]["0"]
    pre = x @ w.T + b
    fmt = FixedPoint(8, 4)
    assert record["activation"] == pytest.approx(rounding_stats(pre, swalp.quantize(pre, fmt, "nearest"), fmt))
    ones = torch.ones_like(pre)  # the error of .sum()
    assert record["error"] == pytest.approx(rounding_stats(ones, swalp.quantize(ones, FixedPoint(8, 12), "nearest"),
                                                           FixedPoint(8, 12)))
    fmt = FixedPoint(8, 8)
    assert record["grad"] == pytest.approx(rounding_stats(grads, swalp.quantize(grads, fmt, "nearest"), fmt))
    assert sorted(record) == ["activation", "error", "grad"]  # weight, momentum, acc: full precision


def test_roles_of_a_separate_accumulator():
    recipe = swalp.Recipe(weight=BlockFloat(8), acc=BlockFloat(16), name="w8-acc16")
    net, opt = net_and_opt(recipe)
    with QuantizationStats(net, opt) as stats:
        train_steps(net, opt, 1)
    assert sorted(stats.records[0]["layers"]["0"]) == ["acc", "weight"]


def test_off_steps_cost_nothing_and_close_detaches():
    net, opt = net_and_opt()
    stats = QuantizationStats(net, opt, every=3)
    quantizer = net[0].quantizer
    assert quantizer.stats is stats and opt.stats is stats  # step 1 is measured
    train_steps(net, opt, 1)
    assert quantizer.stats is None and opt.stats is None  # steps 2 and 3 are not
    train_steps(net, opt, 2)
    assert quantizer.stats is stats
    stats.close()
    assert quantizer.stats is None and opt.stats is None
    train_steps(net, opt, 3)
    assert [r["step"] for r in stats.records] == [1]


def test_copies_of_a_watched_model_are_not_watched():
    net, opt = net_and_opt()
    with QuantizationStats(net, opt):
        twin = copy.deepcopy(net)
        assert twin[0].quantizer.stats is None and net[0].quantizer.stats is not None
        twin(torch.randn(4, 6)).sum().backward()
        with torch.no_grad():
            net(torch.randn(4, 6))  # evaluation is not training: not recorded
        train_steps(net, opt, 1)
        assert stats_steps(opt) == 1


def stats_steps(opt):
    return opt.steps


def test_without_an_optimizer_step_ends_a_step():
    net, _ = net_and_opt()
    with QuantizationStats(net, every=2) as stats:
        for _ in range(3):
            net(torch.randn(8, 6)).sum().backward()
            stats.step()
    assert [r["step"] for r in stats.records] == [1, 3]
    assert sorted(stats.records[0]["layers"]["0"]) == ["activation", "error"]
    _, opt = net_and_opt()
    with pytest.raises(ValueError, match="step\\(\\) is for use without one"):
        QuantizationStats(net, opt).step()


def test_bad_arguments():
    net, opt = net_and_opt()
    with pytest.raises(ValueError, match="every must be an integer >= 1, got 0"):
        QuantizationStats(net, opt, every=0)
    with pytest.raises(ValueError, match="model must be an nn.Module"):
        QuantizationStats(opt)
    with pytest.raises(ValueError, match="optimizer must be a torch.optim.Optimizer"):
        QuantizationStats(net, net)


# --- problems and advice -------------------------------------------------------------------


def fake(layers, step=1):
    figures = dict(saturated=0.0, flushed=0.0, sqnr_db=30.0, max_ratio=0.1, numel=10)
    return {"step": step, "layers": {k: {role: {**figures, **v} for role, v in roles.items()} for k, roles in layers.items()}}


def test_problems_cross_the_documented_thresholds():
    net, opt = net_and_opt("fixed8")
    stats = QuantizationStats(net, opt)
    stats.close()
    stats.formats = {("0", "error"): FixedPoint(8, 11), ("2", "activation"): FixedPoint(8, 3)}
    records = [fake({"0": {"error": dict(flushed=0.6, sqnr_db=-1.0, max_ratio=0.01)},
                     "2": {"activation": dict(saturated=0.011, max_ratio=3.5)}}),
               fake({"0": {"error": dict(flushed=0.8, sqnr_db=2.0, max_ratio=0.1)},
                     "2": {"activation": dict(saturated=0.01, flushed=0.5, sqnr_db=0.0)}}, step=2)]
    found = stats.problems(records)
    assert [(p.layer, p.role, p.figure, p.value, p.step) for p in found] == [
        ("0", "error", "flushed", 0.8, 2), ("0", "error", "sqnr_db", -1.0, 1), ("2", "activation", "saturated", 0.011, 1)]
    # the advice allows for the largest value of every record: 0.1 of the range leaves 3 bits
    assert found[0].advice.endswith("Recipe.error = FixedPoint(wl=8, fl=14) (3 more fractional bits) holds the largest "
                                    "value seen so far, but larger ones later would saturate")
    assert found[0].advice.startswith("Recipe.error in block floating point")
    assert found[2].advice.startswith("Recipe.activation = FixedPoint(wl=8, fl=1) holds the largest value seen (2 fewer")
    assert "1.1 % saturated at step 1" in str(found[2]) and "layer '2'" in str(found[2])


def test_advice_per_format():
    assert "PerAxis(axis=0)" in advice("error", BlockFloat(8), "flushed", 1e-30)
    assert advice("grad", FixedPoint(8, 8), "flushed", 0.9).startswith("Recipe.grad in block floating point")
    assert "E5M2" in advice("activation", FP8_E4M3, "saturated", 2.0)
    assert "as BlockFloat" in advice("activation", swalp.MXFP8_E4M3, "saturated", 1e-30)
    assert "more bits" in advice("grad", BlockFloat(8, block=PerAxis(0)), "sqnr_db", 1e-30)


def test_each_kind_of_problem_is_warned_once_at_its_worst_layer():
    from swalp.optim.health import new_warnings

    found = [Problem("0", "error", "sqnr_db", -1.0, 1, "a"), Problem("2", "error", "sqnr_db", -4.0, 3, "b"),
             Problem("2", "grad", "flushed", 0.6, 1, "c"), Problem("4", "grad", "flushed", 0.9, 2, "d")]
    warned: set = set()
    lines = new_warnings(found, warned)
    assert lines == [str(found[1]) + " (and 1 more layers)", str(found[3]) + " (and 1 more layers)"]
    assert new_warnings(found[:1], warned) == [] and warned == {("error", "sqnr_db"), ("grad", "flushed")}


def test_worst_picks_each_figure():
    records = [fake({"0": {"grad": dict(sqnr_db=12.0)}, "2": {"error": dict(flushed=0.3, sqnr_db=math.inf)}}),
               fake({"0": {"acc": dict(saturated=0.002, max_ratio=0.9)}}, step=5)]
    w = worst(records)
    assert w["sqnr_db"] == dict(layer="0", role="grad", value=12.0, step=1)
    assert w["flushed"] == dict(layer="2", role="error", value=0.3, step=1)
    assert w["saturated"]["value"] == 0.002 and w["max_ratio"] == dict(layer="0", role="acc", value=0.9, step=5)
    assert Problem("0", "grad", "sqnr_db", -3.0, 4, "x").__str__().startswith("grad of layer '0': -3 dB SQNR at step 4")


# --- swalp train --stats-every ------------------------------------------------------------

# The default model and data (cnn1d on MNIST-1D), 4 steps per epoch.
SHORT = dict(epochs=3, budget=2, limit_train=512, limit_test=200, batch_size=128)


def train_lines(tmp_path, name, **kw):
    lines = []
    summary = train(TrainConfig(**{**SHORT, "out": str(tmp_path / name), **kw}), progress=False, log=lines.append)
    return summary, lines


def test_a_failing_recipe_warns_and_the_paper_recipe_does_not(tmp_path):
    # fixed8 at 4 bits sits at chance on this model; the figures say why
    summary, lines = train_lines(tmp_path, "fixed4", recipe="fixed8", bits=4, stats_every=2)
    warned = [line for line in lines if line.startswith("warning: ")]
    assert any(line.startswith("warning: error of layer") and "flushed to zero" in line for line in warned)
    assert any("dB SQNR" in line for line in warned)
    kinds = [(line.split(" of layer")[0], line.split("; ")[0].split(" at step")[0].split()[-1]) for line in warned]
    assert len(kinds) == len(set(kinds))  # once per role and kind
    assert summary["stats"]["problems"] and summary["stats"]["measured_steps"] == 6  # steps 1, 3, ..., 11
    summary, lines = train_lines(tmp_path, "paper", stats_every=2)
    assert not [line for line in lines if line.startswith("warning")] and summary["stats"]["problems"] == []
    assert [line for line in lines if line.startswith("  stats: lowest SQNR")][0].count("dB") == 1
    assert summary["stats"]["worst"]["sqnr_db"]["value"] > 10


def test_stats_change_no_number_and_resume_writes_the_same_file(tmp_path):
    plain, _ = train_lines(tmp_path, "plain")
    watched, _ = train_lines(tmp_path, "watched", stats_every=3)
    rows = [json.loads(line) for line in (tmp_path / "watched" / "metrics.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k != "stats"} for r in rows] == [
        json.loads(line) for line in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["stats"]["sqnr_db"]["value"] > 10
    assert {k: v for k, v in watched.items() if k not in ("stats", "wall_s")} == {
        k: v for k, v in plain.items() if k != "wall_s"}
    records = [json.loads(line) for line in (tmp_path / "watched" / "stats.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["step"]) for r in records] == [(1, 1), (1, 4), (2, 7), (3, 10)]
    cfg = TrainConfig(**{**SHORT, "out": str(tmp_path / "stopped"), "stats_every": 3})
    train(cfg, progress=False, log=None, stop_after=1)
    with open(tmp_path / "stopped" / "stats.jsonl", "a") as f:  # as if killed after writing a later step
        f.write(json.dumps({**records[2], "epoch": 2}) + "\n")
    train(cfg, resume=str(tmp_path / "stopped"), progress=False, log=None)
    assert (tmp_path / "stopped" / "stats.jsonl").read_text() == (tmp_path / "watched" / "stats.jsonl").read_text()


def test_stats_every_is_checked(tmp_path):
    with pytest.raises(ValueError, match="--stats-every must be an integer >= 1, got 0"):
        resolve(TrainConfig(stats_every=0))


# --- the C++ pass against the torch path ---------------------------------------------------

CASES = [
    ("fixed8", (7, 33)), ("e4m3", (5, 40)), ("e5m2", (3, 4, 5)), ("bfp8", (64, 10)), ("bfp6", ()),
    (BlockFloat(8, block=PerAxis(0)), (6, 3, 4)), (BlockFloat(8, block=PerAxis(1)), (4, 7, 3)),
    (BlockFloat(5, ebits=3, block=PerAxis(-1)), (9, 11)), ("mxint8", (5, 70)), ("mxfp8_e4m3", (3, 96)),
    (MXFloat(FP8_E4M3, block=PerGroup(8, 1)), (3, 21, 4)), (BlockFloat(8, block=PerGroup(4, 0)), (10, 3)),
]


@pytest.mark.parametrize("fmt,shape", CASES, ids=[f"{f}-{s}" for f, s in CASES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_the_cpp_pass_equals_the_torch_path(fmt, shape, dtype):
    from swalp.ops.stats import _layout, _reference_sums, rounding_sums

    fmt = swalp.get_format(fmt)
    gen = torch.Generator().manual_seed(len(shape) + 7)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * torch.logspace(-3, 3, max(1, x_len(shape)),
                                                                                   dtype=torch.float64).view(shape)).to(dtype)
    if x.numel() > 4:
        x.view(-1)[:4] = torch.tensor([math.nan, math.inf, 0.0, 1e4], dtype=dtype)
    y = swalp.quantize(x, fmt, "stochastic", seed=3)
    fast, slow = rounding_sums(x, y, fmt), _reference_sums(x, y, _layout(x, fmt))
    assert fast[:4].tolist() == slow[:4].tolist() and fast[6] == slow[6]  # counts and max exactly
    assert fast[4:6].tolist() == pytest.approx(slow[4:6].tolist(), rel=1e-5)


def x_len(shape):
    return math.prod(shape) if shape else 1


@pytest.mark.parametrize("fmt", ["fixed8", "bfp8", "e5m2", BlockFloat(8, block=PerAxis(0)), BlockFloat(6, block=PerAxis(1))])
def test_the_cpp_runs_of_1024_elements_equal_the_torch_path(fmt):
    # long enough for the kernel's vectorised runs (swalp/ops/cpu/csrc/stats.cpp RUN): a normal run,
    # one of tiny values and one of huge ones (both summed in double instead), NaN and inf, zeros
    from swalp.ops.stats import _layout, _reference_sums, rounding_sums

    fmt = swalp.get_format(fmt)
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(4, 2048, generator=gen)
    x[1, :1024] *= 1e-20
    x[2, 1024:] *= 1e20
    x[3, ::97] = math.nan
    x[3, 5::101] = math.inf
    x[0, 100:600] = 0.0
    y = swalp.quantize(x, fmt, "stochastic", seed=5)
    fast, slow = rounding_sums(x, y, fmt), _reference_sums(x, y, _layout(x, fmt))
    assert fast[:4].tolist() == slow[:4].tolist() and fast[6] == slow[6]
    assert fast[4:6].tolist() == pytest.approx(slow[4:6].tolist(), rel=1e-5)
    assert fast[1] > 0 or not isinstance(fmt, FixedPoint)  # fixed point: the huge run saturates
