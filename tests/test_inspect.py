"""swalp inspect: the per-layer table, its files, --strict, any model as module:function."""

import json

import pytest
import torch
from torch import nn

from swalp.cli import main
from swalp.data import load_data
from swalp.experiments.inspect import inspect_recipe, table_text


def tiny_net(num_classes, input_shape):
    """A model given as tests.test_inspect:tiny_net."""
    return nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), 12), nn.ReLU(),
                         nn.Linear(12, num_classes))


def test_paper_passes_strict_and_writes_table_json_and_png(tmp_path, capsys):
    assert main(["inspect", "--steps", "3", "--out", str(tmp_path), "--strict"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("cnn1d on mnist1d, recipe paper, worst over 3 steps of batch 128 at lr 0.15")
    assert "layer  activation       error        grad    momentum         acc" in out
    assert "0 problems (no threshold crossed)" in out and "!" not in out
    report = json.loads((tmp_path / "inspect.json").read_text())
    assert list(report["table"]) == ["0", "2", "4", "7"] and len(report["records"]) == 3
    assert report["table"]["7"].keys() == {"grad", "momentum", "acc"}  # the logits have no Quantizer
    assert (tmp_path / "inspect.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_failing_recipe_fails_strict_with_advice(tmp_path, capsys):
    assert main(["inspect", "--recipe", "fixed8", "--bits", "4", "--steps", "2", "--out", str(tmp_path)]) == 0
    assert main(["inspect", "--recipe", "fixed8", "--bits", "4", "--steps", "2", "--out", str(tmp_path),
                 "--strict"]) == 1
    out = capsys.readouterr().out
    assert "!" in out and "problems:" in out
    line = next(line for line in out.splitlines() if line.startswith("  error of layer '0': ") and "flushed" in line)
    assert "Recipe.error in block floating point (an exponent that follows the range" in line
    assert "Recipe.error = FixedPoint(wl=4, fl=" in line


def test_worst_over_the_steps():
    r = inspect_recipe(model="mlp", data="digits", recipe="fixed8", bits=4, steps=3, out=None)
    for layer, roles in r["table"].items():
        for role, cell in roles.items():
            steps = [rec["layers"][layer][role] for rec in r["records"]]
            assert cell["sqnr_db"] == min(s["sqnr_db"] for s in steps)
            assert cell["flushed"] == max(s["flushed"] for s in steps)
    assert "mlp on digits, recipe fixed8 (4 bits)" in table_text(r)


def test_any_model_as_module_function(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent.parent))
    r = inspect_recipe(model="tests.test_inspect:tiny_net", data="digits", steps=1, out=None)
    assert list(r["table"]) == ["1", "3"] and r["settings"]["lr"] == 0.05  # digits' default model's presets
    with pytest.raises(ValueError, match="cannot load 'nope' from module 'tests.test_inspect'"):
        inspect_recipe(model="tests.test_inspect:nope", data="digits", out=None)
    with pytest.raises(ValueError, match="returned int, not an nn.Module"):
        inspect_recipe(model="tests.test_inspect:not_a_model", data="digits", out=None)
    with pytest.raises(ValueError, match=r"getcwd\(10, \(1, 8, 8\)\) failed"):
        inspect_recipe(model="os:getcwd", data="digits", out=None)
    with pytest.raises(ValueError, match="unknown model 'nosuch'; accepted: .*'vgg16', or module:function"):
        inspect_recipe(model="nosuch", data="digits", out=None)


def not_a_model(num_classes, input_shape):
    return 3


def test_the_paper_vgg_on_synthetic_cifar(tmp_path):
    r = inspect_recipe(model="vgg16", data="synthetic-cifar10", steps=1, batch_size=4, out=None)
    # 13 convolutions and 3 linear layers; the model's own 15 Quantizers are rows of their own
    layers = list(r["table"])
    assert len(layers) == 31 and layers[:4] == ["features.0", "features.2", "features.3", "features.5"]
    assert r["table"]["features.0"].keys() == {"grad", "momentum", "acc"}
    assert r["table"]["features.2"].keys() == {"activation", "error"}
    assert r["problems"] == []


def test_bad_input(capsys):
    assert main(["inspect", "--steps", "0"]) == 2
    assert "--steps must be an integer >= 1, got 0" in capsys.readouterr().err
    assert main(["inspect", "--recipe", "nope"]) == 2
    assert "unknown recipe 'nope'" in capsys.readouterr().err
    assert main(["inspect", "--recipe", "fp32"]) == 2
    assert "recipe 'fp32' rounds nothing" in capsys.readouterr().err


def test_synthetic_cifar_is_fixed_and_learnable():
    a, b = load_data("synthetic-cifar10"), load_data("synthetic-cifar10", seed=5)
    assert a.input_shape == (3, 32, 32) and len(a.train) == 2560 and len(a.test) == 512
    assert torch.equal(a.train.tensors[0][:10], b.train.tensors[0][:10])
    x, y = a.train.tensors
    assert abs(x.mean().item()) < 0.05 and 0.8 < x.std().item() < 1.2
    assert sorted(y.unique().tolist()) == list(range(10))
    # the nearest class mean already classifies most test images: there is a signal to learn
    means = torch.stack([x[y == c].mean(0) for c in range(10)]).flatten(1)
    xt, yt = a.test.tensors
    guess = (xt.flatten(1) @ means.T - 0.5 * means.square().sum(1)).argmax(1)
    assert (guess == yt).float().mean() > 0.5


def test_leaves_torch_as_it_found_it():
    before, threads = torch.get_rng_state(), torch.get_num_threads()
    r = inspect_recipe(model="mlp", data="digits", steps=1, threads=1, out=None)
    assert torch.equal(torch.get_rng_state(), before) and torch.get_num_threads() == threads
    assert r["machine"]["threads"] == 1

