"""packed_activations: the activations autograd saves are kept packed, the numbers unchanged."""

import pytest
import torch
from torch import nn

import swalp
from swalp.models import build_model
from swalp.nn import packed_activations


def step(model, x, packed: bool, seed=0):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    if packed:
        with packed_activations() as saved:
            y = model(x)
            y.square().sum().backward()
    else:
        saved, y = None, model(x)
        y.square().sum().backward()
    return [y.detach(), *(p.grad.clone() for p in model.parameters())], saved


@pytest.mark.parametrize("recipe", ["paper", swalp.Recipe(activation="bfp8", error="bfp8", rounding="nearest")],
                         ids=["stochastic", "nearest"])
@pytest.mark.parametrize("name", ["mlp", "vgg16"])
def test_bit_identical_with_and_without_packing(name, recipe, one_thread):
    torch.manual_seed(0)
    if name == "mlp":  # a Quantizer after each ReLU hands its output to the next Linear
        model = swalp.quantize_model(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), recipe,
                                     placement="activation")
        x = torch.randn(5, 8)
    else:  # the paper's VGG-16 places its Quantizers after each ReLU
        model = swalp.quantize_model(build_model("vgg16", 10, (3, 32, 32)), recipe)
        x = torch.randn(2, 3, 32, 32)
    plain, _ = step(model, x, packed=False)
    kept, saved = step(model, x, packed=True)
    assert all(torch.equal(a, b) for a, b in zip(plain, kept))
    assert saved.packed_bytes > 0 and saved.float_bytes >= 3.5 * saved.packed_bytes  # int8 codes for float32


def test_only_quantizer_outputs_are_packed_and_layer_placement_saves_none():
    torch.manual_seed(0)
    layer = swalp.quantize_model(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), "paper")
    _, saved = step(layer, torch.randn(5, 8), packed=True)
    # Nothing on a grid is saved: the ReLU keeps a mask of its 5 x 16 output, a bit each, and the
    # next Linear saves that output itself, as a float tensor.
    assert (saved.packed_bytes, saved.float_bytes) == (10, 320)
    plain = nn.Linear(8, 2)
    with packed_activations() as s:
        plain(torch.randn(3, 8, requires_grad=True)).sum().backward()
    assert s.packed_bytes == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_a_relu_keeps_a_mask_that_gives_its_exact_gradient_nan_included(dtype):
    x = torch.tensor([-1.0, 0.0, 2.0, float("nan"), -0.0, 3.0], dtype=dtype, requires_grad=True)
    grads = []
    for packed in (False, True):
        x.grad = None
        with packed_activations() if packed else torch.enable_grad() as saved:
            y = torch.relu(x * 1.0)
            z = (y * y).sum() + (torch.nn.functional.relu(x * 2.0, inplace=True) * 3.0).sum()  # y saved twice
        z.backward()
        grads.append(x.grad)
    assert grads[1].dtype == dtype and torch.equal(grads[0].nan_to_num(7.0), grads[1].nan_to_num(7.0))
    assert (saved.packed_bytes, saved.float_bytes) == (2, 12 * x.element_size())  # two masks of a byte; y's second save is y


def test_the_block_restores_the_hooks():
    with packed_activations():
        pass
    from swalp.nn.saved import active

    assert active() is None


