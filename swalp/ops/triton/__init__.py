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

from ..._rng import seed_keys
from .._dispatch import Backend, register_backend
from .._schema import kernel_packs, run_op, run_op_pack, run_op_seeded, run_op_unpack
from ._launch import launch, launch_pack, launch_unpack

__all__ = ["available", "launch", "launch_pack", "launch_seeded", "launch_unpack", "register"]


def available() -> bool:
    """True where triton is installed and a CUDA device is visible."""
    return importlib.util.find_spec("triton") is not None and torch.cuda.is_available()


def launch_seeded(x, kind, p, f, rounding, seed):
    """``swalp::quantize_seeded``: the seed is one int64 on the CPU (read without a GPU sync)."""
    return launch(x, kind, p, f, rounding, *seed_keys(int(seed)))


def _pack(x, fmt, rounding, seed):
    return run_op_pack(x, fmt, rounding, seed) if kernel_packs(x, fmt) else None


def _unpack(codes, exponents, fmt, dtype):
    return run_op_unpack(codes, exponents, fmt) if codes.dtype == torch.int8 and dtype == torch.float32 else None


def register() -> None:  # pragma: no cover - needs a GPU
    """Implement ``swalp::quantize`` (and its seeded form) for CUDA and add the backend."""
    torch.library.impl("swalp::quantize", "cuda", launch)
    torch.library.impl("swalp::quantize_seeded", "cuda", launch_seeded)
    torch.library.impl("swalp::quantize_pack", "cuda", launch_pack)
    torch.library.impl("swalp::unpack", "cuda", launch_unpack)
    register_backend(Backend("triton", run_op, lambda x, fmt: x.device.type == "cuda", priority=20,
                             seeded=run_op_seeded, pack=_pack, unpack=_unpack))
