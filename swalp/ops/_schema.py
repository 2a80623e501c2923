"""The ``swalp::quantize`` custom ops that the fast backends implement.

Ops registered with :mod:`torch.library`, with one kernel per device: C++ for CPU
(``swalp/ops/cpu``) and Triton for CUDA (``swalp/ops/triton``), and fake (meta)
implementations so that ``torch.compile`` can trace through them. A format is passed as
plain numbers (:func:`pack`), worked out here from the reference's own helpers so that
the kernels only ever see the reference's arithmetic, never a second copy of the
format rules.

Schema: ``quantize(Tensor x, int kind, int[] p, float[] f, int rounding, int k0, int k1)``

* ``kind``: a :class:`Kind`.
* ``p``: a :class:`Params` vector (integers; ``block`` is a :class:`Block`).
* ``f``: a :class:`Bounds` vector (qmin, qmax: the integer bounds as the compute dtype
  holds them; big: the largest float).
* ``rounding``: 0 nearest, 1 stochastic; ``k0, k1``: the hash keys of the seed
  (:func:`swalp._rng.seed_keys`).

The C++ kernels (``swalp/ops/cpu/csrc/quant.h``, enums ``Kind``, ``Block``,
``Param``, ``Bound``) and the Triton kernels (``swalp/ops/triton/_kernels.py``) name the
same codes and positions; ``tests/test_kernels.py`` checks that the three files agree.

The result is contiguous, of ``x``'s shape and dtype. The ops have no autograd formula:
callers round under ``no_grad`` (:func:`swalp.ops.quantize`) or give rounding its own
backward (:class:`swalp.nn.Quantizer`). Not public.

Example:
    >>> import torch
    >>> from swalp.formats import FixedPoint, Rounding
    >>> kind, p, f, *_ = pack(torch.zeros(2), FixedPoint(4, 2), Rounding.NEAREST, None)
    >>> Kind(kind).name, Params(*p).fl, Bounds(*f).qmax
    ('FIXED_POINT', 2, 7.0)
"""

from __future__ import annotations

import enum
from typing import NamedTuple

import torch
from torch import Tensor

from .._rng import seed_keys
from ..formats import BlockFloat, FixedPoint, FloatFormat, MXFloat, PerAxis, PerGroup, Rounding
from ._reference import axis_index, compute_dtype, float_bound, int_bound


class Kind(enum.IntEnum):
    """The format family."""

    FIXED_POINT = 0
    BLOCK_FLOAT = 1
    FLOAT_FORMAT = 2
    MX_FLOAT = 3


class Block(enum.IntEnum):
    """How elements share an exponent: the whole tensor, per index along ``axis``, or tiles
    of ``size`` along ``axis``."""

    WHOLE = 0
    PER_AXIS = 1
    PER_GROUP = 2


class Params(NamedTuple):
    """The op's integer parameters, in the order of its ``int[] p``."""

    fl: int = 0  # FixedPoint: fractional bits
    wl: int = 0  # word length (FixedPoint, BlockFloat)
    emin: int = 0  # shared exponent range (BlockFloat, MXFloat)
    emax: int = 0
    offset: int = 0  # MXFloat: the element format's emax, subtracted from the block's exponent
    block: int = Block.WHOLE
    axis: int = 0  # in [0, ndim)
    man: int = 0  # FloatFormat / MX element: mantissa bits
    femin: int = 0  # its smallest normal exponent
    size: int = 1  # PER_GROUP tile size
    sat: int = 0  # FloatFormat / MX element: saturate (1) or overflow to inf (0)


class Bounds(NamedTuple):
    """The op's float parameters, in the order of its ``float[] f``."""

    qmin: float = 0.0
    qmax: float = 0.0
    big: float = 0.0


torch.library.define(
    "swalp::quantize",
    "(Tensor x, int kind, int[] p, float[] f, int rounding, int k0, int k1) -> Tensor",
)


@torch.library.register_fake("swalp::quantize")
def _fake(x, kind, p, f, rounding, k0, k1):
    return x.new_empty(x.shape)


# The same with the seed as a tensor (one int64 on the CPU): what torch.compile traces, the
# seed drawn by torch.randint inside the graph (swalp/nn/quantizer.py). Keys: seed_keys(seed).
torch.library.define(
    "swalp::quantize_seeded",
    "(Tensor x, int kind, int[] p, float[] f, int rounding, Tensor seed) -> Tensor",
)


@torch.library.register_fake("swalp::quantize_seeded")
def _fake_seeded(x, kind, p, f, rounding, seed):
    return x.new_empty(x.shape)


# Round straight into packed form: (codes, int8 exponents per block), as swalp/ops/packed.py
# keeps them: int8 codes of integer formats of at most 8 bits, float8 ones of E4M3, E5M2 and
# MXFP8. CPU (C++) and CUDA (Triton).
torch.library.define(
    "swalp::quantize_pack",
    "(Tensor x, int kind, int[] p, float[] f, int rounding, int k0, int k1) -> (Tensor, Tensor)",
)