def test_swalp_train_with_packed_activations_gives_the_same_run(tmp_path, monkeypatch):
    from swalp.training import TrainConfig, train

    kept = []  # the flag is wired: Quantizers in the run hand their packed form to the hooks
    remember = packed_activations.remember
    monkeypatch.setattr(packed_activations, "remember", lambda self, y, p: (kept.append(p.nbytes), remember(self, y, p)))
    tiny = dict(data="digits", model="cnn", placement="activation", epochs=2, budget=1, limit_train=96, limit_test=64,
                batch_size=32, threads=1)
    plain = train(TrainConfig(**tiny, out=str(tmp_path / "plain")), progress=False, log=None)
    assert not kept
    packed = train(TrainConfig(**tiny, packed_activations=True, out=str(tmp_path / "packed")), progress=False, log=None)
    assert kept
    drop = lambda s: {k: v for k, v in s.items() if k != "wall_s"}  # noqa: E731
    assert drop(packed) == drop(plain)
    assert (tmp_path / "plain" / "metrics.jsonl").read_text() == (tmp_path / "packed" / "metrics.jsonl").read_text()
    a, b = (torch.load(tmp_path / r / "checkpoint.pt", weights_only=True)["model"] for r in ("plain", "packed"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pool_outputs_and_indices_are_kept_small_and_exact():
    # conv -> ReLU -> Quantizer -> max-pool -> conv: the pool's output holds Quantizer values (packed
    # onto its grid, checked bit for bit), its int64 indices fit in int16
    torch.manual_seed(0)
    net = swalp.quantize_model(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                             nn.Conv2d(8, 4, 3), nn.Flatten(), nn.Linear(4 * 14 * 14, 2)),
                               "paper", placement="activation")
    x = torch.randn(4, 3, 32, 32)
    plain, _ = step(net, x, packed=False)
    kept, saved = step(net, x, packed=True)
    assert all(torch.equal(a, b) for a, b in zip(plain, kept))
    n = 4 * 8 * 32 * 32  # the ReLU's output: a bit each; its Quantizer's: a byte each (and an exponent)
    pooled = n // 4  # the pool's output (a byte each, one exponent) and indices (two bytes each)
    # the last conv's output (saved by the Linear) is off the grid: kept as it was, not counted
    assert saved.packed_bytes == n // 8 + (n + 1) + (pooled + 1) + 2 * pooled


def test_values_off_the_grid_stay_as_they_are():
    from swalp.nn.saved import _exact_pack

    fmt = swalp.get_recipe("paper").activation
    on_grid = swalp.quantize(torch.randn(64, 64), fmt, "nearest")
    assert torch.equal(_exact_pack(on_grid, fmt).unpack(), on_grid)
    off = on_grid.clone()
    off[3, 5] += 1e-3
    assert _exact_pack(off, fmt) is None
    signed_zero = on_grid.clone()
    signed_zero[0, 0] = -0.0  # packs as +0.0: refused, every bit counts
    assert _exact_pack(signed_zero, fmt) is None


@pytest.mark.parametrize("shape", [(), (7,), (3, 5, 8), (1000, 33)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_relu_bits_are_the_same_in_cpp_and_torch(shape, dtype):
    from swalp.ops.bitmask import relu_mask, relu_unmask

    t = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    if t.numel() >= 4:
        t.view(-1)[:4] = torch.tensor([float("nan"), -0.0, 0.0, float("-inf")]).to(dtype)
    bits = relu_mask(t)
    assert torch.equal(bits, relu_mask(t, kernel=False)) and bits.numel() == (t.numel() + 7) // 8
    for out in (dtype, torch.uint8):  # uint8: what the backward gets (swalp/nn/saved.py)
        back = relu_unmask(bits, t.shape, out)
        assert back.dtype == out and torch.equal(back, relu_unmask(bits, t.shape, out, kernel=False))
        assert torch.equal(back, (~(t <= 0)).to(out))  # NaN passes the gradient, -0.0 and 0.0 do not


# --- convolutions inside the block: the weight gradient, then the input gradient (swalp/nn/_conv.py)

CONVS = [  # (input shape, weight shape, keyword arguments)
    ((4, 6, 12, 12), (8, 6, 3, 3), {"padding": 1}),
    ((4, 6, 12, 12), (8, 6, 3, 3), {"stride": 2, "dilation": 2}),
    ((3, 6, 10, 9), (6, 3, 3, 3), {"groups": 2, "padding": (1, 0)}),
    ((3, 6, 10, 10), (6, 1, 3, 3), {"groups": 6}),  # depthwise
    ((5, 4, 30), (7, 4, 5), {"padding": 2, "stride": 3}),  # conv1d
    ((2, 64, 32, 32), (64, 64, 3, 3), {"padding": 1}),  # VGG's second layer, batch 2
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", range(len(CONVS)))
@pytest.mark.parametrize("bias", [True, False])
def test_convolutions_in_the_block_give_torch_s_gradients_bit_for_bit(case, bias, dtype, monkeypatch):
    from swalp.nn import _conv
    from swalp.nn._conv import SplitConvolutions

    monkeypatch.setattr(_conv, "SPLIT_MIN", 0)  # these small inputs too

    xs, ws, kwargs = CONVS[case]
    g = torch.Generator().manual_seed(case)
    conv = torch.conv1d if len(ws) == 3 else torch.conv2d
    leaves = [torch.randn(s, generator=g, dtype=dtype, requires_grad=True) for s in (xs, ws, ws[:1] if bias else None) if s]
    results = []
    for split in (False, True):
        for t in leaves:
            t.grad = None
        with SplitConvolutions() if split else torch.enable_grad():
            y = conv(*leaves, **kwargs)
        assert (type(y.grad_fn).__name__ == "_SplitConvBackward") == split
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(9), dtype=dtype))
        results.append([y.detach()] + [t.grad for t in leaves])
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_split_convolutions_pass_the_rest_through_and_differentiate_twice(monkeypatch):
    from swalp.nn import _conv
    from swalp.nn._conv import SplitConvolutions

    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    with SplitConvolutions():
        small = torch.conv2d(x, w)  # under SPLIT_MIN elements: torch's own
    monkeypatch.setattr(_conv, "SPLIT_MIN", 0)
    with SplitConvolutions():
        same = torch.conv2d(x, w, padding="same")  # a string padding: torch's own
        with torch.no_grad():
            plain = torch.conv2d(x, w)
        y = torch.conv2d(x, w, padding=1)
        (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    assert type(small.grad_fn).__name__ == type(same.grad_fn).__name__ == "ConvolutionBackward0"
    assert plain.grad_fn is None and type(y.grad_fn).__name__ == "_SplitConvBackward"
    (gw2,) = torch.autograd.grad(gx.sum(), w)  # through convolution_backward's own derivative
    y0 = torch.conv2d(x, w, padding=1)
    (gx0,) = torch.autograd.grad(y0.square().sum(), x, create_graph=True)
    (gw20,) = torch.autograd.grad(gx0.sum(), w)
    assert torch.allclose(gw2, gw20, rtol=1e-5, atol=1e-5)


def test_split_convolution_at_vgg_size_gives_torch_s_gradients_bit_for_bit():
    """VGG-16's second layer at batch 128 (8.4M input elements, over SPLIT_MIN): where the split
    matters, oneDNN's kernels for the whole shape, in one call or two."""
    from swalp.nn._conv import SplitConvolutions

    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 64, 32, 32, generator=g, requires_grad=True)
    w = (torch.randn(64, 64, 3, 3, generator=g) * 0.05).requires_grad_()
    b = torch.randn(64, generator=g, requires_grad=True)
    grad = torch.randn(128, 64, 32, 32, generator=g)
    results = []
    for split in (False, True):
        with SplitConvolutions() if split else torch.enable_grad():
            y = torch.conv2d(x, w, b, padding=1)
        assert (type(y.grad_fn).__name__ == "_SplitConvBackward") == split
        results.append(torch.autograd.grad(y, (x, w, b), grad))
    assert all(torch.equal(a, c) for a, c in zip(*results))
