"""Batches for the training loop: subsets, the per-epoch shuffle, each process's share of it,
and fast in-memory slicing."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Subset, TensorDataset

from .._checks import check_int


def loader_options(device: torch.device, num_workers: int = 0, prefetch_factor: int = 4) -> dict:
    """Keyword arguments for a ``DataLoader`` feeding ``device``.

    Pinned memory on a GPU; with workers, persistent workers (no re-fork every epoch) and
    ``prefetch_factor`` batches in flight per worker.

    Raises:
        ValueError: ``num_workers`` is negative or not an int.
    """
    check_int("num_workers", num_workers, 0)
    options = dict(num_workers=num_workers, pin_memory=torch.device(device).type == "cuda")
    if num_workers > 0:
        options.update(persistent_workers=True, prefetch_factor=prefetch_factor)
    return options


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


def shard(order: torch.Tensor, batch_size: int, rank: int, world_size: int) -> torch.Tensor:
    """Process ``rank``'s part of ``order``: a contiguous slice of each batch of ``batch_size``
    consecutive indices, ``batch_size / world_size`` of them. The last, shorter batch is split as
    evenly as possible, lower ranks taking one more. Cut into pieces of ``batch_size // world_size``,
    the result gives this rank's part of each batch in turn; the ranks' parts of a batch are
    disjoint and together make the batch, so the global batches are a single process's.

    Example:
        >>> shard(torch.arange(10), 4, 1, 2)  # batches [0 1 2 3] [4 5 6 7] [8 9]
        tensor([2, 3, 6, 7, 9])
    """
    if not 0 <= rank < world_size or batch_size % world_size:
        raise ValueError(f"need 0 <= rank < world_size and batch_size divisible by world_size, "
                         f"got rank {rank}, world_size {world_size}, batch_size {batch_size}")
    parts = [b.tensor_split(world_size)[rank] for b in order.split(batch_size)]
    return torch.cat(parts) if parts else order
