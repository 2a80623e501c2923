"""A DDP communication hook that averages gradients over the ranks sending 8-bit BFP codes.

``DistributedDataParallel`` hands a hook each gradient bucket (a flat float tensor); torch's
own ``allreduce_hook`` sums it in float32. :func:`bfp_allreduce_hook` sends one byte per
element instead, and the result is exact and the same bytes on every rank:

1. Each rank cuts each gradient of the bucket into blocks of ``size`` elements and finds each
   block's exponent ``floor(log2 max|g|)``; a MAX all-reduce of these int8 exponents (one
   byte per block) gives the shared exponent ``E`` of each block, so that every rank's values
   fit the shared grid of step ``2^(E - (wl - 2))`` (a block that holds a NaN or inf on any
   rank is marked).
2. Each rank rounds its gradients onto that grid (stochastically, seeded from (seed, step,
   parameter, rank)): int8 codes, at most ``2^(wl-1) - 1`` in magnitude.
3. An all-to-all of int8 chunks: rank ``j`` receives every rank's codes of chunk ``j`` and
   sums them in int32 (exact; no 8-bit type ever holds a sum), then rounds the mean
   ``sum / world`` back to an int8 code, with integer arithmetic (unbiased, seeded from
   (seed, step, parameter): the same bits whichever rank rounds it).
4. An all-gather of those int8 chunks; every rank decodes ``code * step``: the average.

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
from .._rng import check_seed, derive_seed, random_bits, seed_keys
from ..formats import BlockFloat, FixedPoint, PerAxis, PerGroup, PerTensor, Rounding, get_format
from ..ops import PackedTensor, cpu, pack
from ..ops._schema import packed
from ..ops._reference import floor_log2, pow2

__all__ = ["BFPCommState", "bfp_allreduce_hook", "register_bfp_hook"]

# Exponents sent: [-126, 126]. A block whose largest value is below 2^-126 rounds onto the grid
# of 2^-126 (to 0 or one step, unbiased); one at 2^127 or above saturates. 127 marks a block
# that holds a NaN or inf on some rank.
_EMIN, _EMAX, _NONFINITE = -126, 126, 127
_BUCKET_KEY = 0xB0C4  # a gradient's key when the state has no index for its parameter
_MEAN_KEY = 0x3EA7  # derive_seed key of the mean's rounding (the first rounding's key is the rank)
_MEAN_GRID = FixedPoint(8, 0)  # the mean's codes: integers in [-128, 127]
_BUCKET_BLOCK = 256  # the default block: one exponent byte per 256 codes


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
    grads = bucket.gradients()
    keys = [state.key(p, bucket.index(), j) for j, p in enumerate(bucket.parameters())]
    means = allreduce_mean([g.reshape(-1) for g in grads], keys, state, world, rank, group)
    out = torch.empty_like(buffer)
    for g, mean in zip(grads, means):  # each gradient is a view into the bucket's buffer
        start = (g.data_ptr() - buffer.data_ptr()) // buffer.element_size()
        out[start:start + g.numel()] = mean
    if bucket.is_last():
        state.step += 1
    fut = torch.futures.Future()
    fut.set_result(out)
    return fut


def allreduce_mean(grads: list[Tensor], keys: list[int], state: BFPCommState, world: int, rank: int,
                   group) -> list[Tensor]:
    """The mean over the ranks of each flat tensor in ``grads``, through 8-bit codes (float32).

    Each tensor is blocked on its own and rounded with seeds of its own ``key``, so the
    numbers do not depend on how DDP groups tensors into buckets (which changes after the
    first step, and would otherwise make a resumed run round differently).
    """
    wl, rounding = state.fmt.wl, state.rounding
    blocks = []
    for g in grads:
        n = g.numel()
        size = state.fmt.block.size if isinstance(state.fmt.block, PerGroup) else max(n, 1)
        x = torch.zeros(-(-n // size) * size, dtype=torch.float32, device=g.device)
        x[:n] = g
        blocks.append(x.view(-1, size))
    e = torch.cat([block_exponents(x) for x in blocks])
    dist.all_reduce(e, op=dist.ReduceOp.MAX, group=group)
    es = e.split([len(x) for x in blocks])
    codes = torch.cat([encode(x, ei, wl, rounding, derive_seed(state.seed, state.step, k, rank))
                       for x, ei, k in zip(blocks, es, keys)])  # fmt: skip
    chunk = -(-len(codes) // world)
    codes = torch.cat([codes, codes.new_zeros(world * chunk - len(codes))])
    received = torch.empty_like(codes)
    dist.all_to_all_single(received, codes, group=group)  # rank j gets every rank's chunk j
    total = received.view(world, chunk).to(torch.int32).sum(0)  # exact: no 8-bit type holds a sum
    mean = _mean_codes(total, world, blocks, keys, state, rank * chunk)
    gathered = torch.empty(world * chunk, dtype=torch.int8, device=codes.device)
    dist.all_gather_into_tensor(gathered, mean, group=group)
    state.bytes_sent += 2 * (world - 1) * chunk + 2 * (world - 1) * len(e) // world
    state.float32_bytes += 2 * (world - 1) * 4 * sum(g.numel() for g in grads) // world
    values = gathered[: sum(x.numel() for x in blocks)].split([x.numel() for x in blocks])
    return [decode(v.view(x.shape), ei, wl).reshape(-1)[: g.numel()] for v, x, ei, g in zip(values, blocks, es, grads)]


def _mean_codes(total: Tensor, world: int, blocks: list[Tensor], keys: list[int], state: BFPCommState,
                begin: int) -> Tensor:
    """:func:`round_mean` of this rank's chunk (elements ``[begin, begin + len(total))`` of the
    concatenated blocks), each tensor's elements rounded with bits drawn from (seed, step, its
    key) at its own element indices; the C++ kernel's stochastic fixed-point rounding where
    it runs (the same bits and the same decisions: module docstring of swalp/_rng.py)."""
    if state.rounding is Rounding.NEAREST:
        return round_mean(total, world, state.rounding, None)
    fast = total.is_cpu and cpu.load()
    mean = total.to(torch.float64) / world if fast else None  # float64: the kernel's decision u < frac is exact (_fast_round)
    out = torch.zeros(len(total), dtype=torch.int8, device=total.device)
    at = 0
    for x, k in zip(blocks, keys):
        lo, hi = max(begin, at), min(begin + len(total), at + x.numel())
        if lo < hi:
            seed = derive_seed(state.seed, state.step, k, _MEAN_KEY)
            piece = slice(lo - begin, hi - begin)
            if fast:
                out[piece] = _fast_round(mean[piece], seed, lo - at)
            else:
                out[piece] = round_mean(total[piece], world, state.rounding, random_bits(hi - lo, seed, x.device, lo - at))
        at += x.numel()
    return out


def _fast_round(mean: Tensor, seed: int, start: int) -> Tensor:
    """int8 stochastic rounding of ``mean`` (float64 ``total / world``) by the C++ kernel, with the
    bits ``random_bits`` gives elements ``start...``: offsetting the index adds to the first key
    (the hash adds it modulo 2^32; no carry for tensors and offsets below 2^31 elements). The
    decision ``u < frac`` (24-bit ``u``) is exact: ``frac = rem / world`` is never within 2^-53
    of a multiple of 2^-24 unless it is one, and those float64 holds exactly."""
    kind, p, f = packed(_MEAN_GRID, torch.float64, mean.dim())
    k0, k1 = seed_keys(seed)
    return torch.ops.swalp.quantize.default(mean, kind, p, f, 1, (k0 + start) & 0xFFFFFFFF, k1).to(torch.int8)


def check_world(world: int) -> int:
    """``world`` if an int32 holds the sum of that many int8 codes (every world there is)."""
    if world * 128 > 2**31 - 1:
        raise ValueError(f"the BFP all-reduce sums the ranks' int8 codes in int32, which holds at most "
                         f"{(2**31 - 1) // 128} of them; the world has {world} ranks")
    return world


# --- the arithmetic, one process (tests/test_comm.py checks it by hand) ---------------------


def block_exponents(x: Tensor) -> Tensor:
    """int8 ``floor(log2 max|block|)`` per row of ``x`` (blocks, size), within
    ``[_EMIN, _EMAX]``; ``_NONFINITE`` for a block holding a NaN or inf."""
    m = x.abs().amax(1)  # NaN if the block holds one
    finite = torch.isfinite(m)
    e = floor_log2(torch.where(finite & (m > 0), m, torch.ones_like(m))).clamp(_EMIN, _EMAX)
    e = torch.where(m > 0, e, torch.full_like(e, _EMIN))
    return torch.where(finite, e, torch.full_like(e, _NONFINITE)).to(torch.int8)


def encode(x: Tensor, e: Tensor, wl: int, rounding: Rounding, seed: int) -> Tensor:
    """int8 codes of ``x`` (blocks, size) on the grids of step ``2^(e - (wl - 2))``.

    Rounded by :func:`swalp.ops.pack` (the C++ kernel on the CPU) with one exponent per row,
    after an anchor ``2^e`` is appended to each row: every rank's row then has the shared
    exponent ``e`` (its own values are below ``2^(e+1)``). Blocks marked non-finite: zeros.
    """
    bad = e == _NONFINITE
    if bad.any():
        x = torch.where(bad.unsqueeze(1), torch.zeros_like(x), x)
    anchor = pow2(torch.where(bad, torch.zeros_like(e), e).unsqueeze(1), torch.float32)
    packed = pack(torch.cat([x, anchor], 1), BlockFloat(wl, block=PerAxis(0)), rounding, seed)
    return packed.codes[:, :-1].reshape(-1)


def round_mean(total: Tensor, world: int, rounding: Rounding, bits: Tensor) -> Tensor:
    """int8 ``R(total / world)`` for int32 sums of ``world`` codes, in integer arithmetic:
    stochastic, the floor plus one where ``r < rem / world`` for the top 24 of each element's
    32 random ``bits`` (``swalp._rng.random_bits``); nearest, ties to even (``bits`` unused)."""
    q = torch.div(total, world, rounding_mode="floor")
    rem = (total - q * world).to(torch.int64)
    if rounding is Rounding.STOCHASTIC:
        up = (bits >> 8) * world < rem * 2**24
    else:
        up = (2 * rem > world) | ((2 * rem == world) & (q % 2 == 1))
    return (q + up.to(q.dtype)).to(torch.int8)


def decode(codes: Tensor, e: Tensor, wl: int) -> Tensor:
    """float32 ``code * 2^(e - (wl - 2))`` per row of ``codes`` (blocks, size), by
    ``PackedTensor.unpack`` (the C++ kernel on the CPU); NaN for a block marked non-finite."""
    bad = e == _NONFINITE
    exps = torch.where(bad, torch.zeros_like(e), e)
    values = PackedTensor(codes, exps, BlockFloat(wl, block=PerAxis(0))).unpack()
    return torch.where(bad.unsqueeze(1), torch.full_like(values, float("nan")), values) if bad.any() else values
