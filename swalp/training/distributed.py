"""Data-parallel training on ``torch.distributed``: ``torchrun --nproc_per_node N -m swalp train``.

Each of the N processes (ranks) holds the whole model and trains on its part of every batch.
:class:`~torch.nn.parallel.DistributedDataParallel` averages the fp32 gradients over the ranks
during the backward pass; only then does :class:`swalp.LowPrecisionOptimizer` round them
(``Q_G``) and take its step. :func:`swalp.training.train` calls the helpers below; each one is a
no-op on a single process (no ``WORLD_SIZE`` in the environment, or ``WORLD_SIZE=1``), so a
run that torchrun did not start is exactly what it was without this module.

Identical on every rank, bit for bit, although after DDP's start-up copy of rank 0's weights
(identical anyway) only gradients, batch-norm buffers and each epoch's bookkeeping (loss sums,
generator states for the checkpoint) travel between ranks:

* the data order of each epoch (a function of ``(seed, epoch)``); rank ``r`` takes a slice of
  every batch of ``batch_size`` (:func:`swalp.data.batches.shard`), so the global batches, the
  number of steps and the learning-rate schedule are those of a single process;
* the initial weights (torch's generator is seeded with ``seed`` before the model is built);
* the averaged gradients (an all-reduce hands every rank the same bytes), hence the rounded
  gradients, weights, momentum and accumulator: the optimizer's rounding seeds depend only on
  ``(seed, step, parameter, role)``;
* the weight average, its batch-norm refresh and every evaluation (each rank repeats them with
  the same fixed seed; only rank 0 writes files and prints).

Different on each rank: torch's global generator, which draws the seeds of the activation and
error quantizers (and of dropout and augmentation). Rank 0 keeps the single-process stream;
rank ``r > 0`` is reseeded from ``(seed, r)`` once the model is built (:func:`seed_rank`).
Batch-norm layers normalise with their rank's batch statistics (``batch_size / N`` examples),
as plain DDP does; their running statistics are rank 0's (DDP broadcasts them at every forward,
:func:`sync_buffers` after each epoch).

Example (two processes on this machine, CPU and gloo)::

    torchrun --nproc_per_node 2 -m swalp train --data digits --batch-size 64 --threads 1

Caveat: a checkpoint holds every rank's generator states; resuming with the same number of
processes is bit-identical to an uninterrupted run, with another number it continues the same
global batches and schedule, but not bit for bit (:func:`restore_rng`).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .._rng import derive_seed
from ..distributed import BFPCommState, register_bfp_hook
from ..data.batches import batches as _batches
from ..data.batches import shard
from .checkpoint import rng_state, set_rng_state

_RANK_KEY = 0xD157  # derive_seed key of the per-rank generators; part of a run's definition
_COMM_KEY = 0xC033  # derive_seed key of the gradient all-reduce's roundings
COMMS = ("fp32", "bfp8")  # how DDP averages gradients: torch's float32 all-reduce, or swalp.distributed's 8 bits


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """The number of processes: the process group's, else torchrun's ``WORLD_SIZE``, else 1."""
    return dist.get_world_size() if _initialized() else int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank: the process group's, else torchrun's ``RANK``, else 0."""
    return dist.get_rank() if _initialized() else int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """True on rank 0, the one process that writes files and prints (and on a single process)."""
    return rank() == 0


def active() -> bool:
    """True when this process trains in a group of more than one."""
    return _initialized() and dist.get_world_size() > 1


def init(device: torch.device) -> torch.device:
    """Join torchrun's process group (once) and return the device this rank trains on.

    Reads torchrun's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
    ``MASTER_PORT``. The backend is gloo for a CPU ``device``, nccl for CUDA, where rank
    ``r`` takes ``cuda:LOCAL_RANK`` whatever index ``device`` names. Without ``WORLD_SIZE``
    (or with 1) nothing happens and ``device`` is returned.

    Raises:
        ValueError: torchrun's variables are incomplete, or ``LOCAL_RANK`` names no GPU.
    """
    if world_size() <= 1:
        return device
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local} has no GPU: this machine has {torch.cuda.device_count()}; "
                             f"start at most that many processes per node (--nproc_per_node)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not _initialized():
        missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise ValueError(f"WORLD_SIZE is set but {', '.join(missing)} not: launch with torchrun "
                             f"(torchrun --nproc_per_node N -m swalp train ...)")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def shutdown() -> None:
    """Leave the process group, if there is one."""
    if _initialized():
        dist.destroy_process_group()


