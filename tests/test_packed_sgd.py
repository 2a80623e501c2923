"""The fused packed SGD step: swalp/ops/sgd.py (definition) and swalp/ops/cpu/csrc/sgd.cpp,
and its use by LowPrecisionOptimizer(storage="packed") (swalp/optim/_storage.py)."""

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

import swalp
from swalp.formats import BlockFloat, FixedPoint, FloatFormat, MXFloat, PerAxis, PerGroup, Rounding
from swalp.ops import pack
from swalp.ops.sgd import packed_sgd

E4M3 = FloatFormat(4, 3, finite_only=True)
FORMATS = {
    "bfp8-row": BlockFloat(8, block=PerAxis(0)),
    "bfp8-tensor": BlockFloat(8),
    "bfp8-tiles": BlockFloat(8, block=PerGroup(4)),
    "bfp6-row": BlockFloat(6, block=PerAxis(0)),
    "fixed8": FixedPoint(8, 6),
    "e4m3": E4M3,
    "e5m2": FloatFormat(5, 2),
    "mxfp8": MXFloat(E4M3, block=PerGroup(8)),
}
SETTINGS = [
    {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},  # the paper's
    {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3, "nesterov": True},
    {"lr": 0.02, "momentum": 0.5, "dampening": 0.3, "maximize": True},
    {"lr": 0.1, "weight_decay": 0.01},  # no momentum
    {"lr": 0.1},
]


def packs(shape, fmt, k, scale=1.0):
    g = torch.Generator().manual_seed(k)
    return pack(torch.randn(shape, generator=g) * scale, fmt, "stochastic", seed=k)


def same(a, b):
    if a is None or b is None:
        return a is None and b is None
    return (a.codes.dtype == b.codes.dtype and torch.equal(a.codes.view(torch.uint8), b.codes.view(torch.uint8))
            and (a.exponents is None) == (b.exponents is None)
            and (a.exponents is None or torch.equal(a.exponents, b.exponents)))


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("shape", [(37,), (40, 33), (6, 3, 5, 5)])
@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
def test_kernel_equals_the_reference_bit_for_bit(name, shape, rounding):
    assert swalp.ops.cpu.load()  # else both sides would be the reference
    fmt = FORMATS[name]
    w, g, m = packs(shape, fmt, 1), packs(shape, fmt, 2, 0.1), packs(shape, fmt, 3, 0.1)
    for settings in SETTINGS:
        for buf in (None, m):  # the first step, and a later one
            got = packed_sgd(w, g, buf, fmt, fmt, rounding, (5, 6), backend="cpp", **settings)
            want = packed_sgd(w, g, buf, fmt, fmt, rounding, (5, 6), backend="reference", **settings)
            full = {"weight_decay": 0.0, "momentum": 0.0, "dampening": 0.0, "nesterov": False, "maximize": False,
                    **settings}
            assert swalp.ops.cpu._sgd(w, g, buf, fmt, fmt, Rounding(rounding), (5, 6), full) is not None  # it applies
            assert same(got[0], want[0]) and same(got[1], want[1]), settings


def test_kernel_with_different_formats_for_weights_gradient_and_momentum():
    assert swalp.ops.cpu.load()
    wf, gf, mf = BlockFloat(8, block=PerAxis(0)), BlockFloat(8), FixedPoint(8, 7)
    w, g, m = packs((9, 20), wf, 1), packs((9, 20), gf, 2, 0.1), packs((9, 20), mf, 3, 0.1)
    got = packed_sgd(w, g, m, wf, mf, "stochastic", (5, 6), lr=0.1, momentum=0.9, weight_decay=1e-3)
    want = packed_sgd(w, g, m, wf, mf, "stochastic", (5, 6), lr=0.1, momentum=0.9, weight_decay=1e-3,
                      backend="reference")
    assert same(got[0], want[0]) and same(got[1], want[1])
    assert got[0].fmt == wf and got[1].fmt == mf


# Each "x + a * y" of torch's step is one fused multiply-add. With 0.1 as float32,
# 10 * 0.1f = 1 + 2^-26 exactly, which a separate multiply rounds to 1: so x + a * y with x = -1
# is 2^-26 fused and 0 unfused. Whole-tensor BFP8 then holds 2^-26 exactly (code 64, exponent -32).
CANCEL = 2.0**-26
WHOLE = BlockFloat(8)  # one exponent for the tensor


def hand(values, fmt=WHOLE):
    return pack(torch.tensor(values), fmt)


