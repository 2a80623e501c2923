"""A ReLU's saved output as one bit per element, and back. Not public.

:func:`relu_mask` keeps the one thing ``threshold_backward`` reads of a ReLU's output: where it
is not ``<= 0`` (so a NaN sets the bit), bit ``j % 8`` of byte ``j // 8`` for element ``j`` in
row-major order. :func:`relu_unmask` gives the zeros and ones back as a tensor of the output's
shape, of any dtype (uint8 for the backward: swalp/nn/saved.py). The torch code here is the definition; on the CPU one C++ pass each
(swalp/ops/cpu/csrc/mask.cpp), tested bit for bit against it (tests/test_saved.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import cpu


def relu_mask(t: Tensor, *, kernel: bool = True) -> Tensor:
    """uint8 of ``ceil(t.numel() / 8)`` bytes: the bits of ``~(t <= 0)``."""
    if kernel and t.is_cpu and cpu.load():
        return torch.ops.swalp_cpu.relu_mask(t)
    flat = torch.nn.functional.pad((~(t <= 0)).reshape(-1).to(torch.uint8), (0, (-t.numel()) % 8))
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=t.device)
    return (flat.view(-1, 8) * weights).sum(1, dtype=torch.uint8)


def relu_unmask(bits: Tensor, shape: torch.Size, dtype: torch.dtype, *, kernel: bool = True) -> Tensor:
    """The mask :func:`relu_mask` made, as zeros and ones of ``shape`` and ``dtype``."""
    if kernel and bits.is_cpu and cpu.load():
        return torch.ops.swalp_cpu.relu_unmask(bits, list(shape), dtype)
    unpacked = (bits.unsqueeze(1) >> torch.arange(8, dtype=torch.uint8, device=bits.device)) & 1
    return unpacked.view(-1)[: torch.Size(shape).numel()].view(shape).to(dtype)
