"""The paper's comparison: SGD-FP, SWA-FP, SGD-LP and SWALP with one data set, model and schedule.

One full-precision run per seed gives SGD-FP (its iterate at the end of the budget) and
SWA-FP (its average at the end); one low-precision run per word length and seed gives
SGD-LP and SWALP the same way. So ``bits=(8, 6), seeds=(0, 1, 2)`` is 3 + 6 = 9 runs, and
both word lengths share the full-precision columns.

:func:`compare` writes into ``out``:
    table.md        mean +- std test error (%) per word length and method, and per run
    test_error.png  test error per epoch (mean over seeds), one panel per word length
    summary.json    {"<bits>": {"sgd_fp": {"mean", "std", "values"}, "swa_fp": ..., "sgd_lp": ..., "swalp": ...}}
    runs/<name>/    each run's own folder (see :mod:`swalp.training`)

std is the sample standard deviation (n - 1 in the denominator; 0 for one seed). A run whose
folder already holds a finished run of the same configuration is read back, not retrained,
and an unfinished one is resumed: rerunning an interrupted comparison continues it.

Example:
    >>> from swalp.experiments.compare import compare
    >>> from swalp.training import TrainConfig
    >>> s = compare(TrainConfig(data="digits", epochs=3, budget=2), bits=(6,), seeds=(0,),
    ...             out="/tmp/swalp-compare-doc", log=None)
    >>> sorted(s["6"])
    ['sgd_fp', 'sgd_lp', 'swa_fp', 'swalp']
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from .._checks import check_int
from .._files import atomic_write, atomic_write_text, write_json
from ..recipes import get_recipe
from ..training import TrainConfig, resolve, train
from .methods import LABELS, METHODS



@dataclasses.dataclass(frozen=True)
class Run:
    name: str           # folder name under out/runs
    bits: int | None    # None: the full-precision run
    seed: int
    config: TrainConfig


def check_grid(base: TrainConfig, bits, seeds, out, command: str) -> tuple[list[int], list[int], Path]:
    """``(bits, seeds, out)`` of a grid of runs (``swalp compare``, ``swalp ablation``), checked."""
    bits, seeds = list(bits), list(seeds)
    if not bits or not seeds:
        raise ValueError(f"--bits and --seeds need at least one value each, got bits={bits}, seeds={seeds}")
    if len(set(bits)) != len(bits) or len(set(seeds)) != len(seeds):
        raise ValueError(f"--bits and --seeds must not repeat values, got bits={bits}, seeds={seeds}")
    if get_recipe(base.recipe).is_full_precision:
        raise ValueError(f"--recipe {base.recipe!r} is full precision; {command} needs a low-precision recipe "
                         f"(e.g. 'paper') for the SGD-LP and SWALP columns")
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise ValueError(f"--out {str(root)!r} is a file; it must be a folder (created if missing)")
    return bits, seeds, root


def plan(base: TrainConfig, bits=(8, 6), seeds=(0, 1, 2), out="runs/compare") -> list[Run]:
    """The runs of a comparison, each with its resolved configuration (errors before any work)."""
    bits, seeds, root = check_grid(base, bits, seeds, out, "compare")
    runs = [Run(f"fp32-seed{s}", None, s, dataclasses.replace(base, recipe="fp32", bits=None, seed=s)) for s in seeds]
    runs += [Run(f"{base.recipe}-{b}bit-seed{s}", b, s, dataclasses.replace(base, bits=b, seed=s))
             for b in bits for s in seeds]
    return [dataclasses.replace(r, config=resolve(dataclasses.replace(r.config, out=str(root / "runs" / r.name))))
            for r in runs]


def run_one(config: TrainConfig, overwrite: bool = False) -> dict:
    """Train ``config`` unless its folder already holds it: finished (read the summary) or
    stopped (resume). A folder holding another configuration's run is an error unless
    ``overwrite``. Returns the summary plus the per-epoch metrics under ``"metrics"``."""
    out = Path(config.out)
    saved = out / "config.json"
    same = saved.exists() and same_config(json.loads(saved.read_text()), config)
    if same and (out / "summary.json").exists():
        summary = json.loads((out / "summary.json").read_text())
    elif same and (out / "checkpoint.pt").exists():
        summary = train(config, resume=str(out), progress=False, log=None)
    else:
        summary = train(config, progress=False, log=None, overwrite=overwrite)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {**summary, "metrics": metrics}


def same_config(saved: dict, config: TrainConfig) -> bool:
    """Whether a run's saved ``config.json`` is ``config``; a field added to TrainConfig since
    the run was saved counts as its default (the behaviour the run had)."""
    defaults = dataclasses.asdict(TrainConfig())
    return set(saved) <= set(defaults) and {**defaults, **saved} == dataclasses.asdict(config)


def mean_std(values: list[float]) -> dict:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": round(mean, 4), "std": round(std, 4), "values": values}


def aggregate(runs: list[Run], results: dict[str, dict], bits) -> dict:
    """``{"<bits>": {method: mean_std}}`` from the runs' summaries."""
    fp = [results[r.name] for r in runs if r.bits is None]
    summary = {}
    for b in bits:
        lp = [results[r.name] for r in runs if r.bits == b]
        summary[str(b)] = {
            "sgd_fp": mean_std([s["sgd_fp"]["test_error"] for s in fp]),
            "swa_fp": mean_std([s["swa_fp"]["test_error"] for s in fp]),
            "sgd_lp": mean_std([s["sgd_lp"]["test_error"] for s in lp]),
            "swalp": mean_std([s["swalp"]["test_error"] for s in lp]),
        }
    return summary


