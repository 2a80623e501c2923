"""The "cpp" backend: C++ CPU kernels for the ``swalp::quantize`` ops, built on first use.

Three ops (declared in ``swalp/ops/_schema.py``): ``swalp::quantize`` (``fn``);
``swalp::quantize_many_``, which rounds a list of tensors in place in one call (``many``,
for the optimizer's dozens of small tensors); and ``swalp::quantize_ste``, the
:class:`swalp.nn.Quantizer`'s forward and backward as one C++ autograd node (``ste``).
``_build.py`` compiles them (about a minute, once per machine); without a working
compiler the backend warns once and computes with the reference, so results are the
same, only slower. ``swalp/ops/__init__.py`` registers :data:`BACKEND`.

Example:
    >>> import torch
    >>> from swalp.ops import quantize
    >>> x = torch.randn(1000)
    >>> a = quantize(x, "bfp8", "stochastic", seed=0, backend="cpp")
    >>> torch.equal(a, quantize(x, "bfp8", "stochastic", seed=0, backend="reference"))
    True
"""

from __future__ import annotations

import functools

import torch

from ..._checks import check_int
from ..._rng import seed_keys
from ...formats import Rounding
from .._dispatch import Backend
from .._reference import round_to_grid
from .._schema import (
    format_packs,
    kernel_packs,
    kernel_unpacks,
    pack,
    packed,
    run_op,
    run_op_many_,
    run_op_pack,
    run_op_seeded,
    run_op_unpack,
    unpack_args,
)
from ..packed import from_kernel
from ._build import failed, load

__all__ = ["BACKEND", "load", "set_output_pool"]


def set_output_pool(cap_bytes: int) -> int:
    """Cap the pool of freed large outputs the kernels keep for reuse; returns the old cap.

    The kernels' outputs of 4 MiB and more are kept for reuse when freed, up to 256 MiB
    (swalp/ops/cpu/csrc/output.cpp: a fresh output costs page faults that cost about as
    much as the rounding). That is memory the process holds: where memory matters more,
    lower the cap (0: no pool); what is cached beyond it is released at once. A setting
    of the whole process, as ``torch.set_num_threads`` is; without the kernels it does
    nothing and returns 0.

    Example:
        >>> old = set_output_pool(0)
        >>> set_output_pool(old)
        0
    """
    check_int("cap_bytes", cap_bytes, 0)
    if not load():
        return 0
    return int(torch.ops.swalp_cpu.output_pool(cap_bytes)[0])


def _fn(x, fmt, rounding, seed):
    if not load():
        return round_to_grid(x, fmt, rounding, seed)
    return run_op(x, fmt, rounding, seed)


def _seeded(x, fmt, rounding, seed):
    if not load():
        return round_to_grid(x, fmt, rounding, int(seed))
    return run_op_seeded(x, fmt, rounding, seed)


def _pack(x, fmt, rounding, seed):
    return run_op_pack(x, fmt, rounding, seed) if kernel_packs(x, fmt) and load() else None


def _unpack(codes, exponents, fmt, dtype):
    return run_op_unpack(codes, exponents, fmt) if kernel_unpacks(codes, dtype) and load() else None


@functools.cache
def torch_add_is_fma() -> bool:
    """Whether this torch's CPU ``add(alpha)`` is one fused multiply-add, in the vector body and the
    scalar tail, as csrc/sgd.cpp computes it (so on x86 with AVX2 or AVX-512, and on ARM; a build
    without FMA rounds twice, and the SGD step then takes the torch path)."""
    ones = torch.ones(67, dtype=torch.float32, device="cpu")  # whatever the default dtype and device
    x = (-ones).add(10 * ones, alpha=0.1)  # 10 * 0.1f = 1 + 2^-26
    return bool((x == 2.0**-26).all())


def _sgd(w, g, m, fmt_w, fmt_m, rounding, seeds, hyper):
    """swalp/ops/sgd.py packed_sgd in one C++ call (csrc/sgd.cpp); None where it does not apply."""
    heavy = hyper["momentum"] != 0
    if not (format_packs(fmt_w) and (not heavy or format_packs(fmt_m)) and torch_add_is_fma() and load()):
        return None
    inputs = [w, g] + ([m] if m is not None else [])
    if not all(kernel_unpacks(t.codes, torch.float32) and t.codes.is_cpu for t in inputs):
        return None
    args, tensors = [], []
    for t in (w, g, m if m is not None else g):  # no momentum yet: g fills its place, unread
        exps, u = unpack_args(t.codes, t.exponents, t.fmt)
        tensors += [t.codes, exps]
        args += u
    wkind, wp, wf = packed(fmt_w, torch.float32, w.codes.dim())
    mkind, mp, mf = packed(fmt_m if heavy else fmt_w, torch.float32, w.codes.dim())
    stochastic = rounding is Rounding.STOCHASTIC
    keys = [*seed_keys(seeds[0]), *seed_keys(seeds[1])] if stochastic else [0, 0, 0, 0]
    flags = int(hyper["nesterov"]) | 2 * int(hyper["maximize"]) | 4 * int(m is not None)
    numbers = [float(hyper[k]) for k in ("lr", "weight_decay", "momentum", "dampening")]
    wc, we, mc, me = torch.ops.swalp_cpu.sgd_packed(*tensors, args, numbers, flags, wkind, wp, wf, mkind, mp, mf,
                                                     int(stochastic), keys)
    return from_kernel(wc, we, fmt_w), from_kernel(mc, me, fmt_m) if heavy else None


def _many_(xs, fmts, rounding, seeds) -> None:
    if not load():
        for x, fmt, seed in zip(xs, fmts, seeds):
            x.copy_(round_to_grid(x, fmt, rounding, seed))
        return
    run_op_many_(xs, fmts, rounding, seeds)


def _ste(x, fwd, bwd, rounding):
    if not load():
        return None
    kind, p, f = pack(x, fwd, Rounding.NEAREST, None)[:3]  # the seeds are drawn in C++
    bkind, bp, bf = pack(x, bwd, Rounding.NEAREST, None)[:3]  # the gradient: x's dtype and shape
    return torch.ops.swalp.quantize_ste.default(x, kind, p, f, bkind, bp, bf, int(rounding is Rounding.STOCHASTIC))


def _supports(x, fmt) -> bool:
    return x.is_cpu and not failed()  # is_cpu, not device.type: this runs per tensor per step


BACKEND = Backend("cpp", _fn, _supports, priority=10, many=_many_, ste=_ste, seeded=_seeded, pack=_pack,
                  unpack=_unpack, sgd=_sgd)
