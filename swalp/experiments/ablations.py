"""The paper's ablations, one command each: ``swalp reproduce ablation bits|frequency|avg-precision|blocking``.

Each ablation is a grid of cells (a row, and a word length for the column), every cell
trained with seeds 0 1 2 (by default) on the settings of ``swalp compare`` (the default
MNIST-1D CNN, the paper recipe), plus one full-precision run per seed for the SGD-FP and
SWA-FP reference lines. Rows:

* ``bits``: word lengths 4 to 8 of the recipe (one column: SGD-LP and SWALP per row).
* ``frequency``: averaging every 1, 10 and 100 steps, every epoch and every 5 epochs.
* ``avg-precision``: the average kept in float32, bfloat16, and 16-, 12-, 10- and 8-bit
  block floating point (one exponent per tensor, stochastic rounding).
* ``blocking``: one exponent per tensor (``paper-big-block``), per output row or channel for
  the weights and per tensor for activations and errors (``paper``, the reference code),
  per row and per sample (``paper-per-sample``, QPyTorch's port), MX blocks of 32 (``mx``).

The columns of the last three are the word lengths ``bits`` (default 8 and 6). Into ``out``:
``table.md``, ``summary.json`` (mean and standard deviation per cell, every run listed,
``train_s`` the runs' own training time, ``wall_s`` this call's), a PNG plot, and ``runs/<cell>-seed<s>/``, each a run folder: a finished run is read back and
a stopped one resumed, so rerunning an interrupted ablation continues it cell by cell.

Example:
    >>> from swalp.training import TrainConfig
    >>> s = ablation("bits", TrainConfig(data="digits", epochs=3, budget=2), seeds=(0,), bits=(6,),
    ...              out="/tmp/swalp-ablation-doc", progress=False, log=None)
    >>> [c["row"] for c in s["cells"]], sorted(s["fp32"])
    (['6'], ['sgd_fp', 'swa_fp'])
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from tqdm.auto import tqdm

from .._checks import check_choice
from .._files import atomic_write, atomic_write_text, write_json
from ..training import TrainConfig, resolve
from ._machine import machine
from .compare import check_grid, mean_std, run_one

ABLATIONS = ("bits", "frequency", "avg-precision", "blocking")
DEFAULT_BITS = {"bits": (4, 5, 6, 7, 8), "frequency": (8, 6), "avg-precision": (8, 6), "blocking": (8, 6)}
FREQUENCIES = ((1, "step"), (10, "step"), (100, "step"), (1, "epoch"), (5, "epoch"))
AVG_FORMATS = (None, "bfloat16", "bfp16", "bfp12", "bfp10", "bfp8")
ROW_TITLES = {"frequency": "averaging", "avg-precision": "average kept in", "blocking": "exponents"}
BLOCKINGS = (("paper-big-block", "per tensor"), ("paper", "per row; activations per tensor"),
             ("paper-per-sample", "per row; activations per sample"), ("mx", "MX blocks of 32"))


@dataclasses.dataclass(frozen=True)
class Cell:
    key: str        # folder prefix under out/runs
    row: str        # the row's label
    bits: int | None  # the column (None: the full-precision reference)
    changes: dict   # TrainConfig fields set for this cell


def cells(name: str, base: TrainConfig, bits) -> list[Cell]:
    """The cells of ablation ``name`` (the full-precision reference first)."""
    check_choice("ablation", name, ABLATIONS)
    out = [Cell("fp32", "fp32", None, dict(recipe="fp32", bits=None))]
    if name == "bits":
        return out + [Cell(f"{b}bit", str(b), b, dict(bits=b)) for b in bits]
    for b in bits:
        if name == "frequency":
            out += [Cell(f"{b}bit-every{n}{unit}", f"every {n} {unit}{'s' if n > 1 else ''}", b,
                         dict(bits=b, avg_every=n, avg_unit=unit)) for n, unit in FREQUENCIES]
        elif name == "avg-precision":
            out += [Cell(f"{b}bit-avg-{f or 'fp32'}", f or "float32", b, dict(bits=b, avg_format=f)) for f in AVG_FORMATS]
        else:
            out += [Cell(f"{b}bit-{recipe}", label, b, dict(recipe=recipe, bits=b)) for recipe, label in BLOCKINGS]
    return out


def plan(name: str, base: TrainConfig, seeds, bits, out) -> list[tuple[Cell, int, TrainConfig]]:
    """Every run of the ablation, resolved (every error before any training)."""
    bits, seeds, root = check_grid(base, bits, seeds, out, "an ablation")
    runs = []
    for cell in cells(name, base, bits):
        for s in seeds:
            config = dataclasses.replace(base, **cell.changes, seed=s, out=str(root / "runs" / f"{cell.key}-seed{s}"))
            runs.append((cell, s, resolve(config)))  # resolve checks every setting, the average's format too
    return runs


def ablation(name: str, base: TrainConfig = TrainConfig(), seeds=(0, 1, 2), bits=None, out=None,
             progress: bool = True, log=print, overwrite: bool = False) -> dict:
    """Run (or read back) ablation ``name`` and write its table, plot and summary into ``out``.

    Args:
        name: one of :data:`ABLATIONS`.
        base: settings every run shares (``swalp compare``'s defaults: ``TrainConfig()``).
        seeds: seeds of every cell.
        bits: word lengths (rows of ``bits``, columns of the others; default :data:`DEFAULT_BITS`).
        out: output folder (default ``runs/ablation-<name>``).
        progress: a progress bar over the runs.
        log: receives the finished table; None for silence.
        overwrite: replace runs in ``out`` made with other settings (without it: an error).

    Returns:
        the summary (also ``out/summary.json``).

    Raises:
        ValueError: an unknown ablation, no seeds or word lengths, a full-precision recipe,
            a format the average cannot use, any setting ``swalp train`` rejects.
    """
    bits = DEFAULT_BITS.get(name, ()) if bits is None else bits
    out = Path(out or f"runs/ablation-{name}")
    runs = plan(name, base, seeds, bits, out)
    out.mkdir(parents=True, exist_ok=True)
    started, results = time.time(), {}
    for cell, seed, config in tqdm(runs, desc=f"ablation {name}", unit="run", disable=not progress):
        results[(cell.key, seed)] = run_one(config, overwrite)
    summary = _summarise(name, runs, results, seeds, time.time() - started)
    atomic_write_text(out / "table.md", table(summary))
    plot(out / f"{name}.png", summary)
    write_json(out / "summary.json", summary)
    if log:
        log(table(summary))
        log(f"wrote {out / 'table.md'}, {out / (name + '.png')}, {out / 'summary.json'} ({summary['wall_s']:.0f} s)")
    return summary


def _summarise(name: str, runs, results: dict, seeds, wall_s: float) -> dict:
    fp = [results[("fp32", s)] for s in seeds]
    trained = sum(results[(cell.key, seed)].get("wall_s") or 0.0 for cell, seed, _ in runs)
    summary = dict(ablation=name, seeds=list(seeds), wall_s=round(wall_s, 1), train_s=round(trained, 1),
                   fp32=dict(sgd_fp=mean_std([r["sgd_fp"]["test_error"] for r in fp]),
                             swa_fp=mean_std([r["swa_fp"]["test_error"] for r in fp])),
                   cells=[], runs=[])
    done = set()
    for cell, _, config in runs:
        if cell.bits is None or cell.key in done:
            continue
        done.add(cell.key)
        rs = [results[(cell.key, s)] for s in seeds]
        summary["cells"].append(dict(key=cell.key, row=cell.row, bits=cell.bits, changes=cell.changes,
                                     sgd_lp=mean_std([r["sgd_lp"]["test_error"] for r in rs]),
                                     swalp=mean_std([r["swalp"]["test_error"] for r in rs])))
    for cell, seed, config in runs:
        r = results[(cell.key, seed)]
        summary["runs"].append(dict(cell=cell.key, seed=seed, sgd=r["sgd"]["test_error"],
                                    average=r["average"]["test_error"], wall_s=r.get("wall_s")))
    summary["machine"] = machine()
    c = runs[-1][2]
    summary["settings"] = dict(model=c.model, data=c.data, epochs=c.epochs, budget=c.budget, lr=c.lr,
                               swa_lr=c.swa_lr, wd=c.wd, batch_size=c.batch_size, recipe=runs[-1][0].changes.get(
                                   "recipe", c.recipe))
    return summary


def table(summary: dict) -> str:
    """Markdown: test error (%) mean +- std per cell; the full-precision lines first."""
    fp, st = summary["fp32"], summary["settings"]
    head = (f"Ablation `{summary['ablation']}`: test error (%), mean +- std over seeds {summary['seeds']}; "
            f"{st['model']} on {st['data']}, {st['epochs']} epochs, averaging from epoch {st['budget']}, "
            f"lr {st['lr']}, swa_lr {st['swa_lr']}, wd {st['wd']}, batch {st['batch_size']}; "
            f"{len(summary['runs'])} runs, {summary['train_s']:.0f} s of training on {summary['machine']['cpu']} "
            f"({summary['machine']['cores']} cores). Full precision: SGD-FP {fp['sgd_fp']['mean']:.2f} +- "
            f"{fp['sgd_fp']['std']:.2f}, SWA-FP {fp['swa_fp']['mean']:.2f} +- {fp['swa_fp']['std']:.2f}.")
    by_bits = summary["ablation"] == "bits"
    lines = [head, "", "| bits | SGD-LP | SWALP |" if by_bits else f"| {ROW_TITLES[summary['ablation']]} | bits | SGD-LP | SWALP |",
             "|---|---|---|" if by_bits else "|---|---|---|---|"]
    for c in summary["cells"]:
        cells = f"| {c['sgd_lp']['mean']:.2f} +- {c['sgd_lp']['std']:.2f} | {c['swalp']['mean']:.2f} +- {c['swalp']['std']:.2f} |"
        lines.append(f"| {c['row']} " + ("" if by_bits else f"| {c['bits']} ") + cells)
    return "\n".join(lines) + "\n"


def plot(path, summary: dict) -> None:
    """Test error per row (mean, standard deviation as error bars): SGD-LP and SWALP per word
    length, the full-precision SGD and SWA as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    fp = summary["fp32"]
    ax.axhline(fp["sgd_fp"]["mean"], color="C0", lw=1, label="SGD-FP")
    ax.axhline(fp["swa_fp"]["mean"], color="C0", lw=1, ls="--", label="SWA-FP")
    rows = list(dict.fromkeys(c["row"] for c in summary["cells"]))
    x = {r: i for i, r in enumerate(rows)}
    by_bits = summary["ablation"] == "bits"
    columns = [None] if by_bits else list(dict.fromkeys(c["bits"] for c in summary["cells"]))
    for j, b in enumerate(columns):
        group = [c for c in summary["cells"] if by_bits or c["bits"] == b]
        label = "" if by_bits else f" ({b}-bit)"
        for key, style, name in (("sgd_lp", "o-", "SGD-LP"), ("swalp", "s--", "SWALP")):
            ax.errorbar([x[c["row"]] for c in group], [c[key]["mean"] for c in group],
                        yerr=[c[key]["std"] for c in group], fmt=style, color=f"C{2 * j + (key == 'swalp') + 1}",
                        capsize=3, label=name + label)
    ax.set_xticks(range(len(rows)), rows, rotation=20 if len(rows[0]) > 6 else 0, ha="right" if len(rows[0]) > 6 else "center")
    ax.set_xlabel("word length (bits)" if summary["ablation"] == "bits" else ROW_TITLES[summary["ablation"]])
    ax.set_ylabel("test error (%)")
    if by_bits:
        ax.set_yscale("log")  # a few bits too few and the error is tens of times the rest
    st = summary["settings"]
    ax.set_title(f"{summary['ablation']}: {st['model']} on {st['data']}, {len(summary['seeds'])} seed(s)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)


