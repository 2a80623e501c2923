"""Number formats: validation, reprs, presets, and every grid against hand-computed tables."""

import dataclasses
import itertools

import pytest
import torch

import swalp
from swalp import (
    BFLOAT16,
    FLOAT16,
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
    Rounding,
    get_format,
)
from swalp.formats import MXFP4_E2M1, MXFP6_E2M3, MXFP6_E3M2, PRESETS

# --- validation ----------------------------------------------------------------------

# (constructor, expected pieces of the message: the bad value and what is accepted)
BAD = [
    (lambda: FixedPoint(1, 0), ["wl must be an integer in [2, 32], got 1"]),
    (lambda: FixedPoint(33, 0), ["wl must be an integer in [2, 32], got 33"]),
    (lambda: FixedPoint(8, -1), ["fl must be an integer in [0, 64], got -1"]),
    (lambda: FixedPoint(8, 65), ["fl must be an integer in [0, 64], got 65"]),
    (lambda: FixedPoint(8.0, 2), ["wl must be an integer in [2, 32], got 8.0"]),
    (lambda: FixedPoint(True, 2), ["wl must be an integer in [2, 32], got True"]),
    (lambda: BlockFloat(1), ["wl must be an integer in [2, 32], got 1"]),
    (lambda: BlockFloat(8, ebits=0), ["ebits must be an integer in [1, 8], got 0"]),
    (lambda: BlockFloat(8, ebits=9), ["ebits must be an integer in [1, 8], got 9"]),
    (lambda: BlockFloat(8, block="row"), ["'row'", "PerTensor()", "PerAxis(axis)", "PerGroup(size, axis)"]),
    (lambda: PerGroup(0), ["block size must be an integer in [1, 2147483647], got 0"]),
    (lambda: PerGroup(-4), ["block size must be an integer in [1, 2147483647], got -4"]),
    (lambda: PerAxis(64), ["axis must be an integer in [-64, 63], got 64"]),
    (lambda: PerGroup(32, axis="last"), ["axis must be an integer in [-64, 63], got 'last'"]),
    (lambda: FloatFormat(1, 3), ["exp must be an integer in [2, 8], got 1"]),
    (lambda: FloatFormat(9, 3), ["exp must be an integer in [2, 8], got 9"]),
    (lambda: FloatFormat(4, 24), ["man must be an integer in [0, 23], got 24"]),
    (lambda: FloatFormat(4, -1), ["man must be an integer in [0, 23], got -1"]),
    (lambda: FloatFormat(4, 0, finite_only=True), ["finite_only", "man >= 1"]),
    (lambda: FloatFormat(4, 3, has_nan=False), ["has_nan=False", "finite_only=True"]),
    (lambda: MXFloat("e4m3"), ["element", "FloatFormat", "'e4m3'"]),
    (lambda: MXFloat(FP8_E4M3, ebits=0), ["ebits must be an integer in [1, 8], got 0"]),
    (lambda: MXFloat(FP8_E4M3, block=PerGroup(0)), ["block size must be an integer in [1, 2147483647], got 0"]),
    (lambda: get_format("fp9"), ["'fp9'", "accepted", "e4m3", "mxint8", "bf16"]),
    (lambda: get_format(None), ["None", "accepted"]),
    (lambda: Rounding.parse("up"), ["'up'", "'nearest'", "'stochastic'"]),
]


@pytest.mark.parametrize("make, pieces", BAD)
def test_bad_parameters_raise_value_error_naming_value_and_accepted(make, pieces):
    with pytest.raises(ValueError) as err:
        make()
    for piece in pieces:
        assert piece in str(err.value)


def test_formats_are_frozen_hashable_values():
    fmt = FixedPoint(8, 6)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fmt.wl = 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        MXINT8.block = PerTensor()
    assert FixedPoint(8, 6) == get_format("fixed8")
    assert len({FixedPoint(8, 6), FixedPoint(8, 6), BlockFloat(8), BlockFloat(8, block=PerTensor())}) == 2
    assert BlockFloat(8, block=PerAxis(0)) != BlockFloat(8, block=PerAxis(1))


