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
  largest shared exponent), the headroom left (above 1: the largest values were clamped).

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
from dataclasses import dataclass

import torch
from torch import Tensor

from ..formats import BlockFloat, FixedPoint, FloatFormat, Format, MXFloat, PerAxis, PerTensor
from . import cpu
from ._reference import axis_index, compute_dtype, floor_log2, pow2_mul

__all__ = ["FIGURES", "SUMS", "combine_sums", "format_max", "rounding_stats", "rounding_sums", "stats_from_sums"]

# The sums, in this order, that rounding_sums returns (float64): finite elements, saturated,
# nonzero x, nonzero y, sum x^2, sum (x - y)^2, max |x|. Flushed = nonzero x - nonzero y: a
# rounding of 0 is 0, so every nonzero y comes from a nonzero x.
SUMS = ("numel", "saturated", "nonzero", "nonzero_after", "signal", "noise", "absmax")
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


@dataclass(frozen=True)
class _Layout:
    """The torch path's layout: x viewed as [outer, L, inner]; element (o, l, i) has the top grid
    step ``step[o * so + (l // k) * sl + i * si]`` (as swalp/ops/cpu/csrc/stats.cpp indexes it)."""

    step: Tensor  # float64, at block granularity
    L: int
    inner: int
    k: int = 1
    so: int = 0
    sl: int = 0
    si: int = 0

    def expand(self, outer: int) -> Tensor:
        """The step of every element, shape [outer, L, inner] (the torch path)."""
        if self.k > 1:  # tiles along L: [outer, T, inner] -> one row per element of L
            return self.step.view(outer, -1, self.inner).repeat_interleave(self.k, dim=1)[:, : self.L]
        shape = [outer if self.so else 1, self.L if self.sl else 1, self.inner if self.si else 1]
        return self.step.view(shape).expand(outer, self.L, self.inner)


def _shift(fmt: BlockFloat | MXFloat) -> tuple[int, int]:
    """``(a, b)``: a block whose largest finite magnitude is m has the top grid step
    2^(clamp(floor(log2 m) - a, emin, emax) + b) (swalp/ops/_reference.py encode)."""
    if isinstance(fmt, BlockFloat):
        return 0, -(fmt.wl - 2)
    return fmt.element.emax, fmt.element.emax - fmt.element.man


def _top_step(fmt: Format, m: Tensor | None) -> Tensor | float:
    """The grid step at the top of a block whose largest finite magnitude is ``m`` (float64 values)."""
    if isinstance(fmt, FixedPoint):
        return 2.0**-fmt.fl
    if isinstance(fmt, FloatFormat):
        return 2.0 ** (fmt.emax - fmt.man)
    a, b = _shift(fmt)
    e = torch.where(m > 0, floor_log2(torch.where(m > 0, m, 1.0)) - a, fmt.emin).clamp(fmt.emin, fmt.emax)
    return torch.exp2((e + b).double())


def _blocks(x: Tensor, block) -> tuple[int, int, int, int]:
    """``(mode, L, inner, k)``: x viewed as [outer, L, inner], L the blocking axis; mode 0 no
    blocks, 1 the whole tensor, 2 a block per index of L, 3 tiles of k along L."""
    n = max(x.numel(), 1)
    if block is None:
        return 0, n, 1, 1
    if isinstance(block, PerTensor) or x.dim() == 0:
        return 1, n, 1, 1
    axis = axis_index(block.axis, x.dim())
    L, inner = x.shape[axis], max(1, math.prod(x.shape[axis + 1:]))
    if isinstance(block, PerAxis):
        return 2, L, inner, 1
    return 3, L, inner, min(block.size, L)  # a tile longer than the axis is the whole axis


def _layout(x: Tensor, fmt: Format) -> _Layout:
    """The top grid step of each block of ``x``; block maxima leave non-finite elements out."""
    mode, L, inner, k = _blocks(x, getattr(fmt, "block", None))
    if mode == 0:
        return _Layout(torch.full((1,), _top_step(fmt, None), dtype=torch.float64, device=x.device), L, 1)
    a = x.abs().nan_to_num_(0.0, 0.0, 0.0).reshape(-1, L, inner)  # masked as _reference.py block_absmax
    if mode == 1:
        return _Layout(_top_step(fmt, a.amax().double()).reshape(1), L, 1)
    if mode == 2:
        return _Layout(_top_step(fmt, a.amax(dim=(0, 2)).double()).contiguous(), L, inner, sl=1)
    tiles = torch.nn.functional.pad(a, (0, 0, 0, (-L) % k)).unflatten(1, (-1, k)).amax(dim=2)  # [outer, T, inner]
    return _Layout(_top_step(fmt, tiles.double()).contiguous(), L, inner, k, so=tiles.shape[1] * inner, sl=inner, si=1)


