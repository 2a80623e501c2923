"""swalp.quantize: values against hand tables, a plain-Python loop over blocks, and torch's casts.

The plain-Python reference below (``py_quantize``) recomputes every format element by
element in float64 (exact for float32 inputs: every step is a power-of-two scaling or a
rounding of an exactly held value), with the blocks drawn by an explicit loop.
"""

import dataclasses
import itertools
import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import swalp
from swalp import (
    BFLOAT16,
    FP8_E4M3,
    FP8_E5M2,
    MXFP8_E4M3,
    MXFP8_E5M2,
    MXINT8,
    BlockFloat,
    FixedPoint,
    FloatFormat,
    MXFloat,
    PerAxis,
    PerGroup,
    PerTensor,
)
from swalp import _rng
from swalp.formats import MXFP4_E2M1

NAN, INF = float("nan"), float("inf")

# The benchmark's formats, plus a few odd ones: every test that loops over formats uses these.
FORMATS = {
    "fixed8": FixedPoint(8, 6),
    "bfp8": BlockFloat(8),
    "bfp8_row": BlockFloat(8, block=PerAxis(0)),
    "bfp6_tile4_axis0": BlockFloat(6, ebits=5, block=PerGroup(4, 0)),
    "e4m3": FP8_E4M3,
    "e5m2": FP8_E5M2,
    "bf16": BFLOAT16,
    "mxint8": MXINT8,
    "mxfp8_e4m3": MXFP8_E4M3,
    "mxfp8_e5m2": MXFP8_E5M2,
    "mxfp4": MXFP4_E2M1,
}


def q(x, fmt, rounding="nearest", seed=0, **kw):
    return swalp.quantize(torch.as_tensor(x, dtype=kw.pop("dtype", torch.float32)), fmt, rounding, seed, **kw)


# --- the plain-Python reference ------------------------------------------------------


def floor_log2(m):
    return math.frexp(m)[1] - 1


