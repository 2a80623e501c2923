"""The README's code example runs as printed, and its result is an average of iterates."""

import re
from pathlib import Path

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
