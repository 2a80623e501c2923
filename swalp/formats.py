"""Number formats: immutable values that say which grid a tensor is rounded to.

Four families, each a frozen dataclass that validates itself:

* :class:`FixedPoint` ``(wl, fl)``: one grid ``2^-fl`` for every element.
* :class:`BlockFloat` ``(wl, ebits, block)``: integers of ``wl`` bits sharing one
  power-of-two exponent per block (block floating point; MXINT8 is one).
* :class:`FloatFormat` ``(exp, man)``: a small IEEE-style float per element (FP8, bf16).
* :class:`MXFloat` ``(element, block, ebits)``: small floats sharing a power-of-two
  scale per block (OCP Microscaling MXFP8/6/4).

How a block is drawn is itself a value: :class:`PerTensor`, :class:`PerAxis` (one block
per index along an axis: per output channel, per row, per sample) or :class:`PerGroup`
(tiles of ``size`` consecutive elements along an axis, the MX layout; a ragged tail is
a block of its own).

Example:
    >>> from swalp.formats import BlockFloat, PerAxis
    >>> BlockFloat(8, block=PerAxis(0))
    BlockFloat(wl=8, ebits=8, block=PerAxis(axis=0))
    >>> get_format("e4m3")
    FloatFormat(exp=4, man=3, finite_only=True)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from typing import Union

from ._checks import check_bool, check_int

__all__ = [
    "BFLOAT16", "FLOAT16", "FORMAT_TYPES", "FP8_E4M3", "FP8_E5M2", "MXFP4_E2M1", "MXFP6_E2M3", "MXFP6_E3M2",
    "MXFP8_E4M3", "MXFP8_E5M2", "MXINT8", "PRESETS", "BlockFloat", "Blocking", "FixedPoint", "FloatFormat",
    "Format", "MXFloat", "PerAxis", "PerGroup", "PerTensor", "Rounding", "format_from_dict", "format_to_dict",
    "get_format",
]  # fmt: skip


class Rounding(str, enum.Enum):
    """How a value between two grid points picks one of them.

    ``NEAREST`` rounds half to even. ``STOCHASTIC`` picks the upper neighbour with
    probability ``(x - lower) / gap``, so it is unbiased inside the representable range.
    """

    NEAREST = "nearest"
    STOCHASTIC = "stochastic"

    @classmethod
    def parse(cls, value: "Rounding | str") -> "Rounding":
        if isinstance(value, Rounding):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            accepted = ", ".join(repr(r.value) for r in cls)
            raise ValueError(f"unknown rounding {value!r}; accepted: {accepted}") from None

    def __str__(self) -> str:
        return self.value


# --- blockings -----------------------------------------------------------------------


@dataclass(frozen=True)
class PerTensor:
    """One block: the whole tensor shares an exponent ("big block")."""


@dataclass(frozen=True)
class PerAxis:
    """One block per index along ``axis``; each block spans every other axis.

    ``PerAxis(0)`` on a conv weight ``(out, in, kh, kw)`` is one exponent per output
    channel; on activations ``(batch, ...)`` it is one exponent per sample. On a 1-D
    tensor it gives every element its own exponent.
    """

    axis: int = 0

    def __post_init__(self):
        check_int("axis", self.axis, -64, 63)


@dataclass(frozen=True)
class PerGroup:
    """Tiles of ``size`` consecutive elements along ``axis`` (MX uses 32 along the last).

    A length that is not a multiple of ``size`` leaves a shorter last tile, which is a
    block of its own.
    """

    size: int = 32
    axis: int = -1

    def __post_init__(self):
        # Bounded so that no kernel parameter overflows; a tile longer than its axis is one
        # tile of the whole axis, costing nothing extra (swalp/ops/_reference.py block_absmax).
        check_int("block size", self.size, 1, 2**31 - 1)
        check_int("axis", self.axis, -64, 63)


Blocking = Union[PerTensor, PerAxis, PerGroup]


def _check_block(block) -> None:
    if not isinstance(block, (PerTensor, PerAxis, PerGroup)):
        raise ValueError(f"block must be PerTensor(), PerAxis(axis) or PerGroup(size, axis), got {block!r}")


# --- formats -------------------------------------------------------------------------


@dataclass(frozen=True)
class FixedPoint:
    """Signed fixed point: word length ``wl`` bits, ``fl`` of them fractional.

    Grid ``2^-fl``; range ``[-2^(wl-fl-1), 2^(wl-fl-1) - 2^-fl]``.

    Args:
        wl: word length in bits, 2 to 32.
        fl: fractional bits, 0 to 64 (``fl >= wl`` gives a range below 1).
    """

    wl: int
    fl: int

    def __post_init__(self):
        check_int("wl", self.wl, 2, 32)
        check_int("fl", self.fl, 0, 64)

    @property
    def gap(self) -> float:
        return 2.0 ** -self.fl

    @property
    def max_value(self) -> float:
        return (2 ** (self.wl - 1) - 1) * self.gap

    @property
    def min_value(self) -> float:
        return -(2 ** (self.wl - 1)) * self.gap

    def with_bits(self, wl: int) -> "FixedPoint":
        """The same format with ``wl`` bits, keeping the integer bits ``wl - fl``."""
        return FixedPoint(wl, max(0, self.fl + wl - self.wl))


@dataclass(frozen=True)
class BlockFloat:
    """Block floating point: ``wl``-bit integers sharing one exponent per block.

    For a block with largest magnitude ``m``: ``e = clamp(floor(log2 m), -2^(ebits-1),
    2^(ebits-1) - 1)``, grid ``2^(e - (wl - 2))``, integers clamped to
    ``[-2^(wl-1), 2^(wl-1) - 1]`` (``[-(2^(wl-1) - 1), 2^(wl-1) - 1]`` if ``symmetric``,
    as MXINT8 does). Non-finite elements are left out of ``m``: NaN stays NaN and inf
    saturates, without touching the rest of the block.

    Caveat: with two's-complement integers (``symmetric=False``, the paper's choice)
    nearest rounding is not always idempotent: a value that rounds to ``qmin * gap`` =
    ``-2^(e+1)`` raises the block's exponent on a second pass.

    Args:
        wl: bits per element including the sign, 2 to 32.
        ebits: bits of the shared exponent, 1 to 8.
        block: :class:`PerTensor` (default), :class:`PerAxis` or :class:`PerGroup`.
        symmetric: drop the most negative integer.
    """

    wl: int
    ebits: int = 8
    block: Blocking = field(default_factory=PerTensor)
    symmetric: bool = False

    def __post_init__(self):
        check_int("wl", self.wl, 2, 32)
        check_int("ebits", self.ebits, 1, 8)
        _check_block(self.block)
        check_bool("symmetric", self.symmetric)

    def __repr__(self) -> str:
        extra = ", symmetric=True" if self.symmetric else ""
        return f"BlockFloat(wl={self.wl}, ebits={self.ebits}, block={self.block!r}{extra})"

    @property
    def emin(self) -> int:
        return -(2 ** (self.ebits - 1))

    @property
    def emax(self) -> int:
        return 2 ** (self.ebits - 1) - 1

    @property
    def qmax(self) -> int:
        return 2 ** (self.wl - 1) - 1

    @property
    def qmin(self) -> int:
        return -self.qmax if self.symmetric else -(2 ** (self.wl - 1))

    def with_bits(self, wl: int) -> "BlockFloat":
        return BlockFloat(wl, self.ebits, self.block, self.symmetric)


@dataclass(frozen=True)
class FloatFormat:
    """A small float: sign, ``exp`` exponent bits, ``man`` mantissa bits.

    IEEE-style bias ``2^(exp-1) - 1`` and subnormals. The top exponent is reserved for
    inf/NaN unless ``finite_only`` (OCP FP8 E4M3: only the all-ones pattern is NaN, so
    the largest value is 448; OCP FP6/FP4 have no NaN at all: ``has_nan=False``).
    Out-of-range values saturate to the largest finite value when ``saturate`` (the
    default) and become inf otherwise.

    Args:
        exp: exponent bits, 2 to 8.
        man: mantissa bits, 0 to 23 (man=0 needs finite_only=False or has_nan=False).
        finite_only: use the top exponent for numbers (OCP E4M3 "fn").
        saturate: clamp to +-max_value instead of overflowing to inf.
        has_nan: with finite_only, whether the all-ones pattern is NaN (E4M3) or a
            number (False: OCP FP6 E2M3/E3M2 and FP4 E2M1, max 7.5, 28 and 6).
    """

    exp: int
    man: int
    finite_only: bool = False
    saturate: bool = True
    has_nan: bool = True

    def __post_init__(self):
        check_int("exp", self.exp, 2, 8)
        check_int("man", self.man, 0, 23)
        for flag in ("finite_only", "saturate", "has_nan"):
            check_bool(flag, getattr(self, flag))
        if not self.has_nan and not self.finite_only:
            raise ValueError("has_nan=False needs finite_only=True: an IEEE-style top exponent holds inf and NaN")
        if self.finite_only and self.has_nan and self.man == 0:
            raise ValueError("finite_only needs man >= 1: with man=0 the top exponent would hold only NaN")

    def __repr__(self) -> str:
        extra = ", finite_only=True" if self.finite_only else ""
        extra += "" if self.saturate else ", saturate=False"
        extra += "" if self.has_nan else ", has_nan=False"
        return f"FloatFormat(exp={self.exp}, man={self.man}{extra})"

    @property
    def bias(self) -> int:
        return 2 ** (self.exp - 1) - 1

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal number (subnormals share its grid)."""
        return 1 - self.bias

    @property
    def emax(self) -> int:
        top = 2 ** self.exp - 1 if self.finite_only else 2 ** self.exp - 2
        return top - self.bias

    @property
    def max_value(self) -> float:
        # finite_only spends the all-ones mantissa of the top exponent on NaN (unless has_nan=False).
        frac = 2.0 - 2.0 ** (1 - self.man) if self.finite_only and self.has_nan else 2.0 - 2.0 ** -self.man
        return frac * 2.0 ** self.emax

    @property
    def wl(self) -> int:
        return 1 + self.exp + self.man