def block_ids(shape, block):
    """Block id of every element (row-major), by a plain loop over indices."""
    ids = []
    for idx in itertools.product(*map(range, shape)):
        if isinstance(block, PerTensor) or not shape:
            ids.append(0)
        elif isinstance(block, PerAxis):
            ids.append(idx[block.axis % len(shape)])
        else:
            axis = block.axis % len(shape)
            rest = idx[:axis] + idx[axis + 1 :]
            ids.append((rest, idx[axis] // block.size))
    return ids


def block_max(values, shape, block):
    """Largest finite |x| of each element's block, via a dict over blocks."""
    ids = block_ids(shape, block)
    best = {}
    for b, v in zip(ids, values):
        best[b] = max(best.get(b, 0.0), abs(v) if math.isfinite(v) else 0.0)
    return [best[b] for b in ids]


def py_neighbours(v, fmt, m):
    """(lower, upper, lo_bound, hi_bound, gap) of value v whose block maximum is m."""
    if isinstance(fmt, FixedPoint):
        d, lo, hi = 2.0**-fmt.fl, fmt.min_value, fmt.max_value
    elif isinstance(fmt, BlockFloat):
        e = min(max(floor_log2(m), fmt.emin), fmt.emax) if m > 0 else fmt.emin
        d = 2.0 ** (e - (fmt.wl - 2))
        lo, hi = fmt.qmin * d, fmt.qmax * d
    else:  # FloatFormat
        e = max(floor_log2(abs(v)), fmt.emin) if v != 0 and math.isfinite(v) else fmt.emin
        d, hi = 2.0 ** (e - fmt.man), fmt.max_value
        lo = -hi
    if not math.isfinite(v):
        return (lo, lo, lo, hi, d) if v < 0 else (hi, hi, lo, hi, d)
    f = math.floor(v / d)
    return f * d, (f + 1) * d, lo, hi, d


def py_round_one(v, fmt, m):
    if math.isnan(v):
        return NAN
    if isinstance(fmt, MXFloat):
        s = min(max(floor_log2(m) - fmt.element.emax, fmt.emin), fmt.emax) if m > 0 else fmt.emin
        return py_round_one(v * 2.0**-s, fmt.element, None) * 2.0**s
    lower, upper, lo, hi, d = py_neighbours(v, fmt, m)
    r = round(v / d) * d if math.isfinite(v) else lower  # Python's round is half to even
    return min(max(r, lo), hi)


def py_quantize(x, fmt):
    """Nearest rounding of tensor x to fmt, element by element in Python floats."""
    values = x.double().flatten().tolist()
    block = getattr(fmt, "block", PerTensor())
    ms = block_max(values, tuple(x.shape), block)
    out = [py_round_one(v, fmt, m) for v, m in zip(values, ms)]
    return torch.tensor(out, dtype=torch.float64).reshape(x.shape)


def py_candidates(x, fmt):
    """The (at most two) values stochastic rounding may give each element."""
    values = x.double().flatten().tolist()
    ms = block_max(values, tuple(x.shape), getattr(fmt, "block", PerTensor()))
    out = []
    for v, m in zip(values, ms):
        if isinstance(fmt, MXFloat):
            s = min(max(floor_log2(m) - fmt.element.emax, fmt.emin), fmt.emax) if m > 0 else fmt.emin
            lower, upper, lo, hi, _ = py_neighbours(v * 2.0**-s, fmt.element, None)
            lower, upper, lo, hi = lower * 2.0**s, upper * 2.0**s, lo * 2.0**s, hi * 2.0**s
        else:
            lower, upper, lo, hi, _ = py_neighbours(v, fmt, m)
        out.append({min(max(lower, lo), hi), min(max(upper, lo), hi)})
    return out


def same(a, b):
    """Equal values, NaN where NaN, compared in float64."""
    return torch.equal(a.double().nan_to_num(1234.5), b.double().nan_to_num(1234.5))


# --- nearest: hand tables ------------------------------------------------------------


def test_fixed_point_nearest_ties_to_even_hand_table():
    # FixedPoint(4, 2): grid 0.25, range [-2, 1.75]
    x = [0.125, 0.375, 0.625, -0.125, -0.375, 1.625, 1.875, 0.1, -0.6, 3.0, -2.2]
    want = [0.0, 0.5, 0.5, -0.0, -0.5, 1.5, 1.75, 0.0, -0.5, 1.75, -2.0]
    assert q(x, FixedPoint(4, 2)).tolist() == want


def test_block_float_nearest_hand_table():
    # max |x| = 1.5 -> e = 0 -> BlockFloat(4) grid 2^(0-2) = 0.25
    x = [1.5, 0.125, 0.375, -0.625, 0.1, -1.4]
    assert q(x, BlockFloat(4)).tolist() == [1.5, 0.0, 0.5, -0.5, 0.0, -1.5]
    # max 3 -> e = 1 -> BlockFloat(8) grid 2^-5; 2^-6 and 3 * 2^-6 are ties
    x = [3.0, 2.0**-6, 3 * 2.0**-6, -3.0, 0.1]
    assert q(x, BlockFloat(8)).tolist() == [3.0, 0.0, 2.0**-4, -3.0, 3 * 2.0**-5]


def test_symmetric_drops_the_most_negative_integer():
    x = [-1.999, 0.5]  # e = 0, grid 2^-6: -127.9 rounds to -128
    assert q(x, BlockFloat(8)).tolist() == [-2.0, 0.5]
    assert q(x, BlockFloat(8, symmetric=True)).tolist() == [-127 / 64, 0.5]


def test_e4m3_nearest_hand_table():
    x = [1.0625, 1.1875, 2.0**-10, 3 * 2.0**-10, 240.0, 248.0, 0.3, -0.3, 1e-9]
    want = [1.0, 1.25, 0.0, 2.0**-8, 240.0, 256.0, 0.3125, -0.3125, 0.0]
    assert q(x, FP8_E4M3).tolist() == want


def test_mxint8_nearest_hand_table():
    # One block of 32 with max 3: scale 2^1, grid 2^-5; a second block with max 0.75: grid 2^-7.
    first = [3.0, 2.0**-6, 3 * 2.0**-6, -3.0] + [0.0] * 28
    second = [0.75, 0.01, -0.75, 2.0**-8] + [0.0] * 28
    out = q([first + second], MXINT8)[0].tolist()
    assert out[:4] == [3.0, 0.0, 2.0**-4, -3.0]
    assert out[32:36] == [0.75, 1 / 128, -0.75, 0.0]  # 0.01 * 128 = 1.28 -> 1


def test_mxfp8_scale_per_block_of_32():
    x = torch.zeros(2, 40)
    x[0, 0], x[0, 1], x[0, 32], x[0, 33], x[0, 34] = 3.0, 0.001, 100.0, 1.0, 96.0
    out = q(x, MXFP8_E4M3)
    # Block 0: max 3 -> scale 2^(1-8); 0.001 * 2^7 = 0.128, E4M3 grid 2^-6 there: 8.19 -> 8.
    # Block 1 (the ragged tail of 8): max 100 -> scale 2^(6-8); 100 * 4 = 400, grid 32
    # there: 12.5 is a tie -> 12 -> 384 -> 96; 96 and 1 are exact.
    assert out[0, :2].tolist() == [3.0, 0.125 * 2.0**-7]
    assert out[0, 32:35].tolist() == [96.0, 1.0, 96.0]
    assert out[1].abs().sum() == 0


# --- nearest: properties on every format ---------------------------------------------


def sample(shape=(6, 40), seed=0):
    gen = torch.Generator().manual_seed(seed)
    # Rows of very different magnitudes, plus exact zeros.
    x = torch.randn(shape, generator=gen) * torch.logspace(-4, 3, shape[0]).unsqueeze(1)
    x[0, :3] = 0
    return x


@pytest.mark.parametrize("name", list(FORMATS))
def test_nearest_matches_the_plain_python_loop(name):
    fmt = FORMATS[name]
    x = sample()
    assert same(q(x, fmt), py_quantize(x, fmt))


def idempotent_variant(fmt):
    """Two's-complement blocks are not idempotent (see the test below): use symmetric ones."""
    return dataclasses.replace(fmt, symmetric=True) if isinstance(fmt, BlockFloat) else fmt


@pytest.mark.parametrize("name", list(FORMATS))
def test_nearest_is_idempotent_and_stochastic_keeps_grid_points(name):
    fmt = idempotent_variant(FORMATS[name])
    once = q(sample(), fmt)
    assert torch.equal(q(once, fmt), once)
    assert torch.equal(q(once, fmt, "stochastic", seed=3), once)


def test_two_complement_block_hitting_qmin_is_not_idempotent():
    # The paper's definition: max 1.97 -> e = 0, BlockFloat(6) grid 2^-4, integers [-32, 31].
    # -1.97 rounds to -32 * 2^-4 = -2 = -2^(e+1), so the result's block max has exponent 1:
    # quantizing it again uses grid 2^-3, and 0.0625 (a tie there) goes to 0.
    once = q([-1.97, 0.0625], BlockFloat(6))
    assert once.tolist() == [-2.0, 0.0625]
    assert q(once, BlockFloat(6)).tolist() == [-2.0, 0.0]
    assert q([-1.97, 0.0625], BlockFloat(6, symmetric=True)).tolist() == [-31 / 16, 0.0625]


@pytest.mark.parametrize("name", list(FORMATS))
def test_nearest_is_the_closest_candidate(name):
    fmt = FORMATS[name]
    x = sample(seed=1)
    out = q(x, fmt).double().flatten().tolist()
    for v, o, cands in zip(x.double().flatten().tolist(), out, py_candidates(x, fmt)):
        assert o in cands
        assert abs(o - v) <= min(abs(c - v) for c in cands)


def test_saturation():
    big = [10.0, -10.0, 1.8, -2.1, INF, -INF]
    assert q(big, FixedPoint(4, 2)).tolist() == [1.75, -2.0, 1.75, -2.0, 1.75, -2.0]
    assert q(big, FixedPoint(4, 2), "stochastic").tolist() == [1.75, -2.0, 1.75, -2.0, 1.75, -2.0]
    # ebits=2 caps the exponent at 1: the block max 100 cannot be reached, grid 2^-5.
    assert q([100.0, -100.0, 1.0], BlockFloat(8, ebits=2)).tolist() == [127 / 32, -4.0, 1.0]
    # 460 and 464 (a tie) round down to 448 = 14 * 32; 470 rounds up to 480, then saturates.
    assert q([1000.0, -1e6, 460.0, 464.0, 470.0], FP8_E4M3).tolist() == [448.0, -448.0, 448.0, 448.0, 448.0]
    assert q([1e6, -1e6, 60000.0], FP8_E5M2).tolist() == [57344.0, -57344.0, 57344.0]
    no_sat = FloatFormat(5, 2, saturate=False)  # 61440 is the midpoint to the next binade
    assert q([1e6, -1e6, 60000.0, 61440.0, INF], no_sat).tolist() == [INF, -INF, 57344.0, INF, INF]


def test_wide_integer_bound_saturates_inside_the_range():
    # float32 has no 2^31 - 1: the bound is rounded toward zero, never up to 2^31.
    out = q([1e10, -1e10, INF], FixedPoint(32, 0)).tolist()
    assert out == [2.0**31 - 128, -(2.0**31), 2.0**31 - 128]
    assert q([1e10, -1e10], FixedPoint(32, 0), dtype=torch.float64).tolist() == [2.0**31 - 1, -(2.0**31)]
    assert q([1e10], BlockFloat(32, ebits=2)).tolist() == [(2.0**31 - 128) * 2.0**-29]


def test_float_format_wider_than_float32_saturates_to_a_float32():
    fn8 = FloatFormat(8, 7, finite_only=True)  # max (2 - 2^-6) * 2^128 > float32 max
    assert q([3.4e38, INF], fn8).tolist() == [BFLOAT16.max_value] * 2
    assert q([3.4e38, INF], fn8, dtype=torch.float64).tolist() == [2.0**128, fn8.max_value]


# --- the shared exponent: a plain loop over blocks -----------------------------------

BLOCKINGS = [
    PerTensor(),
    PerAxis(0),
    PerAxis(1),
    PerAxis(2),
    PerAxis(-1),
    PerAxis(-3),
    PerGroup(32, -1),
    PerGroup(4, -1),  # 7 = 4 + ragged 3
    PerGroup(2, 0),  # 5 = 2 + 2 + ragged 1, along the first axis
    PerGroup(3, 1),  # 3 divides 6
    PerGroup(4, -2),
    PerGroup(100, 1),  # one ragged block per line
]


@pytest.mark.parametrize("block", BLOCKINGS, ids=repr)
@pytest.mark.parametrize("fmt_of", [lambda b: BlockFloat(5, ebits=6, block=b), lambda b: MXFloat(FP8_E5M2, block=b)])
def test_shared_exponent_per_block_matches_a_loop(block, fmt_of):
    gen = torch.Generator().manual_seed(7)
    # Each element its own magnitude, so a wrong block would change some exponent.
    x = torch.randn(5, 6, 7, generator=gen) * torch.exp2(torch.randint(-12, 12, (5, 6, 7), generator=gen).float())
    fmt = fmt_of(block)
    assert same(q(x, fmt), py_quantize(x, fmt))


# BlockFloat(4): a block with max m has grid 2^(floor(log2 m) - 2), integers [-8, 7].
HAND_X = [[1.0, 1.0, 1.0, 1.0, 1.5], [0.1] * 5, [5.0] * 5, [0.5, 0.5, 0.5, 0.5, 0.75], [0.05] * 5, [2.5] * 5]
HAND_BLOCKS = [  # blocking, (first column, last column) after nearest rounding
    # rows: grids 1/4, 2^-6, 1, 1/8, 2^-7, 1/2 (0.1 * 64 = 6.4 -> 6; 0.05 * 128 = 6.4 -> 6)
    (PerAxis(0), ([1.0, 6 / 64, 5.0, 0.5, 6 / 128, 2.5], [1.5, 6 / 64, 5.0, 0.75, 6 / 128, 2.5])),
    # columns: max 5 -> grid 1 (0.5 and 2.5 are ties to even, 1.5 -> 2)
    (PerAxis(-1), ([1.0, 0.0, 5.0, 0.0, 0.0, 2.0], [2.0, 0.0, 5.0, 1.0, 0.0, 2.0])),
    # tiles of 3 rows: max 5 -> grid 1, then max 2.5 -> grid 1/2 (0.75 is a tie -> 1)
    (PerGroup(3, 0), ([1.0, 0.0, 5.0, 0.5, 0.0, 2.5], [2.0, 0.0, 5.0, 1.0, 0.0, 2.5])),
    # tiles of 4 along a row of 5: the ragged fifth column is a block of its own
    (PerGroup(4, -1), ([1.0, 6 / 64, 5.0, 0.5, 6 / 128, 2.5], [1.5, 6 / 64, 5.0, 0.75, 6 / 128, 2.5])),
]


@pytest.mark.parametrize("block, cols", HAND_BLOCKS, ids=[repr(b) for b, _ in HAND_BLOCKS])
def test_block_exponents_by_hand(block, cols):
    got = q(HAND_X, BlockFloat(4, block=block))
    assert (got[:, 0].tolist(), got[:, -1].tolist()) == cols
    assert same(got, py_quantize(torch.tensor(HAND_X), BlockFloat(4, block=block)))


def test_bad_block_axis_is_a_value_error():
    with pytest.raises(ValueError, match="block axis 2 is out of range for a tensor with 2 dimensions"):
        q(torch.ones(2, 3), BlockFloat(8, block=PerAxis(2)))
    with pytest.raises(ValueError, match="block axis -3"):
        q(torch.ones(2, 3), MXFloat(FP8_E4M3, block=PerGroup(32, -3)))


# --- edge cases ----------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FORMATS))
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_nan_stays_nan_and_does_not_spread(name, rounding):
    fmt = FORMATS[name]
    x = sample((4, 40))
    x_nan = x.clone()
    x_nan[1, 5] = NAN
    x_zero = x.clone()
    x_zero[1, 5] = 0.0
    got, ref = q(x_nan, fmt, rounding), q(x_zero, fmt, rounding)
    assert torch.isnan(got[1, 5]) and torch.isnan(got).sum() == 1
    got[1, 5] = ref[1, 5]
    assert torch.equal(got, ref)


@pytest.mark.parametrize(
    "fmt, top, bottom",
    [
        (FixedPoint(8, 6), 127 / 64, -2.0),
        (BlockFloat(8), 127 / 64, -2.0),  # the finite max 1.5 sets e = 0: integers [-128, 127] * 2^-6
        (MXINT8, 127 / 64, -127 / 64),
        (FP8_E4M3, 448.0, -448.0),
        (BFLOAT16, BFLOAT16.max_value, -BFLOAT16.max_value),
        (MXFP8_E4M3, 1.75, -1.75),  # scale 2^(0 - 8): 448 * 2^-8
    ],
)
def test_inf_saturates_to_the_largest_value_of_its_block(fmt, top, bottom):
    for rounding in ("nearest", "stochastic"):
        out = q([INF, -INF, 1.5, 0.25], fmt, rounding).tolist()
        assert out == [top, bottom, 1.5, 0.25]


@pytest.mark.parametrize("name", list(FORMATS))
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_all_zero_block_gives_zeros(name, rounding):
    fmt = FORMATS[name]
    x = sample((4, 40))
    x[2] = 0.0  # a whole row: a block for per-row and per-group blockings
    out = q(x, fmt, rounding)
    assert not torch.isnan(out).any()
    assert out[2].abs().sum() == 0
    assert q(torch.zeros(3, 33), fmt, rounding).abs().sum() == 0
    assert q(-torch.zeros(5), fmt, rounding).abs().sum() == 0


@pytest.mark.parametrize("name", list(FORMATS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tiny_and_subnormal_blocks_neither_overflow_nor_raise(name, dtype):
    fmt = FORMATS[name]
    tiny = torch.tensor([1e-45, -3e-45, 2.0**-130, 1e-40, -2.0**-127], dtype=dtype)
    if dtype == torch.float64:
        tiny = torch.cat([tiny, torch.tensor([1e-300, -5e-324])])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        near = q(tiny, fmt, dtype=dtype)
        sto = q(tiny, fmt, "stochastic", dtype=dtype)
    assert same(near, py_quantize(tiny, fmt))
    assert all(v in c for v, c in zip(sto.tolist(), py_candidates(tiny, fmt)))


def test_subnormal_block_values_by_hand():
    # BlockFloat(8): max 2^-130 -> e clamps to -128 -> grid 2^-134 (a float32 subnormal)
    x = torch.tensor([2.0**-130, 3 * 2.0**-135, 2.0**-140])
    assert q(x, BlockFloat(8)).tolist() == [2.0**-130, 2.0**-133, 0.0]
    # MXFP8 E4M3: max 2^-120 -> scale 2^-128 clamps to E8M0's 2^-127; 2^-120 * 2^127 = 128,
    # exact, and 2^-137 * 2^127 = 2^-10 is a tie between 0 and E4M3's 2^-9 -> 0.
    assert q([2.0**-120, 2.0**-137, 2.0**-140], MXFP8_E4M3).tolist() == [2.0**-120, 0.0, 0.0]


def test_block_of_only_non_finite_values_uses_the_smallest_exponent():
    # Non-finite elements are left out of the block max: m = 0 -> e = emin (documented).
    out = q([[INF, -INF, NAN, 0.0]], BlockFloat(8, block=PerAxis(0)))[0].tolist()
    assert out[:2] == [127 * 2.0**-134, -128 * 2.0**-134] and math.isnan(out[2]) and out[3] == 0


@pytest.mark.parametrize("name", list(FORMATS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_input_dtypes_give_the_float32_values(name, dtype):
    fmt = FORMATS[name]
    x = sample((4, 40)).clamp(-100, 100)  # inside float16's range
    x = x.to(dtype)
    for rounding in ("nearest", "stochastic"):
        out = q(x, fmt, rounding, seed=11, dtype=dtype)
        assert out.dtype == dtype and out.shape == x.shape
        # Same rounding in float32 (bits identical: u has 24 bits in both), then the final cast.
        assert same(out, q(x.float(), fmt, rounding, seed=11).to(dtype))


@pytest.mark.parametrize("name", list(FORMATS))
@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 4, 5)])
def test_empty_tensors(name, shape):
    for rounding in ("nearest", "stochastic"):
        out = q(torch.empty(shape), FORMATS[name], rounding)
        assert out.shape == shape and out.dtype == torch.float32


@pytest.mark.parametrize("name", list(FORMATS))
def test_zero_dim_tensors(name):
    fmt = FORMATS[name]
    for v in (0.3, -7.0, 0.0):
        out = q(torch.tensor(v), fmt)
        assert out.shape == () and out.item() == py_quantize(torch.tensor([v]), fmt).item()
        assert q(torch.tensor(v), fmt, "stochastic").item() in py_candidates(torch.tensor([v]), fmt)[0]


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64])
def test_non_float_tensors_are_a_clear_error(dtype):
    with pytest.raises(ValueError, match=f"cannot quantize a {dtype} tensor; accepted dtypes: float16, bfloat16"):
        swalp.quantize(torch.zeros(3, dtype=dtype), FixedPoint(8, 6))


def test_other_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="x must be a torch.Tensor, got list"):
        swalp.quantize([1.0, 2.0], FixedPoint(8, 6))
    with pytest.raises(ValueError, match="unknown format preset 'fp7'"):
        swalp.quantize(torch.ones(2), "fp7")
    assert swalp.get_format("BFP12") == swalp.BlockFloat(12) and swalp.get_format("bfp2") == swalp.BlockFloat(2)
    for bad in ("bfp1", "bfp33", "bfp", "bfpx"):
        with pytest.raises(ValueError, match=f"unknown format preset '{bad}'; accepted: .*bfp<W> \\(W in 2..32\\)"):
            swalp.get_format(bad)
    with pytest.raises(ValueError, match="unknown rounding 'floor'"):
        swalp.quantize(torch.ones(2), FP8_E4M3, "floor")
    with pytest.raises(ValueError, match="unknown backend 'cuda'; accepted: 'auto', .*'reference'"):
        swalp.quantize(torch.ones(2), FP8_E4M3, backend="cuda")