@pytest.mark.parametrize("backend", [None, "reference"])
def test_every_multiply_add_is_fused_as_torch_fuses_it(backend):
    def step(w, g, m, **settings):
        new, buf = packed_sgd(hand(w), hand(g), None if m is None else hand(m), BlockFloat(8), BlockFloat(8),
                              "nearest", (0, 0), backend=backend, **settings)
        return new.unpack().tolist(), None if buf is None else buf.unpack().tolist()

    # weight decay: d = g + wd * w = -1 + 0.1f * 10; the first momentum buffer is d
    assert step([10.0, 10.0], [-1.0, -1.0], None, lr=0.0, momentum=0.9, weight_decay=0.1)[1] == [CANCEL] * 2
    # dampening: m = m * 1 + (1 - 0.9) * d, with m = -1 and d = 10 (1 - 0.9 is 0.1f as float32)
    assert step([1.0, 1.0], [10.0, 10.0], [-1.0, -1.0], lr=0.0, momentum=1.0, dampening=0.9)[1] == [CANCEL] * 2
    # nesterov: d = g + momentum * m, with m = 110 * 0.1f + g = 11 - 1 = 10 (both rounded exactly)
    # and g = -1, then w = 0 - 1 * d
    assert step([0.0, 0.0], [-1.0, -1.0], [110.0, 110.0], lr=1.0, momentum=0.1, nesterov=True)[0] == [-CANCEL] * 2
    # learning rate: w = w + (-lr) * d = 1 - 0.1f * 10
    assert step([1.0, 1.0], [10.0, 10.0], None, lr=0.1)[0] == [-CANCEL] * 2


def test_the_kernel_steps_only_where_torch_fuses_its_multiply_adds(monkeypatch):
    import swalp.ops.cpu as cpu

    assert cpu.torch_add_is_fma()  # this machine's torch: AVX2 or AVX-512 kernels
    fmt = BlockFloat(8)
    args = (hand([1.0]), hand([2.0]), None, fmt, fmt, Rounding.NEAREST, (0, 0), {**SETTINGS[0], "dampening": 0.0,
                                                                                 "nesterov": False, "maximize": False})
    assert cpu._sgd(*args) is not None
    monkeypatch.setattr(cpu, "torch_add_is_fma", lambda: False)  # a torch whose add rounds twice
    assert cpu._sgd(*args) is None  # packed_sgd then takes the torch path, whatever torch does


def test_the_probe_asks_float32_whatever_the_default_dtype():
    import swalp.ops.cpu as cpu

    cpu.torch_add_is_fma.cache_clear()
    torch.set_default_dtype(torch.float64)
    try:
        assert cpu.torch_add_is_fma()  # in float64, 10 * 0.1 - 1 is 2^-54 + ..., never 2^-26
    finally:
        torch.set_default_dtype(torch.float32)
        cpu.torch_add_is_fma.cache_clear()


def test_torch_sgd_gives_the_same_hand_computed_numbers():
    w = torch.tensor([1.0, 1.0], requires_grad=True)
    w.grad = torch.tensor([10.0, 10.0])
    torch.optim.SGD([w], lr=0.1).step()
    assert w.tolist() == [-CANCEL] * 2


def test_no_momentum_keeps_no_buffer_and_a_nan_is_an_error():
    fmt = BlockFloat(8)
    new, buf = packed_sgd(hand([1.0]), hand([2.0]), None, fmt, fmt, "nearest", (0, 0), lr=0.5)
    assert buf is None and new.unpack().tolist() == [0.0]
    with pytest.raises(ValueError, match="NaN"):
        packed_sgd(hand([1.0]), hand([2.0]), None, fmt, fmt, "nearest", (0, 0), lr=float("nan"))


