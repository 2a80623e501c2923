"""``packed_activations``: activations that autograd keeps for the backward pass, in 8 bits.

A layer's input is saved for the backward pass (a convolution needs it for its weight
gradient). When that input is a :class:`Quantizer`'s output it lies on a known grid, so
inside ``with packed_activations():`` the Quantizer rounds it straight into packed form
(:func:`swalp.ops.pack`: one byte per element and an exponent per block), hands the next
layer the unpacked values, and a ``torch.autograd.graph.saved_tensors_hooks`` pair keeps
the packed form in the graph instead of the float32 tensor. Everything else is saved
unchanged. The numbers are the same, bit for bit: the codes are the ones the rounding
produced, not a second rounding of its output.

A ReLU saves its own output, but its backward reads only which elements are positive
(``threshold_backward``: the gradient passes where the output is not ``<= 0``), so inside
the block that saved output is kept as a mask of exactly that test instead, one bit per
element, and handed to the backward as a uint8 tensor of zeros and ones (``threshold_backward``
promotes it to the gradient's dtype: the same gradient bit for bit, with a quarter of a float
mask's bytes at the backward's peak). Two more kinds of saved tensor are kept smaller, losslessly, where a check of their
values shows it is exact:

* the output of a max-pool or a view saved after a Quantizer ran (a selection of values, on the
  Quantizer's grid when they are its values): packed onto that grid with nearest rounding, and
  kept packed only if unpacking gives back every bit (else as it was);
* an int64 tensor (a max-pool's indices) whose values fit in int16: kept as int16.

What still costs float32: other tensors saved that are not on a grid. With the "layer"
placement (a Quantizer after each Conv/Linear) the next layer saves the ReLU's output itself;
the "activation" placement, and the paper's VGG-16 (a Quantizer after each ReLU), hand the
Quantizer's output straight to the next layer.

Example:
    >>> import torch, swalp
    >>> from torch import nn
    >>> net = swalp.quantize_model(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)), "paper",
    ...                            placement="activation")
    >>> with packed_activations() as saved:
    ...     net(torch.randn(4, 8)).sum().backward()
    >>> saved.packed_bytes, saved.float_bytes  # the Quantizer's output: 32 codes + 1 exponent; the ReLU's mask: 4
    (37, 256)
"""

from __future__ import annotations

import contextvars
from typing import NamedTuple

import torch
from torch import Tensor
from torch.utils.weak import WeakTensorKeyDictionary

from ..formats import Rounding
from ..ops import PackedTensor, pack
from ..ops._schema import kernel_packs
from ..ops.bitmask import relu_mask, relu_unmask

__all__ = ["packed_activations"]

_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("swalp_packed_activations", default=None)
_SMALL = 4096  # elements: below this, a tensor is kept as it is (a check costs more than it saves)
# Ops whose output is a selection of their input's values: after a Quantizer, on its grid (checked)
_SELECTIONS = {"MaxPool1DWithIndicesBackward0", "MaxPool2DWithIndicesBackward0", "MaxPool3DWithIndicesBackward0",
               "ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0", "PermuteBackward0", "TransposeBackward0"}


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
        self._relu_saved = WeakTensorKeyDictionary()  # ReLU outputs whose own save (the first) is done
        self._last = None  # the format of the last Quantizer that packed here (for lossless packing)
        self.packed_bytes = self.float_bytes = 0

    def __enter__(self) -> "packed_activations":
        self._token = _ACTIVE.set(self)
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack_hook, unpack_hook)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        _ACTIVE.reset(self._token)

    def remember(self, y: Tensor, packed: PackedTensor) -> None:
        self._packed[y] = packed
        self._last = packed.fmt

    def _pack_hook(self, t: Tensor):
        packed = self._packed.get(t)
        if packed is not None:
            return self._count(_Saved(packed, t.dtype), packed.nbytes, t)
        # A ReLU's output is first saved by the ReLU itself, as it is made; a later save (by the
        # next layer) needs the values and gets the tensor.
        if type(t.grad_fn).__name__ == "ReluBackward0" and t not in self._relu_saved:
            self._relu_saved[t] = True
            mask = _Mask.of(t)
            return self._count(mask, mask.bits.numel(), t)
        if t.numel() < _SMALL or t.layout is not torch.strided or t.is_nested:
            return t
        if t.dtype == torch.int64:
            lo, hi = t.aminmax()
            if -(2**15) <= int(lo) and int(hi) < 2**15:
                narrow = _Narrow(t.to(torch.int16))
                return self._count(narrow, narrow.values.nbytes, t)
            return t
        if type(t.grad_fn).__name__ in _SELECTIONS and self._last is not None and kernel_packs(t, self._last):
            exact = _exact_pack(t, self._last)
            if exact is not None:
                return self._count(_Saved(exact, t.dtype), exact.nbytes, t)
        return t

    def _count(self, kept, nbytes: int, t: Tensor):
        self.packed_bytes += nbytes
        self.float_bytes += t.numel() * t.element_size()
        return kept


