"""``pack``: a tensor rounded onto a format's grid and stored as its codes, really low precision.

:func:`swalp.quantize` returns grid values in a float32 tensor (the simulation, and the
reference); :func:`pack` keeps the same numbers in the format's own bits: one integer code
per element for fixed point and block floating point (int8 for up to 8 bits), the float8
(or bfloat16/float16) bit pattern for small floats, and one exponent per block (int8). So
BFP8 with one exponent per row of a ``(out, in)`` weight takes ``out * in + out`` bytes
against ``4 * out * in``. ``PackedTensor.unpack()`` gives back exactly what ``quantize``
gives, bit for bit: both come from one definition, ``encode``/``decode`` in
``swalp/ops/_reference.py``.

Packable: :class:`FixedPoint` and :class:`BlockFloat` (any blocking) of up to 32 bits,
``FloatFormat`` E4M3 (OCP "fn"), E5M2, bfloat16 and float16, and :class:`MXFloat` with an
E4M3 or E5M2 element (MXFP8). Integer formats have no NaN code: packing a NaN into one is
an error (``quantize`` keeps the NaN in float32).

Example:
    >>> import torch
    >>> from swalp.formats import BlockFloat, PerAxis
    >>> from swalp.ops import quantize
    >>> x = torch.tensor([[0.3, -1.7, 5.0], [0.01, 0.02, -0.03]])
    >>> p = pack(x, BlockFloat(8, block=PerAxis(0)))
    >>> p.codes.dtype, p.exponents.tolist(), p.nbytes
    (torch.int8, [2, -6], 8)
    >>> torch.equal(p.unpack(), quantize(x, BlockFloat(8, block=PerAxis(0))))
    True
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._rng import check_generator, draw_seed
from ..formats import (
    BlockFloat,
    FixedPoint,
    FloatFormat,
    Format,
    MXFloat,
    PerAxis,
    PerGroup,
    Rounding,
    format_from_dict,
    format_to_dict,
)
from ._dispatch import check_args, pick_backend
from ._reference import axis_index, compute_dtype, encode, pow2

__all__ = ["PackedTensor", "pack"]

# FloatFormat (exp, man, finite_only, has_nan) -> the torch dtype with exactly its values.
_FLOAT_CONTAINERS = {
    (4, 3, True, True): torch.float8_e4m3fn,
    (5, 2, False, True): torch.float8_e5m2,
    (8, 7, False, True): torch.bfloat16,
    (5, 10, False, True): torch.float16,
}


def _float_container(fmt: FloatFormat) -> torch.dtype:
    key = (fmt.exp, fmt.man, fmt.finite_only, fmt.has_nan)
    if key not in _FLOAT_CONTAINERS or fmt.finite_only and not fmt.saturate:  # an inf it cannot hold
        raise ValueError(f"no packed form for {fmt!r}; packable floats: E4M3 (finite_only), E5M2, bfloat16, float16")
    return _FLOAT_CONTAINERS[key]


def _int_container(wl: int) -> torch.dtype:
    return torch.int8 if wl <= 8 else torch.int16 if wl <= 16 else torch.int32


class PackedTensor:
    """A tensor on a format's grid, stored as codes and per-block exponents (see :func:`pack`).

    Attributes:
        codes: one code per element, of the tensor's shape (int8/16/32 for integer formats,
            a float8/bfloat16/float16 tensor for floats).
        exponents: int8, one per block (None for fixed point and plain floats): shape ``()``
            for one block, ``(L,)`` per index along the blocking axis, and for tiles the
            tensor's shape with the axis moved last and cut to ``ceil(L / size)`` tiles.
        fmt: the format; ``shape``: the tensor's shape.
    """

    def __init__(self, codes: Tensor, exponents: Tensor | None, fmt: Format):
        self.codes, self.exponents, self.fmt = codes, exponents, fmt

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    @property
    def device(self) -> torch.device:
        return self.codes.device

    @property
    def nbytes(self) -> int:
        """The bytes it holds: codes and exponents."""
        held = self.codes.numel() * self.codes.element_size()
        return held + (0 if self.exponents is None else self.exponents.numel() * self.exponents.element_size())

    def unpack(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The grid values as a ``dtype`` tensor: ``quantize``'s result, bit for bit.

        ``codes * 2^e`` as the reference's ``pow2_mul`` computes it (two exact power-of-two
        factors), in place on one new tensor, the factors broadcast from one per block.
        """
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"unpack gives floating values; dtype must be a floating torch.dtype, got {dtype!r}")
        kernel = pick_backend(None, self.codes, self.fmt).unpack if self.codes.numel() else None
        fast = None if kernel is None else kernel(self.codes, self.exponents, self.fmt, dtype)
        if fast is not None:
            return fast
        return self._unpack_reference(dtype)

    def _unpack_reference(self, dtype: torch.dtype) -> Tensor:
        """:meth:`unpack` in PyTorch: the definition the kernels follow."""
        work = compute_dtype(dtype)
        values = self.codes.to(work)  # always a new tensor: codes are never float32/64
        fmt = self.fmt
        if values.numel() == 0 or self.exponents is None and not isinstance(fmt, FixedPoint):
            return values.to(dtype)
        if isinstance(fmt, FixedPoint):
            e = torch.tensor(-fmt.fl, dtype=torch.int32, device=values.device)
        else:
            e = _broadcast(self.exponents, fmt.block, self.shape)
            e = e - (fmt.wl - 2) if isinstance(fmt, BlockFloat) else e
        a = torch.div(e, 2, rounding_mode="floor")
        return values.mul_(pow2(a, work)).mul_(pow2(e - a, work)).to(dtype)

    def state_dict(self) -> dict:
        """Tensors and plain data only, so ``torch.load(..., weights_only=True)`` reads it."""
        return {"codes": self.codes, "exponents": self.exponents, "format": format_to_dict(self.fmt)}

    @classmethod
    def from_state_dict(cls, state: dict) -> "PackedTensor":
        """The PackedTensor :meth:`state_dict` described."""
        if not isinstance(state, dict) or not {"codes", "exponents", "format"} <= set(state):
            raise ValueError("not a PackedTensor state dict: it needs 'codes', 'exponents' and 'format'")
        return cls(state["codes"], state["exponents"], format_from_dict(state["format"]))

    def to(self, device) -> "PackedTensor":
        exponents = None if self.exponents is None else self.exponents.to(device)
        return PackedTensor(self.codes.to(device), exponents, self.fmt)

    def __repr__(self) -> str:
        return f"PackedTensor(shape={tuple(self.shape)}, fmt={self.fmt!r}, codes={self.codes.dtype}, nbytes={self.nbytes})"


