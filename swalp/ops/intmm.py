"""Exact matrix products of 8-bit grid values with integer arithmetic: :func:`int8_mm`.

A block-floating-point tensor whose exponent is constant along a product's reduction
dimension is ``codes * scale`` with int8 codes and one power-of-two scale per row (for the
left factor) or per column (for the right one). Its product is then the int8 x int8 product
of the codes, accumulated in int32 (``torch._int_mm``: tensor cores on a GPU, AMX or VNNI on
a recent x86 CPU), times ``scale_row * scale_col`` once per output element. Every step is
exact, so the result is the float64 product of the same values rounded once to float32;
the float path rounds its partial sums once they pass 2^24 units of the scales' product.

Which tensors qualify is not taken on trust from a recipe: :func:`grid_codes` finds the
smallest power of two ``s`` with ``|x| <= 128 s`` along each row and checks that
``round(x / s) * s == x`` with codes in ``[-128, 127]``. If ``x`` lies on any 8-bit
power-of-two grid with that sharing, it lies on this one (a finer grid would need a code
beyond 128), so the check misses no tensor that qualifies, and a tensor that fails it (a
layer's raw input, a batch-norm output, an averaged weight, a per-sample exponent along the
reduction) takes the float product instead. Exactness is checked, never assumed.

The op ``swalp::exact_mm`` wraps the choice so that ``torch.compile`` sees one opaque call
(the check is data-dependent). Not public: :mod:`swalp.nn` builds layers on it.

Example:
    >>> import torch
    >>> a = torch.tensor([[0.5, -0.25], [3.0, 1.0]])     # rows on grids 2^-7 and 2^-5 (codes 64 -32, 96 32)
    >>> b = torch.tensor([[1.0, 2.0], [-4.0, 0.125]])    # columns on grids 2^-5 and 2^-6
    >>> int8_mm(a, b)
    tensor([[ 1.5000,  0.9688],
            [-1.0000,  6.1250]])
    >>> int8_mm(torch.tensor([[0.1]]), b[:1]) is None     # 0.1 is on no 8-bit power-of-two grid
    True
"""

from __future__ import annotations

import functools
import platform
import warnings
from typing import NamedTuple

import torch
from torch import Tensor

from . import cpu

__all__ = ["MAX_K", "GridCodes", "codes_mm", "exact_int_mm", "exact_mm", "grid_codes", "int8_mm", "int_mm", "scale_sums"]

# |code| <= 128 on both sides, so an int32 sum of K products holds up to K < 2^31 / 2^14;
# longer reductions are summed in pieces (codes_mm) of _PIECE, a multiple of 8 for cuBLAS.
MAX_K = 2**17 - 1
_PIECE = MAX_K // 8 * 8

_MIN_SCALE_EXP = -149  # 2^-149, float32's smallest subnormal: no smaller scale is a float32
_TINY = 2.0**-126  # below this a float32 product would be subnormal (rounded twice)
_BIG = 2.0**96  # 2^31 * 2^96 < 2^128: no float32 overflow before the final rounding


class GridCodes(NamedTuple):
    """``x == codes * scale``: int8 codes and float32 powers of two, one per row or column
    (``scale`` has ``x``'s dimensions, of size 1 along the shared one)."""

    codes: Tensor
    scale: Tensor


