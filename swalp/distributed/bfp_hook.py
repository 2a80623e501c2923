"""A DDP communication hook that averages gradients over the ranks sending 8-bit BFP codes.

``DistributedDataParallel`` hands a hook each gradient bucket (a flat float tensor); torch's
own ``allreduce_hook`` sums it in float32. :func:`bfp_allreduce_hook` sends one byte per
element instead, and the result is exact and the same bytes on every rank:

1. Each rank cuts each gradient of the bucket into blocks of ``size`` elements and finds each
   block's exponent ``floor(log2 max|g|)``; a MAX all-reduce of these int8 exponents (one
   byte per block) gives the shared exponent ``E`` of each block, so that every rank's values
   fit the shared grid of step ``2^(E - (wl - 2))`` (a block that holds a NaN or inf on any
   rank is marked; exponents are capped at 126, so a value of 2^127 or more saturates).
2. Each rank rounds its gradients onto that grid (stochastically, seeded from (seed, step,
   parameter, rank)): int8 codes in ``[-2^(wl-1), 2^(wl-1) - 1]``.
3. An all-to-all of int8 chunks: rank ``j`` receives every rank's codes of chunk ``j`` and
   sums them in int32 (exact; no 8-bit type ever holds a sum), then rounds the mean
   ``sum / world`` back to an int8 code, with integer arithmetic (unbiased, seeded from
   (seed, step, parameter): the same bits whichever rank rounds it).
4. An all-gather of those int8 chunks; every rank decodes ``code * step`` over the bucket:
   the average, in place, as torch's ``allreduce_hook`` returns its bucket.

The local steps (``_bfp_math.py``) are PyTorch definitions on any device and one C++ call per
bucket and step on the CPU (``swalp/ops/cpu/csrc/comm.cpp``), bit for bit the same.

Bytes sent per rank and bucket of ``n`` elements on ``w`` ranks: ``2 (w-1)/w n`` for the codes
and ``2 (w-1)/w n / size`` for the exponents (counted as ring collectives count), against
``8 (w-1)/w n`` for torch's float32 all-reduce: 0.25x plus ``0.25 / size``.

The two roundings are unbiased: the average's error is at most one grid step per rounding
(``2^(E - (wl - 2))`` each) and zero in expectation. A block with a NaN or inf in any rank's
gradient comes out NaN on every rank, so a training loop's NaN check still fires.

Example (two processes; any DDP model):
    >>> import torch.distributed as dist                               # doctest: +SKIP
    >>> ddp = torch.nn.parallel.DistributedDataParallel(model)          # doctest: +SKIP
    >>> state = swalp.distributed.register_bfp_hook(ddp, seed=0)        # doctest: +SKIP
    >>> state.bytes_sent, state.float32_bytes                           # doctest: +SKIP

Caveat: the collectives run one after another inside the hook (no overlap with the rest of
the backward pass, and the hook's Future is complete when it returns).
"""

# No "from __future__ import annotations": DDP reads the hook's annotations as objects.
import dataclasses

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .._checks import check_int
from .._rng import check_seed, derive_seed
from ..formats import BlockFloat, PerGroup, PerTensor, Rounding, get_format
from . import _bfp_math

__all__ = ["BFPCommState", "bfp_allreduce_hook", "register_bfp_hook"]

_BUCKET_KEY = 0xB0C4  # a gradient's key when the state has no index for its parameter
_MEAN_KEY = 0x3EA7  # derive_seed key of the mean's rounding (the first rounding's key is the rank)
_BUCKET_BLOCK = 256  # the default block: one exponent byte per 256 codes
# all_gather_into_tensor's new name in recent torch (the old one warns there).
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


@dataclasses.dataclass
class BFPCommState:
    """The hook's settings and counters (the ``state`` of ``ddp.register_comm_hook``).

    Args:
        fmt: a :class:`~swalp.formats.BlockFloat` of at most 8 bits (or its name), whose
            blocking is ``PerGroup(size)`` (blocks of ``size`` elements of each gradient,
            flattened) or ``PerTensor()`` (one block per gradient). Default: 8 bits, blocks of 256.
        seed: base of every rounding's seed: (seed, step, parameter, rank), and (seed, step,
            parameter) for the mean's rounding.
        rounding: "stochastic" (unbiased; the default) or "nearest".
        process_group: the group to average over (default: the whole world).

    Attributes:
        step: backward passes seen (the hook adds one after each last bucket; a training
            loop may set it before each step, so that a resumed run rounds as an unbroken one).
        bytes_sent: bytes this rank has sent (codes and exponents), and
        float32_bytes: what torch's float32 all-reduce of the same buckets sends.
    """

    fmt: BlockFloat | str = dataclasses.field(default_factory=lambda: BlockFloat(8, block=PerGroup(_BUCKET_BLOCK)))
    seed: int = 0
    rounding: Rounding | str = "stochastic"
    process_group: object = None
    step: int = 0
    bytes_sent: int = 0
    float32_bytes: int = 0
    param_index: dict = dataclasses.field(default_factory=dict, repr=False)

    def __post_init__(self):
        fmt = get_format(self.fmt)
        if not isinstance(fmt, BlockFloat) or fmt.wl > 8:
            raise ValueError(f"the BFP all-reduce carries block floating point of at most 8 bits in int8 codes, "
                             f"got {fmt!r}")
        if not isinstance(fmt.block, (PerGroup, PerTensor)):
            raise ValueError(f"a gradient bucket is a flat tensor: its blocking must be PerGroup(size) or "
                             f"PerTensor(), got {fmt.block!r}")
        self.fmt = fmt
        self.seed = check_seed(self.seed)
        self.rounding = Rounding.parse(self.rounding)
        check_int("step", self.step, 0)

    def key(self, param: Tensor, bucket: int, position: int) -> int:
        """The seed key of ``param``'s gradient: its index in the model (``param_index``, set by
        :func:`register_bfp_hook`), else its place in the bucket."""
        i = self.param_index.get(param)
        return i if i is not None else derive_seed(_BUCKET_KEY, bucket, position)


