"""swalp.pack: codes and per-block exponents that unpack to quantize's values, bit for bit."""

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import swalp
from swalp.formats import (
    FP8_E4M3,
    FP8_E5M2,
    MXFP4_E2M1,
    MXFP8_E4M3,
    MXFP8_E5M2,
    MXINT8,
    BFLOAT16,
    FLOAT16,
    BlockFloat,
    FixedPoint,
    PerAxis,
    PerGroup,
)

from swalp.ops._schema import run_op_pack, run_op_unpack
from test_kernels import assert_bitwise, sample

INTEGER = [
    FixedPoint(8, 6), FixedPoint(4, 2), FixedPoint(16, 10), FixedPoint(32, 3),
    BlockFloat(8), BlockFloat(4, ebits=1), BlockFloat(8, block=PerAxis(0)), BlockFloat(8, block=PerAxis(1)),
    BlockFloat(8, block=PerAxis(-1)), BlockFloat(6, block=PerGroup(7, 1)), BlockFloat(5, block=PerGroup(7, 0)),
    BlockFloat(16, block=PerGroup(32)), MXINT8,
]  # fmt: skip
FLOATS = [FP8_E4M3, FP8_E5M2, swalp.FloatFormat(5, 2, saturate=False), BFLOAT16, FLOAT16, MXFP8_E4M3, MXFP8_E5M2,
          swalp.MXFloat(FP8_E4M3, block=PerAxis(0))]
SHAPES = [(17, 13, 3), (5, 70), (100,), (), (1, 1, 1), (0,), (3, 0)]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def cases(fmt, specials):
    axis = getattr(getattr(fmt, "block", None), "axis", 0)
    for shape in SHAPES:
        if len(shape) and not -len(shape) <= axis < len(shape):
            continue
        x = sample(shape, seed=len(shape), specials=specials)
        if not specials and x.numel() > 20:
            x.view(-1)[:4] = torch.tensor([0.0, -0.0, 1e-42, 3e38])  # zero, tiny, huge: no NaN
            if x.dim() == 2:
                x[1] = 0.0  # an all-zero row: its block exponent is emin
        for dtype in DTYPES:
            yield x.to(dtype)


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("fmt", INTEGER + FLOATS, ids=repr)
def test_unpack_is_quantize_bit_for_bit(fmt, rounding):
    specials = fmt in FLOATS  # integer formats have no NaN code
    for x in cases(fmt, specials):
        p = swalp.pack(x, fmt, rounding, seed=11)
        want = swalp.quantize(x, fmt, rounding, seed=11, backend="reference")
        assert_bitwise(p.unpack(x.dtype), want)
        assert_bitwise(p.unpack(x.dtype), swalp.quantize(x, fmt, rounding, seed=11))  # the default backend too


def test_codes_are_one_byte_and_exponents_one_per_block():
    w = torch.randn(64, 27)
    p = swalp.pack(w, BlockFloat(8, block=PerAxis(0)), "stochastic", seed=0)
    assert (p.codes.dtype, p.codes.shape, p.exponents.dtype, p.exponents.shape) == (torch.int8, (64, 27), torch.int8, (64,))
    assert p.nbytes == 64 * 27 + 64  # against 4 * 64 * 27 in float32
    tiles = swalp.pack(torch.randn(3, 70), MXINT8)
    assert tiles.exponents.shape == (3, 3) and tiles.nbytes == 3 * 70 + 9  # 70 = 32 + 32 + a ragged 6
    fp8 = swalp.pack(torch.randn(10), FP8_E5M2)
    assert fp8.codes.dtype == torch.float8_e5m2 and fp8.exponents is None and fp8.nbytes == 10
    assert swalp.pack(torch.randn(10), FixedPoint(16, 8)).codes.dtype == torch.int16


def test_hand_values():
    x = torch.tensor([[0.3, -1.7, 5.0], [0.01, 0.02, -0.03]])
    p = swalp.pack(x, BlockFloat(8, block=PerAxis(0)))
    # row 0: max 5.0 -> e = 2, grid 2^(2 - 6) = 1/16; row 1: max 0.03 -> e = -6, grid 2^-12
    assert p.exponents.tolist() == [2, -6]
    assert p.codes.tolist() == [[5, -27, 80], [41, 82, -123]]
    assert swalp.pack(torch.tensor([0.3, -1.7]), FixedPoint(4, 2)).codes.tolist() == [1, -7]