@pytest.mark.parametrize("name", list(FORMATS))
def test_non_contiguous_inputs_give_the_values_of_a_contiguous_copy(name):
    fmt = FORMATS[name]
    base = sample((40, 12))
    views = [base.t(), base[::3, 1::2], base.t()[2:9], base[:, :1].expand(40, 33), base.view(40, 3, 4).permute(2, 0, 1)]
    for v in views:
        assert not v.is_contiguous()
        for rounding in ("nearest", "stochastic"):
            out = q(v, fmt, rounding, seed=5)
            assert out.is_contiguous() and torch.equal(out, q(v.contiguous(), fmt, rounding, seed=5))


# --- bit-exact agreement with torch's casts ------------------------------------------


def cast_inputs(fmt, dtype, n_random=1 << 17):
    """Finite float32 inputs inside fmt's range: random bit patterns, random values in
    every binade, the whole target grid, exact midpoints (ties), and the float32 values
    just either side of each of those."""
    gen = torch.Generator().manual_seed(0)
    bits = torch.randint(-(2**31), 2**31, (n_random,), generator=gen, dtype=torch.int64).to(torch.int32)
    rand = bits.view(torch.float32)
    # Random mantissas in every binade of the target (and a few below), both signs.
    e = torch.randint(fmt.emin - fmt.man - 4, fmt.emax + 1, (n_random,), generator=gen).float()
    sign = torch.where(torch.rand(n_random, generator=gen) < 0.5, -1, 1)
    scaled = (1 + torch.rand(n_random, generator=gen)) * torch.exp2(e) * sign
    width = 8 if dtype.itemsize == 1 else 16
    codes = torch.arange(2**width, dtype=torch.int32).to(torch.int16 if width == 16 else torch.uint8)
    grid = codes.view(dtype).float()
    grid = grid[torch.isfinite(grid)].unique()
    mid = ((grid[1:].double() + grid[:-1].double()) / 2).float()  # exact in float32
    up, down = torch.full_like(grid, INF), torch.full_like(grid, -INF)
    edges = [grid, torch.nextafter(grid, up), torch.nextafter(grid, down)]  # binade edges and their float32 neighbours
    ties = [mid, torch.nextafter(mid, grid[1:]), torch.nextafter(mid, grid[:-1])]
    x = torch.cat([rand, scaled, *edges, *ties])
    x = x[torch.isfinite(x) & (x.abs() <= fmt.max_value)]
    return x