@dataclass(frozen=True)
class MXFloat:
    """OCP Microscaling float: ``element`` floats sharing a power-of-two scale per block.

    Scale exponent ``clamp(floor(log2 m) - element.emax, -(2^(ebits-1) - 1), 2^(ebits-1) - 1)``
    (E8M0 for ebits=8), then each element of ``x / scale`` is rounded to ``element``
    with saturation.

    Args:
        element: the per-element :class:`FloatFormat` (E4M3, E5M2, E2M3, E3M2, E2M1).
        block: default ``PerGroup(32, axis=-1)``.
        ebits: bits of the shared scale, 1 to 8.
    """

    element: FloatFormat
    block: Blocking = field(default_factory=lambda: PerGroup(32, -1))
    ebits: int = 8

    def __post_init__(self):
        if not isinstance(self.element, FloatFormat):
            raise ValueError(f"element must be a FloatFormat, got {self.element!r}")
        _check_block(self.block)
        check_int("ebits", self.ebits, 1, 8)

    @property
    def emax(self) -> int:
        return 2 ** (self.ebits - 1) - 1

    @property
    def emin(self) -> int:
        return -self.emax


Format = Union[FixedPoint, BlockFloat, FloatFormat, MXFloat]
FORMAT_TYPES = (FixedPoint, BlockFloat, FloatFormat, MXFloat)