def test_errors():
    with pytest.raises(ValueError, match=r"cannot pack NaN into BlockFloat.*no NaN code"):
        swalp.pack(torch.tensor([1.0, float("nan")]), "bfp8")
    with pytest.raises(ValueError, match="no packed form for FloatFormat"):
        swalp.pack(torch.ones(32), MXFP4_E2M1)
    with pytest.raises(ValueError, match="no packed form for FloatFormat"):  # overflows to inf: no E4M3 code
        swalp.pack(torch.ones(32), swalp.FloatFormat(4, 3, finite_only=True, saturate=False))
    with pytest.raises(ValueError, match="cannot quantize a torch.int64 tensor"):
        swalp.pack(torch.ones(3, dtype=torch.int64), "bfp8")
    with pytest.raises(ValueError, match="unknown format preset"):
        swalp.pack(torch.ones(3), "int3")
    with pytest.raises(ValueError, match="dtype must be a floating torch.dtype, got torch.int8"):
        swalp.pack(torch.ones(3), "bfp8").unpack(torch.int8)


def test_moves_between_devices_and_keeps_its_values():
    p = swalp.pack(torch.randn(4, 40), MXFP8_E4M3, "stochastic", seed=3)
    assert torch.equal(p.to("cpu").unpack(), p.unpack())
    assert "PackedTensor(shape=(4, 40)" in repr(p)


# ----------------------------------------------------------------------------- the C++ packing kernel

