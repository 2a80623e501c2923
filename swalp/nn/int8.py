"""Integer matrix products for Linear and Conv layers: ``quantize_model(..., compute="int8")``.

A layer's three products (forward ``x W^T``, input gradient ``dY W``, weight gradient
``dY^T x``) are computed from 8-bit codes with int32 accumulation wherever both factors are
on 8-bit power-of-two grids whose scale is constant along the reduction (swalp/ops/intmm.py
checks this on the data, so nothing is assumed); elsewhere the float product runs. Under the
"paper" recipe (per-output-channel weights, per-tensor activations and errors) the forward
and the weight gradient qualify once their input is a Quantizer's output; the input gradient
does not (the weight's exponent changes along its reduction, the output channels), nor does
the first layer (raw data). Under "paper-big-block" all three qualify, except a
convolution's input gradient, which stays torch's (swalp/ops/intconv.py says why).

Each qualifying product equals the float64 product of the same values rounded once to
float32, so results differ from the float path only by that path's float32 accumulation.

The swap changes a layer's class to a subclass (``Int8Linear`` is an ``nn.Linear``): names,
parameters and state-dict keys stay. :func:`compute_paths` lists which products took which
path (counted in eager mode; a compiled model calls the same op but keeps no count).

Example:
    >>> import torch, swalp
    >>> from torch import nn
    >>> from swalp.nn import quantize_model, compute_paths
    >>> net = quantize_model(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)), "paper-big-block",
    ...                      compute="int8")
    >>> isinstance(net[2], nn.Linear), type(net[2]).__name__
    (True, 'Int8Linear')
    >>> opt = swalp.LowPrecisionOptimizer(torch.optim.SGD(net.parameters(), lr=0.1))  # rounds the weights
    >>> net(torch.randn(4, 8)).sum().backward()
    >>> compute_paths(net)["2"]        # its input is layer 0's rounded output
    {'forward': {'int8': 1, 'float': 0}, 'input_grad': {'int8': 1, 'float': 0}, 'weight_grad': {'int8': 1, 'float': 0}}
    >>> compute_paths(net)["0"]["forward"]   # raw data: not on a grid
    {'int8': 0, 'float': 1}

Caveat: the weights are on a grid only once :class:`swalp.LowPrecisionOptimizer` has
rounded them (it does when built), and the layer pays a grid check (a pass over each factor
and a host synchronisation) per product.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops import intconv, intmm  # noqa: F401 - register the swalp::exact_mm and swalp::int8_conv ops

__all__ = ["COMPUTES", "PRODUCTS", "Int8Conv1d", "Int8Conv2d", "Int8Linear", "compute_paths", "use_int8"]

COMPUTES = ("float", "int8")  # quantize_model(compute=...), --compute
PRODUCTS = ("forward", "input_grad", "weight_grad")


def _new_record() -> dict:
    return {p: {"int8": 0, "float": 0} for p in PRODUCTS}


def _note(record: dict | None, product: str, took: Tensor | bool) -> None:
    # `took` comes from the ops as a CPU bool: reading it waits for no device. A compiled
    # model passes record None and never reads it.
    if record is not None:
        record[product]["int8" if bool(took) else "float"] += 1


def _mm(a: Tensor, b: Tensor, product: str, record: dict | None, bias: Tensor | None = None) -> Tensor:
    out, took = torch.ops.swalp.exact_mm(a, b, bias)
    _note(record, product, took)
    return out


class _LinearFn(torch.autograd.Function):
    """``x @ weight.T + bias`` for 2-D ``x`` (the module flattens and restores the batch
    dimensions outside, so that no output is a view made here, which in-place ops refuse)."""

    @staticmethod
    def forward(ctx, x, weight, bias, record):
        ctx.save_for_backward(x, weight)
        ctx.record = record
        return _mm(x, weight.t(), "forward", record, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        gx = _mm(grad, weight, "input_grad", ctx.record) if ctx.needs_input_grad[0] else None
        gw = _mm(grad.t(), x, "weight_grad", ctx.record) if ctx.needs_input_grad[1] else None
        gb = grad.sum(0) if ctx.needs_input_grad[2] else None
        return gx, gw, gb, None


def _record(module: nn.Module) -> dict | None:
    return None if torch.compiler.is_compiling() else module.int8_paths


class Int8Linear(nn.Linear):
    """An ``nn.Linear`` whose products use int8 codes where they are exact (module docstring).
    Made by :func:`use_int8` from an ``nn.Linear``; not built directly."""

    int8_paths: dict

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype != torch.float32 or self.weight.dtype != torch.float32:
            return super().forward(x)
        out = _LinearFn.apply(x.reshape(-1, x.shape[-1]), self.weight, self.bias, _record(self))
        return out.reshape(*x.shape[:-1], out.shape[-1])


# --- convolutions ----------------------------------------------------------------------


class _ConvFn(torch.autograd.Function):
    """A 1-D or 2-D convolution (groups 1, zero padding) through the swalp::int8_conv ops
    (swalp/ops/intconv.py): forward and weight gradient in int8 where exact."""

    @staticmethod
    def forward(ctx, x, weight, bias, geometry, record):
        ctx.save_for_backward(x, weight)
        ctx.geometry, ctx.record = geometry, record
        out, took = torch.ops.swalp.int8_conv(x, weight, bias, *geometry)
        _note(record, "forward", took)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        mask = list(ctx.needs_input_grad[:3])
        gx, gw, gb, took = torch.ops.swalp.int8_conv_backward(grad, x, weight, *ctx.geometry, mask)
        if mask[0]:
            _note(ctx.record, "input_grad", False)  # torch's: see swalp/ops/intconv.py
        if mask[1]:
            _note(ctx.record, "weight_grad", took)
        return (gx if mask[0] else None), (gw if mask[1] else None), (gb if mask[2] else None), None, None


class _Int8ConvMixin:
    def forward(self, x: Tensor) -> Tensor:
        if not self._int8_applies(x):
            return super().forward(x)
        return _ConvFn.apply(x, self.weight, self.bias, (self.stride, self.padding, self.dilation), _record(self))

    def _int8_applies(self, x: Tensor) -> bool:
        # The int8 form covers the common convolution; the rest keeps torch's (listed as float).
        plain = (self.groups == 1 and self.padding_mode == "zeros" and not isinstance(self.padding, str)
                 and x.dtype == torch.float32 and self.weight.dtype == torch.float32 and x.dim() == self.weight.dim())
        if not plain:
            record = _record(self)
            for product in PRODUCTS:
                _note(record, product, False)
        return plain


class Int8Conv1d(_Int8ConvMixin, nn.Conv1d):
    """An ``nn.Conv1d`` whose products use int8 codes where they are exact; see :func:`use_int8`."""

    int8_paths: dict


class Int8Conv2d(_Int8ConvMixin, nn.Conv2d):
    """An ``nn.Conv2d`` whose products use int8 codes where they are exact; see :func:`use_int8`."""

    int8_paths: dict


_SWAPS = {nn.Linear: Int8Linear, nn.Conv1d: Int8Conv1d, nn.Conv2d: Int8Conv2d}


def use_int8(model: nn.Module) -> nn.Module:
    """Give every ``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d`` of ``model`` (exactly those
    types, not subclasses, whose forward may differ) integer products, in place.

    Called by ``quantize_model(..., compute="int8")``; returns ``model``. Idempotent.
    """
    for module in model.modules():
        swap = _SWAPS.get(type(module))
        if swap is not None:
            module.__class__ = swap
            module.int8_paths = _new_record()
    return model


def compute_paths(model: nn.Module) -> dict[str, dict[str, dict[str, int]]]:
    """For each int8 layer of ``model`` (by name), how many times each product
    (:data:`PRODUCTS`) took the int8 and the float path since the swap (eager calls)."""
    return {name: {p: dict(c) for p, c in m.int8_paths.items()}
            for name, m in model.named_modules() if isinstance(m, (Int8Linear, Int8Conv1d, Int8Conv2d))}
