"""Convolutions whose backward computes the weight gradient and then the input gradient. Not public.

torch's convolution backward computes both gradients in one call, and on the CPU (oneDNN) that
call holds the buffers for reordering its operands for both at once. With packed storage
(swalp/nn/weights.py: a layer's forward while its weights are held packed), where the state is
small and such buffers make the peak of a step, :class:`SplitConvolutions` runs the layer's
``conv1d``/``conv2d`` through :class:`_SplitConv`, whose backward asks
``torch.ops.aten.convolution_backward`` for the two gradients one after the other: the same
kernels, so the same numbers bit for bit (tests/test_saved.py), with one set of buffers alive
at a time. Inputs under ``SPLIT_MIN`` elements keep torch's backward. On VGG-16 at batch 128
the peak of a packed step falls by about a tenth (``python benchmarks/memory.py --models vgg16
--variants paper-packed --where``).

Example:
    >>> import torch
    >>> x = torch.randn(1, 16, 256, 256, requires_grad=True)  # 2^20 elements: SPLIT_MIN
    >>> w = torch.randn(4, 16, 3, 3, requires_grad=True)
    >>> with SplitConvolutions():
    ...     y = torch.conv2d(x, w, padding=1)
    >>> type(y.grad_fn).__name__
    '_SplitConvBackward'
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

_CONVS = {torch.conv1d: 1, torch.conv2d: 2}  # the function and its number of spatial dimensions
# Inputs smaller than this (elements) keep torch's backward: their buffers are small, and a
# backward in Python costs more than it saves.
SPLIT_MIN = 1 << 20
_NAMES = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_DEFAULTS = (None, 1, 0, 1, 1)  # bias, stride, padding, dilation, groups


class SplitConvolutions(TorchFunctionMode):
    """Within the block, ``torch.conv1d`` and ``torch.conv2d`` (``F.conv1d``/``F.conv2d``, so
    ``nn.Conv1d``/``nn.Conv2d``) that autograd records take :class:`_SplitConv`'s backward.
    Others (an input under ``SPLIT_MIN`` elements, a string padding, no gradient needed) run as
    they are. Every torch call in the block passes through here: keep the block to one layer."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        dims = _CONVS.get(func)
        if dims is not None and torch.is_grad_enabled():
            call = _bind(args, kwargs, dims)
            if call is not None:
                return _SplitConv.apply(func, *call)
        return func(*args, **kwargs)


def _bind(args, kwargs, dims: int) -> tuple | None:
    """``(input, weight, bias, stride, padding, dilation, groups)`` with every size a list of
    ``dims`` ints, or None where the split does not apply."""
    given = dict(zip(_NAMES, args), **kwargs)
    if set(given) - set(_NAMES) or "input" not in given or "weight" not in given:
        return None
    x, weight = given["input"], given["weight"]
    bias, stride, padding, dilation, groups = (given.get(n, d) for n, d in zip(_NAMES[2:], _DEFAULTS))
    if isinstance(padding, str) or x.numel() < SPLIT_MIN:
        return None
    if not (x.requires_grad or weight.requires_grad or bias is not None and bias.requires_grad):
        return None
    sizes = [[int(v)] * dims if isinstance(v, int) else [int(e) for e in v] for v in (stride, padding, dilation)]
    return (x, weight, bias, *sizes, int(groups))


class _SplitConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, func, x: Tensor, weight: Tensor, bias: Tensor | None, stride, padding, dilation, groups):
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding, dilation, False, [0] * len(stride), groups)
        ctx.bias_sizes = None if bias is None else list(bias.shape)
        return func(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[1:4]
        gx = gw = gb = None
        if need_w or need_b:  # first: it holds the reordered input, which the input gradient does not need
            _, gw, gb = torch.ops.aten.convolution_backward(grad, x, weight, ctx.bias_sizes, *ctx.conv,
                                                            [False, need_w, need_b])
        if need_x:
            gx = torch.ops.aten.convolution_backward(grad, x, weight, None, *ctx.conv, [True, False, False])[0]
        return None, gx, gw, gb, None, None, None, None
