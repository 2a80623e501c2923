"""Rounding a tensor onto a number format's grid: :func:`quantize` and its backends.

* ``_reference.py``: the definition, in plain PyTorch (the "reference" backend).
* ``_dispatch.py``: :func:`quantize`, the backend registry and the hot-path entry points.
* ``_schema.py``: the ``swalp::quantize`` custom ops (torch.library) the fast backends
  implement, and how a format becomes the ops' parameter vectors.
* ``cpu/``: C++ kernels for CPU tensors, built on first use ("cpp").
* ``triton/``: Triton kernels for CUDA tensors ("triton", where a GPU and triton exist).
* ``packed.py``: :func:`pack`, the same numbers stored as the format's codes (8 bits).

Importing this package registers the backends (nothing is compiled until first use).
Every backend is bit-identical to the reference, stochastic rounding included.

Example:
    >>> import torch
    >>> from swalp.ops import quantize
    >>> quantize(torch.tensor([0.3, -1.7]), "fixed8", "nearest")
    tensor([ 0.2969, -1.7031])
"""

from __future__ import annotations

from . import cpu, triton
from ._dispatch import FLOAT_DTYPES, Backend, backends, quantize, register_backend
from .packed import PackedTensor, pack

__all__ = ["Backend", "FLOAT_DTYPES", "PackedTensor", "backends", "pack", "quantize", "register_backend"]

register_backend(cpu.BACKEND)
if triton.available():  # pragma: no cover - needs a GPU
    triton.register()