# --- reprs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt, text",
    [
        (FixedPoint(8, 6), "FixedPoint(wl=8, fl=6)"),
        (BlockFloat(8), "BlockFloat(wl=8, ebits=8, block=PerTensor())"),
        (BlockFloat(6, ebits=4, block=PerAxis(0)), "BlockFloat(wl=6, ebits=4, block=PerAxis(axis=0))"),
        (MXINT8, "BlockFloat(wl=8, ebits=8, block=PerGroup(size=32, axis=-1), symmetric=True)"),
        (FP8_E4M3, "FloatFormat(exp=4, man=3, finite_only=True)"),
        (FP8_E5M2, "FloatFormat(exp=5, man=2)"),
        (FloatFormat(5, 2, saturate=False), "FloatFormat(exp=5, man=2, saturate=False)"),
        (MXFP4_E2M1.element, "FloatFormat(exp=2, man=1, finite_only=True, has_nan=False)"),
        (MXFP8_E5M2, "MXFloat(element=FloatFormat(exp=5, man=2), block=PerGroup(size=32, axis=-1), ebits=8)"),
        (PerGroup(16, 0), "PerGroup(size=16, axis=0)"),
    ],
)
def test_repr_is_readable_and_round_trips(fmt, text):
    assert repr(fmt) == text
    assert eval(text, vars(swalp)) == fmt


def test_rounding_enum_parses_and_prints():
    assert Rounding.parse("NEAREST") is Rounding.NEAREST
    assert Rounding.parse(Rounding.STOCHASTIC) is Rounding.STOCHASTIC
    assert str(Rounding.STOCHASTIC) == "stochastic"


# --- ranges: hand-computed tables ----------------------------------------------------

FIXED_TABLE = [  # wl, fl, gap, min, max
    (8, 6, 1 / 64, -2.0, 2 - 1 / 64),
    (4, 2, 0.25, -2.0, 1.75),
    (2, 0, 1.0, -2.0, 1.0),
    (16, 8, 1 / 256, -128.0, 128 - 1 / 256),
    (8, 10, 1 / 1024, -0.125, 0.125 - 1 / 1024),
    (32, 0, 1.0, -2147483648.0, 2147483647.0),
]


@pytest.mark.parametrize("wl, fl, gap, lo, hi", FIXED_TABLE)
def test_fixed_point_gap_and_range(wl, fl, gap, lo, hi):
    fmt = FixedPoint(wl, fl)
    assert (fmt.gap, fmt.min_value, fmt.max_value) == (gap, lo, hi)


BLOCK_TABLE = [  # wl, ebits, symmetric, qmin, qmax, emin, emax
    (8, 8, False, -128, 127, -128, 127),
    (8, 8, True, -127, 127, -128, 127),
    (4, 3, False, -8, 7, -4, 3),
    (2, 1, False, -2, 1, -1, 0),
    (16, 5, False, -32768, 32767, -16, 15),
    (32, 8, False, -(2**31), 2**31 - 1, -128, 127),
]


@pytest.mark.parametrize("wl, ebits, sym, qmin, qmax, emin, emax", BLOCK_TABLE)
def test_block_float_integer_and_exponent_ranges(wl, ebits, sym, qmin, qmax, emin, emax):
    fmt = BlockFloat(wl, ebits=ebits, symmetric=sym)
    assert (fmt.qmin, fmt.qmax, fmt.emin, fmt.emax) == (qmin, qmax, emin, emax)


FLOAT_TABLE = [  # fmt, bias, emin, emax, max_value, bits
    (FP8_E4M3, 7, -6, 8, 448.0, 8),
    (FP8_E5M2, 15, -14, 15, 57344.0, 8),
    (BFLOAT16, 127, -126, 127, 3.3895313892515355e38, 16),
    (FLOAT16, 15, -14, 15, 65504.0, 16),
    (FloatFormat(8, 23), 127, -126, 127, 3.4028234663852886e38, 32),
    (FloatFormat(3, 1), 3, -2, 3, 12.0, 5),
    (MXFP6_E2M3.element, 1, 0, 2, 7.5, 6),
    (MXFP6_E3M2.element, 3, -2, 4, 28.0, 6),
    (MXFP4_E2M1.element, 1, 0, 2, 6.0, 4),
]


@pytest.mark.parametrize("fmt, bias, emin, emax, top, bits", FLOAT_TABLE)
def test_float_format_bias_exponents_and_max(fmt, bias, emin, emax, top, bits):
    assert (fmt.bias, fmt.emin, fmt.emax, fmt.max_value, fmt.wl) == (bias, emin, emax, top, bits)


@pytest.mark.parametrize(
    "fmt, dtype",
    [(FP8_E4M3, torch.float8_e4m3fn), (FP8_E5M2, torch.float8_e5m2), (BFLOAT16, torch.bfloat16), (FLOAT16, torch.float16)],
)
def test_float_format_max_matches_torch_dtype(fmt, dtype):
    assert fmt.max_value == torch.finfo(dtype).max
    assert 2.0**fmt.emin == torch.finfo(dtype).tiny  # smallest normal


