import io

import pytest
import torch
from torch import nn

import swalp
from swalp import FixedPoint, WeightAverage, quantize_model, update_bn
from torch.optim import swa_utils
from swalp.nn import quantizers


def set_weights(net, value):
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(value)


def test_average_of_three_iterates_is_the_exact_mean():
    net = nn.Linear(2, 2)
    avg = WeightAverage(net)
    means = []
    for w in (1.0, 2.0, 6.0):
        set_weights(net, w)
        avg.update(net)
        means.append(avg.module.weight[0, 0].item())
    assert means == [1.0, 1.5, 3.0] and avg.n_averaged == 3
    assert torch.equal(avg.module.bias, torch.full((2,), 3.0))
    x = torch.randn(4, 2)
    assert torch.equal(avg(x), nn.functional.linear(x, torch.full((2, 2), 3.0), torch.full((2,), 3.0)))


def test_average_rounded_to_a_format():
    net = nn.Linear(1, 1, bias=False)
    avg = WeightAverage(net, fmt=FixedPoint(8, 4), rounding="nearest")  # grid 1/16
    got = []
    for w in (0.1, 0.2):
        set_weights(net, w)
        avg.update(net)
        got.append(avg.module.weight.item())
    # Q(0.1) = 2/16; Q((1 * 0.125 + 0.2) / 2 = 0.1625) = 3/16
    assert got == [0.125, 0.1875]


def test_stochastic_average_repeats_with_its_seed():
    def run(seed):
        net = nn.Linear(3, 3)
        avg = WeightAverage(net, fmt="bfp8", seed=seed)
        for w in (0.3, 0.7, 0.2):
            set_weights(net, w)
            avg.update(net)
        return avg.module.weight.clone()

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))  # the seed is used: the rounding is stochastic
    q = run(1)
    assert torch.equal(q, swalp.quantize(q, "bfp8"))  # on the grid (nearest keeps grid values)
    assert not torch.equal(q, torch.full_like(q, 0.4))  # and not the unrounded mean 0.4


def test_buffers_copied_and_quantizers_disabled_in_the_average():
    net = quantize_model(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)), "paper")
    avg = WeightAverage(net)
    net.train()
    net(torch.randn(8, 3))
    avg.update(net)
    assert torch.equal(avg.module[1].running_mean, net[1].running_mean)
    assert avg.module[1].num_batches_tracked.item() == 1
    assert not any(q.enabled for q in quantizers(avg.module))
    assert all(q.enabled for q in quantizers(net))
    assert not any(p.requires_grad for p in avg.parameters())


def test_state_dict_round_trip_exact():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    avg = WeightAverage(net, fmt="bfp8", seed=5)
    for _ in range(2):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        avg.update(net)
    buf = io.BytesIO()
    torch.save(avg.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf)  # weights_only: n_averaged and seed are plain ints
    avg2 = WeightAverage(net, fmt="bfp8", seed=9)
    avg2.load_state_dict(sd)
    assert avg2.n_averaged == 2 and avg2.seed == 5
    for k, v in avg.state_dict().items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, avg2.state_dict()[k]), k
    avg.update(net)
    avg2.update(net)
    assert all(torch.equal(a, b) for a, b in zip(avg.parameters(), avg2.parameters()))


def test_update_bn_with_xy_loader_device_and_transform():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Identity(), nn.BatchNorm1d(3))
    avg = WeightAverage(net)
    avg.update(net)
    xs = [torch.randn(10, 3) + 2.0, torch.randn(10, 3) - 1.0]
    loader = [(x, torch.zeros(10)) for x in xs]
    update_bn(loader, avg, device="cpu")
    expected = torch.cat(xs).mean(0)  # two equal batches: the cumulative mean is the overall mean
    assert torch.allclose(avg.module[1].running_mean, expected, atol=1e-6)
    update_bn(loader, avg.module, transform=lambda x: 2 * x)
    assert torch.allclose(avg.module[1].running_mean, 2 * expected, atol=1e-6)


