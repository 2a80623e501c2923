"""``Quantizer``: an identity module that rounds activations forward and errors backward."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .formats import Format, Rounding, get_format
from .quantize import quantize


class _QuantizeFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, fwd, bwd, rounding, backend):
        ctx.bwd, ctx.rounding, ctx.backend = bwd, rounding, backend
        return x if fwd is None else quantize(x, fwd, rounding, backend=backend)

    @staticmethod
    def backward(ctx, grad):
        if ctx.bwd is not None:
            grad = quantize(grad, ctx.bwd, ctx.rounding, backend=ctx.backend)
        return grad, None, None, None, None


class Quantizer(nn.Module):
    """The identity, with rounding: ``forward`` quantizes the activation to ``forward``'s
    format, and the gradient that flows back through it (the error) to ``backward``'s.

    Args:
        forward: format of the activation, or None for full precision.
        backward: format of the error, or None for full precision.
        rounding: ``"stochastic"`` or ``"nearest"``, for both directions.
        backend: passed to :func:`swalp.quantize` (None picks the fastest).

    Shapes: any; the output has the input's shape and dtype.

    Each call draws a fresh seed from torch's global generator, so ``torch.manual_seed``
    repeats a run. A Quantizer in ``eval()`` mode still quantizes: to evaluate in full
    precision, set ``enabled = False`` (see :func:`swalp.quantize_model`).

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
    ):
        super().__init__()
        self.forward_format = None if forward is None else get_format(forward)
        self.backward_format = None if backward is None else get_format(backward)
        self.rounding = Rounding.parse(rounding)
        self.backend = backend
        self.enabled = True

    def forward(self, x: Tensor) -> Tensor:
        if not self.enabled or (self.forward_format is None and self.backward_format is None):
            return x
        return _QuantizeFn.apply(x, self.forward_format, self.backward_format, self.rounding, self.backend)

    def extra_repr(self) -> str:
        return f"forward={self.forward_format}, backward={self.backward_format}, rounding={self.rounding.value}"
