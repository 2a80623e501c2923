"""The runner shared by the convex experiments: SGD and SWA, in full and low precision.

One call of :func:`run_methods` trains every method of the paper's convex experiments
on one problem, as a batch: ``R`` independent replicates times ``1 + len(F_values)``
trajectories (one full-precision SGD run, one low-precision run per ``F``), all
drawing the same minibatches within a replicate (common random numbers, so the
methods differ only by their arithmetic).

* SGD-FP: ``w <- w - step * g`` in float64 (the data and gradients are float64 too,
  so that every difference between the methods is the rounding under study).
* SGD-LP: ``w <- Q_F(w - step * g)`` with ``Q_F`` = :func:`swalp.quantize` onto
  ``FixedPoint(F + 2, F)``, stochastic rounding; the seed of step ``t`` is
  :func:`rounding_seed` ``(seed, F, t)``. There is no full-precision copy of ``w``.
* SWA-FP / SWALP: the equal-weight average of the SGD-FP / SGD-LP iterates
  ``w_t, T/2 < t <= T`` (:class:`swalp.optim.WeightAverage`, kept in float64
  because the iterates are).

A run of length ``T`` and one of length ``2T`` share their first ``T`` steps (constant
step size), and their averaging windows ``(T/2, T]`` and ``(T, 2T]`` are disjoint. So
one trajectory of ``T_max`` steps, with one :class:`WeightAverage` per window
``(2^(k-1), 2^k]``, gives the result of every run of length ``T = 2^k <= T_max``: what
the dist2-against-iterations curves plot for the averaged methods.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from ...formats import FixedPoint
from ...ops import quantize
from ...optim import WeightAverage
from ..methods import METHODS


def fixed_format(F: int) -> FixedPoint:
    """``FixedPoint(F + 2, F)``: grid ``2^-F``, range ``[-2, 2 - 2^-F]``."""
    return FixedPoint(F + 2, F)


def rounding_seed(seed: int, F: int, t: int) -> int:
    """The stochastic-rounding seed of step ``t`` of the run with ``F`` fractional bits.

    ``seed`` in the top 24 bits, ``F`` in the next 8, ``t`` in the low 32: distinct for
    every (seed, F, t), and :func:`swalp.quantize` hashes it (SplitMix64) so neighbouring
    seeds give independent streams.
    """
    return (seed << 40) | (F << 32) | t


@dataclass
class Problem:
    """What the runner needs to know about an objective ``f(W)``, ``W`` of shape ``shape``.

    Args:
        name: for messages.
        n: number of training examples; minibatches are drawn from ``range(n)``.
        grad: ``grad(W, idx) -> G``: the minibatch gradient; ``W`` is ``(R, M, *shape)``
            float64, ``idx`` is ``(R, B)`` int64 (replicate ``r`` uses ``idx[r]``).
        w_star: the optimum, ``shape``, float64.
        loss: ``loss(W) -> (R, M)`` full-data objective in float64, or None (not recorded).
        f_star: ``loss`` at ``w_star``.
    """

    name: str
    n: int
    grad: Callable[[Tensor, Tensor], Tensor]
    w_star: Tensor
    loss: Callable[[Tensor], Tensor] | None = None
    f_star: float | None = None


@dataclass(frozen=True)
class RunSpec:
    """How the methods are run. ``T_values`` must be powers of two (see the module docstring)."""

    F_values: tuple[int, ...]
    T_values: tuple[int, ...]
    step: float
    batch: int
    replicates: int
    seed: int

    def __post_init__(self):
        for T in self.T_values:
            if T < 2 or T & (T - 1) or T > 2**31:
                raise ValueError(f"every T must be a power of two in [2, 2**31], got {T}")
        for F in self.F_values:
            if not 1 <= F <= 30:
                raise ValueError(f"F must be in [1, 30], got {F}")
        if not 0 <= self.seed < 2**24:
            raise ValueError(f"seed must be in [0, 2**24), got {self.seed}")
        if self.replicates < 1 or self.batch < 1 or not self.step > 0:
            raise ValueError(f"need replicates >= 1, batch >= 1, step > 0; got {self.replicates}, {self.batch}, {self.step}")


@contextmanager
def one_thread():
    """Run torch ops on one thread, then restore the setting.

    The runner's tensors are tiny (thousands of elements): intra-op threads only add
    synchronisation, which on a busy machine costs more than the work itself.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def curve_points(T_max: int, per_octave: int = 4) -> list[int]:
    """Iterations where the SGD curves are sampled: geometric, every power of two included."""
    pts = {round(2 ** (k / per_octave)) for k in range(per_octave * int(math.log2(T_max)) + 1)}
    return sorted(p for p in pts if p <= T_max)