# --- presets -------------------------------------------------------------------------

FP8_E4M3 = FloatFormat(4, 3, finite_only=True)
FP8_E5M2 = FloatFormat(5, 2)
BFLOAT16 = FloatFormat(8, 7)
FLOAT16 = FloatFormat(5, 10)
MXINT8 = BlockFloat(8, ebits=8, block=PerGroup(32, -1), symmetric=True)
MXFP8_E4M3 = MXFloat(FP8_E4M3)
MXFP8_E5M2 = MXFloat(FP8_E5M2)
MXFP6_E2M3 = MXFloat(FloatFormat(2, 3, finite_only=True, has_nan=False))
MXFP6_E3M2 = MXFloat(FloatFormat(3, 2, finite_only=True, has_nan=False))
MXFP4_E2M1 = MXFloat(FloatFormat(2, 1, finite_only=True, has_nan=False))

PRESETS: dict[str, Format] = {
    "fp8_e4m3": FP8_E4M3,
    "e4m3": FP8_E4M3,
    "fp8_e5m2": FP8_E5M2,
    "e5m2": FP8_E5M2,
    "bfloat16": BFLOAT16,
    "bf16": BFLOAT16,
    "float16": FLOAT16,
    "fp16": FLOAT16,
    "mxint8": MXINT8,
    "mxfp8_e4m3": MXFP8_E4M3,
    "mxfp8_e5m2": MXFP8_E5M2,
    "mxfp6_e2m3": MXFP6_E2M3,
    "mxfp6_e3m2": MXFP6_E3M2,
    "mxfp4_e2m1": MXFP4_E2M1,
    "bfp8": BlockFloat(8),
    "fixed8": FixedPoint(8, 6),
}


