"""``swalp train`` and ``swalp compare`` through the command line, on tiny digits runs."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from swalp.training import load_checkpoint
from swalp.cli import main

TINY = ["--data", "digits", "--epochs", "3", "--budget", "2", "--limit-train", "160", "--limit-test", "100",
        "--batch-size", "32"]


def train_cli(*args):
    return main(["train", "--no-progress", *TINY, *args])


def test_train_writes_outputs_and_prints_a_line_per_epoch(tmp_path, capsys):
    assert train_cli("--out", str(tmp_path / "r"), "--bits", "6", "--seed", "3") == 0
    out = capsys.readouterr().out
    assert out.count("test err") == 3 and out.count("avg err") == 2  # averaging from the end of epoch 2
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (config["model"], config["bits"], config["seed"], config["lr"]) == ("cnn", 6, 3, 0.05)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert {"sgd_lp", "swalp"} <= set(summary) and "test_error" in summary["swalp"]


def test_flags_override_model_defaults(tmp_path):
    assert train_cli("--out", str(tmp_path / "r"), "--lr", "0.02", "--wd", "0", "--swa-lr", "0.005",
                     "--recipe", "fp32", "--model", "mlp") == 0
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (config["lr"], config["wd"], config["swa_lr"], config["recipe"], config["model"]) == (0.02, 0.0, 0.005, "fp32", "mlp")
    assert config["momentum"] == 0.9 and config["batch_size"] == 32


@pytest.mark.parametrize("args,message", [
    (["--recipe", "int3"], "unknown recipe 'int3'; accepted: fp32, paper"),
    (["--model", "gpt5"], "unknown model 'gpt5'; accepted:"),
    (["--data", "cifar1000"], "unknown data set 'cifar1000'; accepted:"),
    (["--bits", "1"], "--bits must be an integer >= 2"),
    (["--budget", "3"], "--budget must be an integer in [1, epochs) = [1, 3)"),
    (["--resume", "/nonexistent/run"], "no checkpoint at /nonexistent/run/checkpoint.pt"),
])
def test_bad_input_exits_2_with_a_message(tmp_path, capsys, args, message):
    argv = args if args[0] == "--resume" else [*TINY, *args, "--out", str(tmp_path / "r")]
    assert main(["train", "--no-progress", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("swalp train: error: ") and message in err
    assert not (tmp_path / "r").exists()


def test_out_is_a_file_and_resume_with_flags(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert train_cli("--out", str(tmp_path / "f")) == 2
    assert "is a file; it must be a folder" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path), "--lr", "0.1"]) == 2
    assert "--resume continues the saved configuration; drop --lr" in capsys.readouterr().err


def test_nan_exits_1_naming_the_step(tmp_path, capsys):
    assert train_cli("--out", str(tmp_path / "r"), "--recipe", "fp32", "--budget", "1", "--lr", "0.01",
                     "--swa-lr", "1e30") == 1
    assert "at step" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "r" / "checkpoint.pt")["epoch"] == 1


def test_killed_run_resumes_bit_identical(tmp_path):
    """SIGKILL a training process as soon as its first checkpoint lands, then resume."""
    args = ["--data", "digits", "--epochs", "40", "--budget", "2", "--limit-train", "160", "--limit-test", "100",
            "--batch-size", "32", "--bits", "6", "--no-progress"]
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "swalp", "train", *args, "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 120
    while not (killed / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    stopped_at = load_checkpoint(killed / "checkpoint.pt")["epoch"]
    assert 1 <= stopped_at < 40
    assert main(["train", "--resume", str(killed), "--no-progress"]) == 0
    assert main(["train", *args, "--out", str(tmp_path / "whole")]) == 0
    a, b = load_checkpoint(killed / "checkpoint.pt"), load_checkpoint(tmp_path / "whole" / "checkpoint.pt")
    for key in ("model", "average"):
        for k, v in a[key].items():
            assert torch.equal(v, b[key][k]) if isinstance(v, torch.Tensor) else v == b[key][k], (key, k)
    assert (killed / "metrics.jsonl").read_text() == (tmp_path / "whole" / "metrics.jsonl").read_text()
    assert torch.equal(torch.load(killed / "average.pt")["0.weight"], torch.load(tmp_path / "whole" / "average.pt")["0.weight"])


def test_compare_writes_table_plot_and_summary(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", *TINY, "--bits", "6", "4", "--seeds", "0", "1", "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == ["6", "4"]
    for row in summary.values():
        assert list(row) == ["sgd_fp", "swa_fp", "sgd_lp", "swalp"]
        assert all({"mean", "std"} <= set(cell) for cell in row.values())
    # The numbers are the runs' own: SGD-LP at 4 bits from the two 4-bit runs' summaries.
    runs = [json.loads((out / "runs" / f"paper-4bit-seed{s}" / "summary.json").read_text()) for s in (0, 1)]
    values = [r["sgd_lp"]["test_error"] for r in runs]
    mean = sum(values) / 2
    assert summary["4"]["sgd_lp"]["mean"] == pytest.approx(mean, abs=1e-4)
    assert summary["4"]["sgd_lp"]["std"] == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in values)), abs=1e-4)
    assert summary["6"]["sgd_fp"] == summary["4"]["sgd_fp"]  # one full-precision run per seed serves both
    table = (out / "table.md").read_text()
    assert "| bits | SGD-FP | SWA-FP | SGD-LP | SWALP |" in table
    assert f"| 4 | {summary['4']['sgd_fp']['mean']:.2f} +- " in table
    assert (out / "test_error.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (out / "runs").iterdir()) == [
        "fp32-seed0", "fp32-seed1", "paper-4bit-seed0", "paper-4bit-seed1", "paper-6bit-seed0", "paper-6bit-seed1"]
    capsys.readouterr()
    assert main(argv) == 0  # a second call reads the finished runs back
    assert json.loads((out / "summary.json").read_text()) == summary


def test_compare_bad_input(tmp_path, capsys):
    assert main(["compare", *TINY, "--recipe", "fp32", "--out", str(tmp_path / "c")]) == 2
    assert "compare needs a low-precision recipe" in capsys.readouterr().err
    assert main(["compare", *TINY, "--bits", "8", "1", "--out", str(tmp_path / "c")]) == 2
    assert "--bits must be an integer >= 2" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_train_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for flag in ("--data", "--data-dir", "--download", "--model", "--recipe", "--bits", "--epochs", "--budget",
                 "--lr", "--swa-lr", "--wd", "--batch-size", "--seed", "--out", "--resume", "--device",
                 "--avg-every", "--avg-unit"):
        assert flag in text


@pytest.mark.slow  # two spawned interpreters: about 15 s on the 2-core machine
def test_compare_in_two_processes_matches_one(tmp_path):
    argv = ["compare", *TINY, "--bits", "6", "--seeds", "0", "--out"]
    assert main([*argv, str(tmp_path / "one")]) == 0
    assert main([*argv, str(tmp_path / "two"), "--jobs", "2"]) == 0
    one, two = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "two"))
    assert one == two
    with pytest.raises(ValueError, match="--jobs must be an integer >= 1"):
        from swalp.experiments import compare
        from swalp.training import TrainConfig
        compare(TrainConfig(data="digits"), jobs=0, out=str(tmp_path / "x"))
