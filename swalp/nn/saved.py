"""``packed_activations``: activations that autograd keeps for the backward pass, in 8 bits.

A layer's input is saved for the backward pass (a convolution needs it for its weight
gradient). When that input is a :class:`Quantizer`'s output it lies on a known grid, so
inside ``with packed_activations():`` the Quantizer rounds it straight into packed form
(:func:`swalp.ops.pack`: one byte per element and an exponent per block), hands the next
layer the unpacked values, and a ``torch.autograd.graph.saved_tensors_hooks`` pair keeps
the packed form in the graph instead of the float32 tensor. Everything else is saved
unchanged. The numbers are the same, bit for bit: the codes are the ones the rounding
produced, not a second rounding of its output.

What still costs float32: tensors saved that are not a Quantizer's output. With the
"layer" placement (a Quantizer after each Conv/Linear) the ReLU that follows saves its own
output and the next layer saves that; the "activation" placement, and the paper's VGG-16
(a Quantizer after each ReLU), hand the Quantizer's output straight to the next layer.

Example:
    >>> import torch, swalp
    >>> from torch import nn
    >>> net = swalp.quantize_model(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)), "paper",
    ...                            placement="activation")
    >>> with packed_activations() as saved:
    ...     net(torch.randn(4, 8)).sum().backward()
    >>> saved.packed_bytes, saved.float_bytes  # the ReLU's output, packed: 32 codes + 1 exponent
    (33, 128)
"""

from __future__ import annotations

import contextvars

import torch
from torch import Tensor
from torch.utils.weak import WeakTensorKeyDictionary

from ..ops import PackedTensor
from ..ops._schema import kernel_packs

__all__ = ["packed_activations"]

_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("swalp_packed_activations", default=None)


class packed_activations:
    """Within the block, Quantizer outputs that autograd saves are kept packed.

    Attributes (counting what was saved inside the block):
        packed_bytes: bytes of the packed forms kept.
        float_bytes: bytes the same tensors would have taken as they were.

    Caveat: only where a fast packing kernel applies (fixed point and block floating point
    of up to 8 bits, float32 or float64 activations; swalp/ops/_schema.py kernel_packs);
    other Quantizers behave as outside the block. Not under ``torch.compile``.
    """

    def __init__(self):
        self._packed = WeakTensorKeyDictionary()
        self.packed_bytes = self.float_bytes = 0

    def __enter__(self) -> "packed_activations":
        self._token = _ACTIVE.set(self)
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack_hook, _unpack_hook)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        _ACTIVE.reset(self._token)

    def remember(self, y: Tensor, packed: PackedTensor) -> None:
        self._packed[y] = packed

    def _pack_hook(self, t: Tensor):
        packed = self._packed.get(t)
        if packed is None:
            return t
        self.packed_bytes += packed.nbytes
        self.float_bytes += t.numel() * t.element_size()
        return packed, t.dtype


def _unpack_hook(saved):
    return saved[0].unpack(saved[1]) if isinstance(saved, tuple) else saved


def active() -> packed_activations | None:
    """The ``packed_activations`` block this code runs in, if any."""
    return _ACTIVE.get()


def packs(x: Tensor, fmt) -> bool:
    """Whether a Quantizer in a ``packed_activations`` block packs its output ``x``."""
    return fmt is not None and kernel_packs(x, fmt)

