"""Quantization health: what rounding does to every tensor role of a training run, per layer.

:class:`QuantizationStats` watches a model's Quantizers (activations forward, errors backward)
and a :class:`~swalp.LowPrecisionOptimizer`'s roundings (weight, grad, momentum, acc) and, on
the steps it measures, records the figures of :func:`swalp.ops.stats.rounding_stats` per layer
and role: the fraction saturated, the fraction of nonzero elements flushed to zero, the SQNR
in dB and the largest magnitude over the format's largest value. A layer's parameters (weight
and bias) count together; a Quantizer counts for the layer it is attached to.

Cost: nothing on the steps it does not measure (the watched objects hold ``stats = None``
then); on a measured step, per rounded tensor one pass for its block maxima and one over it
and its rounding (swalp/ops/stats.py; a copy of it for the optimizer's in-place roundings),
and one host synchronisation at the step's end. Measuring changes no number of the run: the
roundings and their seeds are the same (tests/test_health.py).

What crosses a threshold is a problem (:meth:`QuantizationStats.problems`), reported with the
recipe change that would help:

* :data:`SATURATED_MAX`: more than 1 % of a role's elements clamped (a biased rounding);
* :data:`FLUSHED_MAX`: more than half of its nonzero elements rounded to zero;
* :data:`SQNR_MIN_DB`: a signal-to-quantization-noise ratio below 0 dB, i.e. rounding noise
  stronger than the signal (the paper's 8-bit block recipes give 20 to 50 dB on the models
  here: run ``swalp inspect``).

A problem is a warning, not a verdict. Stochastic rounding keeps flushed and noisy values
unbiased, and SWALP's averaging removes much of the noise: on the default model the 8-bit
``fixed8`` recipe flushes about 90 % of its errors, at -8 dB at the first step, and still
trains to 3 % test error; its 4-bit version, whose activations and weight updates are
damaged too, sits at chance (README, "What rounding does to each layer"). Saturation is the
one that biases: prefer advice that widens a range over advice that narrows one.

Caveats: under ``torch.compile`` the Quantizers are not measured (the optimizer's roles are);
a measured step with ``packed_activations`` keeps its saved activations in float. Where the
recipe's weights are its accumulator (``acc == weight``, the paper's recipes) their one rounding
is reported as ``acc``; ``weight`` appears only for a separate ``Q_W(a)``.

Example:
    >>> import torch, swalp
    >>> torch.manual_seed(0)
    <torch._C.Generator object at ...>
    >>> net = swalp.quantize_model(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2)), "paper")
    >>> opt = swalp.LowPrecisionOptimizer(torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9), seed=0)
    >>> with swalp.QuantizationStats(net, opt, every=2) as stats:
    ...     for _ in range(3):
    ...         net(torch.randn(4, 8)).square().mean().backward()
    ...         opt.step(); opt.zero_grad()
    >>> [r["step"] for r in stats.records], sorted(stats.records[0]["layers"]["0"])
    ([1, 3], ['acc', 'activation', 'error', 'grad', 'momentum'])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from .._checks import check_int
from ..formats import BlockFloat, FixedPoint, FloatFormat, Format, MXFloat, PerAxis, PerTensor
from ..nn import Quantizer
from ..ops.stats import combine_sums, rounding_sums, stats_from_sums
from .optimizer import LowPrecisionOptimizer

__all__ = ["FLUSHED_MAX", "ROLES", "SATURATED_MAX", "SQNR_MIN_DB", "Problem", "QuantizationStats", "advice",
           "new_warnings", "worst"]

ROLES = ("activation", "error", "weight", "grad", "momentum", "acc")  # the columns of a table
SATURATED_MAX = 0.01  # fraction of elements
FLUSHED_MAX = 0.5  # fraction of nonzero elements
SQNR_MIN_DB = 0.0


@dataclass(frozen=True)
class Problem:
    """A role of a layer whose figure crossed its threshold; ``advice`` says what would help."""

    layer: str
    role: str
    figure: str  # "saturated", "flushed" or "sqnr_db"
    value: float
    step: int
    advice: str

    def __str__(self) -> str:
        shown = f"{self.value:.3g} dB" if self.figure == "sqnr_db" else f"{100 * self.value:.3g} %"
        what = {"saturated": "saturated", "flushed": "of nonzero values flushed to zero", "sqnr_db": "SQNR"}[self.figure]
        return f"{self.role} of layer {self.layer!r}: {shown} {what} at step {self.step}; {self.advice}"


class QuantizationStats:
    """Record rounding statistics of ``model`` (and ``optimizer``) every ``every`` steps.

    Args:
        model: a model with :class:`swalp.Quantizer` modules (:func:`swalp.quantize_model`);
            its parameters name the optimizer's roles.
        optimizer: the training's optimizer, or None. A :class:`~swalp.LowPrecisionOptimizer`'s
            roundings are measured, also inside a wrapper that holds it as ``.optimizer``
            (Accelerate's); any torch optimizer's steps end each step (a post hook).
            Without one, call :meth:`step` after each training step.
        every: measure steps 1, 1 + every, 1 + 2 every, ... (a LowPrecisionOptimizer's step count,
            so a resumed run measures the steps it would have).
        on_record: called with each new record, e.g. to write it to a file.

    A record (``records``, one per measured step) is plain data:
    ``{"step": k, "layers": {layer: {role: {"saturated", "flushed", "sqnr_db", "max_ratio",
    "numel"}}}}``, layers in the model's order; an exact rounding has ``sqnr_db`` inf.

    It watches from construction on; use it as a context manager, or call :meth:`close` when
    done. Several backward passes before one optimizer step (gradient accumulation) count as
    one step: their roundings add up.
    """

    def __init__(self, model: nn.Module, optimizer: Optimizer | None = None, every: int = 1, on_record=None):
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
        if optimizer is not None and not isinstance(optimizer, Optimizer):
            raise ValueError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
        self.every = check_int("every", every, 1)
        self.model, self.optimizer, self.on_record = model, optimizer, on_record
        self.names: dict = {}  # Quantizer or Parameter -> its layer's name, in the model's order
        for fqn, m in model.named_modules():
            if isinstance(m, Quantizer):  # attached by quantize_model as `layer.quantizer`: the layer's
                self.names[m] = fqn.removesuffix(".quantizer") or "(model)"
            for name, p in m.named_parameters(recurse=False):
                self.names.setdefault(p, fqn or name)
        self.layers = list(dict.fromkeys(self.names.values()))
        self._quantizers = [m for m in self.names if isinstance(m, Quantizer)]
        self.records: list[dict] = []
        self.formats: dict[tuple[str, str], Format] = {}  # (layer, role) -> the format it rounds to
        self._sums: list[tuple[tuple[str, str], Tensor]] = []  # ((layer, role), sums) of this step
        self._lowp = _low_precision(optimizer)
        self._steps = self._lowp.steps if self._lowp is not None else 0
        # on the LowPrecisionOptimizer itself where there is one: a wrapper's step (Accelerate's) calls its step
        stepping = self._lowp if self._lowp is not None else optimizer
        self._hook = stepping.register_step_post_hook(lambda *_: self._end_step()) if stepping is not None else None
        self._watch(self._steps % self.every == 0)

    # --- collecting --------------------------------------------------------------------

    def record(self, owner, role: str, x: Tensor, y: Tensor, fmt: Format) -> None:
        """Called by a watched Quantizer or optimizer: ``y`` is the rounding of ``x`` to ``fmt``."""
        layer = self.names.get(owner)
        if layer is not None:  # a copy of a watched module (an average) is not this model's
            self._sums.append(((layer, role), rounding_sums(x, y, fmt)))
            self.formats.setdefault((layer, role), fmt)

    def step(self) -> None:
        """End a training step (only without an optimizer: its steps end them)."""
        if self.optimizer is not None:
            raise ValueError("this QuantizationStats ends a step at each optimizer step; step() is for use without one")
        self._end_step()

    def _end_step(self) -> None:
        self._steps = self._lowp.steps if self._lowp is not None else self._steps + 1
        if self._sums:
            rows = torch.stack([t for _, t in self._sums]).cpu().tolist()  # one sync, then plain floats
            totals: dict = {}
            for (key, _), row in zip(self._sums, rows):
                totals[key] = row if key not in totals else combine_sums(totals[key], row)
            by_key = {k: stats_from_sums(t, self.formats[k]) for k, t in totals.items()}
            layers = {layer: {r: by_key[layer, r] for r in ROLES if (layer, r) in by_key} for layer in self.layers}
            record = {"step": self._steps, "layers": {k: v for k, v in layers.items() if v}}
            self.records.append(record)
            self._sums = []
            if self.on_record is not None:
                self.on_record(record)
        self._watch(self._steps % self.every == 0)

    def _watch(self, on: bool) -> None:
        """Point the watched objects at this collector for the next step (or not)."""
        for q in self._quantizers:
            q.stats = self if on else None
        if self._lowp is not None:
            self._lowp.stats = self if on else None

    def close(self) -> None:
        """Stop watching (a step in progress is not recorded)."""
        self._watch(False)
        self._sums = []
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def __enter__(self) -> "QuantizationStats":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __deepcopy__(self, memo) -> "QuantizationStats":
        return self  # a collector is not part of what it watches (a model copied mid-step)

    # --- reading -----------------------------------------------------------------------

    def problems(self, records: list[dict] | None = None) -> list[Problem]:
        """Every (layer, role, figure) that crossed its threshold in ``records`` (default: all),
        once each, at its worst step; in the model's layer order. The advice allows for the
        largest value the role reached in any of them."""
        records = self.records if records is None else records
        found: dict[tuple, tuple[float, int]] = {}
        peak: dict[tuple, float] = {}
        for r in records:
            for layer, roles in r["layers"].items():
                for role, s in roles.items():
                    peak[layer, role] = max(peak.get((layer, role), 0.0), s["max_ratio"])
                    for figure, value in _crossings(s):
                        old = found.get((layer, role, figure))
                        if old is None or _worse(figure, value, old[0]):
                            found[layer, role, figure] = (value, r["step"])
        order = {layer: i for i, layer in enumerate(self.layers)}
        keys = sorted(found, key=lambda k: (order.get(k[0], len(order)), ROLES.index(k[1]), _FIGURES.index(k[2])))
        return [Problem(layer, role, figure, *found[layer, role, figure],
                        advice(role, self.formats.get((layer, role)), figure, peak[layer, role]))
                for layer, role, figure in keys]


_FIGURES = ("saturated", "flushed", "sqnr_db")


def _low_precision(optimizer) -> LowPrecisionOptimizer | None:
    """The LowPrecisionOptimizer in ``optimizer``, or inside the wrappers around it (``.optimizer``)."""
    while optimizer is not None and not isinstance(optimizer, LowPrecisionOptimizer):
        optimizer = getattr(optimizer, "optimizer", None)
    return optimizer


def new_warnings(problems: list[Problem], warned: set) -> list[str]:
    """One warning per kind of problem (role and figure) not in ``warned`` (which it updates):
    the worst layer's problem, and how many more layers have it."""
    by_kind: dict[tuple[str, str], list[Problem]] = {}
    for p in problems:
        by_kind.setdefault((p.role, p.figure), []).append(p)
    lines = []
    for kind, found in by_kind.items():
        if kind not in warned:
            warned.add(kind)
            p = min(found, key=lambda q: q.value) if kind[1] == "sqnr_db" else max(found, key=lambda q: q.value)
            lines.append(f"{p}" + (f" (and {len(found) - 1} more layers)" if len(found) > 1 else ""))
    return lines


def _crossings(s: dict):
    if s["saturated"] is not None and s["saturated"] > SATURATED_MAX:
        yield "saturated", s["saturated"]
    if s["flushed"] is not None and s["flushed"] > FLUSHED_MAX:
        yield "flushed", s["flushed"]
    if s["sqnr_db"] is not None and s["sqnr_db"] < SQNR_MIN_DB:
        yield "sqnr_db", s["sqnr_db"]


def _worse(figure: str, a: float, b: float) -> bool:
    return a < b if figure == "sqnr_db" else a > b


def worst(records: list[dict]) -> dict:
    """Per figure, the worst ``{"layer", "role", "value", "step"}`` over ``records``: the lowest
    SQNR, the most flushed, the most saturated, the largest ``max_ratio``."""
    out: dict = {}
    for r in records:
        for layer, roles in r["layers"].items():
            for role, s in roles.items():
                for figure in ("sqnr_db", "flushed", "saturated", "max_ratio"):
                    v = s[figure]
                    if v is not None and not (isinstance(v, float) and math.isinf(v)) and (
                            figure not in out or _worse(figure, v, out[figure]["value"])):
                        out[figure] = dict(layer=layer, role=role, value=v, step=r["step"])
    return out


def advice(role: str, fmt: Format | None, figure: str, max_ratio: float) -> str:
    """The recipe change that would help ``role`` (rounded to ``fmt``) with ``figure``."""
    field = f"Recipe.{role}"
    if figure == "saturated":
        if isinstance(fmt, FixedPoint):
            k = max(1, math.ceil(math.log2(max_ratio))) if max_ratio > 0 else 1
            if fmt.fl >= k:
                return f"{field} = {FixedPoint(fmt.wl, fmt.fl - k)!r} holds the largest value seen ({_bits(k, 'fewer')})"
            return f"a {field} with more bits, or block floating point (an exponent that follows the range)"
        if isinstance(fmt, FloatFormat):
            return f"a {field} with more exponent bits (e.g. E5M2), or a scale shared per block (MXFloat)"
        if isinstance(fmt, MXFloat):
            return f"{field} as BlockFloat (MX's shared scale leaves the top of each block above the element's range)"
        return f"a {field} with more exponent bits (ebits) or smaller blocks"
    if isinstance(fmt, FixedPoint):
        room = math.floor(-math.log2(max_ratio)) if 0 < max_ratio < 1 else 0
        fix = f"{field} in block floating point (an exponent that follows the range, as 'paper') or with more bits"
        if room >= 1:  # more fractional bits fit what was seen; later, larger values would saturate (biased)
            return (f"{fix}; {field} = {FixedPoint(fmt.wl, fmt.fl + room)!r} ({_bits(room, 'more')}) holds the "
                    "largest value seen so far, but larger ones later would saturate")
        return f"{fix}"
    if isinstance(fmt, BlockFloat) and isinstance(fmt.block, PerTensor):
        return f"{field} = {BlockFloat(fmt.wl, fmt.ebits, PerAxis(0), fmt.symmetric)!r} (an exponent per row or sample) or more bits"
    return f"a {field} with more bits (--bits) or smaller blocks"


def _bits(n: int, word: str) -> str:
    return f"{n} {word} fractional bit" + ("s" if n != 1 else "")
