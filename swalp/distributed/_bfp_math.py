"""The BFP all-reduce's local arithmetic, one process: the definitions and their C++ kernels.

The hook (``bfp_hook.py``) does four local steps around its collectives, each over all the
gradients of a bucket. Every gradient is a flat float32 tensor cut into blocks of its own
``size`` (the last block padded with zeros); codes and exponents are concatenated in
gradient order.

1. :func:`exponents`: each block's int8 exponent (:func:`block_exponents`).
2. :func:`codes`: int8 codes on the shared exponents (:func:`encode`), padded to ``length``.
3. :func:`mean`: the int32 sum of the ranks' codes and its mean rounded back to int8
   (:func:`round_mean`), segment by segment of this rank's chunk.
4. :func:`decode_into`: the mean's values written over each gradient's place in the bucket
   (:func:`decode`).

The per-tensor functions are the definitions, in PyTorch (any device; ``tests/test_comm.py``
checks them by hand). On the CPU each step is one C++ call (``swalp/ops/cpu/csrc/comm.cpp``)
for the whole bucket, bit for bit the same (``tests/test_comm_kernels.py``); ``kernels=False``
asks for the definitions.

Not public.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._rng import random_bits, seed_keys, uniform
from ..formats import Rounding
from ..ops import cpu
from ..ops._reference import _round_int, floor_log2, pow2_mul

# Exponents sent: [-126, 126]. A block whose largest value is below 2^-126 rounds onto the grid
# of 2^-126 (to 0 or one step, unbiased); one at 2^127 or above saturates at the largest code.
# 127 marks a block that holds a NaN or inf on some rank.
EMIN, EMAX, NONFINITE = -126, 126, 127


# --- the definitions: one tensor's blocks (blocks, size) ------------------------------------


def block_exponents(x: Tensor) -> Tensor:
    """int8 ``floor(log2 max|block|)`` per row of ``x`` (blocks, size), within
    ``[EMIN, EMAX]``; ``NONFINITE`` for a block holding a NaN or inf."""
    m = x.abs().amax(1)  # NaN if the block holds one
    finite = torch.isfinite(m)
    e = floor_log2(torch.where(finite & (m > 0), m, torch.ones_like(m))).clamp(EMIN, EMAX)
    e = torch.where(m > 0, e, torch.full_like(e, EMIN))
    return torch.where(finite, e, torch.full_like(e, NONFINITE)).to(torch.int8)


def encode(x: Tensor, e: Tensor, wl: int, rounding: Rounding, seed: int) -> Tensor:
    """int8 codes ``clamp(R(x * 2^((wl - 2) - e)))`` of ``x`` (blocks, size), row by row, in
    ``[-2^(wl-1), 2^(wl-1) - 1]``, flat.

    ``e`` holds each row's shared exponent, at least the row's own (the MAX over the ranks),
    so the clamp acts only where a value rounds up to ``2^(wl-1)`` or is 2^127 or more (above
    the cap ``EMAX``): both saturate. Stochastic rounding of element ``i`` of the flattened
    ``x`` draws ``random_bits`` index ``i`` of ``seed``. Rows marked ``NONFINITE``: zeros.
    """
    bad = (e == NONFINITE).unsqueeze(1)
    shift = ((wl - 2) - torch.where(bad, 0, e.unsqueeze(1)).to(torch.int32)).expand_as(x)
    u = uniform(x.shape, seed, device=x.device) if rounding is Rounding.STOCHASTIC else None
    q = _round_int(torch.where(bad, 0.0, x.float()), shift, -(2 ** (wl - 1)), 2 ** (wl - 1) - 1, rounding, u)
    return q.to(torch.int8).reshape(-1)


def round_mean(total: Tensor, world: int, rounding: Rounding, bits: Tensor | None) -> Tensor:
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
    """float32 ``code * 2^(e - (wl - 2))`` per row of ``codes`` (blocks, size), in two exact
    power-of-two factors as ``PackedTensor.unpack``; NaN for a row marked ``NONFINITE``."""
    bad = (e == NONFINITE).unsqueeze(1)
    shift = (torch.where(bad, 0, e.unsqueeze(1)).to(torch.int32) - (wl - 2)).expand(codes.shape)
    values = pow2_mul(codes.float(), shift)
    return torch.where(bad, float("nan"), values)


# --- a bucket's gradients: the steps the hook takes ----------------------------------------


def blocks_of(n: int, size: int) -> int:
    """Blocks of ``size`` in a gradient of ``n`` elements."""
    return -(-n // size)


def _kernels(tensors: list[Tensor], kernels: bool) -> bool:
    return kernels and all(t.is_cpu and t.dtype == torch.float32 and t.is_contiguous() for t in tensors) and cpu.load()


def _rows(g: Tensor, size: int) -> Tensor:
    """``g`` (flat) as (blocks, size), the last block padded with zeros."""
    x = torch.zeros(blocks_of(g.numel(), size) * size, dtype=torch.float32, device=g.device)
    x[: g.numel()] = g
    return x.view(-1, size)


def exponents(grads: list[Tensor], sizes: list[int], kernels: bool = True) -> Tensor:
    """The int8 exponents of every block of every gradient (flat), concatenated."""
    if _kernels(grads, kernels):
        return torch.ops.swalp_cpu.comm_exponents(grads, sizes)
    return torch.cat([block_exponents(_rows(g, s)) for g, s in zip(grads, sizes)])


def codes(grads: list[Tensor], sizes: list[int], e: Tensor, wl: int, rounding: Rounding, seeds: list[int],
          length: int, kernels: bool = True) -> Tensor:
    """The int8 codes of every gradient on the exponents ``e`` (:func:`exponents`' layout),
    gradient ``t`` rounded with ``seeds[t]``, concatenated and padded with zeros to ``length``."""
    if _kernels(grads, kernels):
        keys = [k for s in seeds for k in seed_keys(s)] if rounding is Rounding.STOCHASTIC else [0] * 2 * len(grads)
        return torch.ops.swalp_cpu.comm_encode(grads, sizes, e, wl, length, int(rounding is Rounding.STOCHASTIC), keys)
    es = e.split([blocks_of(g.numel(), s) for g, s in zip(grads, sizes)])
    out = torch.cat([encode(_rows(g, s), ei, wl, rounding, seed) for g, s, ei, seed in zip(grads, sizes, es, seeds)])
    return torch.cat([out, out.new_zeros(length - len(out))])


def mean(received: Tensor, world: int, segments: list[tuple[int, int, int]], rounding: Rounding,
         kernels: bool = True) -> Tensor:
    """:func:`round_mean` of the int32 sums of ``received`` (``world`` rows of int8 codes, flat),
    piece by piece: ``segments`` are (length, seed, start): a piece of that length whose
    elements draw ``random_bits`` indices ``start...`` of that seed. The rest is padding: 0."""
    chunk = len(received) // world
    stochastic = rounding is Rounding.STOCHASTIC
    if received.is_cpu and kernels and cpu.load():
        flat = []
        for n, seed, start in segments:
            k0, k1 = seed_keys(seed) if stochastic else (0, 0)
            flat += [n, (k0 + start) & 0xFFFFFFFF, k1]  # an offset index adds to the first key (swalp/_rng.py)
        return torch.ops.swalp_cpu.comm_mean(received, world, flat, int(stochastic))
    total = received.view(world, chunk).to(torch.int32).sum(0)  # exact: no 8-bit type holds a sum
    out, at = torch.zeros(chunk, dtype=torch.int8, device=received.device), 0
    for n, seed, start in segments:
        bits = random_bits(n, seed, received.device, start) if stochastic else None
        out[at:at + n] = round_mean(total[at:at + n], world, rounding, bits)
        at += n
    return out


def decode_into(out: Tensor, codes: Tensor, e: Tensor, numels: list[int], sizes: list[int], starts: list[int],
                wl: int, kernels: bool = True) -> Tensor:
    """Write the values of the concatenated ``codes`` over ``out[start:start + numel]`` for each
    gradient; returns ``out``."""
    if _kernels([out], kernels) and codes.is_cpu:
        torch.ops.swalp_cpu.comm_decode_(out, codes, e, numels, sizes, starts, wl)
        return out
    at, block = 0, 0
    for n, s, start in zip(numels, sizes, starts):
        b = blocks_of(n, s)
        out[start:start + n] = decode(codes[at:at + b * s].view(b, s), e[block:block + b], wl).reshape(-1)[:n]
        at, block = at + b * s, block + b
    return out
