"""No hidden global state: building swalp objects, and quantize with a seed, leave torch's
global generator alone; a seed is drawn only when stochastic rounding happens without one."""

import torch
from torch import nn

import swalp


def test_building_everything_leaves_the_global_generator_untouched():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))  # (torch's init draws: before)
    x = torch.randn(3, 4)
    before = torch.get_rng_state()
    swalp.get_recipe("paper", bits=6), swalp.BlockFloat(8), swalp.Quantizer("bfp8", "bfp8")
    swalp.quantize_model(net, "paper")
    opt = swalp.LowPrecisionOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), seed=0)
    swalp.SWALPLR(opt, budget=2, swa_lr=0.01)
    avg = swalp.WeightAverage(net)
    avg.update_parameters(net)
    swalp.quantize(x, "bfp8", "stochastic", seed=7)
    swalp.quantize(x, "bfp8")  # nearest: no seed needed
    with swalp.full_precision(net):
        net(x)
    assert torch.equal(torch.get_rng_state(), before)
    net(x)  # stochastic rounding without a seed: now it draws
    assert not torch.equal(torch.get_rng_state(), before)


def test_quantizers_draw_from_their_generator():
    x = torch.randn(64, requires_grad=True)

    def run(seed):
        q = swalp.Quantizer("bfp8", "bfp8", generator=torch.Generator().manual_seed(seed))
        y = q(x)
        (grad,) = torch.autograd.grad(y, x, torch.linspace(-1, 1, 64))
        return y.detach(), grad

    before = torch.get_rng_state()
    a, b, c = run(1), run(1), run(2)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[1], c[1])
    net, x2 = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), torch.randn(2, 4)
    before = torch.get_rng_state()
    swalp.quantize_model(net, "paper", generator=torch.Generator().manual_seed(0))(x2)
    assert torch.equal(torch.get_rng_state(), before)


def test_quantize_and_pack_draw_a_missing_seed_from_their_generator():
    x = torch.randn(100)
    before = torch.get_rng_state()
    a = swalp.quantize(x, "bfp8", "stochastic", generator=torch.Generator().manual_seed(4))
    b = swalp.pack(x, "bfp8", "stochastic", generator=torch.Generator().manual_seed(4)).unpack()
    assert torch.equal(torch.get_rng_state(), before) and torch.equal(a, b)
    assert not torch.equal(a, swalp.quantize(x, "bfp8", "stochastic", generator=torch.Generator().manual_seed(5)))
