"""swalp.Quantizer: the identity with rounding, activation forward and error backward."""

import pytest
import torch
from torch import nn

import swalp
from swalp import FP8_E4M3, FP8_E5M2, BlockFloat, FixedPoint, PerAxis, Quantizer


def leaf(values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype, requires_grad=True)


def run(q, x, grad):
    """Output of q(x) and the gradient that reaches x when ``grad`` flows into the output."""
    y = q(x)
    y.backward(torch.as_tensor(grad, dtype=x.dtype))
    return y.detach(), x.grad


def test_forward_quantizes_the_activation_and_leaves_the_error():
    # FixedPoint(4, 2): grid 0.25, range [-2, 1.75]; 0.375 is a tie -> 0.5
    x = leaf([0.3, -1.7, 5.0, 0.375])
    y, gx = run(Quantizer(FixedPoint(4, 2), None, "nearest"), x, [0.3, -0.1, 7.0, 1e-3])
    assert y.tolist() == [0.25, -1.75, 1.75, 0.5]
    assert gx.tolist() == torch.tensor([0.3, -0.1, 7.0, 1e-3]).tolist()  # bit for bit untouched


def test_backward_quantizes_the_error_and_leaves_the_activation():
    x = leaf([0.3, -1.7, 5.0, 0.375])
    y, gx = run(Quantizer(None, FixedPoint(4, 2), "nearest"), x, [0.3, -1.7, 5.0, 0.125])
    assert y.tolist() == x.detach().tolist()
    assert gx.tolist() == [0.25, -1.75, 1.75, 0.0]


def test_each_direction_has_its_own_format():
    # Forward: BlockFloat(4) per row; row 0 max 1.5 -> grid 0.25, row 1 max 6 -> grid 1.
    # Backward: E5M2: 0.3 -> 0.3125, 1000 -> 1024, 1e6 saturates to 57344.
    x = leaf([[1.5, 0.3, -0.6], [6.0, 2.4, -3.5]])
    q = Quantizer(BlockFloat(4, block=PerAxis(0)), FP8_E5M2, "nearest")
    y, gx = run(q, x, [[0.3, 1000.0, 1e6], [-0.3, 0.0, 3.0]])
    assert y.tolist() == [[1.5, 0.25, -0.5], [6.0, 2.0, -4.0]]
    assert gx.tolist() == [[0.3125, 1024.0, 57344.0], [-0.3125, 0.0, 3.0]]


def test_stochastic_rounding_in_both_directions():
    # FixedPoint(8, 2): grid 0.25. Forward 0.1 -> 0 or 0.25; backward 0.6 -> 0.5 or 0.75.
    n = 2000
    x = torch.full((n,), 0.1, requires_grad=True)
    torch.manual_seed(0)
    y, gx = run(Quantizer(FixedPoint(8, 2), FixedPoint(8, 2)), x, torch.full((n,), 0.6))
    assert set(y.tolist()) == {0.0, 0.25} and set(gx.tolist()) == {0.5, 0.75}
    # Unbiased: p = 0.4 both ways; standard error 0.25 * sqrt(0.4 * 0.6 / n) ~ 0.0027; 4 SE.
    se = 0.25 * (0.4 * 0.6 / n) ** 0.5
    assert abs(y.mean().item() - 0.1) < 4 * se and abs(gx.mean().item() - 0.6) < 4 * se


def test_stochastic_is_repeatable_after_manual_seed():
    def once():
        x = torch.linspace(-1, 1, 500, requires_grad=True)
        torch.manual_seed(123)
        return run(Quantizer("e4m3", "e5m2"), x, torch.linspace(3, -3, 500))

    (y1, g1), (y2, g2) = once(), once()
    assert torch.equal(y1, y2) and torch.equal(g1, g2)


def test_disabled_and_empty_quantizers_are_the_identity():
    x = leaf([0.3, -1.7])
    q = Quantizer(FixedPoint(4, 2), FixedPoint(4, 2), "nearest")
    q.enabled = False
    y = q(x)
    assert y is x
    q.enabled = True
    assert q(x).tolist() == [0.25, -1.75]
    assert Quantizer()(x) is x


def test_eval_mode_still_quantizes():
    q = Quantizer(FixedPoint(4, 2), None, "nearest").eval()
    assert q(torch.tensor([0.3])).tolist() == [0.25]


def test_error_reaching_a_linear_layer_is_the_quantized_error():
    torch.manual_seed(0)
    lin = nn.Linear(3, 2)
    model = nn.Sequential(lin, Quantizer(None, FixedPoint(6, 3), "nearest"))
    x = torch.tensor([[1.0, 2.0, -1.0]])
    c = torch.tensor([[0.3, -0.77]])  # d loss / d output
    (model(x) * c).sum().backward()
    err = torch.tensor([[0.25, -0.75]])  # c on the grid 1/8: 2.4 -> 2, -6.16 -> -6
    assert torch.equal(lin.weight.grad, err.t() @ x)
    assert torch.equal(lin.bias.grad, err[0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_dtype_and_shape_are_kept(dtype):
    x = torch.randn(2, 3, 4, dtype=dtype, requires_grad=True)
    y, gx = run(Quantizer(FP8_E4M3, FP8_E4M3, "nearest"), x, torch.ones(2, 3, 4))
    assert y.dtype == dtype and y.shape == x.shape and gx.dtype == dtype
    assert torch.equal(y, swalp.quantize(x.detach(), FP8_E4M3, "nearest"))


def test_presets_by_name_and_repr():
    q = Quantizer("e4m3", "mxint8", rounding="NEAREST")
    assert q.forward_format == FP8_E4M3 and q.backward_format == swalp.MXINT8
    assert repr(q) == (
        "Quantizer(forward=FloatFormat(exp=4, man=3, finite_only=True), "
        "backward=BlockFloat(wl=8, ebits=8, block=PerGroup(size=32, axis=-1), symmetric=True), rounding=nearest)"
    )
    assert list(q.parameters()) == [] and q.state_dict() == {}


def test_bad_arguments_are_value_errors():
    with pytest.raises(ValueError, match="unknown rounding 'up'; accepted: 'nearest', 'stochastic'"):
        Quantizer(FP8_E4M3, rounding="up")
    with pytest.raises(ValueError, match="unknown format preset 'fp9'"):
        Quantizer("fp9")
    with pytest.raises(ValueError, match="unknown format preset 'int4'"):
        Quantizer(None, "int4")


def test_formats_and_rounding_set_later_are_checked_then():
    q = Quantizer(FP8_E4M3)
    q.forward_format, q.backward_format, q.rounding = "e5m2", "mxint8", "nearest"
    assert (q.forward_format, q.backward_format, q.rounding) == (FP8_E5M2, swalp.MXINT8, swalp.Rounding.NEAREST)
    with pytest.raises(ValueError, match="unknown rounding 'up'"):
        q.rounding = "up"
    with pytest.raises(ValueError, match="unknown format preset 'fp9'"):
        q.backward_format = "fp9"
    assert q.rounding is swalp.Rounding.NEAREST and q.backward_format == swalp.MXINT8  # unchanged


def test_non_float_input_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot quantize a torch.int64 tensor; accepted dtypes: float16"):
        Quantizer(FP8_E4M3)(torch.arange(3))