def get_format(name: str | Format) -> Format:
    """The preset called ``name`` (case-insensitive), or ``"bfp<W>"`` (block floating point of
    ``W`` bits, 2 to 32, one exponent per tensor); a format passes through.

    >>> get_format("mxint8")
    BlockFloat(wl=8, ebits=8, block=PerGroup(size=32, axis=-1), symmetric=True)
    >>> get_format("bfp12")
    BlockFloat(wl=12, ebits=8, block=PerTensor())
    """
    if isinstance(name, FORMAT_TYPES):
        return name
    key = str(name).lower().replace("-", "_")
    if key in PRESETS:
        return PRESETS[key]
    if key.startswith("bfp") and key[3:].isdigit() and 2 <= int(key[3:]) <= 32:
        return BlockFloat(int(key[3:]))
    raise ValueError(f"unknown format preset {name!r}; accepted: {', '.join(sorted(PRESETS))}, bfp<W> (W in 2..32)")


_TYPES = {t.__name__: t for t in (*FORMAT_TYPES, PerTensor, PerAxis, PerGroup)}


def format_to_dict(fmt: Format) -> dict:
    """``fmt`` as plain data (str, int, bool, dict): what a ``weights_only`` checkpoint holds.

    >>> format_to_dict(BlockFloat(8, block=PerAxis(0)))
    {'type': 'BlockFloat', 'wl': 8, 'ebits': 8, 'block': {'type': 'PerAxis', 'axis': 0}, 'symmetric': False}
    """
    if not isinstance(fmt, (*FORMAT_TYPES, PerTensor, PerAxis, PerGroup)):
        raise ValueError(f"not a format or blocking: {fmt!r}")
    out = {"type": type(fmt).__name__}
    for f in fields(fmt):
        v = getattr(fmt, f.name)
        out[f.name] = format_to_dict(v) if isinstance(v, (*FORMAT_TYPES, PerTensor, PerAxis, PerGroup)) else v
    return out


def format_from_dict(d: dict) -> Format:
    """The format :func:`format_to_dict` wrote (validated as any format is)."""
    if not isinstance(d, dict) or d.get("type") not in _TYPES:
        raise ValueError(f"not a format dict: {d!r}; accepted types: {', '.join(sorted(_TYPES))}")
    kwargs = {k: format_from_dict(v) if isinstance(v, dict) else v for k, v in d.items() if k != "type"}
    return _TYPES[d["type"]](**kwargs)