def _exact_pack(t: Tensor, fmt) -> PackedTensor | None:
    """``t`` packed onto ``fmt``'s grid, if that loses no bit of it (nearest rounding of values
    already on the grid changes none; -0.0 or NaN would, and are refused by the check)."""
    try:
        packed = pack(t, fmt, Rounding.NEAREST)
    except ValueError:  # a NaN where the format has no code for it
        return None
    int_view = torch.int64 if t.element_size() == 8 else torch.int32 if t.element_size() == 4 else torch.int16
    same = torch.equal(packed.unpack(t.dtype).view(int_view), t.contiguous().view(int_view))
    return packed if same else None


class _Mask(NamedTuple):
    """A ReLU's saved output as the one thing its backward reads: where it is not ``<= 0``,
    one bit per element (swalp/ops/bitmask.py)."""

    bits: Tensor
    shape: torch.Size

    @staticmethod
    def of(t: Tensor) -> "_Mask":
        return _Mask(relu_mask(t), t.shape)

    def values(self) -> Tensor:
        return relu_unmask(self.bits, self.shape, torch.uint8)


class _Narrow(NamedTuple):
    """An int64 tensor whose values fit in int16, kept as int16."""

    values: Tensor


class _Saved(NamedTuple):
    """What autograd keeps of a saved tensor that lies on a packed grid: the packed form,
    the dtype, and for a weight's view (``weight.t()``) its geometry over the weight."""

    packed: PackedTensor
    dtype: torch.dtype
    view: tuple | None = None  # (size, stride, storage offset)


def unpack_hook(saved):
    if isinstance(saved, _Mask):
        return saved.values()
    if isinstance(saved, _Narrow):
        return saved.values.to(torch.int64)
    if not isinstance(saved, _Saved):
        return saved
    values = saved.packed.unpack(saved.dtype)
    return values if saved.view is None else values.as_strided(*saved.view)


class _WeightViews:
    """The float tensors unpacked from packed weights for the layers now running forward
    (swalp/nn/weights.py), by storage: a tensor autograd saves that lies in one of them is
    kept as a reference to the packed form. Not public."""

    def __init__(self):
        self._live: dict[int, PackedTensor] = {}

    def add(self, values: Tensor, packed: PackedTensor) -> int:
        key = values.untyped_storage().data_ptr()
        self._live[key] = packed
        return key

    def discard(self, key: int) -> None:
        self._live.pop(key, None)

    def pack_hook(self, t: Tensor):
        if self._live and t.layout is torch.strided and not t.is_nested:
            packed = self._live.get(t.untyped_storage().data_ptr())
            whole = packed is not None and t.untyped_storage().nbytes() == packed.codes.numel() * t.element_size()
            if whole and t.is_floating_point():  # the weight's own float storage (a view of it, maybe)
                return _Saved(packed, t.dtype, (t.size(), t.stride(), t.storage_offset()))
        outer = active()  # a Quantizer output saved inside a layer: packed_activations' own rule
        return t if outer is None else outer._pack_hook(t)


weight_views = _WeightViews()


def active() -> packed_activations | None:
    """The ``packed_activations`` block this code runs in, if any."""
    return _ACTIVE.get()


def packs(x: Tensor, fmt) -> bool:
    """Whether a Quantizer in a ``packed_activations`` block packs its output ``x``."""
    return fmt is not None and kernel_packs(x, fmt)

