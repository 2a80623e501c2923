"""The reference quantizer in plain PyTorch: the definition every fast kernel must match.

Not public: it is the "reference" backend of :func:`swalp.ops.quantize`
(``backend="reference"``), and :func:`round_to_grid` is its entry point.

Every format is "scale, round to an integer, clamp, scale back" with a per-element
power-of-two shift ``k``: ``q = R(x * 2^k)`` then ``q * 2^-k``. The steps below are
spelled out so that a C++ or Triton kernel can repeat them bit for bit:

* Compute dtype: float64 for float64 inputs, float32 otherwise; the result is cast
  back to the input dtype at the end.
* ``x * 2^k`` is computed as ``(x * 2^(k // 2)) * 2^(k - k // 2)``: each factor is an
  exact power of two built from its bits, so no factor overflows for any shift the
  formats can produce (|k| <= 158).
* ``floor(log2 m)`` is taken from ``frexp`` (exact, subnormals included), never ``log2``.
* Stochastic rounding of ``s``: ``floor(s) + (u < s - floor(s))`` with
  ``u = (h >> 8) * 2^-24`` and ``h`` the counter-based hash of (seed, i) (swalp/_rng.py), where
  ``i`` is the element's row-major index in the logical shape (not its storage offset).
  ``s - floor(s)`` is exact, so the comparison is the only place ``u`` enters.
* Nearest: round half to even.
* Saturation bounds are values of the compute dtype, rounded toward zero: the integer
  bound 2^31 - 1 becomes 2^31 - 128 in float32 (:func:`int_bound`), and a float format
  whose largest value exceeds float32's range saturates at its largest grid value below
  2^128 (:func:`float_bound`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._rng import uniform
from ..formats import BlockFloat, FixedPoint, FloatFormat, MXFloat, PerAxis, PerGroup, PerTensor, Rounding

# --- exact power-of-two arithmetic ---------------------------------------------------


def pow2(k: Tensor, dtype: torch.dtype) -> Tensor:
    """2^k for integer k in the normal range, built from the exponent bits."""
    if dtype == torch.float64:
        return ((k.to(torch.int64) + 1023) << 52).view(torch.float64)
    return ((k.to(torch.int32) + 127) << 23).view(torch.float32)


def pow2_mul(x: Tensor, k: Tensor) -> Tensor:
    """``x * 2^k`` in two exact steps (each factor within the normal range)."""
    a = torch.div(k, 2, rounding_mode="floor")
    return x * pow2(a, x.dtype) * pow2(k - a, x.dtype)


def floor_log2(m: Tensor) -> Tensor:
    """``floor(log2 m)`` for positive finite m, exact for subnormals too (int32)."""
    return torch.frexp(m).exponent.to(torch.int32) - 1


# --- rounding ------------------------------------------------------------------------


def _round(s: Tensor, rounding: Rounding, u: Tensor | None) -> Tensor:
    if rounding is Rounding.NEAREST:
        return torch.round(s)
    f = torch.floor(s)
    return f + (u < s - f).to(s.dtype)


def int_bound(q: int, dtype: torch.dtype) -> float:
    """``q`` rounded toward zero to a value of ``dtype``: float32 has no 2^31 - 1, and
    rounding it to nearest (2^31) would saturate outside the range."""
    digits = 53 if dtype == torch.float64 else 24
    step = 2 ** max(0, abs(q).bit_length() - digits)
    return float(abs(q) // step * step * (1 if q >= 0 else -1))


def _round_int(x: Tensor, shift: Tensor, qmin: int, qmax: int, rounding, u, wl: int | None = None) -> Tensor:
    """The integer codes ``clamp(R(x * 2^shift))``, as values of ``x``'s dtype.

    ``+ 0.0`` turns a -0.0 (nearest rounding of a small negative value) into +0.0: an
    integer code has no negative zero, so the packed form (swalp/ops/packed.py) holds
    exactly these values.

    ``wl`` (block floating point): where the most negative code ``-2^(wl-1)`` times the grid
    step ``2^-shift`` is ``2^(wl-1-shift)``, beyond ``x``'s dtype (a block exponent of 127 in
    float32), the codes are symmetric, ``[-qmax, qmax]``: a finite input never becomes -inf.
    """
    lo, hi = int_bound(qmin, x.dtype), int_bound(qmax, x.dtype)
    q = _round(pow2_mul(x, shift), rounding, u).clamp_(lo, hi)
    if wl is not None and qmin < -qmax:
        top = (wl - 1) - shift >= (1024 if x.dtype == torch.float64 else 128)  # the dtype's first overflowing power of 2
        q = torch.where(top & (q < -hi), torch.full_like(q, -hi), q)
    return q.add_(0.0)


def float_bound(fmt: FloatFormat, dtype: torch.dtype) -> float:
    """``fmt.max_value``, or the largest grid value below it that ``dtype`` holds
    (an 8-bit-exponent ``finite_only`` format reaches 2^128, above float32's range)."""
    top = torch.finfo(dtype).max
    return fmt.max_value if fmt.max_value <= top else (2.0 - 2.0 ** -fmt.man) * 2.0**127


def _round_float(x: Tensor, fmt: FloatFormat, rounding, u) -> Tensor:
    finite = torch.isfinite(x)
    e = floor_log2(torch.where(finite & (x != 0), x.abs(), torch.ones_like(x)))
    shift = fmt.man - e.clamp_(min=fmt.emin)
    out = pow2_mul(_round(pow2_mul(x, shift), rounding, u), -shift)
    big = float_bound(fmt, x.dtype)
    if fmt.saturate:
        return out.clamp_(-big, big)
    return torch.where(out.abs() > big, out.sign() * torch.inf, out)


# --- blocks --------------------------------------------------------------------------


def block_absmax(x: Tensor, block) -> Tensor:
    """Largest finite magnitude of each element's block, broadcast to ``x.shape``.

    NaN and inf are left out so that they do not spread over their block.
    """
    a = torch.where(torch.isfinite(x), x.abs(), torch.zeros_like(x))
    if x.numel() == 0 or isinstance(block, PerTensor) or x.dim() == 0:
        return a.amax().expand_as(x) if x.numel() else a
    axis = axis_index(block.axis, x.dim())
    if isinstance(block, PerAxis):
        dims = [d for d in range(x.dim()) if d != axis]
        return a.amax(dim=dims, keepdim=True).expand_as(x) if dims else a
    assert isinstance(block, PerGroup)
    a = a.movedim(axis, -1)
    n = a.shape[-1]
    k = min(block.size, n)  # a tile longer than the axis is the whole axis: no padding to its size
    pad = (-n) % k
    t = torch.nn.functional.pad(a, (0, pad)).unflatten(-1, (-1, k))
    m = t.amax(dim=-1, keepdim=True).expand_as(t).flatten(-2)[..., :n]
    return m.movedim(-1, axis)


def axis_index(axis: int, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"block axis {axis} is out of range for a tensor with {ndim} dimensions")
    return axis % ndim


def block_exponent(x: Tensor, block, emin: int, emax: int, offset: int = 0) -> Tensor:
    """``clamp(floor(log2 m) - offset, emin, emax)`` per element; ``emin`` where m = 0."""
    m = block_absmax(x, block)
    e = floor_log2(torch.where(m > 0, m, torch.ones_like(m))) - offset
    return torch.where(m > 0, e, torch.full_like(e, emin)).clamp_(emin, emax)


# --- the quantizer -------------------------------------------------------------------


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def round_to_grid(x: Tensor, fmt, rounding: Rounding, seed: int | None) -> Tensor:
    """Reference rounding of ``x`` onto ``fmt``'s grid (arguments already validated by the caller)."""
    return decode(*encode(x, fmt, rounding, seed)).to(x.dtype)


def encode(x: Tensor, fmt, rounding: Rounding, seed: int | None) -> tuple[Tensor, Tensor | None]:
    """``(codes, e)`` with ``round_to_grid(x) == codes * 2^e`` (``e`` None: 0), in the compute dtype.

    ``codes`` are the integers of FixedPoint and BlockFloat, the element values of
    FloatFormat and MXFloat (each a value of the element format); ``e`` is per element
    (broadcast from the block's exponent). What :func:`swalp.ops.pack` stores.
    """
    xc = x.detach().to(compute_dtype(x.dtype))
    u = uniform(x.shape, seed, xc.dtype, x.device) if rounding is Rounding.STOCHASTIC else None
    if isinstance(fmt, FixedPoint):
        shift = torch.tensor(fmt.fl, dtype=torch.int32, device=x.device)
        return _round_int(xc, shift, -(2 ** (fmt.wl - 1)), 2 ** (fmt.wl - 1) - 1, rounding, u), -shift
    if isinstance(fmt, BlockFloat):
        shift = (fmt.wl - 2) - block_exponent(xc, fmt.block, fmt.emin, fmt.emax)
        return _round_int(xc, shift, fmt.qmin, fmt.qmax, rounding, u, fmt.wl), -shift
    if isinstance(fmt, FloatFormat):
        return _round_float(xc, fmt, rounding, u), None
    if isinstance(fmt, MXFloat):
        scale = block_exponent(xc, fmt.block, fmt.emin, fmt.emax, offset=fmt.element.emax)
        return _round_float(pow2_mul(xc, -scale), fmt.element, rounding, u), scale
    raise TypeError(fmt)  # pragma: no cover - the caller validates


def decode(codes: Tensor, e: Tensor | None) -> Tensor:
    """``codes * 2^e``, exactly (the values :func:`encode` stands for)."""
    return codes if e is None else pow2_mul(codes, e)
