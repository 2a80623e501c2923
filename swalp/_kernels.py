"""The ``swalp::quantize`` custom op that the fast backends implement.

One op, registered with :mod:`torch.library`, with one kernel per device: C++ for CPU
(:mod:`swalp._cpp`) and Triton for CUDA (:mod:`swalp._triton`), and a fake (meta)
implementation so that ``torch.compile`` can trace through it. A format is passed as
plain numbers (:func:`pack`), worked out here from the reference's own helpers so that
the kernels only ever see the reference's arithmetic, never a second copy of the
format rules.

Schema: ``quantize(Tensor x, int kind, int[] p, float[] f, int rounding, int k0, int k1)``

* ``kind``: 0 FixedPoint, 1 BlockFloat, 2 FloatFormat, 3 MXFloat.
* ``p`` (:data:`PARAMS`): fl, wl, emin, emax, offset, block, axis, man, femin, size, sat,
  where ``block`` is 0 whole tensor, 1 per index along ``axis``, 2 tiles of ``size``.
* ``f``: qmin, qmax (integer bounds as the compute dtype holds them), big (largest float).
* ``rounding``: 0 nearest, 1 stochastic; ``k0, k1``: the hash keys of the seed.

The result is contiguous, of ``x``'s shape and dtype. The op has no autograd formula:
callers quantize under ``no_grad`` (:func:`swalp.quantize`) or give rounding its own
backward (:class:`swalp.Quantizer`).

Example:
    >>> import torch, swalp
    >>> from swalp import _kernels
    >>> args = _kernels.pack(torch.zeros(2), swalp.FixedPoint(4, 2), swalp.Rounding.NEAREST, None)
    >>> args[:2]
    (0, [2, 4, 0, 0, 0, 0, 0, 0, 0, 1, 0])
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _reference
from .formats import BlockFloat, FixedPoint, FloatFormat, MXFloat, PerAxis, PerGroup, Rounding

PARAMS = ("fl", "wl", "emin", "emax", "offset", "block", "axis", "man", "femin", "size", "sat")

torch.library.define(
    "swalp::quantize",
    "(Tensor x, int kind, int[] p, float[] f, int rounding, int k0, int k1) -> Tensor",
)


@torch.library.register_fake("swalp::quantize")
def _fake(x, kind, p, f, rounding, k0, k1):
    return x.new_empty(x.shape)


# In place, many tensors in one call: the optimizer rounds dozens of small tensors a step,
# where one call each costs more than the rounding. The parameters of tensor t are
# kind[t], p[11t:11t+11], f[3t:3t+3], k0[t], k1[t] (same meaning as above). CPU only.
torch.library.define(
    "swalp::quantize_many_",
    "(Tensor(a!)[] xs, int[] kind, int[] p, float[] f, int rounding, int[] k0, int[] k1) -> ()",
)


@torch.library.register_fake("swalp::quantize_many_")
def _fake_many(xs, kind, p, f, rounding, k0, k1):
    return None


# The Quantizer's rounding with its backward, in C++ (swalp/csrc/ste.cpp; CPU): forward
# rounds x with (kind, p, f), backward rounds the gradient with (bkind, bp, bf); each draws
# its seed from torch's generator when it runs, as swalp.quantize(seed=None) would.
torch.library.define(
    "swalp::quantize_ste",
    "(Tensor x, int kind, int[] p, float[] f, int bkind, int[] bp, float[] bf, int rounding) -> Tensor",
)


@torch.library.register_fake("swalp::quantize_ste")
def _fake_ste(x, kind, p, f, bkind, bp, bf, rounding):
    return x.new_empty(x.shape)


def _block(block, ndim: int) -> tuple[int, int, int]:
    """(block kind, axis in [0, ndim), tile size)."""
    if ndim == 0 or not isinstance(block, (PerAxis, PerGroup)):
        return 0, 0, 1
    axis = _reference._axis(block.axis, ndim)
    return (1, axis, 1) if isinstance(block, PerAxis) else (2, axis, block.size)


def _element(fmt: FloatFormat, dtype: torch.dtype) -> dict:
    return dict(man=fmt.man, femin=fmt.emin, sat=int(fmt.saturate), big=_reference.float_bound(fmt, dtype))


def pack(x: Tensor, fmt, rounding: Rounding, seed: int | None) -> tuple:
    """The op's arguments after ``x``: ``(kind, p, f, rounding, k0, k1)``."""
    # Training reuses a handful of format objects dozens of times a step: remember their
    # packing by identity (hashing a nested frozen dataclass costs more than the lookup).
    key = (id(fmt), x.dtype, x.dim())
    packed = _PACKED.get(key)
    if packed is None or packed[0] is not fmt:  # new, or another object that reused the id
        if len(_PACKED) > 1024:
            _PACKED.clear()
        packed = _PACKED[key] = (fmt, *_pack_format(fmt, _reference.compute_dtype(x.dtype), x.dim()))
    _, kind, p, f = packed
    if rounding is Rounding.STOCHASTIC:
        return kind, p, f, 1, *_reference.seed_keys(seed)
    return kind, p, f, 0, 0, 0