def pack(x: Tensor, fmt: Format | str, rounding: Rounding | str = "nearest", seed: int | None = None, *,
         backend: str | None = None, generator: torch.Generator | None = None) -> PackedTensor:
    """Round ``x`` onto ``fmt``'s grid, as :func:`swalp.quantize` does, and keep it packed.

    Args:
        x: a float16, bfloat16, float32 or float64 tensor of any shape (empty too).
        fmt, rounding, seed, backend, generator: as :func:`swalp.quantize` (its rounding,
            its random bits). A backend with a packing kernel rounds straight into codes
            in one pass (C++ on CPU: integer formats of up to 8 bits, FP8 E4M3/E5M2 and
            MXFP8; Triton on CUDA: the integer formats); otherwise the reference packs.

    Returns:
        a :class:`PackedTensor` whose ``unpack(x.dtype)`` equals
        ``quantize(x, fmt, rounding, seed)`` bit for bit.

    Raises:
        ValueError: what ``quantize`` rejects; a format with no packed form; a NaN in ``x``
            for a format without a NaN code (fixed point, block floating point).
    """
    fmt, rounding, seed = check_args(x, fmt, rounding, seed)
    if x.is_meta:
        raise ValueError("cannot pack a meta tensor: it has no values to encode (quantize gives its shape)")
    if rounding is Rounding.STOCHASTIC and seed is None:
        seed = draw_seed(check_generator(generator))
    kernel = pick_backend(backend, x, fmt).pack
    try:
        fast = None if kernel is None else kernel(x.detach(), fmt, rounding, seed)
    except ValueError:  # the kernel met a NaN
        raise ValueError(f"cannot pack NaN into {fmt!r}: the format has no NaN code") from None
    if fast is not None:
        return from_kernel(*fast, fmt)
    element = fmt.element if isinstance(fmt, MXFloat) else fmt
    if isinstance(element, FloatFormat):
        container = _float_container(element)
    elif torch.isnan(x).any():
        raise ValueError(f"cannot pack NaN into {fmt!r}: the format has no NaN code")
    with torch.no_grad():
        codes, e = encode(x, fmt, rounding, seed)
    if x.numel() == 0 and e is not None:
        e = e.new_zeros((0,))  # no block: nothing to keep
    if isinstance(element, FloatFormat):
        return PackedTensor(codes.to(container), None if e is None else _compact(e, fmt.block).to(torch.int8), fmt)
    codes = codes.to(_int_container(fmt.wl))
    if isinstance(fmt, FixedPoint):
        return PackedTensor(codes, None, fmt)
    return PackedTensor(codes, _compact((fmt.wl - 2) + e, fmt.block).to(torch.int8), fmt)  # e = -(shift)


def from_kernel(codes: Tensor, exponents: Tensor, fmt: Format) -> PackedTensor:
    """The PackedTensor of a packing kernel's ``(codes, exponents)`` (swalp/ops/_schema.py
    quantize_pack): formats without blocks keep no exponents."""
    return PackedTensor(codes, None if isinstance(fmt, (FixedPoint, FloatFormat)) else exponents, fmt)


def _compact(e: Tensor, block) -> Tensor:
    """One exponent per block, from the per-element tensor ``e`` (every element of a block holds it)."""
    if e.numel() == 0:
        return e
    if e.dim() == 0 or not isinstance(block, (PerAxis, PerGroup)):
        return e.reshape(-1)[0]
    axis = axis_index(block.axis, e.dim())
    if isinstance(block, PerAxis):
        moved = e.movedim(axis, 0)
        return moved.reshape(moved.shape[0], -1)[:, 0].contiguous()
    return e.movedim(axis, -1)[..., :: block.size].contiguous()


def _broadcast(e: Tensor, block, shape: torch.Size) -> Tensor:
    """The exponents (int32) of a tensor of ``shape``, one per block, in a shape that
    broadcasts against it (per element only for tiles)."""
    e = e.to(torch.int32)
    if len(shape) == 0 or not isinstance(block, (PerAxis, PerGroup)):
        return e.reshape(())
    axis = axis_index(block.axis, len(shape))
    if isinstance(block, PerAxis):
        view = [1] * len(shape)
        view[axis] = shape[axis]
        return e.reshape(view)
    return e.repeat_interleave(block.size, dim=-1)[..., : shape[axis]].movedim(-1, axis)