@torch.library.register_fake("swalp::quantize_pack")
def _fake_pack(x, kind, p, f, rounding, k0, k1):
    return x.new_empty(x.shape, dtype=torch.int8), x.new_empty((0,), dtype=torch.int8)  # (integer formats)


# A PackedTensor's codes (int8 or float8) and int8 exponents per block back to float32, in one
# pass: code * 2^(e - shift) (swalp/ops/packed.py PackedTensor.unpack). ``block``, ``axis`` and
# ``size`` as Params; no exponents: one scale, 2^-shift. CPU (C++).
torch.library.define("swalp::unpack", "(Tensor codes, Tensor exps, int shift, int block, int axis, int size) -> Tensor")


@torch.library.register_fake("swalp::unpack")
def _fake_unpack(codes, exps, shift, block, axis, size):
    return codes.new_empty(codes.shape, dtype=torch.float32)


# In place, many tensors in one call: the optimizer rounds dozens of small tensors a step,
# where one call each costs more than the rounding. The parameters of tensor t are
# kind[t], p[len(Params) t : len(Params) (t + 1)], f likewise with Bounds, k0[t], k1[t]. CPU only.
torch.library.define(
    "swalp::quantize_many_",
    "(Tensor(a!)[] xs, int[] kind, int[] p, float[] f, int rounding, int[] k0, int[] k1) -> ()",
)


@torch.library.register_fake("swalp::quantize_many_")
def _fake_many(xs, kind, p, f, rounding, k0, k1):
    return None


# The Quantizer's rounding with its backward, in C++ (swalp/ops/cpu/csrc/ste.cpp; CPU): forward
# rounds x with (kind, p, f), backward rounds the gradient with (bkind, bp, bf); each draws
# its seed from torch's generator when it runs, as swalp.quantize(seed=None) would.
torch.library.define(
    "swalp::quantize_ste",
    "(Tensor x, int kind, int[] p, float[] f, int bkind, int[] bp, float[] bf, int rounding) -> Tensor",
)


@torch.library.register_fake("swalp::quantize_ste")
def _fake_ste(x, kind, p, f, bkind, bp, bf, rounding):
    return x.new_empty(x.shape)


def _block(block, ndim: int) -> tuple[Block, int, int]:
    """(block kind, axis in [0, ndim), tile size)."""
    if ndim == 0 or not isinstance(block, (PerAxis, PerGroup)):
        return Block.WHOLE, 0, 1
    axis = axis_index(block.axis, ndim)
    return (Block.PER_AXIS, axis, 1) if isinstance(block, PerAxis) else (Block.PER_GROUP, axis, block.size)


def pack(x: Tensor, fmt, rounding: Rounding, seed: int | None) -> tuple:
    """The op's arguments after ``x``: ``(kind, p, f, rounding, k0, k1)``."""
    kind, p, f = packed(fmt, x.dtype, x.dim())
    if rounding is Rounding.STOCHASTIC:
        return kind, p, f, 1, *seed_keys(seed)
    return kind, p, f, 0, 0, 0


@torch.compiler.assume_constant_result  # torch.compile: computed while tracing, a constant in the graph
def packed(fmt, dtype: torch.dtype, ndim: int) -> tuple[int, list[int], list[float]]:
    """``(kind, p, f)`` of ``fmt`` for tensors of ``dtype`` with ``ndim`` dimensions."""
    # Training reuses a handful of format objects dozens of times a step: remember their
    # packing by identity (hashing a nested frozen dataclass costs more than the lookup).
    key = (id(fmt), dtype, ndim)
    hit = _PACKED.get(key)
    if hit is None or hit[0] is not fmt:  # new, or another object that reused the id
        if len(_PACKED) > 1024:
            _PACKED.clear()
        hit = _PACKED[key] = (fmt, *_pack_format(fmt, compute_dtype(dtype), ndim))
    return hit[1:]


_PACKED: dict = {}  # (id(fmt), dtype, ndim) -> (fmt, kind, p, f); holding fmt keeps its id unique