def test_mismatched_model_is_a_clear_error():
    avg = WeightAverage(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="do not match"):
        avg.update(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="nn.Module"):
        WeightAverage("net")
    with pytest.raises(ValueError, match="unknown format"):
        WeightAverage(nn.Linear(2, 2), fmt="int4")


# ----------------------------------------------------------------------------- an AveragedModel


def test_it_is_an_averaged_model_and_loads_torch_state_dicts():
    net = nn.Linear(3, 2)
    theirs = swa_utils.AveragedModel(net)
    for w in (1.0, 3.0):
        set_weights(net, w)
        theirs.update_parameters(net)
    ours = WeightAverage(nn.Linear(3, 2))
    assert isinstance(ours, swa_utils.AveragedModel)
    ours.load_state_dict(theirs.state_dict())
    assert int(ours.n_averaged) == 2 and torch.equal(ours.module.weight, torch.full((2, 3), 2.0))
    theirs.load_state_dict(ours.state_dict(), strict=False)  # ours has one more key: the seed


def test_ema_through_torch_multi_avg_fn_rounded_to_the_format():
    net = nn.Linear(1, 1, bias=False)
    ema = WeightAverage(net, fmt=FixedPoint(8, 4), rounding="nearest", multi_avg_fn=swa_utils.get_ema_multi_avg_fn(0.5))
    got = []
    for w in (1.0, 0.0, 0.0):
        set_weights(net, w)
        ema.update_parameters(net)
        got.append(ema.module.weight.item())
    assert got == [1.0, 0.5, 0.25]  # 0.5 * previous + 0.5 * new, on the grid of 1/16


def test_use_buffers_averages_batch_norm_statistics():
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    avg = WeightAverage(net, use_buffers=True)
    for v in (2.0, 4.0):
        with torch.no_grad():
            net[1].running_mean.fill_(v)
        avg.update_parameters(net)
    assert torch.equal(avg.module[1].running_mean, torch.full((2,), 3.0))


def test_a_bfloat16_model_is_averaged_in_float32_and_takes_bfloat16_input():
    net = nn.Linear(4, 2).to(torch.bfloat16)
    avg = WeightAverage(net)
    avg.update_parameters(net)
    assert avg.module.weight.dtype == torch.float32
    x = torch.randn(3, 4, dtype=torch.bfloat16)
    assert torch.equal(avg(x), nn.functional.linear(x.float(), net.weight.float(), net.bias.float()))
    assert WeightAverage(net, dtype=torch.float64).module.weight.dtype == torch.float64
    with pytest.raises(ValueError, match="dtype must be a floating torch.dtype"):
        WeightAverage(net, dtype=torch.int8)


def test_torch_update_bn_works_on_it():
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    avg = WeightAverage(net)
    avg.update_parameters(net)
    data = [torch.randn(16, 2) * 3 + 5 for _ in range(4)]
    swa_utils.update_bn(data, avg)
    expected = avg.module[0](torch.cat(data)).mean(0)
    torch.testing.assert_close(avg.module[1].running_mean, expected, rtol=1e-5, atol=1e-5)


def test_no_draw_from_the_global_generator_unless_stochastic_rounding_needs_a_seed():
    net = nn.Linear(3, 3)
    before = torch.get_rng_state()
    plain, rounded = WeightAverage(net), WeightAverage(net, fmt="bfp8")
    plain.update_parameters(net)
    assert torch.equal(torch.get_rng_state(), before) and rounded.seed is None
    g = torch.Generator().manual_seed(3)
    drawn = WeightAverage(net, fmt="bfp8", generator=g)
    drawn.update_parameters(net)
    assert torch.equal(torch.get_rng_state(), before) and drawn.seed is not None
    rounded.update_parameters(net)  # no seed, no generator: one draw from torch's generator
    assert not torch.equal(torch.get_rng_state(), before)
