"""Argument checks shared by every layer: one wording for every "bad value" error.

Each helper raises ``ValueError`` naming the argument, what is accepted and the value
given, and returns the value (so ``x = check_int("x", x, 1)`` reads as an assignment).
A ``bool`` is never accepted as a number: ``True`` is an ``int`` to Python, but a flag
passed where a count belongs is a mistake to report.

Not public: the library's modules import it; users see only the messages.

Example:
    >>> check_int("batch_size", 0, 1)
    Traceback (most recent call last):
    ...
    ValueError: batch_size must be an integer >= 1, got 0
"""

from __future__ import annotations

import math
from typing import Iterable


def is_int(value) -> bool:
    """True for an ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def _bound(lo, hi, lo_open: bool = False, hi_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f" in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f" {'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f" {'<' if hi_open else '<='} {hi}"
    return ""


def check_int(name: str, value, lo: int | None = None, hi: int | None = None, hint: str = "") -> int:
    """``value`` if it is an integer in ``[lo, hi]`` (either bound may be None)."""
    ok = is_int(value) and (lo is None or value >= lo) and (hi is None or value <= hi)
    if not ok:
        raise ValueError(f"{name} must be an integer{_bound(lo, hi)}{' ' + hint if hint else ''}, got {value!r}")
    return value


def check_number(name: str, value, lo: float | None = None, hi: float | None = None, *,
                 lo_open: bool = False, hi_open: bool = False) -> float:
    """``float(value)`` if it is a finite real number within the bounds (open where asked)."""
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (lo is None or (value > lo if lo_open else value >= lo))
          and (hi is None or (value < hi if hi_open else value <= hi)))
    if not ok:
        raise ValueError(f"{name} must be a finite number{_bound(lo, hi, lo_open, hi_open)}, got {value!r}")
    return float(value)


def check_choice(name: str, value, choices: Iterable):
    """``value`` if it is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; accepted: {', '.join(map(repr, choices))}")
    return value


def check_bool(name: str, value) -> bool:
    """``value`` if it is ``True`` or ``False`` (not a truthy string or number)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value
