"""``packed_sgd``: one step of ``torch.optim.SGD`` on a packed parameter. Not public.

The paper's optimizer (arXiv 1904.11943, Algorithm 1: SGD with momentum and weight decay)
for a parameter whose weights, gradient and momentum are all held packed
(``storage="packed"``, swalp/optim/_storage.py). The definition is in PyTorch: unpack the
three, run torch's own single-tensor SGD step on the floats (``torch.optim.sgd.sgd``, the
function ``torch.optim.SGD.step`` calls), and round the new weights and momentum straight
back into packed form with the seeds given. A backend with an ``sgd`` kernel does the same
in one call, reading codes and writing codes (C++ on the CPU:
swalp/ops/cpu/csrc/sgd.cpp), bit for bit; its float temporaries are one parameter's.

Example:
    >>> import torch
    >>> from swalp.formats import BlockFloat, PerAxis
    >>> fmt = BlockFloat(8, block=PerAxis(0))
    >>> w, g = pack(torch.randn(4, 3), fmt), pack(torch.randn(4, 3), fmt)
    >>> new_w, m = packed_sgd(w, g, None, fmt, fmt, "stochastic", (1, 2), lr=0.1, momentum=0.9)
    >>> ref_w, ref_m = packed_sgd(w, g, None, fmt, fmt, "stochastic", (1, 2), lr=0.1, momentum=0.9,
    ...                           backend="reference")
    >>> torch.equal(new_w.unpack(), ref_w.unpack()) and torch.equal(m.codes, ref_m.codes)
    True
"""

from __future__ import annotations

from torch.optim.sgd import sgd as _torch_sgd

from ..formats import Format, Rounding
from ._dispatch import pick_backend
from .packed import PackedTensor, pack

__all__ = ["packed_sgd"]


def packed_sgd(
    w: PackedTensor,
    g: PackedTensor,
    m: PackedTensor | None,
    fmt_w: Format,
    fmt_m: Format,
    rounding: Rounding | str,
    seeds: tuple[int, int],
    *,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
    backend: str | None = None,
) -> tuple[PackedTensor, PackedTensor | None]:
    """``torch.optim.SGD``'s step on packed ``w`` with packed gradient ``g`` and momentum ``m``.

    Args:
        w, g: the weights and the gradient, packed, of one shape.
        m: the momentum buffer, packed; None before the first step (it starts as the
            gradient with weight decay, as torch's does).
        fmt_w, fmt_m: the formats the new weights and momentum are rounded to (as
            :func:`swalp.recipes.param_format` gives them for this parameter).
        rounding, seeds: the rounding and the seeds of the two roundings ``(weights, momentum)``.
        lr, weight_decay, momentum, dampening, nesterov, maximize: as ``torch.optim.SGD``
            (plain Python numbers).
        backend: None (the fastest that applies) or ``"reference"``.

    Returns:
        ``(weights, momentum)``, packed; the momentum is None when ``momentum`` is 0 (torch
        keeps none).

    Raises:
        ValueError: a NaN in the new weights or momentum, for a format without a NaN code
        (the caller keeps float numbers then, as :func:`pack` explains).
    """
    rounding = Rounding(rounding)
    hyper = {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "dampening": dampening,
             "nesterov": nesterov, "maximize": maximize}  # fmt: skip
    kernel = None if backend == "reference" else pick_backend(backend, w.codes, fmt_w).sgd
    fast = None if kernel is None else kernel(w, g, m, fmt_w, fmt_m, rounding, seeds, hyper)
    if fast is not None:
        return fast
    return _reference(w, g, m, fmt_w, fmt_m, rounding, seeds, hyper)


def _reference(w, g, m, fmt_w, fmt_m, rounding, seeds, hyper) -> tuple[PackedTensor, PackedTensor | None]:
    """:func:`packed_sgd` in PyTorch: the definition the kernels follow."""
    weights, grad = w.unpack(), g.unpack()
    buffers = [None if m is None else m.unpack()]
    _torch_sgd([weights], [grad], buffers, foreach=False, fused=False, **hyper)
    new_w = pack(weights, fmt_w, rounding, seeds[0])
    return new_w, None if hyper["momentum"] == 0 else pack(buffers[0], fmt_m, rounding, seeds[1])
