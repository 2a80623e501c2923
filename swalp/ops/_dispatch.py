"""``quantize``: round a tensor onto a number format's grid, with pluggable backends.

The reference backend (``swalp/ops/_reference.py``) defines the results; faster backends
(``swalp/ops/cpu``, ``swalp/ops/triton``) are registered by ``swalp/ops/__init__.py`` with
:func:`register_backend` and must agree with it bit for bit.

:func:`quantize` checks its arguments, then calls :func:`dispatch`; the training hot path
(the Quantizer modules, the optimizer) calls :func:`dispatch` and :func:`dispatch_many_`
directly with arguments it checked once, at construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .._checks import check_choice
from .._rng import check_generator, check_seed, draw_seed
from ..formats import FORMAT_TYPES, Format, Rounding, get_format
from ._reference import axis_index, round_to_grid

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class Backend:
    """A quantization backend.

    Args:
        name: what users pass as ``backend=``.
        fn: ``fn(x, fmt, rounding, seed) -> Tensor`` with the reference's semantics.
        supports: ``supports(x, fmt) -> bool``; the automatic choice skips a backend
            that returns False.
        priority: higher is tried first by the automatic choice.
        many: optional ``many(xs, fmts, rounding, seeds) -> None``, rounding each tensor
            of the list in place, as ``x.copy_(fn(x, fmt, rounding, seed))`` would, in
            fewer calls (see :func:`dispatch_many_`).
        ste: optional ``ste(x, fwd, bwd, rounding) -> Tensor or None``: what
            :class:`swalp.Quantizer` computes (``fwd`` rounding forward, ``bwd`` rounding the
            gradient, seeds drawn as ``quantize(seed=None)`` draws them) with a faster
            autograd node; None where it cannot run, and the Quantizer does it in Python.
        pack: optional ``pack(x, fmt, rounding, seed) -> (codes, exponents) or None``: round
            straight into :func:`swalp.ops.pack`'s form in one pass; None where it does not
            apply (the reference then packs).
        unpack: optional ``unpack(codes, exponents, fmt, dtype) -> Tensor or None``:
            :meth:`swalp.ops.PackedTensor.unpack` in one pass; None where it does not apply.
        sgd: optional ``sgd(w, g, m, fmt_w, fmt_m, rounding, seeds, hyper) -> (PackedTensor,
            PackedTensor or None) or None``: :func:`swalp.ops.sgd.packed_sgd` in one call;
            None where it does not apply.
        seeded: optional ``seeded(x, fmt, rounding, seed) -> Tensor``: ``fn`` with the seed
            as a tensor (one int64 on the CPU), the form ``torch.compile`` traces without a
            graph break (the seed drawn by ``torch.randint`` in the graph). Without it, the
            seed is read back to Python (a graph break, the same numbers).
    """

    name: str
    fn: Callable
    supports: Callable[[Tensor, Format], bool]
    priority: int = 0
    many: Callable | None = None
    ste: Callable | None = None
    seeded: Callable | None = None
    pack: Callable | None = None
    unpack: Callable | None = None
    sgd: Callable | None = None

    def round_seeded(self, x: Tensor, fmt: Format, rounding: Rounding, seed: Tensor) -> Tensor:
        """``seeded``, or ``fn`` with the seed read back to a Python int."""
        if self.seeded is not None:
            return self.seeded(x, fmt, rounding, seed)
        return self.fn(x, fmt, rounding, int(seed))


_BACKENDS: dict[str, Backend] = {}
_BY_PRIORITY: list[Backend] = []  # kept sorted here, not on every call: quantize() is a hot path


def register_backend(backend: Backend) -> None:
    """Add (or replace) a backend; the automatic choice takes the highest priority."""
    _BACKENDS[backend.name] = backend
    _BY_PRIORITY[:] = sorted(_BACKENDS.values(), key=lambda b: -b.priority)


def backends() -> list[str]:
    """Names of the registered backends, fastest first."""
    return [b.name for b in _BY_PRIORITY]


register_backend(Backend("reference", round_to_grid, lambda x, fmt: True, priority=0))


def pick_backend(name: str | None, x: Tensor, fmt: Format) -> Backend:
    if name is None or name == "auto":
        for b in _BY_PRIORITY:
            if b.supports(x, fmt):
                return b
        return _BACKENDS["reference"]
    check_choice("backend", name, ("auto", *backends()))
    backend = _BACKENDS[name]
    if not backend.supports(x, fmt):
        raise ValueError(f"backend {name!r} does not support {fmt!r} on a {x.device.type} {x.dtype} tensor")
    return backend


def quantize(
    x: Tensor,
    fmt: Format | str,
    rounding: Rounding | str = "nearest",
    seed: int | None = None,
    *,
    backend: str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Round ``x`` onto the grid of ``fmt``.

    Args:
        x: a float16, bfloat16, float32 or float64 tensor of any shape (empty too).
        fmt: a format (:class:`FixedPoint`, :class:`BlockFloat`, :class:`FloatFormat`,
            :class:`MXFloat`) or a preset name such as ``"e4m3"`` or ``"mxint8"``.
        rounding: ``"nearest"`` (half to even; the default, as torch's casts) or
            ``"stochastic"`` (unbiased; what SWALP's training uses).
        seed: for stochastic rounding: element ``i`` (row-major in ``x``'s shape) gets
            random bits that depend only on ``(seed, i)``, whatever the backend or the
            number of threads. ``None`` draws a seed (for stochastic rounding only) from
            ``generator``, or else from torch's global generator.
        backend: ``None``/``"auto"`` picks the fastest registered backend that supports
            the input; ``"reference"`` forces the pure-PyTorch definition.
        generator: a ``torch.Generator`` to draw a missing seed from.

    Returns:
        A tensor of ``x``'s shape, dtype and device (contiguous), every value on the grid.
        Differentiable: where ``x`` requires grad, the gradient passes through unchanged
        (the straight-through estimator, as QPyTorch's and torchao's casts), so
        ``w_q = quantize(self.weight, fmt)`` in a layer trains ``self.weight``.
        Out-of-range values saturate; NaN stays NaN without spreading to its block;
        +-inf saturate to the largest value of their block (or to inf for a
        ``FloatFormat(saturate=False)``). A finite float32 or float64 input never becomes
        infinite: in a block floating-point block whose exponent is so high that the most
        negative code ``-2^(wl-1)`` would overflow (exponent 127 in float32) the codes are
        symmetric, ``[-(2^(wl-1) - 1), 2^(wl-1) - 1]``.

    Caveat: the rounding is computed in float32 (float64 for float64 inputs); for
    float16/bfloat16 inputs a grid value that the input dtype cannot hold is rounded once
    more by the final cast:

    ========  =====================================================================
    input     what the final cast does
    ========  =====================================================================
    bfloat16  mantissas wider than 8 bits (a 16-bit fixed point, BFP of more than 9
              bits) are rounded to nearest; the range is float32's: never infinite
    float16   mantissas wider than 11 bits likewise; a BFP block at exponent 15 (values
              from 32768 to 65504) whose code -2^(wl-1) lands at -65536, and grid values
              above 65504 (BFP of more than 11 bits there), become -inf / inf
    ========  =====================================================================

    Example:
        >>> import torch, swalp
        >>> swalp.quantize(torch.tensor([0.3, -1.7]), swalp.FixedPoint(4, 2), "nearest")
        tensor([ 0.2500, -1.7500])
    """
    fmt, rounding, seed = check_args(x, fmt, rounding, seed)
    if seed is None and rounding is Rounding.STOCHASTIC and check_generator(generator) is not None:
        seed = draw_seed(generator)
    if x.requires_grad and torch.is_grad_enabled():
        return _StraightThrough.apply(x, fmt, rounding, seed, backend)
    return dispatch(x, fmt, rounding, seed, backend)


