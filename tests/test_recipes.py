import dataclasses

import pytest
import torch

import swalp
from swalp import BlockFloat, FixedPoint, PerAxis, PerGroup, PerTensor, Recipe, get_recipe
from swalp.recipes import RECIPES, param_format


def test_named_recipes_are_the_agreed_ones():
    assert RECIPES == ("fp32", "paper", "paper-big-block", "paper-per-sample", "fixed8", "mx", "fp8")
    assert get_recipe("fp32").is_full_precision


def test_paper_recipe_blocks():
    r = get_recipe("paper")
    row, tensor = BlockFloat(8, block=PerAxis(0)), BlockFloat(8, block=PerTensor())
    assert (r.weight, r.grad, r.momentum, r.acc) == (row, row, row, row)
    assert (r.activation, r.error) == (tensor, tensor)
    assert r.rounding is swalp.Rounding.STOCHASTIC
    big = get_recipe("paper-big-block")
    assert {getattr(big, k) for k in ("weight", "activation", "error", "grad", "momentum", "acc")} == {tensor}
    sample = get_recipe("paper-per-sample")  # QPyTorch's port: activations and errors per sample
    assert (sample.weight, sample.activation, sample.error) == (row, row, row)


def test_fp8_and_mx_recipes():
    r = get_recipe("fp8")
    assert (r.weight, r.activation, r.error, r.grad) == (swalp.FP8_E4M3, swalp.FP8_E4M3, swalp.FP8_E5M2, swalp.FP8_E5M2)
    assert get_recipe("mx").weight == swalp.MXINT8
    assert get_recipe("fixed8").weight == FixedPoint(8, 6)


def test_param_format_one_exponent_for_1d_params():
    fmt = BlockFloat(8, block=PerAxis(0))
    assert param_format(fmt, torch.zeros(7)) == BlockFloat(8, block=PerTensor())
    assert param_format(fmt, torch.zeros(())) == BlockFloat(8, block=PerTensor())
    assert param_format(fmt, torch.zeros(3, 4)) is fmt
    assert param_format(None, torch.zeros(3)) is None
    # MX tiles run along the conv weight's input channels, not the 3-wide kernel axis
    assert param_format(swalp.MXINT8, torch.zeros(8, 64, 3)).block == PerGroup(32, 1)
    assert param_format(swalp.MXINT8, torch.zeros(8, 64)) is swalp.MXINT8


def test_param_format_gives_row_exponents_on_a_weight():
    w = torch.tensor([[1.0, 0.3], [100.0, 0.3]])
    q = swalp.quantize(w, param_format(get_recipe("paper").weight, w), "nearest")
    # row 0: e = 0, grid 2^-6; row 1: e = 6, grid 2^0
    assert q.tolist() == [[1.0, 19 / 64], [100.0, 0.0]]


def test_bits_override_every_integer_format():
    r = get_recipe("paper", bits=6)
    assert r.weight == BlockFloat(6, block=PerAxis(0)) and r.activation == BlockFloat(6)
    assert get_recipe("fixed8", bits=6).weight == FixedPoint(6, 4)  # integer bits kept
    mx = get_recipe("mx", bits=4).weight
    assert mx.wl == 4 and mx.symmetric and mx.block == PerGroup(32, -1)
    assert get_recipe(r) is r and get_recipe(r, bits=8) == get_recipe("paper")


@pytest.mark.parametrize("name", ["fp8", "fp32"])
def test_bits_on_float_recipes_is_a_clear_error(name):
    with pytest.raises(ValueError, match="no integer formats"):
        get_recipe(name, bits=6)


@pytest.mark.parametrize("bits", [1, 0, 33, "8", True, 6.0])
def test_bad_bits(bits):
    with pytest.raises(ValueError, match="bits"):
        get_recipe("paper", bits=bits)


def test_unknown_recipe_lists_names():
    with pytest.raises(ValueError) as e:
        get_recipe("paper8")
    for name in RECIPES:
        assert name in str(e.value)
    assert "'paper8'" in str(e.value)


def test_custom_recipe_is_frozen_plain_data():
    r = Recipe(weight="e4m3", grad=BlockFloat(8), rounding="nearest", name="mine")
    assert r.weight == swalp.FP8_E4M3 and r.rounding is swalp.Rounding.NEAREST
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.weight = None
    assert repr(r).startswith("Recipe(name='mine', weight=FloatFormat(exp=4, man=3, finite_only=True)")
    assert r.to_dict()["grad"] == "BlockFloat(wl=8, ebits=8, block=PerTensor())"
    assert r == Recipe(weight=swalp.FP8_E4M3, grad=BlockFloat(8), rounding="nearest", name="mine")


def test_bad_recipe_fields():
    with pytest.raises(ValueError, match="Recipe.acc"):
        Recipe(acc="int3")
    with pytest.raises(ValueError, match="Recipe.weight"):
        Recipe(weight=8)
    with pytest.raises(ValueError, match="rounding"):
        Recipe(rounding="up")