def register_bfp_hook(ddp: nn.Module, **settings) -> BFPCommState:
    """Register :func:`bfp_allreduce_hook` on ``ddp`` with a new :class:`BFPCommState`
    (``settings`` are its arguments) and return the state.

    Raises:
        ValueError: ``ddp`` is not a ``DistributedDataParallel`` module; bad settings.
    """
    if not isinstance(ddp, nn.parallel.DistributedDataParallel):
        raise ValueError(f"the BFP all-reduce is a DistributedDataParallel communication hook; got a "
                         f"{type(ddp).__name__}: wrap the model in DistributedDataParallel first")
    state = BFPCommState(**settings)
    state.param_index = {p: i for i, p in enumerate(ddp.module.parameters())}
    ddp.register_comm_hook(state, bfp_allreduce_hook)
    return state


def bfp_allreduce_hook(state: BFPCommState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Average ``bucket``'s gradients over the ranks with 8-bit codes (module docstring)."""
    group = state.process_group if state.process_group is not None else dist.group.WORLD
    world, rank = check_world(dist.get_world_size(group)), dist.get_rank(group)
    buffer = bucket.buffer()
    grads = bucket.gradients()  # views into the buffer
    keys = [state.key(p, bucket.index(), j) for j, p in enumerate(bucket.parameters())]
    starts = [(g.data_ptr() - buffer.data_ptr()) // buffer.element_size() for g in grads]
    allreduce_mean(buffer, [g.reshape(-1) for g in grads], starts, keys, state, world, rank, group)
    if bucket.is_last():
        state.step += 1
    fut = torch.futures.Future()
    fut.set_result(buffer)  # averaged in place, as torch's allreduce_hook does
    return fut


def allreduce_mean(out: Tensor, grads: list[Tensor], starts: list[int], keys: list[int], state: BFPCommState,
                   world: int, rank: int, group) -> Tensor:
    """Write the mean over the ranks of each flat tensor in ``grads``, through 8-bit codes, over
    ``out[start:start + numel]`` (the bucket: the C++ kernels take float32, other dtypes the
    PyTorch steps); returns ``out``.

    Each tensor is blocked on its own and rounded with seeds of its own ``key``, so the
    numbers do not depend on how DDP groups tensors into buckets (which changes after the
    first step, and would otherwise make a resumed run round differently).
    """
    wl, rounding = state.fmt.wl, state.rounding
    numels = [g.numel() for g in grads]
    sizes = [state.fmt.block.size if isinstance(state.fmt.block, PerGroup) else max(n, 1) for n in numels]
    e = _bfp_math.exponents(grads, sizes)
    dist.all_reduce(e, op=dist.ReduceOp.MAX, group=group)
    lengths = [_bfp_math.blocks_of(n, s) * s for n, s in zip(numels, sizes)]
    chunk = -(-sum(lengths) // world)
    seeds = [derive_seed(state.seed, state.step, k, rank) for k in keys]
    codes = _bfp_math.codes(grads, sizes, e, wl, rounding, seeds, world * chunk)
    received = torch.empty_like(codes)
    dist.all_to_all_single(received, codes, group=group)  # rank j gets every rank's chunk j
    segments, at, begin = [], 0, rank * chunk  # the tensors' pieces in this rank's chunk
    for n, k in zip(lengths, keys):
        lo, hi = max(begin, at), min(begin + chunk, at + n)
        if lo < hi:
            segments.append((hi - lo, derive_seed(state.seed, state.step, k, _MEAN_KEY), lo - at))
        at += n
    mean = _bfp_math.mean(received, world, segments, rounding)
    gathered = torch.empty(world * chunk, dtype=torch.int8, device=codes.device)
    _all_gather(gathered, mean, group=group)
    state.bytes_sent += 2 * (world - 1) * chunk + 2 * (world - 1) * len(e) // world
    state.float32_bytes += 2 * (world - 1) * 4 * sum(numels) // world
    return _bfp_math.decode_into(out, gathered, e, numels, sizes, starts, wl)


def check_world(world: int) -> int:
    """``world`` if an int32 holds the sum of that many int8 codes (every world there is)."""
    if world * 128 > 2**31 - 1:
        raise ValueError(f"the BFP all-reduce sums the ranks' int8 codes in int32, which holds at most "
                         f"{(2**31 - 1) // 128} of them; the world has {world} ranks")
    return world