def _stats(problem: Problem, W: Tensor, want_loss: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean over replicates of dist2 (and of the loss gap): arrays of length M."""
    W = W.to(torch.float64)
    dist2 = (W - problem.w_star).pow(2).flatten(2).sum(-1).mean(0).numpy()
    gap = None
    if want_loss and problem.loss is not None:
        gap = (problem.loss(W) - problem.f_star).mean(0).numpy()
    return dist2, gap


def run_methods(problem: Problem, spec: RunSpec, progress: Callable[[str], None] | None = None) -> dict:
    """Train the four methods; return their records and dist2 curves.

    Returns:
        ``{"results": [record, ...], "curves": {method: {F: [[t, dist2], ...]}}}``.
        One record per (method, F, T) with ``T`` in ``spec.T_values``: ``method``, ``F``
        (None for the full-precision methods, which do not depend on it), ``T``,
        ``dist2`` (squared distance to ``w_star``, mean over replicates) and
        ``loss_gap`` (``f(w) - f(w*)``, same mean) when the problem has a loss.
        Curves are keyed by ``F`` as a string, ``"fp"`` for the full-precision methods.
    """
    R, Fs = spec.replicates, tuple(spec.F_values)
    M = 1 + len(Fs)
    shape = tuple(problem.w_star.shape)
    rows, cols = shape if len(shape) == 2 else (1, shape[0])
    # The state of every trajectory lives in one bias-free Linear, so that one
    # WeightAverage per window averages all of them at once.
    model = nn.Linear(cols, R * M * rows, bias=False, dtype=torch.float64)
    with torch.no_grad():
        model.weight.zero_()
    W = model.weight.data.view(R, M, *shape)
    T_max, T_set = max(spec.T_values), set(spec.T_values)
    gen = torch.Generator().manual_seed(spec.seed)
    formats = [fixed_format(F) for F in Fs]
    keys = ["fp"] + [str(F) for F in Fs]
    points = set(curve_points(T_max))
    sgd_curve = {k: [] for k in keys}
    swa_curve = {k: [] for k in keys}
    results: list[dict] = []
    want_loss = problem.loss is not None

    def record(method: str, weights: Tensor, T: int) -> None:
        dist2, gap = _stats(problem, weights, want_loss)
        for m, key in enumerate(keys):
            if (m == 0) != (method in ("sgd_fp", "swa_fp")):
                continue
            rec = {"method": method, "F": None if m == 0 else Fs[m - 1], "T": T, "dist2": float(dist2[m])}
            if gap is not None:
                rec["loss_gap"] = float(gap[m])
            results.append(rec)

    average = None
    with one_thread():
        for t in range(1, T_max + 1):
            idx = torch.randint(problem.n, (R, spec.batch), generator=gen)
            with torch.no_grad():
                new = W - spec.step * problem.grad(W, idx)
                for j, (F, fmt) in enumerate(zip(Fs, formats)):
                    new[:, 1 + j] = quantize(new[:, 1 + j], fmt, "stochastic", seed=rounding_seed(spec.seed, F, t))
                W.copy_(new)
            window = 1 << (t - 1).bit_length()  # the run of length `window` averages (window/2, window]
            if t == window // 2 + 1:
                average = WeightAverage(model, dtype=torch.float64)  # the iterates are float64
            average.update_parameters(model)
            if t in points:
                dist2, _ = _stats(problem, W, False)
                for m, key in enumerate(keys):
                    sgd_curve[key].append([t, float(dist2[m])])
            if t == window:
                avg = average.module.weight.detach().view(R, M, *shape)
                dist2, _ = _stats(problem, avg, False)
                for m, key in enumerate(keys):
                    swa_curve[key].append([t, float(dist2[m])])
                if t in T_set:
                    record("sgd_fp", W, t)
                    record("swa_fp", avg, t)
                    record("sgd_lp", W, t)
                    record("swalp", avg, t)
                    if progress:
                        progress(f"{problem.name}: T = {t} done")
    order = {m: i for i, m in enumerate(METHODS)}
    results.sort(key=lambda r: (r["T"], order[r["method"]], -1 if r["F"] is None else r["F"]))
    curves = {"sgd_fp": {"fp": sgd_curve["fp"]}, "swa_fp": {"fp": swa_curve["fp"]},
              "sgd_lp": {k: sgd_curve[k] for k in keys[1:]}, "swalp": {k: swa_curve[k] for k in keys[1:]}}
    return {"results": results, "curves": curves}


def fit_slope(deltas, values) -> float:
    """Least-squares slope of ``log(values)`` against ``log(deltas)``."""
    x, y = np.log(np.asarray(deltas, float)), np.log(np.asarray(values, float))
    return float(np.polyfit(x, y, 1)[0])


def slopes(results: list[dict], T: int, metric: str, excess: bool = False) -> dict[str, float]:
    """Fitted log-log slope against delta = 2^-F of each low-precision method at ``T``.

    ``excess=True`` fits the part due to rounding: the value minus that of the
    full-precision counterpart (SGD-LP minus SGD-FP, SWALP minus SWA-FP), over the F
    where it is positive (None with fewer than two such F).
    """
    out = {}
    for method, base in (("sgd_lp", "sgd_fp"), ("swalp", "swa_fp")):
        rs = [r for r in results if r["method"] == method and r["T"] == T]
        ref = lookup(results, base, None, T, metric) if excess else 0.0
        pts = [(2.0 ** -r["F"], r[metric] - ref) for r in rs if r[metric] - ref > 0]
        out[method] = fit_slope(*zip(*pts)) if len(pts) >= 2 else None
    return out


def lookup(results: list[dict], method: str, F: int | None, T: int, metric: str = "dist2") -> float:
    """The value of ``metric`` for one (method, F, T); ``F`` is ignored for the fp methods."""
    for r in results:
        if r["method"] == method and r["T"] == T and (r["F"] == F or r["F"] is None):
            return r[metric]
    raise KeyError((method, F, T))
