"""The README's code example runs as printed, and its result is an average of iterates."""

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs_and_averages_fifteen_iterates():
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    assert scope["avg"].n_averaged == 16  # epochs 30..45 (1-based): the end of the budget and 15 more
    weight = scope["model"][0].weight  # the converted model keeps its layers and their names
    averaged = scope["avg"].module[0].weight
    fmt8 = scope["swalp"].get_recipe("paper").weight
    # an average of 16 grid values, not the last one, and (generically) off the 8-bit grid
    assert not torch.equal(averaged, weight) and not torch.equal(scope["swalp"].quantize(averaged, fmt8), averaged)
    fmt = scope["swalp"].get_recipe("paper").weight
    # the live weights lie on the 8-bit grid: quantizing them again with nearest changes nothing
    assert torch.equal(scope["swalp"].quantize(weight.detach(), fmt, "nearest"), weight.detach())


def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}\n")
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


def test_readme_lightning_section_runs(tmp_path, monkeypatch, one_thread):
    pytest.importorskip("lightning")
    monkeypatch.chdir(tmp_path)  # Lightning writes its logs and checkpoints under the working folder
    scope: dict = {}
    exec(compile(_section("With Lightning"), str(README), "exec"), scope)
    callback = scope["trainer"].callbacks[0]
    assert type(callback).__name__ == "SWALP" and int(callback.average.n_averaged) == 3  # epochs 4, 5, 6


def test_readme_accelerate_section_runs(one_thread):
    pytest.importorskip("accelerate")
    scope: dict = {}
    exec(compile(_section("With Accelerate"), str(README), "exec"), scope)
    assert int(scope["avg"].n_averaged) == 3 and type(scope["opt"]).__name__ == "AcceleratedOptimizer"


def test_readme_stats_section_runs(capsys):
    scope: dict = {}
    exec(compile(_section("What rounding does to each layer (`swalp inspect`, `--stats-every`)"), str(README), "exec"),
         scope)
    stats = scope["stats"]
    assert [r["step"] for r in stats.records] == [1, 11, 21] and stats.problems() == []
    assert "'sqnr_db'" in capsys.readouterr().out