_PACKED: dict = {}  # (id(fmt), dtype, ndim) -> (fmt, kind, p, f); holding fmt keeps its id unique


def _pack_format(fmt, dtype: torch.dtype, ndim: int) -> tuple[int, list[int], list[float]]:
    v = dict.fromkeys(PARAMS, 0)
    v["size"], qmin, qmax, big = 1, 0, 0, 0.0
    if isinstance(fmt, FixedPoint):
        kind, v["fl"], v["wl"] = 0, fmt.fl, fmt.wl
        qmin, qmax = -(2 ** (fmt.wl - 1)), 2 ** (fmt.wl - 1) - 1
    elif isinstance(fmt, BlockFloat):
        kind, v["wl"], v["emin"], v["emax"] = 1, fmt.wl, fmt.emin, fmt.emax
        qmin, qmax = fmt.qmin, fmt.qmax
        v["block"], v["axis"], v["size"] = _block(fmt.block, ndim)
    elif isinstance(fmt, FloatFormat):
        kind, el = 2, _element(fmt, dtype)
    elif isinstance(fmt, MXFloat):
        kind, el = 3, _element(fmt.element, dtype)
        v["emin"], v["emax"], v["offset"] = fmt.emin, fmt.emax, fmt.element.emax
        v["block"], v["axis"], v["size"] = _block(fmt.block, ndim)
    else:
        raise TypeError(f"no kernel for {fmt!r}")
    if kind >= 2:
        big = el.pop("big")
        v.update(el)
    f = [_reference.int_bound(qmin, dtype), _reference.int_bound(qmax, dtype), float(big)]
    return kind, [v[k] for k in PARAMS], f


def quantize(x: Tensor, fmt, rounding: Rounding, seed: int | None) -> Tensor:
    """Run the op (whichever device kernel ``x`` dispatches to)."""
    return torch.ops.swalp.quantize.default(x, *pack(x, fmt, rounding, seed))


def quantize_many_(xs: list[Tensor], fmts: list, rounding: Rounding, seeds: list[int | None]) -> None:
    """Run ``swalp::quantize_many_``: ``x.copy_(quantize(x, fmt, rounding, seed))`` for each."""
    kinds, ps, fs, k0s, k1s = [], [], [], [], []
    for x, fmt, seed in zip(xs, fmts, seeds):
        kind, p, f, _, k0, k1 = pack(x, fmt, rounding, seed)
        kinds.append(kind), ps.extend(p), fs.extend(f), k0s.append(k0), k1s.append(k1)
    torch.ops.swalp.quantize_many_.default(xs, kinds, ps, fs, int(rounding is Rounding.STOCHASTIC), k0s, k1s)
