"""The "triton" backend: the ``swalp::quantize`` op on CUDA tensors, in Triton.

``swalp/ops/__init__.py`` calls :func:`register` where :func:`available` (triton imports
and CUDA is there); triton itself is imported on first use, so ``import swalp`` stays
fast. ``_launch.py`` runs the kernels of ``_kernels.py``; it also runs under
``TRITON_INTERPRET=1`` on CPU tensors, which is how they are tested without a GPU
(``tests/test_kernels.py``); ``benchmarks/gpu_quantize.py`` checks and times them on a GPU.
"""

from __future__ import annotations

import importlib.util

import torch

from .._dispatch import Backend, register_backend
from .._schema import run_op
from ._launch import launch

__all__ = ["available", "launch", "register"]


def available() -> bool:
    """True where triton is installed and a CUDA device is visible."""
    return importlib.util.find_spec("triton") is not None and torch.cuda.is_available()


def register() -> None:  # pragma: no cover - needs a GPU
    """Implement ``swalp::quantize`` for CUDA with :func:`launch` and add the backend."""
    torch.library.impl("swalp::quantize", "cuda", launch)
    register_backend(Backend("triton", run_op, lambda x, fmt: x.device.type == "cuda", priority=20))