def _sums_torch(x: Tensor, y: Tensor, layout: _Layout) -> Tensor:
    """The definition of :func:`rounding_sums` (x, y: float compute dtype, non-finite x already masked)."""
    step = layout.expand(x.numel() // (layout.L * layout.inner)).reshape(x.shape)
    d = x - y
    absmax = x.abs().amax() if x.numel() else torch.zeros((), dtype=x.dtype, device=x.device)
    # squares summed after scaling by 2^-k, 2^k <= max|x| < 2^(k+1) (exact), so tiny values do not underflow
    k = floor_log2(torch.where(absmax > 0, absmax, 1.0))
    scale = torch.exp2(2.0 * k.double())
    return torch.stack([
        torch.zeros((), dtype=torch.float64, device=x.device),  # the finite count: the caller's
        (d.abs() >= step).sum().double(), x.count_nonzero().double(), y.count_nonzero().double(),
        pow2_mul(x, -k).square().sum().double() * scale, pow2_mul(d, -k).square().sum().double() * scale,
        absmax.double(),
    ])  # fmt: skip


@torch.no_grad()
def rounding_sums(x: Tensor, y: Tensor, fmt: Format) -> Tensor:
    """The sums :data:`SUMS` of one rounding ``y`` of ``x`` (same shape), as a float64 tensor of
    shape (7,) on ``x``'s device; no host synchronisation, so many can be stacked and read at once.

    Saturated counts ``|x - y| >= step``, with ``step`` the grid step at the top of the element's
    block: for a rounding of x, the same as the module docstring's definition (an element
    within the range moves by less than a step, a clamped one by at least one). On the CPU one
    C++ call (swalp/ops/cpu/csrc/stats.cpp: the block maxima, then one pass over x and y); elsewhere the
    torch path, which defines it.
    """
    if x.shape != y.shape:
        raise ValueError(f"x and its rounding y must have one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    x, y = x.detach(), y.detach()
    if x.numel() == 0:
        return torch.zeros(len(SUMS), dtype=torch.float64, device=x.device)
    if x.is_cpu and cpu.load():
        return torch.ops.swalp_cpu.rounding_sums(x, y.to(x.dtype), *_kernel_args(x, fmt))
    return _reference_sums(x, y, _layout(x, fmt))


def _kernel_args(x: Tensor, fmt: Format) -> tuple:
    """``(mode, L, inner, k, a, emin, emax, b, step0)`` of swalp/ops/cpu/csrc/stats.cpp: the layout of
    :func:`_layout`, with the block maxima and steps left to the kernel."""
    mode, L, inner, k = _blocks(x, getattr(fmt, "block", None))
    if mode == 0:
        return mode, L, inner, k, 0, 0, 0, 0, _top_step(fmt, None)
    a, b = _shift(fmt)
    return mode, L, inner, k, a, fmt.emin, fmt.emax, b, 0.0


def _reference_sums(x: Tensor, y: Tensor, layout: _Layout) -> Tensor:
    """:func:`rounding_sums` in torch ops: the definition the C++ pass is tested against."""
    dtype = compute_dtype(x.dtype)
    finite = torch.isfinite(x)
    xf, yf = torch.where(finite, x.to(dtype), 0.0), torch.where(finite, y.to(dtype), 0.0)
    sums = _sums_torch(xf, yf, layout)
    sums[0] = finite.sum()
    return sums


def combine_sums(a, b) -> list:
    """The :data:`SUMS` of two sets of roundings together (lists of 7 numbers): counts and
    squares add up, ``absmax`` is the larger."""
    return [*(u + v for u, v in zip(a[:-1], b[:-1])), max(a[-1], b[-1])]


def stats_from_sums(sums, fmt: Format) -> dict:
    """The figures :data:`FIGURES` (and ``numel``) from the sums of :func:`rounding_sums` (of one
    rounding, or of several by :func:`combine_sums`: a list or tensor of 7 numbers). Fractions are None
    where nothing was counted (no finite element, no nonzero element)."""
    numel, saturated, nonzero, nonzero_after, signal, noise, absmax = (float(v) for v in sums)
    flushed = nonzero - nonzero_after
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
