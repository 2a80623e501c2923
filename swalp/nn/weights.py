"""Packed weights: a parameter held in 8 bits between uses, unpacked for its layer's forward.

With ``LowPrecisionOptimizer(..., storage="packed")`` a parameter's value lives in a
:class:`swalp.ops.PackedTensor` (one byte per element and an exponent per block); the
``nn.Parameter`` object stays, with its name, shape and state-dict key, but its ``.data``
is a one-element placeholder (NaN, expanded to the shape: any use outside the protocol
below gives NaN, never a plausible wrong number). :func:`quantize_model` gives every module
that owns parameters two hooks:

* before its forward, the module's own packed parameters are unpacked (a float tensor made
  for this call), and ``torch.autograd.graph.saved_tensors_hooks`` are entered so that
  whatever autograd saves of those weights (the weight, or a view such as ``weight.t()``)
  is kept as a reference to the packed form and unpacked again in the backward pass;
* after it (also when it raises), the hooks are left and the float tensor released.

So the float32 weights of one layer exist at a time, going forward and back. The numbers
are the packed ones, bit for bit: unpacking is exact.

:func:`unpacked` gives a block in which the weights are ordinary float tensors (the
average reads them so); ``model.state_dict()`` gives float tensors as usual, and
``model.load_state_dict`` writes into packed parameters (each value packed again with
nearest rounding: exact for values on the format's grid, as every checkpoint of the same
recipe holds). :func:`packed_state_dict` keeps the packed forms (a quarter of the bytes), and
:func:`unpack_state_dict` turns them back into tensors.

Caveat: a parameter used outside its own module's forward (a parent module reading
``self.child.weight`` without calling the child) sees the NaN placeholder; tied weights
used through each module's own forward work. Not under ``torch.compile``.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterable, Iterator

import torch
from torch import Tensor, nn

from ..ops import PackedTensor, pack
from ._conv import SplitConvolutions
from .saved import unpack_hook, weight_views

__all__ = ["is_packed", "packed_state_dict", "packed_weight", "unpack_state_dict", "unpacked"]

_PACKED = "_swalp_packed"  # on a parameter held packed: (PackedTensor, strides of its float form)
_HOOKED = "_swalp_hooked"  # on a parameter whose module unpacks it for its forward (install_hooks)
_OPEN = "_swalp_open"  # on a module inside its forward: [(parameters, views, contexts entered)]
_KEEP_PACKED: contextvars.ContextVar = contextvars.ContextVar("swalp_keep_packed", default=False)


def packed_weight(p: Tensor) -> PackedTensor | None:
    """The packed form ``p`` is held in, or None if ``p`` is an ordinary tensor."""
    held = getattr(p, _PACKED, None)
    return None if held is None else held[0]


def is_packed(p: Tensor) -> bool:
    """Whether parameter ``p`` is held packed (its ``.data`` a placeholder)."""
    return getattr(p, _PACKED, None) is not None


def can_pack(p: Tensor) -> bool:
    """Whether ``p``'s module unpacks it for its forward (:func:`install_hooks` ran on it)."""
    return getattr(p, _HOOKED, False)


def store(p: Tensor, packed: PackedTensor) -> None:
    """Hold ``p`` as ``packed`` (same shape) and drop its float storage. Not public."""
    if tuple(packed.shape) != tuple(p.shape):
        raise ValueError(f"packed shape {tuple(packed.shape)} does not match the parameter's {tuple(p.shape)}")
    held = getattr(p, _PACKED, None)
    stride = p.stride() if held is None else held[1]  # a placeholder's strides are all 0
    setattr(p, _PACKED, (packed, stride))
    _release(p)


def _release(p: Tensor) -> None:
    """Drop ``p``'s float storage for the placeholder: one NaN, expanded to its shape."""
    p.data = torch.full((), float("nan"), dtype=p.dtype, device=p.device).expand(p.shape)


def _float(p: Tensor) -> Tensor:
    """A new float tensor of ``p``'s value and memory layout (channels-last stays so)."""
    packed, stride = getattr(p, _PACKED)
    values = packed.unpack(p.dtype)
    if stride == values.stride():
        return values
    return torch.empty_strided(p.shape, stride, dtype=p.dtype, device=p.device).copy_(values)


def unstore(p: Tensor) -> Tensor:
    """Make ``p`` an ordinary tensor again (its value unpacked); returns it. Not public."""
    if is_packed(p):
        p.data = _float(p)
        delattr(p, _PACKED)
    return p