def grid_codes(x: Tensor, dim: int, kernels: bool = True) -> GridCodes | None:
    """``x`` as 8-bit codes with one power-of-two scale per slice along ``dim``, or None.

    Args:
        x: a 2-D float32 tensor.
        dim: the dimension the scale is shared along (the product's reduction dimension:
            1 for a left factor, 0 for a right one).

    Returns:
        :class:`GridCodes` with ``codes * scale == x`` exactly, or None when ``x`` has NaN
        or inf, or a slice is not on an 8-bit power-of-two grid (module docstring).

    On the CPU one C++ call (``swalp/ops/cpu/csrc/int8.cpp``, the same arithmetic) reads ``x``
    once per slice where these steps take about eight passes; ``kernels=False`` asks for
    the steps below.

    Caveat: one host synchronisation (the check's answer decides what runs next).
    """
    if x.dtype != torch.float32 or x.dim() != 2:
        return None
    if kernels and x.is_cpu and cpu.load():
        codes, scale = torch.ops.swalp_cpu.grid_codes(x, dim)
        return GridCodes(codes, scale) if codes.numel() == x.numel() else None
    m = x.abs().amax(dim, keepdim=True)
    # The smallest k with every code in [-128, 127] at scale 2^k: m = mant 2^e, mant in [0.5, 1),
    # so k = e - 7 gives |code| < 128; one less when m = 2^(e-1) is reached only by negative
    # elements (code -128).
    mant, e = torch.frexp(m)
    only_negative_at_top = (mant == 0.5) & (x.amax(dim, keepdim=True) < m)
    k = torch.where(m > 0, e - 7 - only_negative_at_top.to(e.dtype), torch.zeros_like(e))
    # A coarser scale keeps the codes in range; the check below decides whether they are exact.
    scale = torch.ldexp(torch.ones_like(m), k.clamp(min=_MIN_SCALE_EXP))
    codes = torch.round(x / scale)
    # One host read for every condition: finite, codes in [-128, 127], exact.
    ok = torch.isfinite(m).all() & (codes <= 127).all() & (codes * scale == x).all()
    if not bool(ok):
        return None
    return GridCodes(codes.to(torch.int8), scale)


_INT8_UNITS = ("avx512_vnni", "avx_vnni", "amx_int8")  # x86 flags of 8-bit dot-product units


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This machine's CPU flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _warn_if_slow_cpu() -> None:
    """Warn once where the CPU is x86 without 8-bit dot-product units: there oneDNN's int8
    matrix products take a generic path, far slower than float32 (say, AVX2-only CPUs)."""
    flags = cpu_flags()
    if platform.machine() in ("x86_64", "AMD64") and flags and not flags.intersection(_INT8_UNITS):
        warnings.warn("compute='int8': this CPU has no VNNI or AMX units (none of the flags "
                      f"{', '.join(_INT8_UNITS)}), so torch's int8 matrix products take a slow generic path and "
                      "the int8 products will be slower than float32; they pay with VNNI/AMX or on a GPU",
                      RuntimeWarning, stacklevel=3)


def int_mm(a: Tensor, b: Tensor, pad: bool | None = None) -> Tensor:
    """``a @ b`` for int8 ``a`` (M, K) and ``b`` (K, N), accumulated in int32 (``torch._int_mm``).

    ``pad`` (default: on CUDA) pads the shapes cuBLAS refuses (M <= 16, K or N not a multiple
    of 8) with zeros, which add nothing to any sum, and cuts the result back to (M, N).
    On an x86 CPU without VNNI or AMX it warns that the product is slow (RuntimeWarning).
    """
    if a.is_cpu:
        _warn_if_slow_cpu()
    m, k = a.shape
    n = b.shape[1]
    if (a.is_cuda if pad is None else pad) and (m <= 16 or k % 8 or n % 8):
        return int_mm(_pad(a, max(m, 17), _up8(k)), _pad(b, _up8(k), _up8(n)), pad=False)[:m, :n]
    return torch._int_mm(a.contiguous(), b.contiguous())