# --- LowPrecisionOptimizer(storage="packed") ------------------------------------------------


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 5, 3)
        self.fc = nn.Linear(5 * 6, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def build(recipe="paper", storage="packed", **sgd):
    torch.manual_seed(0)
    net = swalp.quantize_model(Net(), recipe)
    inner = torch.optim.SGD(net.parameters(), **{"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, **sgd})
    return net, swalp.LowPrecisionOptimizer(inner, seed=3, storage=storage)


def train(net, opt, steps=3):
    for k in range(steps):
        g = torch.Generator().manual_seed(k)
        x, y = torch.randn(8, 2, 8, generator=g), torch.randint(0, 3, (8,), generator=g)
        torch.manual_seed(k)
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()


def state(net, opt):
    with swalp.nn.unpacked(net):
        ws = [p.detach().clone() for p in net.parameters()]
    ms = [opt.packed[p]["momentum_buffer"].unpack() for p in net.parameters() if p in opt.packed]
    return ws, ms, sorted(len(s) for s in opt.optimizer.state.values())


@pytest.fixture
def fused_calls(monkeypatch):
    import swalp.optim._storage as storage

    calls = []
    real = storage.packed_sgd
    monkeypatch.setattr(storage, "packed_sgd", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


@pytest.mark.parametrize("recipe, sgd", [("paper", {}), ("paper", {"nesterov": True}), ("fp8", {}),
                                         ("paper-big-block", {"momentum": 0.0})])
def test_plain_sgd_steps_fused_with_the_chunked_steps_numbers(fused_calls, recipe, sgd):
    net, opt = build(recipe, **sgd)
    train(net, opt)
    assert len(fused_calls) == 3 * len(list(net.parameters()))
    ref, ref_opt = build(recipe, **sgd)
    hooked = []
    ref_opt.optimizer.register_step_pre_hook(lambda *a: hooked.append(1))  # the wrapped step must run
    train(ref, ref_opt)
    assert len(fused_calls) == 3 * len(list(net.parameters())) and len(hooked) >= 3
    (wa, ma, sa), (wb, mb, sb) = state(net, opt), state(ref, ref_opt)
    assert all(torch.equal(a, b) for a, b in zip(wa + ma, wb + mb)) and len(ma) == len(mb) and sa == sb


def test_what_the_wrapped_step_would_show_turns_the_fused_step_off(fused_calls):
    net, opt = build()
    real = opt.optimizer.step
    opt.optimizer.step = lambda *a, **k: real(*a, **k)  # a step of its own: it must run
    train(net, opt, 1)
    handle = register_optimizer_step_post_hook(lambda *a: None)
    try:
        train(*build(), 1)
    finally:
        handle.remove()
    net, opt = build()
    with swalp.QuantizationStats(net, opt):
        train(net, opt, 1)
    assert fused_calls == []
    net, opt = build()
    torch.optim.lr_scheduler.StepLR(opt, 1)  # on the wrapper: the fused step goes on
    train(net, opt, 1)
    assert len(fused_calls) == len(list(net.parameters()))


@pytest.mark.parametrize("on_inner", [True, False])
def test_an_lr_scheduler_on_either_optimizer_keeps_the_fused_step_and_sees_it(fused_calls, on_inner, recwarn):
    (net, opt), (ref, ref_opt) = build(), build()
    ref_opt.optimizer.register_step_pre_hook(lambda *a: None)  # the chunked step: the wrapped SGD steps
    for o in (opt, ref_opt):
        sched = torch.optim.lr_scheduler.StepLR(o.optimizer if on_inner else o, 1, gamma=0.5)
        for _ in range(3):
            train(*((net, o) if o is opt else (ref, o)), 1)
            sched.step()
    assert len(fused_calls) == 3 * len(list(net.parameters()))
    assert not [w for w in recwarn if "lr_scheduler.step()" in str(w.message)]  # it saw every optimizer step
    assert opt.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"] == 0.05 * 0.5**3
    with swalp.nn.unpacked(net), swalp.nn.unpacked(ref):
        assert all(torch.equal(p, q) for p, q in zip(net.parameters(), ref.parameters()))


def test_a_nan_step_leaves_float_numbers_as_the_simulated_step_does(fused_calls):
    (net, opt), (sim_net, sim_opt) = build(), build(storage="simulated")
    for o in (opt, sim_opt):
        o.param_groups[0]["lr"] = float("nan")
    train(net, opt, 1)
    train(sim_net, sim_opt, 1)
    assert len(fused_calls) == len(list(net.parameters()))  # each tried, each refused by its NaN
    assert not any(swalp.nn.is_packed(p) for p in net.parameters())  # a NaN has no code: float, as simulated
    assert all(torch.isnan(p).all() and torch.isnan(q).all() for p, q in zip(net.parameters(), sim_net.parameters()))


def test_packed_convolutions_take_the_split_backward_with_the_same_numbers(monkeypatch):
    from swalp.nn import _conv

    monkeypatch.setattr(_conv, "SPLIT_MIN", 0)  # this small model's convolution too
    (net, opt), (sim, sim_opt) = build(), build(storage="simulated")
    seen = []  # the node under the output Quantizer's (quantize_model rounds the output in a forward hook)
    for model in (net, sim):
        model.conv.register_forward_hook(lambda m, i, out: seen.append(type(out.grad_fn.next_functions[0][0]).__name__))
    train(net, opt)
    train(sim, sim_opt)
    assert seen == ["_SplitConvBackward"] * 3 + ["ConvolutionBackward0"] * 3  # packed weights only
    with swalp.nn.unpacked(net):
        assert all(torch.equal(p, q) for p, q in zip(net.parameters(), sim.parameters()))


def test_a_failing_packed_convolution_leaves_no_mode_behind():
    net, opt = build()
    with pytest.raises(RuntimeError):
        net(torch.randn(8, 3, 8))  # 3 channels where the convolution takes 2
    assert torch._C._len_torch_function_stack() == 0  # the layer's SplitConvolutions exited with it
    assert swalp.nn.is_packed(net.conv.weight)  # and its weights are held packed again
    train(net, opt, 1)