def test_mx_presets_follow_ocp():
    for mx, element in ((MXFP8_E4M3, FP8_E4M3), (MXFP8_E5M2, FP8_E5M2)):
        assert (mx.element, mx.block, mx.ebits) == (element, PerGroup(32, -1), 8)
        assert (mx.emin, mx.emax) == (-127, 127)  # E8M0: 2^-127 .. 2^127, 255 is NaN
    mxint8 = (MXINT8.wl, MXINT8.block, MXINT8.symmetric, MXINT8.qmin, MXINT8.qmax)
    assert mxint8 == (8, PerGroup(32, -1), True, -127, 127)
    assert [m.element.max_value for m in (MXFP6_E2M3, MXFP6_E3M2, MXFP4_E2M1)] == [7.5, 28.0, 6.0]


# --- grids: every value the quantizer can produce ------------------------------------


def produced_values(fmt, lo, hi, n=20001, scale_block=None):
    """Every distinct value nearest rounding gives on a fine sweep of [lo, hi]."""
    x = torch.linspace(lo, hi, n, dtype=torch.float64)
    if scale_block is not None:  # pin the block's exponent with one extra element
        x = torch.cat([x, torch.tensor([scale_block], dtype=torch.float64)])
    q = swalp.quantize(x, fmt, "nearest")
    return sorted(set(q[:n].tolist()))


def test_fixed_point_grid_is_the_hand_table():
    assert produced_values(FixedPoint(3, 1), -5, 5) == [-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5]
    assert produced_values(FixedPoint(4, 4), -1, 1) == [k / 16 for k in range(-8, 8)]


def test_block_float_grid_is_the_hand_table():
    # Block maximum 1.99 -> e = 0 -> grid 2^(0-2) = 0.25, integers [-8, 7]: -1.99 -> -2, 1.99 -> 1.75.
    assert produced_values(BlockFloat(4), -1.99, 1.99) == [k / 4 for k in range(-8, 8)]
    assert produced_values(BlockFloat(4), -1.5, 1.5) == [k / 4 for k in range(-6, 7)]
    # A block maximum of 3 (e = 1) pins the grid at 0.5 for the small values too.
    assert produced_values(BlockFloat(4), -1, 1, scale_block=3.0) == [k / 2 for k in range(-2, 3)]
    # Block maximum 5 -> e = 2 -> grid 1, and ebits=2 caps e at 1 -> grid 0.5, max 3.5.
    assert produced_values(BlockFloat(4), -5, 5) == [float(k) for k in range(-5, 6)]
    assert produced_values(BlockFloat(4, ebits=2), -5, 5) == [k / 2 for k in range(-8, 8)]
    assert produced_values(BlockFloat(4, symmetric=True), -1.9, 1.9) == [k / 4 for k in range(-7, 8)]


def test_fp4_e2m1_grid_is_the_ocp_table():
    positive = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    expected = sorted({-v for v in positive} | set(positive))
    assert produced_values(MXFP4_E2M1.element, -10, 10) == expected


def test_fp6_e2m3_and_e3m2_grids_are_the_ocp_tables():
    e2m3 = [m / 8 for m in range(8)] + [(1 + m / 8) * 2**e for e in range(3) for m in range(8)]
    e3m2 = [m / 16 for m in range(4)] + [(1 + m / 4) * 2**e for e in range(-2, 5) for m in range(4)]
    for fmt, pos in ((MXFP6_E2M3.element, e2m3), (MXFP6_E3M2.element, e3m2)):
        assert produced_values(fmt, 0, 40, n=40001) == sorted(pos)
        assert max(pos) == fmt.max_value


@pytest.mark.parametrize("fmt, dtype", [(FP8_E4M3, torch.float8_e4m3fn), (FP8_E5M2, torch.float8_e5m2)])
def test_fp8_grid_is_every_finite_torch_value(fmt, dtype):
    codes = torch.arange(256, dtype=torch.int16).to(torch.uint8).view(dtype).float()
    grid = codes[torch.isfinite(codes)].unique()  # sorted, -0 and +0 merged
    assert swalp.quantize(grid, fmt, "nearest").tolist() == grid.tolist()
    # Just inside each midpoint of neighbouring grid values goes to the nearer side:
    # no value the quantizer produces lies between two of torch's.
    mid = (grid[1:].double() + grid[:-1].double()) / 2
    below = swalp.quantize(mid * (1 - 2**-20), fmt, "nearest")
    above = swalp.quantize(mid * (1 + 2**-20), fmt, "nearest")
    lower, upper = torch.where(mid > 0, grid[:-1], grid[1:]), torch.where(mid > 0, grid[1:], grid[:-1])
    assert torch.equal(below.float(), lower) and torch.equal(above.float(), upper)


