"""What a convex experiment writes: summary.json, a markdown table and two figures.

summary.json::

    {"experiment": "linreg" | "logreg", "config": {...}, "problem": {...},
     "results": [{"method": "swalp", "F": 8, "T": 16384, "dist2": ..., "loss_gap": ...}, ...],
     "slopes": {"dist2": {"sgd_lp": ..., "swalp": ...}, ...}, "checks": {...},
     "curves": {...}, "machine": {...}, "wall_s": ...}

``F`` is null for ``sgd_fp``/``swa_fp``, which do not round; ``loss_gap`` is logreg's.

The figures (matplotlib's object API: no pyplot, no global state):

* :func:`plot_curves`: dist2 against iterations, log-log, one panel per F, one line per
  method. The averaged methods are drawn at ``T = 2, 4, 8, ...``: each point is the
  result of a run of length ``T`` (average of ``w_t``, ``T/2 < t <= T``).
* :func:`plot_vs_delta`: the final dist2 (and loss gap) against ``delta = 2^-F``, with
  the fitted log-log slope of each low-precision method in the legend; the
  full-precision methods, which do not depend on delta, as horizontal lines.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import torch

from ..._files import atomic_write, atomic_write_text, write_json
from ..methods import LABELS, METHODS
from ._runner import lookup

STYLE = {
    "sgd_fp": dict(color="0.55", linestyle="--"),
    "swa_fp": dict(color="black", linestyle="--"),
    "sgd_lp": dict(color="tab:red", linestyle="-"),
    "swalp": dict(color="tab:blue", linestyle="-", marker="o", markersize=3),
}
METRIC_LABELS = {"dist2": r"$\|w - w^*\|^2$", "loss_gap": r"$f(w) - f(w^*)$"}


def plot_curves(summary: dict, path) -> None:
    """dist2 against iterations, one panel per F (the summary's ``curves``)."""
    curves, Fs = summary["curves"], summary["config"]["F_values"]
    from matplotlib.figure import Figure  # here, not at import: the command line loads this module

    fig = Figure(figsize=(4.2 * len(Fs), 3.6), layout="constrained")
    axes = fig.subplots(1, len(Fs), sharey=True, squeeze=False)[0]
    for ax, F in zip(axes, Fs):
        for method in ("sgd_fp", "swa_fp", "sgd_lp", "swalp"):
            key = "fp" if method.endswith("_fp") else str(F)
            pts = np.asarray(curves[method][key], float)
            ax.loglog(pts[:, 0], pts[:, 1], label=LABELS[method], **STYLE[method])
        ax.set_title(f"F = {F} (delta = 2^-{F})")
        ax.set_xlabel("iterations T")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel(METRIC_LABELS["dist2"])
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{summary['experiment']}: distance to the optimum after T steps, mean of {summary['config']['replicates']} runs"
                 " (SWA-FP, SWALP: average of the iterates T/2 < t <= T)")
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))


def plot_vs_delta(summary: dict, path) -> None:
    """Final dist2 (and loss gap, if recorded) against delta at the largest T."""
    results = summary["results"]
    T = max(summary["config"]["T_values"])
    metrics = [m for m in ("dist2", "loss_gap") if m in results[0]]
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2 * len(metrics), 4.0), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        for method in ("sgd_fp", "swa_fp", "sgd_lp", "swalp"):
            rs = sorted((r for r in results if r["method"] == method and r["T"] == T), key=lambda r: -1 if r["F"] is None else r["F"])
            if rs[0]["F"] is None:
                ax.axhline(rs[0][metric], label=f"{LABELS[method]} (no rounding)", **STYLE[method])
                continue
            delta = np.array([2.0 ** -r["F"] for r in rs])
            value = np.array([r[metric] for r in rs])
            coef = np.polyfit(np.log(delta), np.log(value), 1)  # the fit_slope fit, drawn
            slope, fit = coef[0], np.exp(np.polyval(coef, np.log(delta)))
            style = dict(STYLE[method], marker="o", markersize=5, linestyle="none")
            excess = summary.get("slopes", {}).get(f"{metric}_excess", {}).get(method)
            extra = "" if excess is None else f"; rounding part {excess:.2f}"
            ax.loglog(delta, value, label=f"{LABELS[method]}: slope {slope:.2f}{extra}", **style)
            ax.loglog(delta, fit, color=style["color"], linewidth=1, alpha=0.6)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("delta = 2^-F (fixed point, F + 2 bits)")
        ax.set_ylabel(METRIC_LABELS[metric])
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, title="log-log fit", title_fontsize=8)
    fig.suptitle(f"{summary['experiment']}: final error against the quantization gap (T = {T})")
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))


def machine() -> dict:
    """Where the numbers came from (the runner's loop runs torch on one thread)."""
    return {"platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads_in_loop": 1}


def markdown_table(summary: dict) -> str:
    """Per (F, T): every method's final value, and SGD-LP over SWALP; then the slopes."""
    res, cfg = summary["results"], summary["config"]
    metrics = [m for m in ("dist2", "loss_gap") if m in res[0]]
    names = {"dist2": "squared distance to the optimum", "loss_gap": "loss gap f(w) - f(w*)"}
    lines = [f"## {summary['experiment']}: mean of {cfg['replicates']} runs"]
    for metric in metrics:
        lines += ["", f"### {names[metric]}", "",
                  "| F | delta | T | " + " | ".join(LABELS[m] for m in METHODS) + " | SGD-LP / SWALP |",
                  "|---|---|---|" + "---|" * (len(METHODS) + 1)]
        for F in cfg["F_values"]:
            for T in sorted(cfg["T_values"]):
                vals = [lookup(res, m, F, T, metric) for m in METHODS]
                lines.append(f"| {F} | 2^-{F} | {T} | " + " | ".join(f"{v:.3g}" for v in vals)
                             + f" | {vals[2] / vals[3]:.0f}x |")
    T = max(cfg["T_values"])
    lines += ["", f"### fitted log-log slope against delta (T = {T})", "",
              "| metric | SGD-LP | SWALP |", "|---|---|---|"]
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    for metric, s in summary["slopes"].items():
        name = metric.replace("_excess", " minus its full-precision counterpart's")
        lines.append(f"| {name} | {fmt(s['sgd_lp'])} | {fmt(s['swalp'])} |")
    return "\n".join(lines) + "\n"


def write(summary: dict, out, name: str) -> dict[str, Path]:
    """Write ``summary.json``, ``table.md``, ``convex_{name}_curves.png`` and
    ``convex_{name}_delta.png`` into ``out`` (created); return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"summary": out / "summary.json", "table": out / "table.md",
             "curves": out / f"convex_{name}_curves.png", "delta": out / f"convex_{name}_delta.png"}
    write_json(paths["summary"], summary, indent=1)
    atomic_write_text(paths["table"], markdown_table(summary))
    plot_curves(summary, paths["curves"])
    plot_vs_delta(summary, paths["delta"])
    return paths