@contextlib.contextmanager
def unpacked(params: nn.Module | Iterable[Tensor]) -> Iterator[None]:
    """Within the block, packed parameters (of a module, or given) are ordinary float
    tensors; afterwards each is held packed again, as it was (changes made inside the block
    to a packed parameter are discarded: write weights with ``load_state_dict``).

    Example:
        >>> import torch, swalp
        >>> from torch import nn
        >>> net = swalp.quantize_model(nn.Sequential(nn.Linear(3, 2)), "paper")
        >>> opt = swalp.LowPrecisionOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), seed=0, storage="packed")
        >>> bool(net[0].weight.isnan().all())  # held packed: the float storage is a placeholder
        True
        >>> with unpacked(net):
        ...     bool(net[0].weight.isnan().any())
        False
    """
    params = params.parameters() if isinstance(params, nn.Module) else params
    held = [(p, getattr(p, _PACKED)) for p in params if is_packed(p)]
    for p, _ in held:
        unstore(p)
    try:
        yield
    finally:
        for p, (packed, _) in held:
            store(p, packed)  # the float form unpack made keeps the original layout: store records it again


# --- the module hooks (installed by quantize_model) -------------------------------------


def install_hooks(model: nn.Module) -> None:
    """Give each module of ``model`` that owns parameters the hooks of the module docstring
    (once), and mark its parameters as packable. Not public."""
    for module in model.modules():
        own = [p for p in module._parameters.values() if p is not None]
        if not own or getattr(module, _OPEN, None) is not None:
            continue
        module.__dict__[_OPEN] = []
        module.register_forward_pre_hook(_unpack_for_forward)
        module.register_forward_hook(_release_after_forward, always_call=True)
        module.register_state_dict_post_hook(_state_dict_values)
        module.register_load_state_dict_pre_hook(_before_load)
        module.register_load_state_dict_post_hook(_after_load)
        for p in own:
            setattr(p, _HOOKED, True)


def _own_packed(module: nn.Module) -> list[Tensor]:
    return [p for p in module._parameters.values() if p is not None and is_packed(p)]


def _unpack_for_forward(module: nn.Module, args) -> None:
    params = _own_packed(module)
    if not params:
        module.__dict__.setdefault(_OPEN, []).append(None)
        return
    views = []
    for p in params:
        packed = packed_weight(p)
        p.data = _float(p)
        views.append(weight_views.add(p.data, packed))
    contexts = [torch.autograd.graph.saved_tensors_hooks(weight_views.pack_hook, unpack_hook)]
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):  # its backward one gradient at a time (swalp/nn/_conv.py)
        contexts.append(SplitConvolutions())
    for context in contexts:
        context.__enter__()
    module.__dict__.setdefault(_OPEN, []).append((params, views, contexts))


def _release_after_forward(module: nn.Module, args, output) -> None:
    opened = module.__dict__.get(_OPEN)
    if not opened:
        return
    entry = opened.pop()
    if entry is None:
        return
    params, views, contexts = entry
    for context in reversed(contexts):
        context.__exit__(None, None, None)
    for p, key in zip(params, views):
        weight_views.discard(key)
        _release(p)


def _state_dict_values(module: nn.Module, state_dict: dict, prefix: str, local_metadata) -> None:
    for name, p in module._parameters.items():
        if p is not None and is_packed(p) and prefix + name in state_dict:
            state_dict[prefix + name] = packed_weight(p).state_dict() if _KEEP_PACKED.get() else _float(p)


def _before_load(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    # load_state_dict copies into each parameter: make the packed ones real tensors for it
    # (their formats wait in the module until _after_load packs them again).
    formats = {name: packed_weight(p).fmt for name, p in module._parameters.items() if p is not None and is_packed(p)}
    for name in formats:
        unstore(module._parameters[name])
    module.__dict__["_swalp_reload"] = formats


def _after_load(module: nn.Module, incompatible_keys) -> None:
    for name, fmt in module.__dict__.pop("_swalp_reload", {}).items():
        p = module._parameters[name]
        try:
            store(p, pack(p.detach(), fmt, "nearest"))
        except ValueError:  # a NaN (no code for it): the value stays a float tensor, the loop's check reports it
            pass


# --- checkpoints ------------------------------------------------------------------------


def packed_state_dict(model: nn.Module) -> dict:
    """``model.state_dict()``, with each packed parameter as its packed form
    (``PackedTensor.state_dict()``: codes and exponents, a quarter of the float bytes)."""
    token = _KEEP_PACKED.set(True)
    try:
        return model.state_dict()
    finally:
        _KEEP_PACKED.reset(token)


def unpack_state_dict(state_dict: dict) -> dict:
    """A state dict with packed entries (:func:`packed_state_dict`) as float32 tensors,
    for ``load_state_dict`` of any model with those keys."""
    return {k: PackedTensor.from_state_dict(v).unpack() if isinstance(v, dict) else v for k, v in state_dict.items()}
