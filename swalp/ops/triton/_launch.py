"""Launch the Triton kernels of the ``swalp::quantize`` op (``_kernels.py``, imported lazily).

Same arithmetic as the reference (swalp/ops/_reference.py) step for step: uint32 lowbias32 hash of the element's row-major
index, exact two-factor power-of-two scaling built from exponent bits, ``floor_log2``
from the bits with subnormals scaled up first, round-half-even by the 2^23 (2^52)
trick, floor without flush-to-zero, bounds read from a (cached) tensor of the compute
dtype. FMA contraction is switched off (``enable_fp_fusion=False``): a fused
``x * a - f`` would round differently.

Three kernels: block maxima (signed integer bits of |x|, non-finite dropped) reduced with
``atomic_max`` into one slot per block (one atomic per program for a whole-tensor
block), then one elementwise pass that reads its block's maximum; and the unpacking of int8
codes (:func:`launch_unpack`).

:func:`launch` also runs under ``TRITON_INTERPRET=1`` on CPU tensors, which is how this
file is tested on machines without a GPU; ``benchmarks/gpu_quantize.py`` checks and
times it on a GPU.
"""

from __future__ import annotations

import torch

from .._reference import floor_log2
from .._schema import Block, Kind, Params

BLOCK = 1024
_jit = None  # (absmax kernel, quantize kernel), compiled on first use


def _kernels_jit():
    global _jit
    if _jit is None:
        from . import _kernels as k

        _jit = (k.absmax_kernel, k.quantize_kernel, k.unpack_kernel)
    return _jit