def check_dense(x: Tensor) -> None:
    """A ValueError for a sparse or nested tensor: every backend rounds dense (strided) tensors."""
    if x.layout is not torch.strided or x.is_nested:
        kind = "nested" if x.is_nested else str(x.layout).replace("torch.", "")
        raise ValueError(f"cannot quantize a {kind} tensor; accepted: dense (torch.strided) tensors, e.g. x.to_dense()")


def check_args(x, fmt, rounding, seed) -> tuple[Format, Rounding, int | None]:
    """:func:`quantize`'s argument checks; returns the format, rounding and seed as objects."""
    if not isinstance(x, Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    check_dense(x)
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"cannot quantize a {x.dtype} tensor; accepted dtypes: float16, bfloat16, float32, float64")
    fmt = get_format(fmt)
    if not isinstance(fmt, FORMAT_TYPES):
        raise ValueError(f"unknown format {fmt!r}")
    rounding = Rounding.parse(rounding)
    if seed is not None:
        seed = check_seed(seed)
    block = getattr(fmt, "block", None)
    if block is not None and hasattr(block, "axis") and x.dim() > 0:
        axis_index(block.axis, x.dim())
    return fmt, rounding, seed


class _StraightThrough(torch.autograd.Function):
    """:func:`quantize`'s autograd: round going forward, the identity going back."""

    @staticmethod
    def forward(ctx, x, fmt, rounding, seed, backend):
        return dispatch(x, fmt, rounding, seed, backend)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None, None


def dispatch(x: Tensor, fmt: Format, rounding: Rounding, seed: int | None, backend: str | None = None) -> Tensor:
    """:func:`quantize` without the argument checks, for callers that already made them.

    The training hot path (Quantizer, LowPrecisionOptimizer) calls it dozens of times a
    step with a format object, a :class:`Rounding`, a valid seed (or None: drawn here, as
    :func:`quantize` does) and a tensor of the right kind, all fixed when the model and the
    optimizer were set up. Same results as :func:`quantize`, bit for bit.
    """
    if seed is None and rounding is Rounding.STOCHASTIC:
        seed = draw_seed()
    if torch.is_grad_enabled():
        with torch.no_grad():
            return pick_backend(backend, x, fmt).fn(x, fmt, rounding, seed).contiguous()
    return pick_backend(backend, x, fmt).fn(x, fmt, rounding, seed).contiguous()


def dispatch_many_(xs: list[Tensor], fmts: list[Format], rounding: Rounding, seeds: list[int | None]) -> None:
    """In place, ``x.copy_(dispatch(x, fmt, rounding, seed))`` for each triple.

    For many small tensors (the optimizer's gradients, weights and state): when the
    automatic backend of every tensor is the same one and it has a ``many`` function,
    that is one call for the whole list. Same results, bit for bit.
    """
    if not xs:
        return
    backend = pick_backend(None, xs[0], fmts[0])
    if backend.many is None or any(pick_backend(None, x, f) is not backend for x, f in zip(xs, fmts)):
        for x, fmt, seed in zip(xs, fmts, seeds):
            x.copy_(dispatch(x, fmt, rounding, seed))
        return
    if rounding is Rounding.STOCHASTIC and None in seeds:
        seeds = [draw_seed() if s is None else s for s in seeds]
    with torch.no_grad():
        backend.many(xs, fmts, rounding, seeds)