def table(summary: dict, runs: list[Run], results: dict[str, dict], title: str) -> str:
    """The markdown table: mean +- std per word length, then each run's numbers."""
    lines = [title, "", "| bits | " + " | ".join(LABELS.values()) + " |", "|---|" + "---|" * len(METHODS)]
    for b, row in summary.items():
        lines.append(f"| {b} | " + " | ".join(f"{row[m]['mean']:.2f} +- {row[m]['std']:.2f}" for m in METHODS) + " |")
    lines += ["", "Per run (test error %, SGD iterate at the end of the budget / average at the end):", "",
              "| run | SGD | average |", "|---|---|---|"]
    for r in runs:
        s = results[r.name]
        lines.append(f"| {r.name} | {s['sgd']['test_error']:.2f} | {s['average']['test_error']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(path, runs: list[Run], results: dict[str, dict], bits) -> None:
    """Test error per epoch, mean over seeds: one panel per word length, four curves each."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, and none is there on a server
    import matplotlib.pyplot as plt

    def mean_curve(names, key):
        rows = [[m.get(key) for m in results[n]["metrics"]] for n in names]
        epochs = [m["epoch"] for m in results[names[0]]["metrics"]]
        pts = [(e, sum(v) / len(v)) for e, v in zip(epochs, zip(*rows)) if None not in v]
        return [p[0] for p in pts], [p[1] for p in pts]

    fp = [r.name for r in runs if r.bits is None]
    budget = runs[0].config.budget
    fig, axes = plt.subplots(1, len(bits), figsize=(5.5 * len(bits), 4), squeeze=False, sharey=True)
    finals = []
    for ax, b in zip(axes[0], bits):
        lp = [r.name for r in runs if r.bits == b]
        for names, key, label, style in ((fp, "test_error", "SGD-FP", "C0-"), (fp, "avg_test_error", "SWA-FP", "C0--"),
                                         (lp, "test_error", f"SGD-LP ({b}-bit)", "C3-"),
                                         (lp, "avg_test_error", f"SWALP ({b}-bit)", "C3--")):
            x, y = mean_curve(names, key)
            ax.plot(x, y, style, label=label)
            finals += y[-1:]
        ax.axvline(budget, color="gray", lw=0.8, ls=":")
        ax.set_title(f"{b}-bit {runs[-1].config.recipe} recipe, {len(lp)} seed(s)")
        ax.set_xlabel("epoch (averaging starts at the dotted line)")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0][0].set_ylabel("test error (%)")
    top = 3 * max(finals) if finals else None  # early epochs are far above: keep the end readable
    axes[0][0].set_ylim(0, top)
    fig.suptitle(f"{runs[0].config.model} on {runs[0].config.data}")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)


def compare(base: TrainConfig = TrainConfig(), bits=(8, 6), seeds=(0, 1, 2), out="runs/compare",
            jobs: int = 1, log=print, overwrite: bool = False) -> dict:
    """Run (or read back) every run of the comparison and write table, plot and summary.

    Args:
        base: settings shared by every run (its ``recipe`` is the low-precision one;
            ``bits``, ``seed`` and ``out`` are set per run).
        bits: word lengths of the low-precision runs.
        seeds: seeds; each gives one full-precision run and one low-precision run per word length.
        out: output folder.
        jobs: runs trained at once in separate processes (each uses ``base.threads`` threads).
        log: receives a line per finished run; None for silence.
        overwrite: replace runs in ``out`` made with other settings (without it: an error).

    Returns:
        the summary (also in ``out/summary.json``).
    """
    log = log or (lambda line: None)
    check_int("--jobs", jobs, 1)
    runs = plan(base, bits, seeds, out)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    started, results = time.time(), {}

    def done(run: Run, result: dict) -> None:
        results[run.name] = result
        log(f"[{len(results)}/{len(runs)}] {run.name}: SGD {result['sgd']['test_error']:.2f}%  "
            f"average {result['average']['test_error']:.2f}%  ({time.time() - started:.0f} s)")

    if jobs == 1:
        for r in runs:
            done(r, run_one(r.config, overwrite))
    else:
        # "spawn": a fresh interpreter per worker, so no forked OpenMP or torch state.
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            futures = {r.name: pool.submit(run_one, r.config, overwrite) for r in runs}
            for r in runs:
                done(r, futures[r.name].result())

    summary = aggregate(runs, results, list(bits))
    c = runs[-1].config
    title = (f"Test error (%), mean +- std over seeds {list(seeds)}: {c.model} on {c.data}, recipe {c.recipe!r}, "
             f"{c.epochs} epochs, averaging from epoch {c.budget} every {c.avg_every} {c.avg_unit}(s), "
             f"lr {c.lr}, swa_lr {c.swa_lr}, wd {c.wd}, batch {c.batch_size}. SGD columns: the iterate at the "
             f"end of the budget; SWA columns: the average at the end.")
    atomic_write_text(root / "table.md", table(summary, runs, results, title))
    plot(root / "test_error.png", runs, results, list(bits))
    write_json(root / "summary.json", summary)
    log(f"wrote {root / 'table.md'}, {root / 'test_error.png'}, {root / 'summary.json'} ({time.time() - started:.0f} s)")
    return summary
