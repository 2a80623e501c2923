"""The BFP all-reduce's C++ kernels (swalp/ops/cpu/csrc/comm.cpp) against their PyTorch
definitions (swalp/distributed/_bfp_math.py), bit for bit, for each of the hook's local steps."""

import math

import pytest
import torch

import swalp
from swalp._rng import random_bits
from swalp.distributed import _bfp_math as bm
from swalp.formats import Rounding

pytestmark = pytest.mark.skipif(not swalp.ops.cpu.load(), reason="needs the C++ kernels")

BOTH = [Rounding.STOCHASTIC, Rounding.NEAREST]


def _grads(seed: int) -> tuple[list[torch.Tensor], list[int]]:
    """A bucket's worth of awkward gradients and their block sizes."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(1000, generator=g) * 10.0 ** torch.randint(-6, 6, (1000,), generator=g)  # spread exponents
    b = torch.randn(77, generator=g)  # a tail block of 77 % 32
    b[5], b[40] = float("nan"), float("inf")  # two marked blocks
    c = torch.zeros(300)  # all-zero blocks
    c[-1] = 2.0**-140  # a subnormal: the grid of 2^-126 is far coarser
    d = torch.tensor([1.5 * 2.0**127, -3.3e38, 1.0, -2.0**-130])  # at the cap: saturates
    e = torch.full((513,), -2.0**-3)  # -0.125 at exponent -3: the code -64, nothing random
    f = torch.randn(5, generator=g)  # one block of its own length (PerTensor)
    return [a, b, c, d, e, f], [256, 32, 64, 4, 128, 5]


@pytest.mark.parametrize("seed", [0, 1])
def test_exponents_are_the_definitions(seed):
    grads, sizes = _grads(seed)
    fast = bm.exponents(grads, sizes)
    assert torch.equal(fast, bm.exponents(grads, sizes, kernels=False))
    assert fast.dtype == torch.int8 and len(fast) == sum(bm.blocks_of(g.numel(), s) for g, s in zip(grads, sizes))
    assert bm.NONFINITE in fast.tolist() and bm.EMIN in fast.tolist() and bm.EMAX in fast.tolist()


@pytest.mark.parametrize("rounding", BOTH, ids=str)
@pytest.mark.parametrize("wl", [8, 6, 4])
def test_codes_are_the_definitions(rounding, wl):
    grads, sizes = _grads(wl)
    e = bm.exponents(grads, sizes)
    e = torch.maximum(e, torch.randint(-126, 127, e.shape, generator=torch.Generator().manual_seed(wl), dtype=torch.int8)
                      * (e != bm.NONFINITE))  # other ranks' larger exponents, the marks kept
    seeds = [11 * t + wl for t in range(len(grads))]
    length = sum(bm.blocks_of(g.numel(), s) * s for g, s in zip(grads, sizes)) + 7  # padded for the all-to-all
    fast = bm.codes(grads, sizes, e, wl, rounding, seeds, length)
    assert torch.equal(fast, bm.codes(grads, sizes, e, wl, rounding, seeds, length, kernels=False))
    assert fast.min() >= -(2 ** (wl - 1)) and fast.max() <= 2 ** (wl - 1) - 1 and fast[-7:].eq(0).all()


def test_a_value_at_the_cap_saturates_and_the_codes_are_those_by_hand():
    grads = [torch.tensor([1.5 * 2.0**127, -3.3e38, 1.0, -2.0**127])]
    e = bm.exponents(grads, [4])
    assert e.tolist() == [126]  # floor(log2 3.3e38) = 127, capped
    for kernels in (True, False):
        c = bm.codes(grads, [4], e, 8, Rounding.NEAREST, [0], 4, kernels=kernels)
        assert c.tolist() == [127, -128, 0, -128]  # step 2^120: 1.5 * 2^127 is 192 steps, saturated
        out = bm.decode_into(torch.zeros(4), c, e, [4], [4], [0], 8, kernels=kernels)
        assert out.tolist() == [127 * 2.0**120, -(2.0**127), 0.0, -(2.0**127)]  # finite, never halved


@pytest.mark.parametrize("world", [1, 2, 3, 7])
@pytest.mark.parametrize("rounding", BOTH, ids=str)
def test_the_mean_is_the_definition(world, rounding):
    g = torch.Generator().manual_seed(world)
    chunk = 70_000  # enough elements that a float32 mean (2^-17 off near 127) would decide some differently
    received = torch.randint(-128, 128, (world * chunk,), generator=g, dtype=torch.int8)
    # Three tensors' pieces, the first starting inside its tensor, then padding.
    segments = [(30_000, 5, 123_456), (100, 6, 0), (39_000, 2**40 + 3, 2**31 - 10)]
    fast = bm.mean(received, world, segments, rounding)
    assert torch.equal(fast, bm.mean(received, world, segments, rounding, kernels=False))
    assert fast[69_100:].eq(0).all()


def test_the_mean_by_hand():
    received = torch.tensor([7, -7, 5, 100, 127, -128, 0, 1, 2,
                             0, 0, 0, 27, 127, -127, 0, 0, 0], dtype=torch.int8)  # two ranks' rows
    for kernels in (True, False):
        out = bm.mean(received, 2, [(8, 0, 0)], Rounding.NEAREST, kernels=kernels)
        # sums 7 -7 5 127 254 -255 0 1 (and padding 2): halves to nearest, ties to even
        assert out.tolist() == [4, -4, 2, 64, 127, -128, 0, 0, 0]
    bits = random_bits(3, seed=4, start=10)  # the stochastic decision: (bits >> 8) * world < rem * 2^24
    total = torch.tensor([5, 5, 5], dtype=torch.int32)
    expect = [2 + int((b >> 8) * 2 < 1 * 2**24) for b in bits.tolist()]
    rows = torch.tensor([3, 3, 3, 2, 2, 2], dtype=torch.int8)
    assert bm.mean(rows, 2, [(3, 4, 10)], Rounding.STOCHASTIC).tolist() == expect
    assert bm.round_mean(total, 2, Rounding.STOCHASTIC, bits).tolist() == expect


@pytest.mark.parametrize("wl", [8, 5])
def test_decode_writes_each_gradient_over_its_place(wl):
    grads, sizes = _grads(3)
    e = bm.exponents(grads, sizes)
    length = sum(bm.blocks_of(g.numel(), s) * s for g, s in zip(grads, sizes))
    codes = torch.randint(-(2 ** (wl - 1)), 2 ** (wl - 1), (length + 3,), generator=torch.Generator().manual_seed(wl),
                          dtype=torch.int8)
    numels = [g.numel() for g in grads]
    starts, at = [], 5  # the bucket: gaps before and between gradients, untouched
    for n in reversed(numels):  # out of order in the bucket
        starts.insert(0, at)
        at += n + 2
    fast = bm.decode_into(torch.full((at,), 7.0), codes, e, numels, sizes, starts, wl)
    ref = bm.decode_into(torch.full((at,), 7.0), codes, e, numels, sizes, starts, wl, kernels=False)
    assert torch.equal(fast.isnan(), ref.isnan()) and torch.equal(fast.nan_to_num(), ref.nan_to_num())
    assert fast[:5].eq(7).all() and fast.isnan().sum() == 2 * 32  # two marked blocks of 32
    assert fast.isnan().any() and math.isfinite(fast.nan_to_num().abs().max().item())


def test_the_kernels_refuse_bad_lists():
    x = torch.zeros(10)
    with pytest.raises(RuntimeError, match="one block size per gradient"):
        torch.ops.swalp_cpu.comm_exponents([x], [4, 4])
    with pytest.raises(RuntimeError, match="flat contiguous float32 CPU gradients"):
        torch.ops.swalp_cpu.comm_exponents([x.double()], [4])
    with pytest.raises(RuntimeError, match="bad block size"):
        torch.ops.swalp_cpu.comm_exponents([x], [0])
    with pytest.raises(RuntimeError, match="segments longer than the chunk"):
        torch.ops.swalp_cpu.comm_mean(torch.zeros(8, dtype=torch.int8), 2, [5, 0, 0], 0)
    with pytest.raises(RuntimeError, match="a gradient outside the bucket"):
        torch.ops.swalp_cpu.comm_decode_(torch.zeros(4), torch.zeros(8, dtype=torch.int8),
                                         torch.zeros(2, dtype=torch.int8), [8], [4], [0], 8)


def test_reused_outputs_are_cleared_where_nothing_is_encoded():
    # Outputs of 4 MiB and more come from the kernels' pool (csrc/output.cpp): an old output's
    # codes must not show through in a marked block, the padding or the mean's padding.
    n = 2**22 + 100
    old = bm.codes([torch.full((n + 5000,), 1.0)], [5000 + n], torch.zeros(1, dtype=torch.int8), 8,
                   Rounding.NEAREST, [0], n + 5000)
    assert old.eq(64).all()
    del old
    x = torch.full((n,), 1.0)
    x[7] = float("nan")
    e = bm.exponents([x], [256])
    fast = bm.codes([x], [256], e, 8, Rounding.NEAREST, [0], n + 5000)
    assert torch.equal(fast, bm.codes([x], [256], e, 8, Rounding.NEAREST, [0], n + 5000, kernels=False))
    assert fast[:256].eq(0).all() and fast[n:].eq(0).all() and fast[256:n].eq(64).all()
    rows = torch.full((2 * (n + 5000),), 3, dtype=torch.int8)
    del fast
    full = bm.mean(rows, 2, [(n + 5000, 1, 0)], Rounding.NEAREST)
    assert full.eq(3).all()
    del full
    m = bm.mean(rows, 2, [(n, 1, 0)], Rounding.NEAREST)
    assert m[:n].eq(3).all() and m[n:].eq(0).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_16_bit_bucket_takes_the_definitions_on_its_float32_values(dtype):
    grads32, sizes = _grads(5)
    grads32 = [g.clamp(-60000, 60000).nan_to_num(posinf=60000.0) for g in grads32]  # within float16
    grads = [g.to(dtype) for g in grads32]
    e = bm.exponents(grads, sizes)
    assert torch.equal(e, bm.exponents([g.float() for g in grads], sizes))
    length = sum(bm.blocks_of(g.numel(), s) * s for g, s in zip(grads, sizes))
    c = bm.codes(grads, sizes, e, 8, Rounding.STOCHASTIC, [1] * len(grads), length)
    assert torch.equal(c, bm.codes([g.float() for g in grads], sizes, e, 8, Rounding.STOCHASTIC, [1] * len(grads), length))
    numels = [g.numel() for g in grads]
    starts = [sum(numels[:t]) for t in range(len(numels))]
    out = bm.decode_into(torch.zeros(sum(numels), dtype=dtype), c, e, numels, sizes, starts, 8)
    ref = bm.decode_into(torch.zeros(sum(numels)), c, e, numels, sizes, starts, 8)
    assert out.dtype == dtype and torch.equal(out, ref.to(dtype))