def _layout(shape, block: int, axis: int, size: int) -> tuple[int, int, int, int]:
    """(L, inner, G, number of blocks) of a :class:`Block` along ``axis``."""
    n = 1
    for d in shape:
        n *= d
    if block == Block.WHOLE:
        return 1, 1, 1, 1
    outer = 1
    for d in shape[:axis]:
        outer *= d
    L, inner = shape[axis], n // max(1, outer * shape[axis])
    if block == Block.PER_AXIS:
        return L, inner, 1, L
    G = -(-L // size)
    return L, inner, G, outer * G * inner


_BOUNDS: dict = {}


def _bounds(f: tuple, dtype: torch.dtype, device) -> torch.Tensor:
    """(qmin, qmax, big) on the device, made once per format: no copy per call."""
    key = (f, dtype, device)
    if key not in _BOUNDS:
        _BOUNDS[key] = torch.tensor(f, dtype=dtype, device=device)
    return _BOUNDS[key]


def launch(x, kind, p, f, rounding, k0, k1):
    """Run the kernels: the op's CUDA implementation (works on CPU under TRITON_INTERPRET=1)."""
    return _run(x, kind, p, f, rounding, k0, k1, codes=False)[0]


def launch_pack(x, kind, p, f, rounding, k0, k1):
    """``swalp::quantize_pack`` for CUDA: the codes in the same pass (int8 for fixed point and
    BFP of up to 8 bits; float8 bits for E4M3 and E5M2, MX elements included), then each
    block's exponent from its maximum (a tensor of one value per block, computed on the device)."""
    v = Params(*p)
    integer = kind in (Kind.FIXED_POINT, Kind.BLOCK_FLOAT)
    if integer and v.wl > 8 or not integer and v.man not in (2, 3):
        raise ValueError("swalp::quantize_pack: fixed point or block floating point of at most 8 bits, "
                         "or E4M3/E5M2 elements")
    if integer and torch.isnan(x).any():
        raise ValueError("cannot pack NaN into a fixed-point or block floating-point format: it has no NaN code")
    codes, m = _run(x, kind, p, f, rounding, k0, k1, codes=True)
    if not integer:
        codes = codes.view(torch.float8_e4m3fn if v.man == 3 else torch.float8_e5m2)
    if kind in (Kind.FIXED_POINT, Kind.FLOAT_FORMAT) or x.numel() == 0:
        return codes, codes.new_empty((0,), dtype=torch.int8)
    bits = m.view(torch.float64 if x.dtype == torch.float64 else torch.float32)  # the largest |x|, as a float
    e = floor_log2(torch.where(m != 0, bits, torch.ones_like(bits))) - v.offset  # MX: less the element's emax
    e = torch.where(m != 0, e, v.emin).clamp(v.emin, v.emax)
    if x.dim() == 0 or v.block == Block.WHOLE:
        return codes, e.reshape(()).to(torch.int8)
    if v.block == Block.PER_AXIS:
        return codes, e.to(torch.int8)
    shape = list(x.shape)
    L, inner, G, _ = _layout(shape, v.block, v.axis, v.size)
    rest = shape[: v.axis] + shape[v.axis + 1:]
    return codes, e.view(-1, G, inner).transpose(1, 2).reshape(*rest, G).to(torch.int8)  # the axis last


def launch_unpack(codes, exps, shift, block, axis, size):
    """``swalp::unpack`` for CUDA (int8 codes; CPU tensors under TRITON_INTERPRET=1): one pass,
    each code times 2^(its block's exponent - shift). The exponents come in PackedTensor's
    layout, (outer, inner, tiles) for tiles, which is turned into the kernels' (outer, tiles,
    inner) here: one value per block, a small tensor."""
    if codes.dtype != torch.int8:
        raise ValueError(f"swalp::unpack on CUDA: int8 codes, got {codes.dtype}")
    c = codes.contiguous()
    y = torch.empty(c.shape, dtype=torch.float32, device=c.device)
    n = c.numel()
    if n == 0:
        return y
    L, inner, G, _ = _layout(list(c.shape), block, axis, size)
    e = exps.reshape(-1) if exps.numel() else torch.zeros(1, dtype=torch.int8, device=c.device)
    if block == Block.PER_GROUP:
        e = e.view(-1, inner, G).transpose(1, 2).contiguous()
    opts = dict(num_warps=4) if c.is_cuda else {}
    _kernels_jit()[2][(-(-n // BLOCK),)](c, e, y, n, L, inner, G, size, shift, BLOCKING=block, BLOCK=BLOCK, **opts)
    return y


def _run(x, kind, p, f, rounding, k0, k1, codes: bool):
    absmax_kernel, quantize_kernel, _ = _kernels_jit()
    v = Params(*p)
    xc = x.contiguous()
    out = x.dtype if not codes else torch.int8 if kind in (Kind.FIXED_POINT, Kind.BLOCK_FLOAT) else torch.uint8
    y = torch.empty(x.shape, dtype=out, device=x.device)
    n = xc.numel()
    if n == 0:
        return y, None
    f64 = x.dtype == torch.float64
    blocking = v.block
    L, inner, G, nblocks = _layout(list(x.shape), blocking, v.axis, v.size)
    key = k1 << 32 | k0
    key -= (key >> 63) << 64  # as a signed int64
    bounds = _bounds(tuple(f), torch.float64 if f64 else torch.float32, x.device)
    m = torch.zeros(nblocks, dtype=torch.int64 if f64 else torch.int32, device=x.device)
    grid = (-(-n // BLOCK),)
    opts = dict(num_warps=4) if x.is_cuda else {}
    if kind in (Kind.BLOCK_FLOAT, Kind.MX_FLOAT):
        uniform = blocking == Block.PER_AXIS and inner % BLOCK == 0
        absmax_kernel[grid](
            xc, m, n, L, inner, G, v.size, BLOCKING=blocking, UNIFORM=uniform, F64=f64, BLOCK=BLOCK, **opts
        )
    bf16 = x.dtype == torch.bfloat16
    if x.is_cuda:
        opts["enable_fp_fusion"] = False  # a fused multiply-add rounds once where the reference rounds twice
    quantize_kernel[grid](
        xc, y.view(torch.int16) if bf16 and not codes else y, m, key, bounds, n, L, inner, G, v.size,
        v.fl, v.wl, v.emin, v.emax, v.offset, v.man, v.femin,
        KIND=kind, STOCH=bool(rounding), BLOCKING=blocking, SAT=bool(v.sat), F64=f64, BF16=bf16 and not codes,
        BLOCK=BLOCK, CODES=codes, **opts,
    )
    return y, m