@pytest.mark.parametrize(
    "fmt, dtype",
    [
        (FloatFormat(5, 2), torch.float8_e5m2),
        (FloatFormat(8, 7), torch.bfloat16),
        (FloatFormat(5, 10), torch.float16),
        (FP8_E4M3, torch.float8_e4m3fn),
    ],
    ids=["e5m2", "bf16", "fp16", "e4m3fn"],
)
def test_nearest_is_bit_exact_with_torch_casts(fmt, dtype):
    x = cast_inputs(fmt, dtype)
    assert x.numel() > 100_000
    assert ((x != 0) & (x.abs() < 2.0**fmt.emin)).sum() > 1000  # subnormals of the target are covered
    want = x.to(dtype).float()
    got = swalp.quantize(x, fmt, "nearest")
    bad = (got.view(torch.int32) != want.view(torch.int32)).nonzero()
    assert bad.numel() == 0, f"{bad.numel()} mismatches, first x={x[bad[0]].item()!r}"


@pytest.mark.parametrize(
    "fmt, dtype", [(FloatFormat(5, 2, saturate=False), torch.float8_e5m2), (FloatFormat(5, 10, saturate=False), torch.float16)]
)
def test_non_saturating_float_matches_torch_casts_beyond_the_range(fmt, dtype):
    x = torch.tensor([fmt.max_value * 1.06, fmt.max_value * 1.07, 1e30, -1e30, INF, -INF, 3.0e38])
    assert torch.equal(swalp.quantize(x, fmt, "nearest"), x.to(dtype).float())