def _up8(n: int) -> int:
    return -(-n // 8) * 8


def _pad(x: Tensor, rows: int, cols: int) -> Tensor:
    return torch.nn.functional.pad(x, (0, cols - x.shape[1], 0, rows - x.shape[0]))


def int8_mm(a: Tensor, b: Tensor) -> Tensor | None:
    """The exact product ``a @ b`` from 8-bit codes, or None when it cannot be had that way.

    Args:
        a: (M, K) float32, each row on an 8-bit power-of-two grid (its own scale).
        b: (K, N) float32, each column likewise.

    Returns:
        (M, N) float32: the float64 product of ``a`` and ``b`` rounded once to float32, bit for
        bit; None when a row of ``a`` or a column of ``b`` is not on such a grid (or holds NaN
        or inf), or the dtypes are not float32. Any K: above :data:`MAX_K` (where an int32 sum
        could overflow) :func:`codes_mm` sums int32 pieces in int64.

    Caveat: host synchronisations (the grid checks), so on a GPU it pays for large products.
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"int8_mm multiplies (M, K) by (K, N), got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.numel() == 0 or b.numel() == 0:
        return None
    ga = grid_codes(a, 1)
    gb = grid_codes(b, 0) if ga is not None else None
    return None if gb is None else codes_mm(ga, gb)


def codes_mm(a: GridCodes, b: GridCodes, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(a.codes @ b.codes) * a.scale * b.scale``, exact and then rounded once to ``dtype``
    (float32 or float64); ``a.scale`` is (M, 1), ``b.scale`` (1, N); any K (:func:`exact_int_mm`)."""
    return scale_sums(exact_int_mm(a.codes, b.codes), a.scale, b.scale, dtype)


def exact_int_mm(a: Tensor, b: Tensor) -> Tensor:
    """The exact integer product of int8 ``a`` (M, K) and ``b`` (K, N): int32 up to K =
    :data:`MAX_K`; above, int32 pieces of the reduction summed in int64 (exact while K < 2^39).
    A convolution's weight gradient reduces over every output position of the batch (2^17
    already at batch 128 and 32x32), beyond what an int32 sum of such products holds."""
    k = a.shape[1]
    if k <= MAX_K:
        return int_mm(a, b)
    return sum(int_mm(a[:, i:i + _PIECE], b[i:i + _PIECE]).to(torch.int64) for i in range(0, k, _PIECE))


def scale_sums(acc: Tensor, a_scale: Tensor, b_scale: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``acc * a_scale * b_scale`` for exact integer sums ``acc`` (M, N) (int32 or int64) and
    powers of two (M, 1) and (1, N), rounded once to ``dtype`` (float32 or float64)."""
    if dtype == torch.float32 and acc.dtype == torch.int32:
        lo = a_scale.min() * b_scale.min()
        hi = a_scale.max() * b_scale.max()
        if bool((lo >= _TINY) & (hi <= _BIG)):
            # Scaling by a normal power of two is exact, so rounding int32 -> float32 first is
            # the only rounding: the same as rounding the exact float64 value.
            if a_scale.shape[0] == 1 or b_scale.shape[1] == 1:  # one factor's scale is a scalar
                return acc.to(torch.float32).mul_(a_scale * b_scale)
            return acc.to(torch.float32) * (a_scale * b_scale)
    # int64 sums are below 2^53 (exact_int_mm): float64 holds them, and the scaling, exactly.
    return (acc.to(torch.float64) * a_scale.double() * b_scale.double()).to(dtype)


@torch.library.custom_op("swalp::exact_mm", mutates_args=())
def exact_mm(a: Tensor, b: Tensor, bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(a @ b + bias, took_int8)``: :func:`int8_mm` where it applies, else torch's own
    ``addmm`` (``mm`` without bias), so a product that falls back is ``F.linear``'s bit for bit.
    The second output is a 0-dim CPU bool saying which (for the listing in swalp/nn/int8.py)."""
    out = int8_mm(a, b)
    if out is not None:
        return (out if bias is None else out + bias), torch.tensor(True)
    return (a @ b if bias is None else torch.addmm(bias, a, b)), torch.tensor(False)


@exact_mm.register_fake
def _fake_exact_mm(a, b, bias=None):
    return a.new_empty(a.shape[0], b.shape[1]), torch.empty((), dtype=torch.bool)
