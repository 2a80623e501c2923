"""Integer products (swalp/ops/intmm.py, swalp/nn/int8.py): exact against float64, listed, opt-in."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import swalp
from swalp.nn import compute_paths, quantize_model
from swalp.nn.int8 import Int8Conv1d, Int8Conv2d, Int8Linear, use_int8
from swalp.ops.intconv import channel_codes, im2col
from swalp.ops.intmm import MAX_K, grid_codes, int8_mm, int_mm


def _grid(shape, scale_shape, gen, lo=-12, hi=4, codes=(-128, 128)):
    """Grid values: int8 codes times a power of two per row/column (exponents in [lo, hi))."""
    c = torch.randint(*codes, shape, generator=gen).float()
    k = torch.randint(lo, hi, scale_shape, generator=gen)
    return c * torch.ldexp(torch.ones(scale_shape), k)


def _exact(a, b):
    return (a.double() @ b.double()).float()


# --- grid_codes ---------------------------------------------------------------------------


KERNELS = pytest.mark.parametrize("kernels", [True, False], ids=["cpp", "torch"])


@KERNELS
def test_grid_codes_by_hand(kernels):
    g = grid_codes(torch.tensor([[0.5, -0.25, 0.0], [-1.0, 0.5, 2**-7], [0.0, 0.0, 0.0]]), 1, kernels=kernels)
    assert g.codes.tolist() == [[64, -32, 0], [-128, 64, 1], [0, 0, 0]]
    assert g.scale.flatten().tolist() == [2**-7, 2**-7, 1.0]
    g = grid_codes(torch.tensor([[3.0, 1.0], [96.0, -128.0]]), 0, kernels=kernels)  # per column
    assert g.codes.tolist() == [[3, 1], [96, -128]] and g.scale.tolist() == [[1.0, 1.0]]


@pytest.mark.parametrize("x", [
    [[1.0, 0.5, 2**-7]],          # +1 needs code 128 at the grid 2^-7 where 2^-7 lives
    [[0.1]],                       # on no power-of-two grid of 8 bits
    [[1.0, float("nan")]],
    [[float("inf"), 1.0]],
    [[2.0**-149, 2.0**-120]],     # the scale 2^-127 is fine, but 2^-149 needs code 2^-22
    [[200.0, 1.0]],               # 200 = 25 * 8: the code 1/8 of 1.0 is not an integer
])  # fmt: skip
@KERNELS
def test_grid_codes_refuses(x, kernels):
    assert grid_codes(torch.tensor(x), 1, kernels=kernels) is None
    assert grid_codes(torch.tensor(x).t().contiguous(), 0, kernels=kernels) is None


@KERNELS
def test_grid_codes_tiny_and_huge_scales(kernels):
    x = torch.tensor([[2.0**-149 * 3], [2.0**120 * -77]])  # subnormal codes 3 at scale 2^-149; 2^120
    g = grid_codes(x, 1, kernels=kernels)
    assert g.codes.flatten().tolist() == [3, -77]
    assert torch.equal(g.codes.float() * g.scale, x)


def test_grid_codes_round_trips_random_grids():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        x = _grid((7, 33), (7, 1), gen, lo=-140, hi=100)
        g = grid_codes(x, 1)
        assert g is not None and torch.equal(g.codes.float() * g.scale, x)


@pytest.mark.skipif(not swalp.ops.cpu.load(), reason="needs the C++ kernels")
@pytest.mark.parametrize("dim", [1, 0])
@pytest.mark.parametrize("shape", [(1, 1), (5, 70), (64, 3), (300, 1000)])
def test_the_grid_kernel_is_the_definition(dim, shape):
    """swalp/ops/cpu/csrc/int8.cpp against the torch steps: the same answer, codes and scales."""
    gen = torch.Generator().manual_seed(shape[0] * 7 + dim)
    scale_shape = (shape[0], 1) if dim == 1 else (1, shape[1])
    tried = refused = 0
    for case in range(12):
        x = _grid(shape, scale_shape, gen, lo=-150, hi=110)
        if case == 1:  # a slice whose top is -2^e alone: the code -128
            x = -x.abs()
        elif case == 2:
            x = x.abs()  # +2^e at the top needs code 128 where -2^e alone would not
        elif case == 3:
            x.view(-1)[torch.randint(0, x.numel(), (1,), generator=gen)] *= 1.0 + 2.0**-20  # off the grid
        elif case == 4:
            x.view(-1)[-1] = float("nan")
        elif case == 5:
            x.view(-1)[0] = -float("inf")
        elif case == 6:
            x = torch.zeros(shape)
        elif case == 7:
            x = x * 2.0**-40  # deep subnormals: scales clamp at 2^-149
        elif case >= 8:  # exact powers of two at the top of some slices
            x = torch.where(torch.rand(shape, generator=gen) < 0.05, 2.0 ** torch.randint(-10, 10, shape, generator=gen)
                            * torch.sign(torch.randn(shape, generator=gen)), torch.zeros(shape))
        fast, ref = grid_codes(x, dim), grid_codes(x, dim, kernels=False)
        tried += 1
        assert (fast is None) == (ref is None), case
        if ref is None:
            refused += 1
            continue
        assert torch.equal(fast.codes, ref.codes) and torch.equal(fast.scale, ref.scale), case
        assert fast.codes.dtype == torch.int8 and fast.scale.shape == ref.scale.shape
    assert 0 < refused < tried


# --- int8_mm ------------------------------------------------------------------------------


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (3, 5, 7), (17, 64, 9), (64, 300, 33), (8, 5000, 4)])
def test_int8_mm_is_the_float64_product(m, k, n):
    gen = torch.Generator().manual_seed(m * k * n)
    codes = (100, 128) if k > 1024 else (-128, 128)  # positive codes: sums beyond 2^24 units
    a, b = _grid((m, k), (m, 1), gen, codes=codes), _grid((k, n), (1, n), gen, codes=codes)
    out = int8_mm(a, b)
    assert out.dtype == torch.float32 and torch.equal(out, _exact(a, b))
    # float32 sums of K codes products (< 2^14 each) are exact while K 2^14 < 2^24; beyond,
    # the float product rounds its partial sums and differs somewhere.
    if k > 1024:
        assert not torch.equal(a @ b, out)


def test_int8_mm_extreme_scales_take_float64_scaling():
    gen = torch.Generator().manual_seed(1)
    for lo, hi in [(-149, -120), (60, 90)]:  # subnormal products; products near float32's top
        a, b = _grid((9, 40), (9, 1), gen, lo, hi), _grid((40, 5), (1, 5), gen, lo, hi)
        assert torch.equal(int8_mm(a, b), _exact(a, b))


def test_int8_mm_declines():
    a = torch.ones(2, 3)
    assert int8_mm(a * 0.1, torch.ones(3, 2)) is None
    assert int8_mm(a.double(), torch.ones(3, 2).double()) is None
    assert int8_mm(torch.ones(2, 0), torch.ones(0, 2)) is None
    assert torch.equal(int8_mm(torch.full((1, MAX_K), -128.0), torch.full((MAX_K, 1), -128.0)),
                       torch.tensor([[MAX_K * 16384.0]]))
    with pytest.raises(ValueError, match=r"\(M, K\) by \(K, N\), got \(2, 3\) and \(2, 3\)"):
        int8_mm(a, a)


def test_a_bias_free_first_convolution_trains():
    # Its backward asks for the weight gradient alone (no input or bias gradient): the op's two
    # empty outputs must be distinct tensors (a custom op's outputs may not alias).
    torch.manual_seed(0)
    net = quantize_model(nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2)),
                         "paper", compute="int8")
    net(torch.randn(2, 3, 8, 8)).sum().backward()
    assert net[0].weight.grad.shape == (4, 3, 3, 3) and compute_paths(net)["0"]["weight_grad"]["float"] == 1


def test_a_reduction_longer_than_int32_holds_is_summed_in_pieces():
    # 2^17 products of -128 * -128 sum to 2^31: one past int32 (it wrapped to -2^31 before).
    k = MAX_K + 1
    assert torch.equal(int8_mm(torch.full((1, k), -128.0), torch.full((k, 1), -128.0)), torch.tensor([[2.0**31]]))
    gen = torch.Generator().manual_seed(9)
    a, b = _grid((3, 3 * k + 5), (3, 1), gen, codes=(100, 128)), _grid((3 * k + 5, 2), (1, 2), gen, codes=(-128, -100))
    assert torch.equal(int8_mm(a, b), _exact(a, b))  # four pieces, each near the int32 limit
    # A convolution's weight gradient reduces over every output position of the batch.
    x, g = torch.full((2, 1, 256, 256), -1.0), torch.full((2, 1, 256, 256), -1.0)  # codes -128, scale 2^-7
    _, gw, _, took = torch.ops.swalp.int8_conv_backward(g, x, torch.full((1, 1, 1, 1), 0.5), [1, 1], [0, 0], [1, 1],
                                                        [False, True, False])
    assert bool(took) and gw.flatten().tolist() == [131072.0]


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (16, 8, 8), (5, 13, 3), (40, 24, 17)])
def test_int_mm_padding_for_cuda_shapes(m, k, n):
    gen = torch.Generator().manual_seed(2)
    a = torch.randint(-128, 128, (m, k), generator=gen, dtype=torch.int8)
    b = torch.randint(-128, 128, (k, n), generator=gen, dtype=torch.int8)
    assert torch.equal(int_mm(a, b, pad=True), (a.long() @ b.long()).int())


# --- layers -------------------------------------------------------------------------------


def _on_grid(module, gen, per_row=True):
    with torch.no_grad():
        w = module.weight
        rows = w.shape[0] if per_row else 1
        flat = _grid((rows, w[0].numel() * (w.shape[0] // rows)), (rows, 1), gen, -9, -5)
        w.copy_(flat.view_as(w))
        if module.bias is not None:
            module.bias.copy_(torch.randn(module.bias.shape, generator=gen))
    return module


def _run(module, x, seed=0):
    """Output, input gradient, weight gradient, bias gradient for a fixed upstream gradient."""
    x = x.clone().requires_grad_(True)
    out = module(x)
    g = _grid(out.shape, (1,) * out.dim(), torch.Generator().manual_seed(seed), -10, -9)
    out.backward(g)
    return out.detach(), x.grad, module.weight.grad, module.bias.grad, g


def test_linear_products_are_exact_and_listed():
    gen = torch.Generator().manual_seed(3)
    lin = _on_grid(nn.Linear(48, 24), gen, per_row=False)
    ref = copy.deepcopy(lin).double()
    use_int8(lin)
    assert type(lin) is Int8Linear
    x = _grid((6, 5, 48), (1, 1, 1), gen, -6, -5)  # a 3-D input: (batch, tokens, features)
    out, gx, gw, gb, g = _run(lin, x)
    r_out, r_gx, r_gw, r_gb, _ = _run(ref, x.double())
    # Exact products; the bias add and the bias gradient's sum are float32 as in nn.Linear.
    assert torch.equal(out, (x.double() @ ref.weight.detach().T).float() + lin.bias.detach())
    assert torch.equal(gx, r_gx.float()) and torch.equal(gw, r_gw.float())
    assert torch.allclose(gb, r_gb.float())
    assert compute_paths(lin) == {"": {p: {"int8": 1, "float": 0} for p in ("forward", "input_grad", "weight_grad")}}


def test_linear_off_grid_falls_back_to_the_float_product():
    gen = torch.Generator().manual_seed(4)
    lin = _on_grid(nn.Linear(16, 8), gen)
    plain = copy.deepcopy(lin)
    use_int8(lin)
    x = torch.randn(4, 16, generator=gen)
    got, want = _run(lin, x), _run(plain, x)
    for a, b in zip(got, want):  # the fallback is torch's addmm and mm: nn.Linear bit for bit
        assert torch.equal(a, b)
    # forward and weight gradient: x is off the grid; input gradient: per-row weights (exponent
    # changing along the output channels, the reduction) -- listed as float all three.
    assert {p: c["float"] for p, c in compute_paths(lin)[""].items()} == {"forward": 1, "input_grad": 1, "weight_grad": 1}


@KERNELS
def test_im2col_is_unfold(kernels):
    gen = torch.Generator().manual_seed(5)
    x = torch.randint(-128, 128, (2, 3, 7, 9), generator=gen, dtype=torch.int8)
    for kernel, stride, padding, dilation in [((3, 3), (1, 1), (1, 1), (1, 1)), ((2, 3), (2, 1), (0, 2), (2, 1)),
                                              ((1, 5), (1, 3), (0, 2), (1, 1)), ((3, 2), (3, 2), (2, 0), (1, 3))]:
        cols, (ho, wo) = im2col(x, kernel, stride, padding, dilation, kernels=kernels)
        ref = F.unfold(x.float(), kernel, dilation, padding, stride)  # (N, C kh kw, L)
        ref = ref.view(2, 3, kernel[0] * kernel[1], -1).permute(0, 3, 2, 1).reshape(cols.shape)  # rows (n, l), cols (k, c)
        assert torch.equal(cols.float(), ref)
        assert 2 * ho * wo == ref.shape[0]


@pytest.mark.skipif(not swalp.ops.cpu.load(), reason="needs the C++ kernels")
@pytest.mark.parametrize("shape", [(3, 5, 4, 6), (1, 7, 9), (4, 64, 8, 8), (2, 1, 1, 1)])
def test_the_channel_kernel_is_the_transposed_rows(shape):
    gen = torch.Generator().manual_seed(len(shape))
    c, ones = shape[1], [1] * (len(shape) - 2)
    scale = torch.ldexp(torch.ones(1, c, *ones), torch.randint(-140, 100, (1, c, *ones), generator=gen))
    grid = torch.randint(-128, 128, shape, generator=gen).float() * scale  # one scale per channel
    refused = 0
    for case in range(4):  # on the grid; a NaN; negative tops; slightly off the grid
        x = grid
        if case == 1:
            x = grid.clone()
            x[-1, -1].view(-1)[0] = float("nan")  # in the last channel
        elif case == 2:
            x = -grid.abs()  # the code -128 wherever a channel's top is a power of two
        elif case == 3:
            x = grid * (1.0 + 2.0**-20)  # off the grid wherever a code is not a power of two
        fast, ref = channel_codes(x), channel_codes(x, kernels=False)
        assert (fast is None) == (ref is None)
        refused += ref is None
        if ref is not None:
            assert torch.equal(fast.codes, ref.codes) and torch.equal(fast.scale, ref.scale)
            assert fast.codes.shape == (c, x.numel() // c)
    assert refused >= 1  # the NaN at least


@pytest.mark.skipif(not swalp.ops.cpu.load(), reason="needs the C++ kernels")
def test_the_im2col_kernel_is_the_copies():
    x = torch.randint(-128, 128, (5, 64, 17, 16), generator=torch.Generator().manual_seed(2), dtype=torch.int8)
    for geometry in [((3, 3), (1, 1), (1, 1), (1, 1)), ((3, 3), (2, 2), (1, 1), (1, 1)), ((5, 1), (1, 1), (3, 0), (2, 1)),
                     ((3, 3), (1, 2), (2, 2), (2, 2))]:
        fast, shape = im2col(x, *geometry)
        ref, ref_shape = im2col(x, *geometry, kernels=False)
        assert torch.equal(fast, ref) and shape == ref_shape
    with pytest.raises(RuntimeError, match="bad geometry"):
        torch.ops.swalp_cpu.im2col(x, [3, 3], [0, 1], [0, 0], [1, 1])


@pytest.mark.parametrize("conv,shape,per_row", [  # per_row: per-channel weights, per-sample inputs
    (nn.Conv2d(3, 8, 3, padding=1), (2, 3, 6, 7), False),
    (nn.Conv2d(4, 6, (2, 3), stride=(2, 1), padding=(0, 2), dilation=(2, 1)), (3, 4, 9, 8), False),
    (nn.Conv1d(2, 5, 5, padding=2), (4, 2, 11), False),
    (nn.Conv2d(3, 8, 3, padding=1, bias=False), (2, 3, 5, 5), True),
])  # fmt: skip
@pytest.mark.parametrize("one_image_at_a_time", [False, True], ids=["whole batch", "pieces"])
def test_conv_products_are_exact(conv, shape, per_row, one_image_at_a_time, monkeypatch):
    if one_image_at_a_time:  # the patches built image by image (swalp/ops/intconv.py PATCH_BYTES)
        monkeypatch.setattr(swalp.ops.intconv, "PATCH_BYTES", 1)
    conv = copy.deepcopy(conv)
    gen = torch.Generator().manual_seed(6)
    conv = _on_grid(conv, gen, per_row)
    if conv.bias is None:
        conv.bias = None
    ref = copy.deepcopy(conv).double()
    use_int8(conv)
    assert type(conv) in (Int8Conv1d, Int8Conv2d)
    x = _grid(shape, (1,) * len(shape), gen, -6, -5, codes=(0, 128))  # a ReLU output on a per-tensor grid
    if per_row:  # and one exponent per sample: the forward's rows still share theirs
        x = x * torch.ldexp(torch.ones(shape[0]), torch.arange(shape[0])).view(-1, *[1] * (len(shape) - 1))
    x.requires_grad_(True)
    out = conv(x)
    g = _grid(out.shape, (1,) * out.dim(), gen, -10, -9)
    out.backward(g)
    xd = x.detach().double().requires_grad_(True)
    r = ref(xd)
    r.backward(g.double())
    bias = 0 if conv.bias is None else conv.bias.detach().view(1, -1, *([1] * (len(shape) - 2)))
    no_bias = F.conv1d if len(shape) == 3 else F.conv2d
    exact = no_bias(xd.detach(), ref.weight.detach(), None, conv.stride, conv.padding, conv.dilation).float()
    assert torch.equal(out.detach(), exact + bias)
    paths = compute_paths(conv)[""]
    assert paths["forward"] == {"int8": 1, "float": 0}
    if per_row:  # the weight gradient sums over samples, whose exponents differ: float
        assert paths["weight_grad"] == {"int8": 0, "float": 1}
        assert torch.allclose(conv.weight.grad, ref.weight.grad.float(), rtol=1e-6, atol=1e-9)
    else:
        assert paths["weight_grad"] == {"int8": 1, "float": 0}
        assert torch.equal(conv.weight.grad, ref.weight.grad.float())
    # The input gradient is torch's float one (swalp/ops/intconv.py says why).
    assert paths["input_grad"] == {"int8": 0, "float": 1}
    assert torch.allclose(x.grad, xd.grad.float(), rtol=1e-6, atol=1e-9)


def test_conv_unsupported_forms_keep_torch_and_are_listed():
    conv = nn.Conv2d(4, 4, 3, groups=2, padding=1)
    plain = copy.deepcopy(conv)
    use_int8(conv)
    x = torch.randn(2, 4, 5, 5)
    assert torch.equal(conv(x), plain(x))
    assert compute_paths(conv)[""]["forward"] == {"int8": 0, "float": 1}


def test_swap_keeps_names_and_state_and_copies():
    net = nn.Sequential(nn.Conv1d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6, 3))
    keys = list(net.state_dict())
    quantize_model(net, "paper", compute="int8")
    assert list(net.state_dict()) == keys and isinstance(net[0], nn.Conv1d)
    twin = copy.deepcopy(net)
    assert type(twin[3]) is Int8Linear and twin[3].int8_paths is not net[3].int8_paths
    with pytest.raises(ValueError, match="unknown compute 'int4'; accepted: 'float', 'int8'"):
        quantize_model(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), "paper", compute="int4")


@pytest.mark.parametrize("bias", [True, False])
def test_in_place_activations_after_int8_layers(bias):
    # VGG's ReLU(inplace=True) follows each layer; a 1x1 output is where a permuted result is contiguous.
    net = nn.Sequential(nn.Linear(6, 4, bias=bias), nn.ReLU(inplace=True), nn.Unflatten(1, (4, 1, 1)),
                        nn.Conv2d(4, 3, 1, bias=bias), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(3, 2))
    quantize_model(net, "paper-big-block", compute="int8")
    swalp.LowPrecisionOptimizer(torch.optim.SGD(net.parameters(), lr=0.1))
    net(torch.randn(5, 6)).sum().backward()
    assert compute_paths(net)["3"]["forward"] == {"int8": 1, "float": 0}


@pytest.mark.parametrize("name", ["cnn1d", "cnn"])
def test_full_precision_model_is_unchanged_by_int8_compute(name, one_thread):
    """Under "fp32" nothing is on a grid: every product falls back to torch's own, so outputs
    and gradients are nn.Linear's and nn.Conv's bit for bit, bias included."""
    from swalp.models import build_model

    shape = {"cnn1d": (1, 40), "cnn": (1, 8, 8)}[name]
    x, y = torch.randn(16, *shape), torch.randint(0, 10, (16,))
    results = []
    for compute in ("float", "int8"):
        torch.manual_seed(0)
        net = quantize_model(build_model(name, 10, shape), "fp32", compute=compute)
        out = net(x)
        F.cross_entropy(out, y).backward()
        results.append([out.detach()] + [p.grad for p in net.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results))
    assert all(c["int8"] == 0 for layer in compute_paths(net).values() for c in layer.values())


@pytest.mark.parametrize("name", ["vgg16", "preresnet164", "resnet18"])
def test_every_paper_network_takes_int8_steps(name, one_thread):
    """The paper's networks under compute="int8" (bias-free convolutions, batch norm, shortcuts):
    two steps, and after the first (weights rounded) the hidden layers' products are integer."""
    from swalp.models import build_model

    torch.manual_seed(0)
    net = quantize_model(build_model(name, 10, (3, 32, 32)), "paper", compute="int8")
    opt = swalp.LowPrecisionOptimizer(torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9), "paper", seed=0)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 7])
    for _ in range(2):
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
    assert torch.isfinite(loss) and all(torch.isfinite(p).all() for p in net.parameters())
    took = sum(c["int8"] for layer in compute_paths(net).values() for c in layer.values())
    assert took > len(compute_paths(net))  # most layers, forward and weight gradient


def test_int8_products_warn_on_an_x86_cpu_without_int8_units(monkeypatch):
    import warnings

    from swalp.ops import intmm

    a = torch.ones(2, 3, dtype=torch.int8)
    monkeypatch.setattr(intmm.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(intmm, "cpu_flags", lambda: frozenset({"fpu", "avx2", "fma"}))  # an AVX2-only CPU
    with pytest.warns(RuntimeWarning, match="no VNNI or AMX units .* slower than float32"):
        int_mm(a, a.t())
    for flags in ({"avx2", "avx512_vnni"}, {"avx2", "amx_int8"}, set()):  # int8 units, or flags unknown
        monkeypatch.setattr(intmm, "cpu_flags", lambda flags=flags: frozenset(flags))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert int_mm(a, a.t()).tolist() == [[3, 3], [3, 3]]
