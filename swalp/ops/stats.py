"""What one rounding did to a tensor: saturation, flush to zero, SQNR and headroom.

:func:`rounding_stats` compares a tensor ``x`` with its rounding ``y`` onto ``fmt``'s grid
(``y = quantize(x, fmt, ...)``, any rounding) and gives four figures:

* ``saturated``: the fraction of elements beyond the range their block can hold by at least
  one grid step (``x >= hi + step`` or ``x <= lo - step``, where ``lo, hi`` are the smallest and
  largest values of the element's grid and ``step`` its spacing there: ``fmt``'s range for
  fixed point and floats, the block's for block formats, from the block's shared exponent as
  swalp/ops/_reference.py finds it). Those were clamped by more than any rounding moves a
  value, so their rounding is biased, stochastic or not. (A clamp by less than a step, e.g.
  a block's largest element just under the next power of two, is within rounding's error.)
* ``flushed``: the fraction of the nonzero elements that became zero. Stochastic rounding
  keeps them unbiased, but where most of a tensor flushes its variance drowns the signal.
* ``sqnr_db``: ``10 log10(sum x^2 / sum (x - y)^2)``, the signal-to-quantization-noise ratio
  (``inf`` where the rounding was exact, e.g. x already on the grid).
* ``max_ratio``: ``max |x|`` over the format's largest finite value (for block formats: at the
  largest shared exponent), the headroom left (above 1: saturation is certain).

Non-finite elements of ``x`` are left out of every figure (the training loop stops on NaN).
The sums behind the figures (:func:`rounding_sums`) add up over tensors and steps, so a
layer's weight and bias, or several steps, combine exactly (:func:`combine_sums`). Not
differentiable: statistics only.

Example:
    >>> import torch
    >>> from swalp.formats import FixedPoint
    >>> x = torch.tensor([0.1, 0.25, 3.0, -0.01])
    >>> y = torch.tensor([0.0, 0.25, 1.75, 0.0])   # FixedPoint(4, 2), nearest
    >>> s = rounding_stats(x, y, FixedPoint(4, 2))
    >>> s["saturated"], s["flushed"], s["max_ratio"]
    (0.25, 0.5, 1.7142857142857142)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..formats import BlockFloat, FixedPoint, FloatFormat, Format, MXFloat
from ._reference import block_exponent, compute_dtype, float_bound, floor_log2, int_bound, pow2_mul

__all__ = ["FIGURES", "SUMS", "combine_sums", "format_max", "rounding_stats", "rounding_sums", "stats_from_sums"]

# The sums, in this order, that rounding_sums returns (float64): finite elements, saturated,
# nonzero, nonzero flushed to zero, sum x^2, sum (x - y)^2, max |x|.
SUMS = ("numel", "saturated", "nonzero", "flushed", "signal", "noise", "absmax")
FIGURES = ("saturated", "flushed", "sqnr_db", "max_ratio")  # what stats_from_sums reports


def format_max(fmt: Format) -> float:
    """The largest finite value ``fmt`` holds (block formats: at the largest shared exponent)."""
    if isinstance(fmt, FixedPoint):
        return fmt.max_value
    if isinstance(fmt, BlockFloat):
        return fmt.qmax * 2.0 ** (fmt.emax - (fmt.wl - 2))
    if isinstance(fmt, FloatFormat):
        return fmt.max_value
    if isinstance(fmt, MXFloat):
        return fmt.element.max_value * 2.0**fmt.emax
    raise ValueError(f"not a format: {fmt!r}")


def _bounds(x: Tensor, fmt: Format) -> tuple[Tensor | float, Tensor | float]:
    """``(lo, hi)``: each element's grid range widened by one step of the grid at its ends
    (scalars, or tensors of x's shape); beyond them, the clamp costs more than rounding can."""
    if isinstance(fmt, FixedPoint):
        step = 2.0**-fmt.fl
        return (int_bound(-(2 ** (fmt.wl - 1)), x.dtype) - 1) * step, (int_bound(2 ** (fmt.wl - 1) - 1, x.dtype) + 1) * step
    if isinstance(fmt, FloatFormat):
        top = float_bound(fmt, x.dtype) + 2.0 ** (fmt.emax - fmt.man)
        return -top, top
    if isinstance(fmt, BlockFloat):
        shift = (fmt.wl - 2) - block_exponent(x, fmt.block, fmt.emin, fmt.emax)
        one = torch.ones_like(x)
        lo, hi = int_bound(fmt.qmin, x.dtype) - 1, int_bound(fmt.qmax, x.dtype) + 1
        return pow2_mul(one * lo, -shift), pow2_mul(one * hi, -shift)
    if isinstance(fmt, MXFloat):
        scale = block_exponent(x, fmt.block, fmt.emin, fmt.emax, offset=fmt.element.emax)
        e = fmt.element
        hi = pow2_mul(torch.full_like(x, float_bound(e, x.dtype) + 2.0 ** (e.emax - e.man)), scale)
        return -hi, hi
    raise ValueError(f"not a format: {fmt!r}")


@torch.no_grad()
def rounding_sums(x: Tensor, y: Tensor, fmt: Format) -> Tensor:
    """The sums :data:`SUMS` of one rounding ``y`` of ``x`` (same shape), as a float64 tensor of
    shape (7,) on ``x``'s device; no host synchronisation, so many can be stacked and read at once.

    The squares are summed in the compute dtype after scaling by a power of two near
    ``1 / max |x|`` (exact), so tiny gradients do not underflow; the scale is undone in float64.
    """
    if x.shape != y.shape:
        raise ValueError(f"x and its rounding y must have one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    dtype = compute_dtype(x.dtype)
    x, y = x.detach().to(dtype), y.detach().to(dtype)
    finite = torch.isfinite(x)
    xf = torch.where(finite, x, 0.0)
    absmax = xf.abs().amax() if x.numel() else torch.zeros((), dtype=dtype, device=x.device)
    lo, hi = _bounds(xf, fmt)
    saturated = ((xf >= hi) | (xf <= lo)).sum()
    nonzero = xf != 0
    flushed = (nonzero & (y == 0)).sum()
    # scale by 2^-k with 2^k <= max|x| < 2^(k+1): the scaled values lie below 2 in magnitude
    k = floor_log2(torch.where(absmax > 0, absmax, 1.0))
    xs = pow2_mul(xf, -k)
    noise = torch.where(finite, pow2_mul(xf - y, -k), 0.0)  # y = inf for a finite x counts as infinite noise
    scale = torch.exp2(2.0 * k.double())
    return torch.stack([
        finite.sum().double(), saturated.double(), nonzero.sum().double(), flushed.double(),
        xs.square().sum().double() * scale, noise.square().sum().double() * scale, absmax.double(),
    ])  # fmt: skip


def combine_sums(sums: Tensor) -> Tensor:
    """One row of :data:`SUMS` from rows ``(n, 7)`` of several roundings: counts and squares
    add up, ``absmax`` is the largest."""
    return torch.cat([sums[:, :-1].sum(0), sums[:, -1:].amax(0)])


def stats_from_sums(sums, fmt: Format) -> dict:
    """The figures :data:`FIGURES` (and ``numel``) from the sums of :func:`rounding_sums` (of one
    rounding, or of several by :func:`combine_sums`: a list or tensor of 7 numbers). Fractions are None
    where nothing was counted (no finite element, no nonzero element)."""
    numel, saturated, nonzero, flushed, signal, noise, absmax = (float(v) for v in sums)
    if noise == 0:
        sqnr = math.inf if signal > 0 else None
    else:
        sqnr = 10 * math.log10(signal / noise) if signal > 0 else -math.inf
    return dict(
        saturated=saturated / numel if numel else None,
        flushed=flushed / nonzero if nonzero else None,
        sqnr_db=sqnr,
        max_ratio=absmax / format_max(fmt),
        numel=int(numel),
    )


def rounding_stats(x: Tensor, y: Tensor, fmt: Format) -> dict:
    """The figures of the module docstring for ``y``, a rounding of ``x`` onto ``fmt``'s grid.

    Args:
        x: the tensor before rounding (any shape, float dtype).
        y: its rounding (same shape), e.g. ``swalp.quantize(x, fmt, rounding, seed)``.
        fmt: the format ``y`` was rounded to; a block format's blocking is applied to ``x``
            (for a parameter, pass ``swalp.recipes.param_format(fmt, x)``).

    Returns:
        ``{"saturated", "flushed", "sqnr_db", "max_ratio", "numel"}`` (module docstring).
    """
    return stats_from_sums(rounding_sums(x, y, fmt).cpu().tolist(), fmt)