def _pack_format(fmt, dtype: torch.dtype, ndim: int) -> tuple[int, list[int], list[float]]:
    if isinstance(fmt, FixedPoint):
        qmin, qmax = -(2 ** (fmt.wl - 1)), 2 ** (fmt.wl - 1) - 1
        kind, p, big = Kind.FIXED_POINT, Params(fl=fmt.fl, wl=fmt.wl), 0.0
    elif isinstance(fmt, BlockFloat):
        qmin, qmax = fmt.qmin, fmt.qmax
        block, axis, size = _block(fmt.block, ndim)
        kind, big = Kind.BLOCK_FLOAT, 0.0
        p = Params(wl=fmt.wl, emin=fmt.emin, emax=fmt.emax, block=block, axis=axis, size=size)
    elif isinstance(fmt, FloatFormat):
        qmin = qmax = 0
        kind, big = Kind.FLOAT_FORMAT, float_bound(fmt, dtype)
        p = Params(man=fmt.man, femin=fmt.emin, sat=int(fmt.saturate))
    elif isinstance(fmt, MXFloat):
        qmin = qmax = 0
        el = fmt.element
        block, axis, size = _block(fmt.block, ndim)
        kind, big = Kind.MX_FLOAT, float_bound(el, dtype)
        p = Params(emin=fmt.emin, emax=fmt.emax, offset=el.emax, block=block, axis=axis,
                   man=el.man, femin=el.emin, size=size, sat=int(el.saturate))
    else:
        raise TypeError(f"no kernel for {fmt!r}")
    f = Bounds(int_bound(qmin, dtype), int_bound(qmax, dtype), float(big))
    return int(kind), [int(v) for v in p], [float(v) for v in f]


def run_op(x: Tensor, fmt, rounding: Rounding, seed: int | None) -> Tensor:
    """Run ``swalp::quantize`` (whichever device kernel ``x`` dispatches to)."""
    return torch.ops.swalp.quantize.default(x, *pack(x, fmt, rounding, seed))


def run_op_seeded(x: Tensor, fmt, rounding: Rounding, seed: Tensor) -> Tensor:
    """Run ``swalp::quantize_seeded``: ``seed`` is one int64 on the CPU (or ignored for nearest)."""
    kind, p, f = packed(fmt, x.dtype, x.dim())
    return torch.ops.swalp.quantize_seeded.default(x, kind, p, f, int(rounding is Rounding.STOCHASTIC), seed)


# Formats whose every value (inf included) a float8 type holds: E4M3 "fn" has no inf, so only
# its saturating form; E5M2 either way.
_FP8 = (FloatFormat(4, 3, finite_only=True), FloatFormat(5, 2), FloatFormat(5, 2, saturate=False))


def kernel_packs(x: Tensor, fmt) -> bool:
    """Whether ``swalp::quantize_pack`` takes ``x`` and ``fmt``: float32 or float64 input and
    a format :func:`format_packs`."""
    return x.dtype in (torch.float32, torch.float64) and format_packs(fmt)


def format_packs(fmt) -> bool:
    """Whether the packing kernels hold ``fmt``: integer formats of up to 8 bits, E4M3, E5M2, MXFP8."""
    if isinstance(fmt, (FixedPoint, BlockFloat)):
        return fmt.wl <= 8
    element = fmt.element if isinstance(fmt, MXFloat) else fmt
    return element in _FP8


def run_op_pack(x: Tensor, fmt, rounding: Rounding, seed: int | None) -> tuple[Tensor, Tensor]:
    """Run ``swalp::quantize_pack``: ``(codes, exponents)``."""
    return torch.ops.swalp.quantize_pack.default(x, *pack(x, fmt, rounding, seed))


def kernel_unpacks(codes: Tensor, dtype: torch.dtype) -> bool:
    """Whether ``swalp::unpack`` takes these codes: int8 or float8 codes, float32 out."""
    return dtype == torch.float32 and codes.dtype in (torch.int8, torch.float8_e4m3fn, torch.float8_e5m2)


def unpack_args(codes: Tensor, exponents: Tensor | None, fmt) -> tuple[Tensor, list[int]]:
    """``swalp::unpack``'s arguments after the codes: the exponents (an empty int8 tensor for
    none) and ``[shift, block, axis, size]``."""
    block, axis, size = _block(getattr(fmt, "block", None), codes.dim())
    shift = fmt.fl if isinstance(fmt, FixedPoint) else fmt.wl - 2 if isinstance(fmt, BlockFloat) else 0
    exps = codes.new_empty((0,), dtype=torch.int8) if exponents is None else exponents
    return exps, [shift, int(block), axis, size]


def run_op_unpack(codes: Tensor, exponents: Tensor | None, fmt) -> Tensor:
    """Run ``swalp::unpack`` on a PackedTensor's codes and exponents (float32 out)."""
    exps, args = unpack_args(codes, exponents, fmt)
    return torch.ops.swalp.unpack.default(codes, exps, *args)


def run_op_many_(xs: list[Tensor], fmts: list, rounding: Rounding, seeds: list[int | None]) -> None:
    """Run ``swalp::quantize_many_``: ``x.copy_(run_op(x, fmt, rounding, seed))`` for each."""
    kinds, ps, fs, k0s, k1s = [], [], [], [], []
    for x, fmt, seed in zip(xs, fmts, seeds):
        kind, p, f, _, k0, k1 = pack(x, fmt, rounding, seed)
        kinds.append(kind), ps.extend(p), fs.extend(f), k0s.append(k0), k1s.append(k1)
    torch.ops.swalp.quantize_many_.default(xs, kinds, ps, fs, int(rounding is Rounding.STOCHASTIC), k0s, k1s)