# --- stochastic rounding -------------------------------------------------------------

MEAN_CASES = {
    "fixed": (FixedPoint(8, 4), [0.03, -0.51, 1.3, -3.97, 0.5, 7.9, -7.99, 1 / 3]),
    "bfp8": (BlockFloat(8), [3.3, 0.0101, -0.77, 1e-3, 2.5, -3.1, 0.2]),
    "e4m3": (FP8_E4M3, [0.3, -1.1, 300.0, 3e-3, -2.0**-8, 100.0, 1e-3]),
    "e5m2": (FP8_E5M2, [0.3, -1.1, 40000.0, 1e-5, -0.7]),
    "bf16": (BFLOAT16, [1 / 3, -1e-20, 1e30, 2.0**-130]),
    "mxint8": (MXINT8, [0.9, -0.013, 0.33, 0.61]),
    "mxfp8": (MXFP8_E4M3, [5.5, 0.01, -0.33, 2.9]),
}


@pytest.mark.parametrize("case", list(MEAN_CASES))
def test_stochastic_picks_a_neighbour_and_is_unbiased(case):
    """Each x is repeated N times in one call (every copy gets its own random bits).
    The results are always one of x's two neighbours, and their mean is within 4
    standard errors of x, the standard error being gap * sqrt(p (1 - p) / N) with
    p = (x - lower) / gap: the exact law of one draw."""
    fmt, values = MEAN_CASES[case]
    n = 4000
    x = torch.tensor(values, dtype=torch.float64).float()
    reps = x.repeat(n, 1)  # (n, k): a block of 32 per row for the MX formats is the whole row
    out = swalp.quantize(reps, fmt, "stochastic", seed=2024).double()
    for j, cands in enumerate(py_candidates(reps[:1], fmt)):
        lower, upper = min(cands), max(cands)
        col = out[:, j]
        assert set(col.tolist()) <= cands
        xv = x[j].item()
        p = (xv - lower) / (upper - lower) if upper > lower else 0.0
        se = (upper - lower) * math.sqrt(p * (1 - p) / n)
        assert abs(col.mean().item() - xv) <= 4 * se + 1e-12 * abs(xv), (case, xv)
        if 0.05 < p < 0.95:  # both neighbours actually occur
            assert len(set(col.tolist())) == 2