def check_batch_size(batch_size: int, n: int | None = None) -> None:
    """Raise ValueError unless every rank gets a part of every batch: ``batch_size`` must be a
    multiple of the number of processes, and the epoch's last batch (``n % batch_size``
    examples of ``n``) must have none or at least one per process."""
    w = world_size()
    if batch_size % w:
        raise ValueError(f"--batch-size {batch_size} is not divisible by the {w} processes: each takes "
                         f"batch_size / {w} examples a step, so that the global batch and the schedule are "
                         f"a single process's; accepted: a multiple of {w}")
    tail = 0 if n is None else n % batch_size
    if 0 < tail < w:
        raise ValueError(f"the last batch of each epoch has {tail} example(s) ({n} training examples, batch size "
                         f"{batch_size}), fewer than the {w} processes; change --batch-size or --limit-train")


def batches(dataset, order: Tensor, batch_size: int, device, num_workers: int = 0):
    """Yield ``(x, y, weight)`` for each batch of ``batch_size`` consecutive indices of ``order``.

    On one process: the whole batch and weight 1. Under torchrun: this rank's part
    (``batch_size / world_size`` examples) and ``weight = world_size * len(y) / len(batch)``.
    Scaling the rank's mean loss by ``weight`` makes DDP's mean over the ranks the mean over
    the batch; it is 1 except for an epoch's last batch when the ranks' parts differ in size.
    """
    if not active():
        for x, y in _batches(dataset, order, batch_size, device, num_workers):
            yield x, y, 1
        return
    w = world_size()
    check_batch_size(batch_size, len(order))
    sizes = [len(b) for b in order.split(batch_size)]
    parts = _batches(dataset, shard(order, batch_size, rank(), w), batch_size // w, device, num_workers)
    for (x, y), size in zip(parts, sizes, strict=True):
        yield x, y, w * len(y) / size


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in :class:`~torch.nn.parallel.DistributedDataParallel` (``model`` itself on
    one process). Call it with the model on ``device``; train and save ``model``, call the wrapper."""
    if not active():
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def compress(net: nn.Module, comm: str, seed: int) -> BFPCommState | None:
    """``comm="bfp8"``: register swalp.distributed's 8-bit all-reduce on the DDP wrapper ``net``
    and return its state (the training loop sets its ``step``); None for "fp32" or one process."""
    if comm == "fp32" or not isinstance(net, nn.parallel.DistributedDataParallel):
        return None
    return register_bfp_hook(net, seed=derive_seed(seed, _COMM_KEY))


def seed_rank(seed: int, *keys: int) -> None:
    """Give rank ``r > 0`` its own torch generator, seeded from ``(seed, r, *keys)``: the
    seeds of activation and error rounding (and dropout, augmentation) then differ between
    ranks. Rank 0 keeps its stream, the one a single process would have."""
    if active() and rank() > 0:
        torch.manual_seed(derive_seed(seed, _RANK_KEY, rank(), *keys))


def sum_steps(losses: list[Tensor], wrongs: list[Tensor], sizes: list[int]) -> tuple[list, list, list]:
    """Per step of an epoch, from each rank's mean loss, error count and number of examples:
    the same over the whole batch, on every rank (one all-reduce; the inputs on one process)."""
    if not active():
        return losses, wrongs, sizes
    n = torch.tensor(sizes, dtype=torch.float64, device=losses[0].device)
    total = torch.stack([torch.stack(losses).double() * n, torch.stack(wrongs).double(), n])
    dist.all_reduce(total)
    return list(total[0] / total[2]), list(total[1].long()), total[2].long().tolist()


@torch.no_grad()
def sync_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (batch-norm running statistics) to every rank."""
    if active():
        for b in model.buffers():
            dist.broadcast(b, src=0)


def rng_states() -> dict:
    """``{"rng_ranks": [the generator states of rank 0, 1, ...]}`` for a checkpoint; ``{}`` on
    one process. Every rank must call it (it gathers)."""
    if not active():
        return {}
    states = [None] * world_size()
    dist.all_gather_object(states, rng_state())
    return {"rng_ranks": states}


def restore_rng(state: dict, seed: int) -> None:
    """Restore this rank's generators from a checkpoint ``state``.

    Rank ``r`` takes the states rank ``r`` saved when the checkpoint has one per rank of this
    group (bit-identical resumption). Otherwise (a single-process checkpoint, or another number
    of processes) every rank takes the saved ``"rng"`` (rank 0's) and ranks ``r > 0`` are
    reseeded from ``(seed, r, epoch)``: a correct continuation, not a bit-identical one.
    """
    saved = state.get("rng_ranks")
    if active() and saved is not None and len(saved) == world_size():
        set_rng_state(saved[rank()])
        return
    set_rng_state(state["rng"])
    seed_rank(seed, state["epoch"])


def barrier() -> None:
    """Wait for every rank (so that all return once rank 0 has written its files)."""
    if active():
        dist.barrier()