@pytest.mark.parametrize("mx, dtype", [(MXFP8_E4M3, torch.float8_e4m3fn), (MXFP8_E5M2, torch.float8_e5m2)])
def test_mx_float_grid_is_element_grid_times_the_block_scale(mx, dtype):
    # Block max 3 -> scale 2^(floor(log2 3) - emax) = 2^(1 - emax): the element grid times it.
    scale = 2.0 ** (1 - mx.element.emax)
    codes = torch.arange(256, dtype=torch.int16).to(torch.uint8).view(dtype).double()
    grid = codes[torch.isfinite(codes) & (codes.abs() <= 3 / scale)].unique() * scale
    pinned = torch.cat([grid, torch.tensor([3.0], dtype=torch.float64)])
    assert torch.equal(swalp.quantize(pinned, mx, "nearest")[:-1], grid)  # every grid value is kept
    assert set(produced_values(mx, -3, 3, scale_block=3.0)) <= set(grid.tolist())


# --- presets -------------------------------------------------------------------------


def test_every_preset_name_and_alias():
    assert PRESETS["e4m3"] is PRESETS["fp8_e4m3"] is FP8_E4M3
    assert PRESETS["e5m2"] is PRESETS["fp8_e5m2"] is FP8_E5M2
    assert PRESETS["bf16"] is PRESETS["bfloat16"] is BFLOAT16 == FloatFormat(8, 7)
    assert PRESETS["fp16"] is PRESETS["float16"] is FLOAT16 == FloatFormat(5, 10)
    assert PRESETS["bfp8"] == BlockFloat(8, 8, PerTensor())
    assert PRESETS["fixed8"] == FixedPoint(8, 6)
    assert PRESETS["mxint8"] is MXINT8
    for name, fmt in PRESETS.items():
        assert get_format(name) is fmt
        assert get_format(name.upper().replace("_", "-")) is fmt  # case and dash insensitive


def test_get_format_passes_formats_through():
    fmt = BlockFloat(6, block=PerGroup(16, 0))
    assert get_format(fmt) is fmt


def test_with_bits():
    assert FixedPoint(8, 6).with_bits(4) == FixedPoint(4, 2)  # keeps the 2 integer bits
    assert FixedPoint(8, 6).with_bits(16) == FixedPoint(16, 14)
    assert FixedPoint(4, 1).with_bits(2) == FixedPoint(2, 0)
    assert MXINT8.with_bits(4) == BlockFloat(4, 8, PerGroup(32, -1), symmetric=True)


def test_every_format_family_rounds_a_value_to_its_hand_computed_neighbour():
    cases = [
        (FixedPoint(8, 6), 19 / 64),  # 0.3 * 64 = 19.2
        (BlockFloat(8), 77 / 256),  # e = floor(log2 0.3) = -2, grid 2^-8: 76.8 -> 77
        (MXINT8, 77 / 256),
        (FP8_E4M3, 0.3125),  # binade [0.25, 0.5), grid 2^-5: 9.6 -> 10
        (FP8_E5M2, 0.3125),  # grid 2^-4: 4.8 -> 5
        (BFLOAT16, 77 / 256),  # grid 2^-9: 153.6 -> 154
        (MXFP8_E4M3, 0.3125),  # scale 2^(-2-8): 307.2 -> 320 (grid 32 in [256, 448])
        (MXFP4_E2M1, 0.25),  # scale 2^(-2-2): 4.8 -> 4 (E2M1 has 4 and 6)
    ]
    for fmt, want in cases:
        assert swalp.quantize(torch.tensor([0.3], dtype=torch.float64), fmt, "nearest").item() == want, fmt


@pytest.mark.parametrize("wl, fl", list(itertools.product([2, 3, 5], [0, 1, 3])))
def test_fixed_point_grid_size_is_two_to_the_wl(wl, fl):
    fmt = FixedPoint(wl, fl)
    values = produced_values(fmt, fmt.min_value - 1, fmt.max_value + 1, n=4001)
    assert values == [k * fmt.gap for k in range(-(2 ** (wl - 1)), 2 ** (wl - 1))]


def test_flags_are_booleans_and_group_sizes_bounded():
    from swalp.formats import BlockFloat, FloatFormat, PerGroup

    with pytest.raises(ValueError, match="saturate must be True or False, got 'no'"):
        FloatFormat(8, 23, saturate="no")
    with pytest.raises(ValueError, match="finite_only must be True or False, got 1"):
        FloatFormat(4, 3, finite_only=1)
    with pytest.raises(ValueError, match="has_nan must be True or False, got None"):
        FloatFormat(4, 3, finite_only=True, has_nan=None)
    with pytest.raises(ValueError, match="symmetric must be True or False, got 'yes'"):
        BlockFloat(8, symmetric="yes")
    for size in (2**31, 2**40, 2**63, 2**70):
        with pytest.raises(ValueError, match=f"block size must be an integer in \\[1, 2147483647\\], got {size}"):
            PerGroup(size)
    assert PerGroup(2**31 - 1).size == 2**31 - 1