def test_stochastic_uses_the_documented_random_bits():
    # floor(s) + (u < s - floor(s)), u = (h >> 8) * 2^-24, h the hash of (seed, i).
    x = torch.linspace(-3, 3, 1001)
    s = x.double() * 16
    u = _rng.uniform(x.shape, 99, torch.float64)
    want = (torch.floor(s) + (u < s - torch.floor(s)).double()).clamp(-128, 127) / 16
    assert torch.equal(q(x, FixedPoint(8, 4), "stochastic", seed=99).double(), want)
    # The comparison is strict: x exactly u gaps above a grid point rounds down, a hair more rounds up.
    at_u = (3 + u) / 16
    assert q(at_u, FixedPoint(8, 4), "stochastic", seed=99, dtype=torch.float64).eq(3 / 16).all()
    above = (3 + u + 2.0**-30) / 16
    assert q(above, FixedPoint(8, 4), "stochastic", seed=99, dtype=torch.float64).eq(4 / 16).all()


def py_lowbias32(x):
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


# random_bits(4, seed=0) as first computed by the reference (hex: 7F2DAC84 169F415F A86EEF5E 2A51AFC3).
GOLDEN_BITS_SEED0 = [2133699716, 379535711, 2825842526, 709996483]


def test_random_bits_definition_is_pinned():
    # SplitMix64's first output from state 0 is the published 0xE220A8397B1DCDAF.
    assert _rng.splitmix64(0) == 0xE220A8397B1DCDAF
    for seed in (0, 1, 2**63 + 5, 2**64 - 1):
        k0, k1 = _rng.seed_keys(seed)
        want = [py_lowbias32(py_lowbias32((i + k0) & 0xFFFFFFFF) ^ k1) for i in range(64)]
        assert _rng.random_bits(64, seed).tolist() == want
    # Golden values: a change here breaks bit-exactness with every fast kernel.
    assert _rng.random_bits(4, 0).tolist() == GOLDEN_BITS_SEED0
    u = _rng.uniform((3,), 0)
    assert u.dtype == torch.float32 and u.tolist() == [(b >> 8) * 2.0**-24 for b in GOLDEN_BITS_SEED0[:3]]


def test_same_seed_same_result_different_seed_different_result():
    x = sample((8, 64))
    for fmt in FORMATS.values():
        a = q(x, fmt, "stochastic", seed=123)
        assert torch.equal(a, q(x, fmt, "stochastic", seed=123))
        assert not torch.equal(a, q(x, fmt, "stochastic", seed=124))


def test_result_does_not_depend_on_the_number_of_threads():
    x = torch.randn(70_000, generator=torch.Generator().manual_seed(3))  # above torch's grain size: 2 threads split it
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append([q(x, fmt, "stochastic", seed=8) for fmt in (FixedPoint(8, 5), BlockFloat(8), MXFP8_E5M2)])
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("fmt", [FixedPoint(8, 5), FP8_E4M3, BlockFloat(8, block=PerAxis(0))], ids=repr)
def test_random_bits_of_element_i_depend_only_on_seed_and_i(fmt):
    x = sample((1, 500)).flatten()
    full = q(x, fmt, "stochastic", seed=77)
    for k in (1, 17, 256, 499):
        assert torch.equal(q(x[:k], fmt, "stochastic", seed=77), full[:k])
    # Row-major logical index: a 2-D view draws what its flattened copy draws.
    if not isinstance(fmt, BlockFloat):  # (PerAxis(0) would make rows the blocks)
        assert torch.equal(q(x.view(20, 25), fmt, "stochastic", seed=77).flatten(), full)


def test_seed_none_is_repeatable_after_manual_seed():
    x = sample()
    torch.manual_seed(42)
    a = q(x, BlockFloat(8), "stochastic", seed=None)
    b = q(x, BlockFloat(8), "stochastic", seed=None)
    torch.manual_seed(42)
    assert torch.equal(a, q(x, BlockFloat(8), "stochastic", seed=None))
    assert not torch.equal(a, b)  # each call draws a fresh seed


def test_drawn_seeds_are_torch_randint_values():
    from swalp._rng import draw_seed

    # the documented definition, although draw_seed reuses a buffer instead of calling randint
    torch.manual_seed(5)
    drawn = [draw_seed() for _ in range(4)]
    torch.manual_seed(5)
    assert drawn == [int(torch.randint(0, 2**62, (), dtype=torch.int64)) for _ in range(4)]
    assert all(type(s) is int for s in drawn)


@pytest.mark.parametrize("rounding", list(swalp.Rounding))
def test_quantize_many_in_place_equals_quantize_one_by_one(rounding):
    from swalp.ops._dispatch import dispatch_many_ as quantize_many_

    fmts = [BlockFloat(8, block=PerAxis(0)), BlockFloat(8), FixedPoint(8, 6), FP8_E4M3, BlockFloat(8)]
    xs = [sample((6, 5)), sample((1, 7))[0], sample((4, 3)).t(), sample((2, 3)).half(), torch.zeros(0, 3)]
    seeds = [11, 2**64 - 1, 3, 4, 5]
    expected = [swalp.quantize(x, f, rounding, s) for x, f, s in zip(xs, fmts, seeds)]
    got = [x.clone() for x in xs]
    got[2] = xs[2].t().clone().t()  # stays non-contiguous: rounded into place all the same
    quantize_many_(got, fmts, rounding, seeds)
    assert not got[2].is_contiguous()
    for a, b in zip(got, expected):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert not torch.equal(got[1], xs[1])  # it did round (the inputs are not on the grid)


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, "7", True, [1]])
@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
def test_bad_seed_is_a_value_error(seed, rounding):
    with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\*\*64\) or None, got"):
        swalp.quantize(torch.ones(3), FixedPoint(8, 6), rounding, seed=seed)


