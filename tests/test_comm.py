"""swalp.distributed: the 8-bit block-floating-point all-reduce hook for DistributedDataParallel."""

import os
import math

import pytest
import torch
import torch.distributed as dist
from torch import nn

import swalp
from swalp.distributed import BFPCommState, register_bfp_hook
from swalp.distributed._bfp_math import block_exponents, decode, encode, round_mean
from swalp._rng import random_bits
from swalp.formats import BlockFloat, PerAxis, PerGroup, Rounding
from test_distributed import LOOPBACK, spawn_ranks

# ----------------------------------------------------------------------------- the arithmetic


def test_exponents_codes_and_values_by_hand():
    x = torch.tensor([[1.5, -0.75, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0], [1.0, float("nan"), 2.0, 0.5]])
    e = block_exponents(x)
    assert e.tolist() == [1, -126, 127]  # floor(log2 3); an all-zero block; a NaN block is marked
    codes = encode(x, e, 8, Rounding.NEAREST, seed=0).view(3, 4)
    assert codes[0].tolist() == [48, -24, 0, 96]  # step 2^(1 - 6) = 1/32
    assert codes[1].tolist() == [0, 0, 0, 0] and codes[2].tolist() == [0, 0, 0, 0]
    out = decode(codes, e, 8)
    assert out[0].tolist() == [1.5, -0.75, 0.0, 3.0] and out[1].tolist() == [0.0] * 4 and out[2].isnan().all()
    # The mean of two ranks' codes, rounded to nearest with ties to even, in integers.
    total = torch.tensor([7, -7, 5, 6, 254, -254, 0], dtype=torch.int32)
    assert round_mean(total, 2, Rounding.NEAREST, None).tolist() == [4, -4, 2, 3, 127, -127, 0]
    assert round_mean(torch.tensor([10, 11, -10], dtype=torch.int32), 3, Rounding.NEAREST, None).tolist() == [3, 4, -3]


def test_both_roundings_are_unbiased():
    # Codes: 0.3 of a grid step above 10, seen 200,000 times; its mean is 10.3 within 5 standard errors.
    n = 200_000
    x = torch.full((n // 100, 100), 10.3 / 64)  # block max 10.3/64 < 1/4: exponent -3, step 2^-9
    e = block_exponents(x)
    codes = encode(x, e, 8, Rounding.STOCHASTIC, seed=5).double()
    target = 10.3 / 64 * 2**9
    assert abs(codes.mean().item() - target) < 5 * math.sqrt(0.3 * 0.7 / n)
    # The mean of three ranks' sums: 31 / 3 = 10.333..., rounded down two times in three.
    total = torch.full((n,), 31, dtype=torch.int32)
    means = round_mean(total, 3, Rounding.STOCHASTIC, random_bits(n, seed=6)).double()
    assert abs(means.mean().item() - 31 / 3) < 5 * math.sqrt(2 / 9 / n)
    assert set(means.unique().tolist()) == {10.0, 11.0}


def test_settings_are_checked():
    with pytest.raises(ValueError, match="block floating point of at most 8 bits in int8 codes, got FixedPoint"):
        BFPCommState(fmt="fixed8")
    with pytest.raises(ValueError, match="at most 8 bits"):
        BFPCommState(fmt=BlockFloat(10, block=PerGroup(32)))
    with pytest.raises(ValueError, match="flat tensor: its blocking must be PerGroup\\(size\\) or PerTensor\\(\\)"):
        BFPCommState(fmt=BlockFloat(8, block=PerAxis(0)))
    with pytest.raises(ValueError, match="unknown rounding 'up'"):
        BFPCommState(rounding="up")
    with pytest.raises(ValueError, match="DistributedDataParallel communication hook; got a Linear"):
        register_bfp_hook(nn.Linear(2, 2))
    assert BFPCommState(fmt="bfp8").fmt == swalp.get_format("bfp8")
    from swalp.distributed.bfp_hook import check_world

    assert check_world(2**24 - 1) == 2**24 - 1
    with pytest.raises(ValueError, match="holds at most 16777215 of them; the world has 16777216 ranks"):
        check_world(2**24)


# ----------------------------------------------------------------------------- 2 and 4 ranks


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 200), nn.ReLU(), nn.Linear(200, 300), nn.ReLU(), nn.Linear(300, 5))


def _worker(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(LOOPBACK, MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    out = {}
    for name in ("bfp", "bfp-again", "fp32"):
        model = _net()
        ddp = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=0.1)  # several buckets
        state = register_bfp_hook(ddp, seed=3) if name != "fp32" else None
        grads = []
        for step in range(2):
            g = torch.Generator().manual_seed(100 * step + rank)
            x = torch.randn(32, 20, generator=g) * (1 + rank)
            if step == 1 and name != "fp32" and rank == 1:
                x[0, 0] = float("nan")  # one rank's NaN reaches every rank
            model.zero_grad()
            ddp(x).square().mean().backward()
            grads.append([p.grad.clone() for p in model.parameters()])
        out[name] = grads
        if state is not None:
            out[name + "-state"] = (state.step, state.bytes_sent, state.float32_bytes)
        del ddp, state  # its reducer holds the process group: gone before the group is destroyed
    local = _net()  # this rank's own gradient of step 0, for the bound
    local(torch.randn(32, 20, generator=torch.Generator().manual_seed(rank)) * (1 + rank)).square().mean().backward()
    out["local"] = [p.grad for p in local.parameters()]
    torch.save(out, f"{root}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module", params=[2, 4], ids=["2 ranks", "4 ranks"])
def world(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"ranks{request.param}")
    spawn_ranks(_worker, request.param, root)
    return request.param, [torch.load(root / f"rank{r}.pt", weights_only=False) for r in range(request.param)]


def test_every_rank_holds_the_same_bytes_and_a_rerun_repeats_them(world):
    _, ranks = world
    for r in ranks[1:]:
        for a, b in zip(ranks[0]["bfp"][0], r["bfp"][0]):
            assert torch.equal(a, b)
    for a, b in zip(ranks[0]["bfp"][0], ranks[0]["bfp-again"][0]):
        assert torch.equal(a, b)  # seeded from (seed, step, bucket, rank)


def test_the_average_is_the_float32_one_within_two_grid_steps(world):
    n, ranks = world
    biggest = max(max(g.abs().max().item() for g in r["local"]) for r in ranks)
    step = 2.0 ** (math.floor(math.log2(biggest)) - 6)  # the coarsest grid any block can have
    errors = []
    for a, b in zip(ranks[0]["bfp"][0], ranks[0]["fp32"][0]):
        assert (a - b).abs().max().item() <= 2 * step  # one rounding of each rank's codes, one of their mean
        errors.append((a - b).abs().mean().item())
    assert 0 < max(errors) < step  # not float32 (the codes are 8 bits), far within the bound on average


def test_a_nan_on_one_rank_comes_out_on_every_rank(world):
    _, ranks = world
    for r in ranks:
        assert any(g.isnan().any() for g in r["bfp"][1])
        assert all(torch.isfinite(g).all() for g in r["bfp"][0])


def test_about_a_quarter_of_the_float32_bytes_are_sent(world):
    _, ranks = world
    steps, sent, float32 = ranks[0]["bfp-state"]
    assert steps == 2 and 0.25 * float32 < sent <= 0.3 * float32
