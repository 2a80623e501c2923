"""swalp ablation: the paper's ablations as one command each, and the headline pinned."""

import dataclasses
import importlib
import json

import pytest
import torch

from swalp.cli import main
from swalp.experiments import ablations
from swalp.experiments.ablations import ABLATIONS, ablation, cells
from swalp.training import TrainConfig, train

DIGITS = dict(data="digits", epochs=3, budget=2, threads=1)


def test_every_ablation_has_its_cells():
    base = TrainConfig()
    rows = {name: [c.row for c in cells(name, base, (8, 6)) if c.bits == 8] for name in ABLATIONS if name != "bits"}
    assert rows["frequency"] == ["every 1 step", "every 10 steps", "every 100 steps", "every 1 epoch", "every 5 epochs"]
    assert rows["avg-precision"] == ["float32", "bfloat16", "bfp16", "bfp12", "bfp10", "bfp8"]
    assert [c.changes["recipe"] for c in cells("blocking", base, (8,))[1:]] == [
        "paper-big-block", "paper", "paper-per-sample", "mx"]
    assert [c.row for c in cells("bits", base, (4, 5, 6, 7, 8))] == ["fp32", "4", "5", "6", "7", "8"]


def test_a_small_ablation_writes_table_summary_and_plot(tmp_path):
    out = tmp_path / "abl"
    s = ablation("avg-precision", TrainConfig(**DIGITS), seeds=(0,), bits=(6,), out=out, progress=False, log=None)
    assert {p.name for p in out.iterdir()} == {"table.md", "summary.json", "avg-precision.png", "runs"}
    assert [c["row"] for c in s["cells"]] == ["float32", "bfloat16", "bfp16", "bfp12", "bfp10", "bfp8"]
    assert len(s["runs"]) == 7 and json.loads((out / "summary.json").read_text())["cells"] == s["cells"]
    assert "| bfp8 | 6 |" in (out / "table.md").read_text()
    runs = {(r["cell"], r["seed"]): r for r in s["runs"]}
    assert runs[("6bit-avg-fp32", 0)]["sgd"] == runs[("6bit-avg-bfp8", 0)]["sgd"]  # the average's format leaves SGD be
    fp32, bfp8 = (torch.load(out / "runs" / f"6bit-avg-{f}-seed0" / "average.pt") for f in ("fp32", "bfp8"))
    assert any(not torch.equal(fp32[k], bfp8[k]) for k in fp32 if k.endswith("weight"))  # the average's format did act


def test_rerunning_reads_every_finished_cell_back(tmp_path, monkeypatch):
    out = tmp_path / "abl"
    first = ablation("bits", TrainConfig(**DIGITS), seeds=(0,), bits=(6,), out=out, progress=False, log=None)
    compare = importlib.import_module("swalp.experiments.compare")  # the package's name is the function
    monkeypatch.setattr(compare, "train", lambda *a, **k: pytest.fail("a finished cell was trained again"))
    again = ablation("bits", TrainConfig(**DIGITS), seeds=(0,), bits=(6,), out=out, progress=False, log=None)
    assert again["cells"] == first["cells"]


@pytest.mark.parametrize("argv, message", [
    (["ablation", "depth"], "unknown ablation 'depth'; accepted: 'bits', 'frequency', 'avg-precision', 'blocking'"),
    (["ablation", "bits", "--bits"], "expected at least one argument"),
    (["ablation", "frequency", "--avg-every", "0"], "--avg-every must be an integer >= 1, got 0"),
    (["ablation", "bits", "--avg-format", "int3"], "unknown format preset 'int3'"),
    (["ablation", "bits", "--recipe", "fp32"], "'fp32' is full precision; an ablation needs a low-precision recipe"),
    (["ablation", "bits", "--seeds", "0", "0"], "must not repeat"),
])
def test_bad_input_is_a_clear_error_before_any_training(argv, message, tmp_path, capsys):
    out = tmp_path / "never"
    try:
        code = main([*argv, "--out", str(out), "--no-progress"])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_an_empty_list_of_word_lengths_is_refused():
    with pytest.raises(ValueError, match="--bits and --seeds need at least one value each, got bits=\\[\\], seeds=\\[0\\]"):
        ablation("bits", TrainConfig(**DIGITS), seeds=(0,), bits=(), progress=False, log=None)