def test_largest_seed_is_accepted_and_used():
    x = sample()
    out = q(x, FixedPoint(8, 6), "stochastic", seed=2**64 - 1)
    assert torch.equal(out, q(x, FixedPoint(8, 6), "stochastic", seed=2**64 - 1, backend="reference"))
    assert not torch.equal(out, q(x, FixedPoint(8, 6), "stochastic", seed=2**64 - 2))  # its bits, not another seed's


# --- property-based ------------------------------------------------------------------

blockings = st.one_of(
    st.just(PerTensor()),
    st.builds(PerAxis, st.integers(-3, 2)),
    st.builds(PerGroup, st.integers(1, 9), st.integers(-3, 2)),
)


def float_elements(max_exp):
    kinds = st.sampled_from(["ieee", "fn", "no_nan"])  # E5M2-like, E4M3-like, FP6/FP4-like
    return st.builds(
        lambda e, m, kind: FloatFormat(e, m, finite_only=kind != "ieee" and e < 8, has_nan=kind != "no_nan" or e == 8),
        st.integers(2, max_exp),
        st.integers(1, 10),
        kinds,
    )


formats = st.one_of(
    st.builds(FixedPoint, st.integers(2, 24), st.integers(0, 30)),
    st.builds(BlockFloat, st.integers(2, 20), st.integers(2, 8), blockings, st.booleans()),
    float_elements(8),
    st.builds(MXFloat, float_elements(5), blockings),
)
shapes = st.lists(st.integers(0, 8), min_size=1, max_size=3).map(tuple)


def fit_block(fmt, ndim):
    """Move a random block axis inside the tensor's dimensions."""
    block = getattr(fmt, "block", None)
    if block is None or isinstance(block, PerTensor):
        return fmt
    axis = block.axis % ndim
    new = PerAxis(axis) if isinstance(block, PerAxis) else PerGroup(block.size, axis - ndim)
    return dataclasses.replace(fmt, block=new)


PROPERTY = settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(
    fmt=formats, shape=shapes, log_scale=st.integers(-20, 20), seed=st.integers(0, 2**64 - 1), data_seed=st.integers(0, 1000)
)
def test_property_grid_bounds_and_neighbours(fmt, shape, log_scale, seed, data_seed):
    fmt = fit_block(fmt, len(shape))
    gen = torch.Generator().manual_seed(data_seed)
    x = torch.randn(shape, generator=gen) * 2.0**log_scale
    near = q(x, fmt)
    sto = q(x, fmt, "stochastic", seed=seed)
    assert near.shape == sto.shape == x.shape
    # Nearest equals the plain-Python loop: on the grid, inside the bounds, ties to even.
    assert same(near, py_quantize(x, fmt))
    values, cand_sets = x.flatten().tolist(), py_candidates(x, fmt)
    for v, n, s, cands in zip(values, near.flatten().tolist(), sto.flatten().tolist(), cand_sets):
        assert n in cands and s in cands  # one of the two neighbours (clamped into range)
        assert abs(n - v) <= min(abs(c - v) for c in cands)
        for r in (n, s):
            if isinstance(fmt, FixedPoint):
                assert fmt.min_value <= r <= fmt.max_value
            elif isinstance(fmt, BlockFloat):
                assert abs(r) <= 2.0 ** (fmt.emax + 1)
            elif isinstance(fmt, FloatFormat):
                assert abs(r) <= fmt.max_value
            else:
                assert abs(r) <= fmt.element.max_value * 2.0**fmt.emax


@PROPERTY
@given(fmt=formats, log_scale=st.integers(-30, 30), n=st.integers(1, 300), seed=st.integers(0, 2**32))
def test_property_idempotent_and_prefix_stable(fmt, log_scale, n, seed):
    fmt = idempotent_variant(fit_block(fmt, 1))
    x = torch.randn(n, generator=torch.Generator().manual_seed(n)) * 2.0**log_scale
    once = q(x, fmt)
    assert torch.equal(q(once, fmt), once)
    if isinstance(fmt, (FixedPoint, FloatFormat)):  # no blocks: prefixes draw the same bits
        full = q(x, fmt, "stochastic", seed=seed)
        k = n // 2
        assert torch.equal(q(x[:k], fmt, "stochastic", seed=seed), full[:k])


# ----------------------------------------------------------------------------- autograd


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_quantize_is_differentiable_with_a_straight_through_gradient(rounding):
    """Forward: the rounded values; backward: the incoming gradient, unchanged."""
    w = torch.tensor([0.3, -1.7, 5.0, 0.126], requires_grad=True)
    y = swalp.quantize(w, FixedPoint(4, 2), rounding, seed=1)
    assert y.grad_fn is not None
    assert torch.equal(y.detach(), swalp.quantize(w.detach(), FixedPoint(4, 2), rounding, seed=1))
    (y * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert w.grad.tolist() == [1.0, 2.0, 3.0, 4.0]  # saturated 5.0 included: straight through


def test_a_layer_that_quantizes_its_own_weight_trains():
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(3, 4))
    x = torch.randn(8, 4)
    before = weight.detach().clone()
    opt = torch.optim.SGD([weight], lr=0.1)
    (x @ swalp.quantize(weight, "bfp8").t()).square().mean().backward()
    opt.step()
    assert weight.grad is not None and not torch.equal(weight.detach(), before)


