"""``Quantizer``: an identity module that rounds activations forward and errors backward."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._rng import check_generator, draw_seed
from ..formats import Format, Rounding, get_format
from ..ops._dispatch import FLOAT_DTYPES, check_dense, dispatch, pick_backend
from ..ops.packed import pack
from .saved import active, packs


# The formats and rounding were checked when the Quantizer was built, so both directions
# take dispatch (no argument checks): this runs twice per Quantizer per training step.
class _QuantizeFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, fwd, bwd, rounding, backend, generator):
        ctx.bwd, ctx.rounding, ctx.backend, ctx.generator = bwd, rounding, backend, generator
        return x if fwd is None else dispatch(x, fwd, rounding, _seed(rounding, generator), backend)

    @staticmethod
    def backward(ctx, grad):
        return _round_error(ctx, grad), None, None, None, None, None


def _round_error(ctx, grad: Tensor) -> Tensor:
    """The backward of both Functions here: the error rounded to ``ctx.bwd`` (if any)."""
    if ctx.bwd is None:
        return grad
    return dispatch(grad, ctx.bwd, ctx.rounding, _seed(ctx.rounding, ctx.generator), ctx.backend)


class _MeasuredQuantizeFn(torch.autograd.Function):
    """While a statistics collector watches this Quantizer (swalp/optim/health.py): the same
    roundings, seeds drawn in the same order, each also handed to ``stats.record``."""

    @staticmethod
    def forward(ctx, x, fwd, bwd, rounding, backend, generator, module, stats):
        ctx.bwd, ctx.rounding, ctx.backend, ctx.generator = bwd, rounding, backend, generator
        ctx.module, ctx.stats = module, stats
        if fwd is None:
            return x
        y = dispatch(x, fwd, rounding, _seed(rounding, generator), backend)
        stats.record(module, "activation", x, y, fwd)
        return y

    @staticmethod
    def backward(ctx, grad):
        out = _round_error(ctx, grad)
        if ctx.bwd is not None:
            ctx.stats.record(ctx.module, "error", grad, out, ctx.bwd)
        return out, None, None, None, None, None, None, None


class _PackedQuantizeFn(torch.autograd.Function):
    """Inside ``packed_activations``: round straight into packed form (kept in ``holder`` for
    the saved-tensor hooks, swalp/nn/saved.py) and pass on its values; backward as above."""

    @staticmethod
    def forward(ctx, x, fwd, bwd, rounding, backend, generator, holder):
        ctx.bwd, ctx.rounding, ctx.backend, ctx.generator = bwd, rounding, backend, generator
        holder.append(pack(x, fwd, rounding, backend=backend, generator=generator))  # seeds drawn as dispatch draws them
        return holder[0].unpack(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        return _round_error(ctx, grad), None, None, None, None, None, None


def _seed(rounding: Rounding, generator: torch.Generator | None) -> int | None:
    # None: dispatch draws from torch's global generator, and only for stochastic rounding.
    return draw_seed(generator) if generator is not None and rounding is Rounding.STOCHASTIC else None


def _traced_round(x: Tensor, fmt: Format, rounding: Rounding, backend: str | None) -> Tensor:
    # The seed drawn by torch.randint, in the graph: the same draw as draw_seed's
    # (random_(0, 2**62) on torch's generator), so eager and compiled runs agree.
    if rounding is Rounding.STOCHASTIC:
        seed = torch.randint(0, 2**62, (), dtype=torch.int64)
    else:
        seed = torch.zeros((), dtype=torch.int64)
    return pick_backend(backend, x, fmt).round_seeded(x, fmt, rounding, seed)


class _TracedQuantizeFn(torch.autograd.Function):
    """What torch.compile traces: no seed ever leaves the graph (swalp/ops/_schema.py, quantize_seeded)."""

    @staticmethod
    def forward(ctx, x, fwd, bwd, rounding, backend):
        ctx.bwd, ctx.rounding, ctx.backend = bwd, rounding, backend
        return x if fwd is None else _traced_round(x, fwd, rounding, backend)

    @staticmethod
    def backward(ctx, grad):
        if ctx.bwd is not None:
            grad = _traced_round(grad, ctx.bwd, ctx.rounding, ctx.backend)
        return grad, None, None, None, None


class Quantizer(nn.Module):
    """The identity, with rounding: ``forward`` quantizes the activation to ``forward``'s
    format, and the gradient that flows back through it (the error) to ``backward``'s.

    Args:
        forward: format of the activation, or None for full precision.
        backward: format of the error, or None for full precision.
        rounding: ``"stochastic"`` or ``"nearest"``, for both directions.
        backend: passed to :func:`swalp.quantize` (None picks the fastest).
        generator: where the seeds of stochastic rounding are drawn from (default: torch's
            global generator, so ``torch.manual_seed`` repeats a run).

    Shapes: any; the output has the input's shape and dtype.

    Each stochastic rounding (forward, and backward) draws a fresh seed; nearest rounding
    draws none. Under ``torch.compile`` the draws happen inside the graph (no graph break;
    with a ``generator``, a graph break per call). A Quantizer in ``eval()`` mode still quantizes: to evaluate in full
    precision, set ``enabled = False`` (see :func:`swalp.nn.set_quantizers`).

    Example:
        >>> import torch, swalp
        >>> q = swalp.Quantizer(swalp.FixedPoint(4, 2), None, rounding="nearest")
        >>> x = torch.tensor([0.3, 0.9], requires_grad=True)
        >>> q(x).detach()
        tensor([0.2500, 1.0000])
    """

    def __init__(
        self,
        forward: Format | str | None = None,
        backward: Format | str | None = None,
        rounding: Rounding | str = "stochastic",
        backend: str | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.forward_format = forward
        self.backward_format = backward
        self.rounding = rounding
        self.backend = backend
        self.generator = check_generator(generator)
        self.enabled = True
        self.stats = None  # a statistics collector, set by it for the steps it measures (swalp/optim/health.py)

    # Checked when set (here or by swalp.nn.configure_quantizers), not at every call.
    @property
    def forward_format(self) -> Format | None:
        return self._forward_format

    @forward_format.setter
    def forward_format(self, fmt: Format | str | None) -> None:
        self._forward_format = None if fmt is None else get_format(fmt)

    @property
    def backward_format(self) -> Format | None:
        return self._backward_format

    @backward_format.setter
    def backward_format(self, fmt: Format | str | None) -> None:
        self._backward_format = None if fmt is None else get_format(fmt)

    @property
    def rounding(self) -> Rounding:
        return self._rounding

    @rounding.setter
    def rounding(self, rounding: Rounding | str) -> None:
        self._rounding = Rounding.parse(rounding)

    def forward(self, x: Tensor) -> Tensor:
        fwd, bwd = self._forward_format, self._backward_format
        if not self.enabled or (fwd is None and bwd is None):
            return x
        check_dense(x)
        if x.dtype not in FLOAT_DTYPES:
            raise ValueError(f"cannot quantize a {x.dtype} tensor; accepted dtypes: float16, bfloat16, float32, float64")
        compiling = torch.compiler.is_compiling()
        if compiling and self.generator is None:  # before the context below: it is not traced
            return _TracedQuantizeFn.apply(x, fwd, bwd, self._rounding, self.backend)
        if self.stats is not None and not compiling and torch.is_grad_enabled():
            return _MeasuredQuantizeFn.apply(x, fwd, bwd, self._rounding, self.backend, self.generator, self, self.stats)
        saved = None if compiling else active()
        if saved is not None and packs(x, fwd):
            holder = []
            y = _PackedQuantizeFn.apply(x, fwd, bwd, self._rounding, self.backend, self.generator, holder)
            saved.remember(y, holder[0])
            return y
        if self.generator is not None:
            return _QuantizeFn.apply(x, fwd, bwd, self._rounding, self.backend, self.generator)
        if fwd is not None and bwd is not None:
            # the backend's own autograd node, if it has one (C++ on CPU)
            backend = pick_backend(self.backend, x, fwd)
            if backend.ste is not None and backend.supports(x, bwd):
                y = backend.ste(x, fwd, bwd, self._rounding)
                if y is not None:
                    return y
        return _QuantizeFn.apply(x, fwd, bwd, self._rounding, self.backend, None)

    # A copy (WeightAverage's, a pickle) is not watched: the collector watches this module.
    def __getstate__(self) -> dict:
        return {**self.__dict__, "stats": None}

    def __setstate__(self, state: dict) -> None:
        super().__setstate__({"stats": None, **state})  # pickled before `stats` existed

    def extra_repr(self) -> str:
        return f"forward={self.forward_format}, backward={self.backward_format}, rounding={self.rounding.value}"
