"""Data-parallel training with low-precision communication (``torch.distributed``).

:func:`bfp_allreduce_hook` is a ``DistributedDataParallel`` communication hook that averages
gradients over the ranks sending 8-bit block-floating-point codes, a quarter of the bytes of
torch's float32 all-reduce, exactly and with the same bytes on every rank;
:func:`register_bfp_hook` registers it. ``swalp train --comm bfp8`` uses it under torchrun.
"""

from .bfp_hook import BFPCommState, bfp_allreduce_hook, register_bfp_hook

__all__ = ["BFPCommState", "bfp_allreduce_hook", "register_bfp_hook"]