# ----------------------------------------------------------------------------- the headline


def test_swalp_beats_sgd_lp_at_6_bits(tmp_path):
    """The README's headline on the default set-up (MNIST-1D CNN, 45 epochs, about 10 s), 6-bit
    paper recipe, one seed. Measured with these settings (seed 0, one thread, 2-core Xeon): SGD-LP
    5.50 %, SWALP 2.45 %, a gap of 3.05 points; over seeds 0 1 2 the gap is 2.10 to 3.05 (the bits
    ablation, docs/results/ablation-bits.json). A 1-point margin leaves room and still fails if
    averaging stops helping (at 8 bits the gap is 0.36 points on average)."""
    s = train(TrainConfig(**HEADLINE, out=str(tmp_path / "run")), progress=False, log=None)
    assert s["swalp"]["test_error"] < s["sgd_lp"]["test_error"] - HEADLINE_MARGIN


HEADLINE = dict(bits=6, seed=0, threads=1)
HEADLINE_MARGIN = 1.0


@pytest.mark.slow
def test_reduced_bits_ablation_swalp_stays_near_full_precision_down_to_6_bits(tmp_path):
    """The bits ablation with two seeds at 8, 6 and 4 bits (docs/ablations.md has the full one).
    Measured (seeds 0 1, docs/results/ablation-bits.json): SGD-FP 2.73; SWALP 2.63 at 8 bits and
    2.55 at 6; SGD-LP 5.13 at 6 bits (2.4 above SGD-FP); at 4 bits both diverge (above 70 %)."""
    s = ablation("bits", TrainConfig(), seeds=(0, 1), bits=(8, 6, 4), out=tmp_path, progress=False, log=None)
    sgd_fp = s["fp32"]["sgd_fp"]["mean"]
    by_bits = {c["bits"]: c for c in s["cells"]}
    for b in (8, 6):
        assert by_bits[b]["swalp"]["mean"] <= sgd_fp + SLOW_SWALP_ROOM
    assert by_bits[6]["sgd_lp"]["mean"] > sgd_fp + SLOW_SGD_LP_GAP
    assert by_bits[4]["swalp"]["mean"] > 50  # 4 bits is too few for this recipe, averaged or not


SLOW_SWALP_ROOM = 0.5
SLOW_SGD_LP_GAP = 1.0


def test_a_folder_holding_other_settings_runs_is_an_error_unless_overwrite(tmp_path):
    out = tmp_path / "abl"
    ablation("bits", TrainConfig(**DIGITS), seeds=(0,), bits=(6,), out=out, progress=False, log=None)
    other = TrainConfig(**{**DIGITS, "epochs": 4})
    with pytest.raises(ValueError, match="holds a run .*--overwrite replaces it"):
        ablation("bits", other, seeds=(0,), bits=(6,), out=out, progress=False, log=None)
    s = ablation("bits", other, seeds=(0,), bits=(6,), out=out, progress=False, log=None, overwrite=True)
    assert s["settings"]["epochs"] == 4


def test_a_run_saved_before_a_config_field_existed_is_the_same_run():
    from swalp.experiments.compare import same_config

    config = TrainConfig(data="digits", epochs=3, budget=2)
    saved = dataclasses.asdict(config)
    assert same_config(saved, config)
    del saved["compute"]  # a run from before --compute: it computed in float, the default
    assert same_config(saved, config)
    assert not same_config(saved, dataclasses.replace(config, compute="int8"))
    assert not same_config({**saved, "retired_field": 1}, config)