KERNEL_CASES = [  # every path of swalp/ops/cpu/csrc/quant.h: per tensor, fused rows, long rows,
    ((1000, 70), BlockFloat(8)),  # columns, strided blocks, runs of tiles, tiles across rows
    ((64, 3000), BlockFloat(8, block=PerAxis(0))),
    ((1, 200_000), BlockFloat(8, block=PerAxis(0))),
    ((300, 50), BlockFloat(6, block=PerAxis(1))),
    ((4, 30, 50), BlockFloat(8, block=PerAxis(1))),
    ((5, 1000), MXINT8),
    ((50, 40), BlockFloat(5, block=PerGroup(7, 0))),
    ((7, 33), BlockFloat(8, block=PerGroup(64))),  # a tile longer than the axis
    ((100,), BlockFloat(8, block=PerAxis(0))),  # a block per element
    ((3000,), FixedPoint(8, 6)),
    ((3000,), FP8_E4M3),
    ((70, 50), FP8_E5M2),
    ((64, 300), MXFP8_E4M3),
    ((40, 70), MXFP8_E5M2),
    ((20, 30), swalp.MXFloat(FP8_E4M3, block=PerAxis(0))),
    ((), BlockFloat(8, block=PerAxis(0))),
    ((0, 5), BlockFloat(8, block=PerAxis(1))),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("shape, fmt", KERNEL_CASES, ids=lambda v: repr(v))
def test_cpp_kernel_packs_exactly_as_the_reference(shape, fmt, rounding, dtype):
    assert swalp.ops.cpu.load()
    x = sample(shape, seed=3, specials=False).to(dtype)
    if x.numel() > 40:
        x.view(-1)[:3] = torch.tensor([0.0, 1e-42, float("inf")])
    codes, exponents = run_op_pack(x, fmt, swalp.Rounding.parse(rounding), 99)  # the C++ op itself
    ref = swalp.pack(x, fmt, rounding, seed=99, backend="reference")
    assert codes.dtype == ref.codes.dtype and torch.equal(codes.view(torch.int8), ref.codes.view(torch.int8))
    if ref.exponents is None:
        assert exponents.numel() == 0
    else:
        assert exponents.shape == ref.exponents.shape and torch.equal(exponents, ref.exponents)
    fast = swalp.pack(x, fmt, rounding, seed=99)  # the default backend takes the kernel
    assert_bitwise(fast.unpack(dtype), swalp.quantize(x, fmt, rounding, seed=99))


@pytest.mark.parametrize("shape, fmt", KERNEL_CASES, ids=lambda v: repr(v))
def test_cpp_kernel_unpacks_exactly_as_the_reference(shape, fmt):
    assert swalp.ops.cpu.load()
    x = sample(shape, seed=5, specials=isinstance(fmt, (swalp.FloatFormat, swalp.MXFloat))).to(torch.float32)
    for scale in (1.0, 2.0**-120, 2.0**100):  # block exponents near both ends of int8 (s = e - shift < -126 too)
        p = swalp.pack(x * scale, fmt, "stochastic", seed=1)
        fast = run_op_unpack(p.codes, p.exponents, fmt)  # the C++ op itself
        assert_bitwise(fast, p._unpack_reference(torch.float32))
        assert_bitwise(p.unpack(), fast)  # PackedTensor.unpack takes the kernel


def test_cpp_kernel_refuses_nan_with_the_format_named():
    x = torch.randn(1000)
    x[500] = float("nan")
    with pytest.raises(ValueError, match=r"cannot pack NaN into BlockFloat\(wl=8.*no NaN code"):
        swalp.pack(x, "bfp8", backend="cpp")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_packing_kernel_under_the_interpreter():
    """swalp::quantize_pack's and swalp::unpack's CUDA implementations, run on CPU tensors by
    TRITON_INTERPRET=1."""
    script = textwrap.dedent(
        """
        import torch, swalp
        from swalp.formats import BlockFloat, FixedPoint, PerAxis, PerGroup
        from swalp.ops._schema import pack, unpack_args
        from swalp.ops.triton import launch_pack, launch_unpack
        cases = [((40, 37), BlockFloat(8)), ((6, 50), BlockFloat(8, block=PerAxis(0))), ((5, 9, 4), BlockFloat(6, block=PerAxis(1))),
                 ((3, 70), swalp.MXINT8), ((20, 3, 5), BlockFloat(5, block=PerGroup(7, 0))), ((100,), FixedPoint(8, 6)), ((), BlockFloat(8)),
                 ((30, 11), swalp.FP8_E4M3), ((300,), swalp.FP8_E5M2), ((4, 70), swalp.MXFP8_E4M3), ((9, 2, 40), swalp.MXFP8_E5M2)]
        bad = 0
        for shape, fmt in cases:
            for dtype in (torch.float32, torch.float64):
                x = (torch.randn(shape, dtype=torch.float64) * torch.exp(3 * torch.randn(shape, dtype=torch.float64))).to(dtype)
                if x.numel() > 8 and fmt.__class__.__name__ != "BlockFloat" and fmt.__class__.__name__ != "FixedPoint":
                    x.view(-1)[:6] = torch.tensor([0.0, -0.0, 1e-9, -3e-7, float("nan"), 1e30], dtype=dtype)
                for r in swalp.Rounding:
                    codes, exps = launch_pack(x, *pack(x, fmt, r, 5))
                    ref = swalp.pack(x, fmt, r, seed=5, backend="reference")
                    bad += codes.dtype != ref.codes.dtype or not torch.equal(codes.view(torch.uint8), ref.codes.view(torch.uint8))
                    bad += not (exps.numel() == 0 if ref.exponents is None else torch.equal(exps, ref.exponents))
                    if ref.codes.dtype == torch.int8:  # float8 codes unpack with torch's casts
                        e, args = unpack_args(ref.codes, ref.exponents, fmt)
                        back = launch_unpack(ref.codes, e, *args)
                        bad += not torch.equal(back, ref._unpack_reference(torch.float32))
        print(bad)
        """
    )
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "0"


def test_a_packed_tensor_survives_a_weights_only_checkpoint(tmp_path):
    for fmt in (BlockFloat(8, block=PerAxis(0)), MXINT8, FP8_E5M2, MXFP8_E4M3, FixedPoint(8, 6)):
        p = swalp.pack(torch.randn(6, 40), fmt, "stochastic", seed=1)
        torch.save({"w": p.state_dict()}, tmp_path / "c.pt")
        back = swalp.PackedTensor.from_state_dict(torch.load(tmp_path / "c.pt", weights_only=True)["w"])
        assert back.fmt == fmt and torch.equal(back.unpack(), p.unpack())
    with pytest.raises(ValueError, match="not a PackedTensor state dict"):
        swalp.PackedTensor.from_state_dict({"codes": torch.zeros(1)})


def test_every_preset_round_trips_through_a_dict():
    from swalp.formats import PRESETS, format_from_dict, format_to_dict

    for fmt in PRESETS.values():
        assert format_from_dict(format_to_dict(fmt)) == fmt
    with pytest.raises(ValueError, match="not a format dict.*accepted types: BlockFloat"):
        format_from_dict({"type": "Int4"})
    with pytest.raises(ValueError, match="wl must be an integer in"):
        format_from_dict({"type": "FixedPoint", "wl": 1, "fl": 0})  # validated as any format


def test_a_meta_tensor_has_nothing_to_pack():
    x = torch.empty(3, 4, device="meta")
    assert swalp.quantize(x, "bfp8").shape == (3, 4)  # quantize gives the shape (shape inference)
    with pytest.raises(ValueError, match="cannot pack a meta tensor: it has no values"):
        swalp.pack(x, "bfp8")


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_cpp_kernel_unpacks_every_float8_code_as_torch_casts_it(dtype):
    assert swalp.ops.cpu.load()
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(dtype).reshape(16, 16)
    fmt = swalp.FP8_E4M3 if dtype == torch.float8_e4m3fn else swalp.FP8_E5M2
    fast = run_op_unpack(codes, None, fmt)  # NaN payloads, infinities, subnormals, both zeros
    assert torch.equal(fast.view(torch.int32), codes.to(torch.float32).view(torch.int32))
