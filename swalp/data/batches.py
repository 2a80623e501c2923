"""Batches for the training loop: subsets, the per-epoch shuffle, and fast in-memory slicing."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Subset, TensorDataset

from ..accel import loader_options


def limit(dataset, n):
    """The first ``n`` examples of ``dataset`` (all of them when ``n`` is None)."""
    if n is None or n >= len(dataset):
        return dataset
    if isinstance(dataset, TensorDataset):
        return TensorDataset(*(t[:n] for t in dataset.tensors))
    return Subset(dataset, range(n))


def batches(dataset, order, batch_size, device, num_workers=0):
    """Yield ``(x, y)`` on ``device`` in the order of the index tensor ``order``."""
    if isinstance(dataset, TensorDataset):  # in memory: slicing beats a DataLoader by far
        order = order.to(dataset.tensors[0].device)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            x, y = (t[idx] for t in dataset.tensors)
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        return
    chunks = [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    options = {**loader_options(device, num_workers), "persistent_workers": False}  # a loader per epoch
    loader = DataLoader(dataset, batch_sampler=chunks, **options)
    for x, y in loader:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled order of epoch ``epoch``: a function of (seed, epoch) alone, so a resumed
    run needs no saved data-order generator."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