def test_quantize_defaults_to_nearest_and_needs_no_grad_inside_no_grad():
    x = torch.tensor([0.3, 0.6], requires_grad=True)
    assert torch.equal(swalp.quantize(x, FixedPoint(4, 1)).detach(), torch.tensor([0.5, 0.5]))  # nearest: no randomness
    with torch.no_grad():
        assert swalp.quantize(x, FixedPoint(4, 1)).grad_fn is None


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_sparse_and_nested_inputs_are_clear_errors_from_every_entry_point(backend):
    dense = torch.randn(4, 5)
    inputs = {"sparse_coo": dense.to_sparse(), "sparse_csr": dense.to_sparse_csr(),
              "nested": torch.nested.nested_tensor([torch.randn(2), torch.randn(3)])}
    for kind, x in inputs.items():
        message = f"cannot quantize a {kind} tensor; accepted: dense \\(torch.strided\\) tensors"
        with pytest.raises(ValueError, match=message):
            swalp.quantize(x, "bfp8", backend=backend)
        with pytest.raises(ValueError, match=message):
            swalp.pack(x, "bfp8", backend=backend)
        with pytest.raises(ValueError, match=message):
            swalp.Quantizer("bfp8", "bfp8")(x)


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_a_tile_longer_than_its_axis_is_the_whole_axis_at_no_cost(backend):
    from swalp.formats import PerAxis, PerGroup

    x = torch.randn(3, 70)
    row = swalp.quantize(x, BlockFloat(8, block=PerAxis(0)), backend="reference")
    for size in (70, 71, 2**26, 2**31 - 1):  # 2**26 padded each row to 64M elements before
        assert torch.equal(swalp.quantize(x, BlockFloat(8, block=PerGroup(size)), backend=backend), row)


# ----------------------------------------------------------------------------- fuzz: backends at the edges

EXTREMES = [3.4028234663852886e38, -3.4028234663852886e38, 1.1754943508222875e-38, 1e-45, -1e-45, 0.0, -0.0,
            float("inf"), -float("inf"), float("nan"), 1.0, -0.75, 65504.0, 2.0**127, -(2.0**-126), 3e-41]


EDGE_CASES = dict(fmt=formats, shape=st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple),
                  picks=st.lists(st.integers(0, len(EXTREMES) - 1), min_size=1, max_size=40), zero_block=st.booleans(),
                  dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]),
                  view=st.sampled_from(["contiguous", "transposed", "expanded"]),
                  rounding=st.sampled_from(["nearest", "stochastic"]))


@PROPERTY
@given(**EDGE_CASES)
def test_fuzz_the_cpp_backend_equals_the_reference_at_the_edges(fmt, shape, picks, zero_block, dtype, view, rounding):
    """Extreme magnitudes (float32's max and min, subnormals, +-inf, NaN, -0.0, all-zero
    blocks), every dtype, strided and expanded views: the C++ kernels give the reference's
    bits, neither touches its input, and integer formats never turn a float32/float64 value
    (inf included) into inf."""
    _edge_case(fmt, shape, picks, zero_block, dtype, view, rounding)


@pytest.mark.slow
@settings(max_examples=3000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(**EDGE_CASES)
def test_fuzz_longer(fmt, shape, picks, zero_block, dtype, view, rounding):
    _edge_case(fmt, shape, picks, zero_block, dtype, view, rounding)


def _edge_case(fmt, shape, picks, zero_block, dtype, view, rounding):
    if not swalp.ops.cpu.load():
        pytest.skip("needs the C++ kernels")
    n = math.prod(shape)
    values = torch.tensor([EXTREMES[picks[i % len(picks)]] for i in range(n)], dtype=torch.float64).view(shape)
    if zero_block:
        values.view(-1)[: max(1, n // 2)] = 0.0
    x = values.to(dtype)
    if view == "transposed" and x.dim() >= 2:
        x = x.transpose(0, -1)
    elif view == "expanded":
        x = x[..., :1].expand(*x.shape[:-1], 3)
    fmt = fit_block(fmt, x.dim())
    before = x.clone()
    ref = swalp.quantize(x, fmt, rounding, seed=5, backend="reference")
    fast = swalp.quantize(x, fmt, rounding, seed=5, backend="cpp")
    assert ref.dtype == fast.dtype == x.dtype and torch.equal(ref.isnan(), fast.isnan())
    assert torch.equal(_bits(ref), _bits(fast))  # -0.0 and +0.0 apart, infinities included
    assert torch.equal(_bits(x), _bits(before)) and torch.equal(x.isnan(), before.isnan())
    if isinstance(fmt, (FixedPoint, BlockFloat)) and dtype in (torch.float32, torch.float64):
        assert not ref[~x.isnan()].isinf().any()  # finite, and +-inf saturated


def _bits(t):
    """The exact bits of ``t``'s values (exactly representable in float64), NaN as 0."""
    return torch.where(t.isnan(), torch.zeros_like(t), t).double().contiguous().view(torch.int64)


@pytest.mark.parametrize("backend", ["reference", "cpp"])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("block", [PerTensor(), PerAxis(0), PerGroup(2, -1)], ids=repr)
@pytest.mark.parametrize("wl", [8, 5])
def test_a_finite_input_never_becomes_infinite_and_infinities_saturate(backend, rounding, block, wl):
    m = torch.finfo(torch.float32).max
    fmt = BlockFloat(wl, block=block)
    x = torch.tensor([[-m, 1.0], [-m, m], [1.0, -float("inf")], [m, float("inf")]])
    y = swalp.quantize(x, fmt, rounding, seed=3, backend=backend)
    assert torch.isfinite(y).all()
    top = (2 ** (wl - 1) - 1) * 2.0 ** (127 - (wl - 2))  # the largest code at the top exponent
    assert y[0, 0] == -top and y[1, 0] == -top and y[1, 1] == top  # symmetric there: -2^(wl-1) would be -2^128
    assert torch.equal(swalp.pack(x[:2], fmt, rounding, seed=3, backend=backend).unpack(),
                       swalp.quantize(x[:2], fmt, rounding, seed=3, backend=backend))
    # One exponent lower the full range stays: just above -2^127 (exponent 126) rounds to the code -2^(wl-1).
    below = torch.tensor([-(2.0**127) * (1 - 2.0**-24), 1.0])
    assert swalp.quantize(below, BlockFloat(wl), "nearest", backend=backend)[0] == -(2.0**127)


def test_float16_inputs_at_the_top_of_their_range_are_what_the_docstring_table_says():
    x = torch.tensor([-65504.0, 1.0], dtype=torch.float16)  # block exponent 15: -128 * 2^9 = -65536
    for backend in ("reference", "cpp"):
        assert swalp.quantize(x, BlockFloat(8), "nearest", backend=backend)[0] == -float("inf")
        y = swalp.quantize(x.to(torch.bfloat16), BlockFloat(8), "nearest", backend=backend)  # bfloat16: finite
        assert y[0] == -65536.0
