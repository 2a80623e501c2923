"""GPU helpers for the training loop: keep the accelerator busy, change nothing on a CPU.

Each helper is a no-op where it does not apply, so a loop can call them unconditionally:

* :func:`place_dataset`: in-memory data (a ``TensorDataset``: CIFAR, MNIST) is copied to the
  GPU once when it fits, so batches are sliced there (and augmented there, see
  :class:`swalp.data.cifar.CifarAugment`).
* :func:`prepare_model`: moves the model, optionally to channels-last memory format (faster
  convolutions on tensor cores) and through ``torch.compile``; turns on cuDNN autotuning.
* :func:`prepare_batch`: the matching layout for each input batch.

Example:
    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> ds = place_dataset(TensorDataset(torch.zeros(4, 3, 8, 8), torch.zeros(4)), torch.device("cpu"))
    >>> ds.tensors[0].device.type
    'cpu'

Caveat: ``torch.compile`` traces the model once per input shape (the last, smaller batch of an
epoch costs a second compilation). Quantized models compile with no graph break, equal to eager
bit for bit (tests/test_compile.py); whether it is faster depends on the model: measure
(``benchmarks/train_step.py --compile``, ``benchmarks/gpu_smoke.py --compile``).
``DataLoader`` options for file-based data are :func:`swalp.data.loader_options`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from .._checks import check_choice


def place_dataset(dataset: Dataset, device: torch.device, on_device: bool | str = "auto",
                  max_fraction: float = 0.25) -> Dataset:
    """Copy an in-memory ``TensorDataset`` to the GPU once; anything else is returned as is.

    Batches are then sliced on the GPU, with no host-to-device copy per step (CIFAR-10 as float32
    is 0.7 GB). Pinning the host tensors instead would not help: indexing a pinned tensor
    returns ordinary pageable memory, so the per-batch copy would still be synchronous.

    Args:
        dataset: the data set.
        device: where training runs.
        on_device: True copies; False leaves the data in host memory; ``"auto"`` copies when the
            tensors take at most ``max_fraction`` of the GPU's memory.
        max_fraction: the limit of ``"auto"``.

    Returns:
        a ``TensorDataset`` whose tensors live on ``device``, or ``dataset`` unchanged (a CPU
        device, not a ``TensorDataset``, not asked, or too big for ``"auto"``: then batches are
        copied one by one, or use a DataLoader with :func:`swalp.data.loader_options`).

    Raises:
        ValueError: ``on_device`` is not True, False or "auto".
    """
    check_choice("on_device", on_device, (True, False, "auto"))
    device = torch.device(device)
    if device.type != "cuda" or not isinstance(dataset, TensorDataset) or on_device is False:
        return dataset
    if on_device == "auto":
        nbytes = sum(t.numel() * t.element_size() for t in dataset.tensors)
        if nbytes > max_fraction * torch.cuda.get_device_properties(device).total_memory:
            return dataset
    return TensorDataset(*(t.to(device) for t in dataset.tensors))


def prepare_model(model: nn.Module, device: torch.device, channels_last: bool = False, compile: bool = False):
    """Move ``model`` to ``device``; optionally channels-last and ``torch.compile``.

    Args:
        model: the model (moved in place).
        device: target device.
        channels_last: store 4-D conv weights (and so activations) as NHWC.
        compile: wrap with ``torch.compile`` (returns an ``OptimizedModule`` sharing the
            parameters and ``state_dict`` keys prefixed ``_orig_mod.``: save ``model``, not the
            wrapper).

    Returns:
        the module to call in the training loop (``model`` itself unless ``compile``).
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile:
        return torch.compile(model)
    return model


def prepare_batch(x: Tensor, channels_last: bool = False) -> Tensor:
    """The input layout that matches :func:`prepare_model` (NHWC for 4-D inputs if ``channels_last``)."""
    if channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x
