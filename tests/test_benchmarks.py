"""Each benchmark runs end to end with tiny arguments (figures themselves come from the
commands in the README, not from tests)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def run(script, *args, timeout=180):
    return subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=timeout)


def test_quantize_benchmark_writes_a_record_per_format_and_rounding(tmp_path):
    out = run("quantize.py", "--numel", "4096", "--formats", "bfp8_row", "fixed8", "--rounding", "stochastic",
              "--backend", "cpp", "--threads", "1", "--repeats", "1", "--packed", "--json", str(tmp_path / "q.json"))
    assert out.returncode == 0, out.stderr[-2000:]
    records = json.loads((tmp_path / "q.json").read_text())
    rows = records["results"] if isinstance(records, dict) else records
    assert len(rows) == 2 and all(r["ratio_to_mul"] > 0 and r["packed_ratio_to_mul"] > 0 for r in rows)
    assert all(r["unpack_ratio_to_mul"] > 0 for r in rows)


def test_train_step_benchmark_times_both_recipes(tmp_path):
    out = run("train_step.py", "--models", "cnn1d", "--steps", "2", "--warmup", "1", "--threads", "1",
              "--compile", "--packed", "--int8", "--stats-every", "2", "--json", str(tmp_path / "t.json"))
    assert out.returncode == 0, out.stderr[-2000:]
    (record,) = json.loads((tmp_path / "t.json").read_text())
    assert record["model"] == "cnn1d" and record["compiled_ratio"] > 0 and record["packed_ratio"] > 0
    assert record["int8_ratio"] > 0 and record["stats_ratio"] > 0 and record["stats_every"] == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: run benchmarks/gpu_quantize.py itself")
def test_gpu_quantize_benchmark_skips_without_a_gpu():
    out = run("gpu_quantize.py")
    assert out.returncode == 77 and "no CUDA device" in out.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: run benchmarks/gpu_check.py itself")
def test_gpu_check_skips_without_a_gpu():
    out = run("gpu_check.py")
    assert out.returncode == 77 and "no CUDA device" in out.stdout and "--device cpu" in out.stdout


@pytest.mark.slow
def test_gpu_check_runs_on_the_cpu(tmp_path):
    """The script's own check: parts 2-4 on the CPU (about a minute here)."""
    out = run("gpu_check.py", "--device", "cpu", "--steps", "1", "--warmup", "0", "--batch", "2",
              "--json", str(tmp_path / "g.json"))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    result = json.loads((tmp_path / "g.json").read_text())
    assert result["failures"] == 0 and len(result["steps"]) == 6
    assert {r["name"] for r in result["steps"]} >= {"fp32", "paper-int8", "big-block-int8"}


def test_gpu_check_records_a_failing_part_and_goes_on(tmp_path, monkeypatch):
    """The one-shot GPU run must not lose the rest to one part: here the integer-product check
    raises, the others still run, the JSON says so, and --max-minutes 0 skips every timing."""
    monkeypatch.syspath_prepend(str(BENCH))
    import gpu_check

    def broken(device):
        raise RuntimeError("no such kernel")

    monkeypatch.setattr(gpu_check, "check_int8", broken)
    code = gpu_check.main(["--device", "cpu", "--max-minutes", "0", "--json", str(tmp_path / "g.json")])
    result = json.loads((tmp_path / "g.json").read_text())
    assert code == 1 and result["failures"] == 1
    assert result["errors"] == {"int8": "RuntimeError: no such kernel"}
    assert len(result["steps"]) == 6 and all(r["skipped"] == "--max-minutes 0.0 reached" for r in result["steps"])


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc")
def test_memory_benchmark_counts_every_persistent_byte(tmp_path):
    out = run("memory.py", "--models", "cnn1d", "--steps", "2", "--threads", "1", "--json", str(tmp_path / "m.json"))
    assert out.returncode == 0, out.stderr[-2000:]
    records = {r["variant"]: r for r in json.loads((tmp_path / "m.json").read_text())}
    for name, r in records.items():  # float32 weight, gradient and momentum (or an 8-bit one); a float32 average
        want = (3.0, 3.1) if name in ("paper-packed-state", "paper-packed", "paper-packed-int8") else (12.0, 12.0)
        assert want[0] <= r["state_bytes_per_param"] <= want[1] and r["average_bytes_per_param"] == 4.0
        assert r["peak_mb"] > 0 and "peak_node" not in r


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc")
def test_memory_benchmark_finds_the_node_where_the_backward_peaks(tmp_path):
    out = run("memory.py", "--models", "cnn1d", "--variants", "paper-packed", "--steps", "2", "--threads", "1",
              "--where", "--json", str(tmp_path / "m.json"))
    assert out.returncode == 0, out.stderr[-2000:]
    (r,) = json.loads((tmp_path / "m.json").read_text())
    assert r["peak_node"].endswith("Backward0") or r["peak_node"].endswith("Backward")
    assert r["peak_node_rank"] >= 1 and 0 < r["live_at_peak_node_mb"] <= r["peak_in_backward_mb"] <= r["peak_mb"] + 0.5
    assert "the last backward peaks at" in out.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: run benchmarks/memory.py --device cuda itself")
def test_memory_benchmark_on_cuda_without_a_gpu_says_so():
    out = run("memory.py", "--models", "cnn1d", "--device", "cuda")
    assert out.returncode == 77 and "no CUDA device here; nothing measured" in out.stdout


def test_allreduce_benchmark_counts_the_bytes_of_each_hook(tmp_path):
    out = run("allreduce.py", "--worlds", "2", "--sizes", "5000", "--steps", "1", "--json", str(tmp_path / "a.json"))
    assert out.returncode == 0, out.stderr[-2000:]
    records = {r["hook"]: r for r in json.loads((tmp_path / "a.json").read_text())}
    assert {"fp32", "fp16", "bfp8"} <= set(records)
    assert records["fp32"]["bytes_per_step"] == records["fp32"]["fp32_bytes_per_step"] == 4 * 5000
    assert records["fp16"]["bytes_per_step"] == 2 * 5000
    assert 0.25 < records["bfp8"]["bytes_per_step"] / records["fp32"]["bytes_per_step"] < 0.3


def test_comm_accuracy_benchmark_runs_both_all_reduces(tmp_path):
    tiny = "--data digits --model cnn --epochs 2 --budget 1 --limit-train 64 --limit-test 32 --batch-size 32"
    out = run("comm_accuracy.py", "--seeds", "0", "--train-args", tiny, "--out", str(tmp_path / "runs"),
              "--json", str(tmp_path / "c.json"), "--md", str(tmp_path / "c.md"))
    assert out.returncode == 0, out.stderr[-2000:]
    (summary,) = json.loads((tmp_path / "c.json").read_text())
    assert [r["comm"] for r in summary["runs"]] == ["fp32", "bfp8"]
    assert "| bfp8 |" in (tmp_path / "c.md").read_text()
