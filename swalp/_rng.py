"""Counter-based random bits and seed derivation: the one home of swalp's randomness.

Stochastic rounding of element ``i`` with seed ``s`` uses 32 bits that depend only on
``(s, i)`` (:func:`random_bits`), so a result is the same on any backend and any number
of threads. The C++ kernels (``swalp/ops/cpu/csrc/quant.h``, ``struct Rng``) and the
Triton kernels (``swalp/ops/triton/_kernels.py``, ``_round``) repeat :func:`random_bits`
bit for bit; ``tests/test_quantize.py`` pins its golden values.

Seeds of the training pieces are derived, never drawn at every call:
:func:`derive_seed` chains SplitMix64 over integer keys (the optimizer's (seed, step,
parameter, role), the average's (seed, update, parameter), each rank's generator).
:func:`draw_seed` is the one place that reads torch's global generator, for
``quantize(seed=None)`` and the Quantizer modules.

Not public.

Example:
    >>> hex(splitmix64(0))
    '0xe220a8397b1dcdaf'
    >>> random_bits(2, seed=0).tolist() == random_bits(3, seed=0)[:2].tolist()
    True
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor

from ._checks import is_int

_M32 = 0xFFFFFFFF
_M64 = 2**64 - 1
SEED_LIMIT = 2**64


# --- seeds ---------------------------------------------------------------------------


def splitmix64(seed: int) -> int:
    """One step of SplitMix64: spreads a user seed over 64 bits."""
    z = (seed + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def seed_keys(seed: int) -> tuple[int, int]:
    """The two 32-bit keys of the hash, from a seed in [0, 2^64)."""
    z = splitmix64(seed)
    return z & _M32, z >> 32


def derive_seed(seed: int, *keys: int) -> int:
    """A 64-bit seed from a base seed and integer keys (SplitMix64 chained over the keys)."""
    return chain_seed(splitmix64(seed), keys)


def chain_seed(z: int, keys) -> int:
    """``derive_seed(seed, *a, *b) == chain_seed(derive_seed(seed, *a), b)``: a training step
    derives its prefix once and chains each tensor's keys onto it."""
    for k in keys:
        z = splitmix64((z ^ (k & _M64)) & _M64)
    return z


def check_seed(seed) -> int:
    """``seed`` if it is an int in [0, 2^64); ValueError otherwise."""
    if not is_int(seed) or not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"seed must be an int in [0, 2**64) or None, got {seed!r}")
    return seed


_local = threading.local()


def check_generator(generator) -> torch.Generator | None:
    """``generator`` if it is a ``torch.Generator`` or None; ValueError otherwise."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


def draw_seed(generator: torch.Generator | None = None) -> int:
    """A seed from ``generator``, or else from torch's global generator (so
    ``torch.manual_seed`` repeats a run).

    The value of ``int(torch.randint(0, 2**62, (), generator=generator))``; from the global
    generator it is drawn into a reused (per-thread) tensor: allocating a one-element tensor
    and reading it back with ``.item()`` costs more than the draw itself in a training step.
    """
    if generator is not None:
        return int(torch.empty((), dtype=torch.int64).random_(0, 2**62, generator=generator))
    buf = getattr(_local, "seed", None)
    if buf is None:
        t = torch.empty((), dtype=torch.int64)
        buf = _local.seed = (t, t.numpy())  # the numpy view reads the value without a torch op
    buf[0].random_(0, 2**62)
    return int(buf[1])


# --- random bits ---------------------------------------------------------------------


def _mul32(x: Tensor, c: int) -> Tensor:
    # Low 32 bits of x * c without int64 overflow: split c into 16-bit halves.
    lo = x * (c & 0xFFFF)
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & _M32


def lowbias32(x: Tensor) -> Tensor:
    """Chris Wellons' 32-bit integer hash, on uint32 values held in int64."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def random_bits(numel: int, seed: int, device=None, start: int = 0) -> Tensor:
    """32 random bits per element ``i`` in ``[start, start + numel)``: ``h = H(H(i_lo + k0) ^ (i_hi + k1))``.

    ``H`` is :func:`lowbias32`, ``(k0, k1)`` = :func:`seed_keys` (seed), ``i_lo`` and
    ``i_hi`` the low and high 32 bits of ``i``; additions wrap modulo 2^32.
    Returns int64 values in [0, 2^32).
    """
    k0, k1 = seed_keys(seed)
    i = torch.arange(start, start + numel, dtype=torch.int64, device=device)
    h = lowbias32((i & _M32) + k0 & _M32)
    return lowbias32(h ^ (((i >> 32) + k1) & _M32))


def uniform(shape, seed: int, dtype=torch.float32, device=None) -> Tensor:
    """``u = (h >> 8) * 2^-24`` in [0, 1), 24 bits, exact in float32, of ``shape``."""
    numel = 1
    for n in shape:
        numel *= n
    return ((random_bits(numel, seed, device) >> 8).to(dtype) * 2.0 ** -24).reshape(shape)
