"""``swalp inspect``: a few training steps with every rounding measured, as a per-layer table.

:func:`inspect_recipe` builds a model (a name in ``swalp.models.MODELS``, or ``"module:function"``:
any ``function(num_classes, input_shape) -> nn.Module``), converts it with the recipe, takes
``steps`` steps of SGD with momentum and weight decay at the model's preset learning rate on
the data set's first batches, and measures each step with :class:`swalp.QuantizationStats`.
Per layer and role it keeps the worst figure over the steps (the lowest SQNR, the largest
fractions), the figures :mod:`swalp.optim.health` checks against its thresholds.

Into ``out``: ``inspect.txt`` (what ``swalp inspect`` prints: :func:`report_text`),
``inspect.json`` (settings, machine, the table, every step's record, the problems with their
advice) and ``inspect.png`` (a heat map per figure).

Example:
    >>> r = inspect_recipe(model="mlp", data="digits", recipe="fixed8", bits=4, steps=2, out=None)
    >>> list(r["table"])[:2], sorted(r["table"]["1"])[:3]
    (['1', '3'], ['acc', 'activation', 'error'])
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_int, check_number
from .._files import atomic_write, atomic_write_text, write_json
from ..data import batches, epoch_order, load_data
from ..models import MODELS, build_model, default_model, model_defaults
from ..nn import quantize_model
from ..optim import LowPrecisionOptimizer, QuantizationStats
from ..optim.health import FLUSHED_MAX, ROLES, SATURATED_MAX, SQNR_MIN_DB
from ..recipes import get_recipe
from ..training.config import pick_device
from ._machine import machine

FIGURES = (  # (key, title, worse is higher)
    ("sqnr_db", "SQNR, dB (lowest)", False),
    ("flushed", "flushed to zero, % of nonzero (largest)", True),
    ("saturated", "saturated, % (largest)", True),
    ("max_ratio", "max |x| / format's largest value (largest; block formats: at the largest exponent)", True),
)


def load_model(model: str, num_classes: int, input_shape: tuple) -> nn.Module:
    """A model by registry name, or ``"module:function"`` called as ``function(num_classes, input_shape)``."""
    if ":" not in model:
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; accepted: {', '.join(map(repr, sorted(MODELS)))}, "
                             "or module:function (a function(num_classes, input_shape) -> nn.Module)")
        return build_model(model, num_classes, input_shape)
    module_name, _, fn_name = model.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), fn_name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"--model {model!r}: cannot load {fn_name!r} from module {module_name!r} ({err})") from None
    try:
        net = fn(num_classes, tuple(input_shape))
    except TypeError as err:  # not a function(num_classes, input_shape)
        raise ValueError(f"--model {model!r}: {fn_name}({num_classes}, {tuple(input_shape)}) failed ({err})") from None
    if not isinstance(net, nn.Module):
        raise ValueError(f"--model {model!r} returned {type(net).__name__}, not an nn.Module")
    return net


def inspect_recipe(model: str | None = None, data: str = "mnist1d", recipe: str = "paper", bits: int | None = None,
                   steps: int = 10, seed: int = 0, batch_size: int | None = None, lr: float | None = None,
                   device: str = "cpu", threads: int | None = None, data_dir=None,
                   out: str | None = "runs/inspect") -> dict:
    """Train ``steps`` steps measuring every rounding; returns (and writes into ``out``) the report.

    Args:
        model: a registered name, ``"module:function"``, or None (the data set's default).
            A custom model takes the training presets of the data set's default model.
        data, recipe, bits, seed, device, data_dir: as ``swalp train``'s.
        steps: training steps, each measured.
        batch_size, lr, threads: override the presets (threads: torch's CPU threads while it runs).
        out: folder for ``inspect.txt``, ``inspect.json`` and ``inspect.png``; None writes nothing.

    Returns:
        ``{"settings", "machine", "table": {layer: {role: figures}}, "records", "problems"}``;
        ``problems`` are strings (layer, role, figure, advice), empty when no threshold is crossed.
    """
    check_int("--steps", steps, 1)
    if get_recipe(recipe, bits).is_full_precision:  # a bad recipe fails too, before any data is loaded
        raise ValueError(f"recipe {recipe!r} rounds nothing, so there is nothing to inspect; pick a low-precision one")
    bundle = load_data(data, data_dir=data_dir, seed=seed)
    name = model if model is not None else default_model(data)
    presets = model_defaults(name if name in MODELS else default_model(data), data)
    batch_size = presets["batch_size"] if batch_size is None else check_int("--batch-size", batch_size, 1)
    lr = presets["lr"] if lr is None else check_number("--lr", lr, 0, lo_open=True)
    threads = presets.get("threads") if threads is None else check_int("--threads", threads, 1)
    dev = pick_device(device)
    with _scope(threads, dev):  # torch's generator and thread count are as they were afterwards
        stats, used_threads = _steps(name, bundle, get_recipe(recipe, bits), steps, seed, batch_size, lr, presets, dev)
    report = dict(
        settings=dict(model=name, data=data, recipe=recipe, bits=bits, steps=steps, seed=seed, batch_size=batch_size,
                      lr=lr, device=str(dev), thresholds=dict(saturated=SATURATED_MAX, flushed=FLUSHED_MAX,
                                                              sqnr_db=SQNR_MIN_DB)),
        machine=dict(machine(), threads=used_threads,
                     gpu=torch.cuda.get_device_name(dev) if dev.type == "cuda" else None),
        table=worst_by_layer(stats.records), records=stats.records, problems=[str(p) for p in stats.problems()])
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(out) / "inspect.txt", report_text(report) + "\n")
        write_json(Path(out) / "inspect.json", report)
        atomic_write(Path(out) / "inspect.png", lambda f: plot(report, f))
    return report


@contextlib.contextmanager
def _scope(threads: int | None, dev: torch.device):
    old = torch.get_num_threads()
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(old)


def _steps(name, bundle, recipe, steps, seed, batch_size, lr, presets, dev):
    """``steps`` SGD steps of a fresh model, each measured: the QuantizationStats and the threads used."""
    torch.manual_seed(seed)
    net = quantize_model(load_model(name, bundle.num_classes, bundle.input_shape), recipe).to(dev)
    base = torch.optim.SGD(net.parameters(), lr=lr, momentum=presets["momentum"], weight_decay=presets["wd"])
    optimizer = LowPrecisionOptimizer(base, seed=seed)
    stream = itertools.chain.from_iterable(
        batches(bundle.train, epoch_order(len(bundle.train), seed, e), batch_size, dev) for e in itertools.count(1))
    net.train()
    with QuantizationStats(net, optimizer, every=1) as stats:
        for x, y in itertools.islice(stream, steps):
            optimizer.zero_grad()
            F.cross_entropy(net(x), y).backward()
            optimizer.step()
    return stats, torch.get_num_threads()


def worst_by_layer(records: list[dict]) -> dict:
    """``{layer: {role: figures}}``: per layer and role, the worst of each figure over ``records``."""
    table: dict = {}
    for r in records:
        for layer, roles in r["layers"].items():
            for role, s in roles.items():
                cell = table.setdefault(layer, {}).setdefault(role, dict(s))
                for key, _, higher in FIGURES:
                    v, old = s[key], cell[key]
                    if v is not None and (old is None or (v > old if higher else v < old)):
                        cell[key] = v
    return {layer: {role: roles[role] for role in ROLES if role in roles} for layer, roles in table.items()}


def _crossed(key: str, v) -> bool:
    if v is None:
        return False
    return {"sqnr_db": v < SQNR_MIN_DB, "flushed": v > FLUSHED_MAX, "saturated": v > SATURATED_MAX}.get(key, False)


def _cell(key: str, v) -> str:
    if v is None:
        return "-"
    if key == "sqnr_db":
        text = "exact" if math.isinf(v) and v > 0 else f"{v:.1f}"
    elif key == "max_ratio":
        text = f"{v:.2g}"
    else:
        text = f"{100 * v:.1f}"
    return text + ("!" if _crossed(key, v) else "")


def table_text(report: dict) -> str:
    """The report's table as text: one block per figure, layers as rows, roles as columns;
    ``!`` marks a value past its threshold, ``-`` a role the layer does not round."""
    table = report["table"]
    roles = [r for r in ROLES if any(r in cells for cells in table.values())]
    width = max([5] + [len(layer) for layer in table])
    s = report["settings"]
    lines = [f"{s['model']} on {s['data']}, recipe {s['recipe']}" + (f" ({s['bits']} bits)" if s["bits"] else "")
             + f", worst over {s['steps']} steps of batch {s['batch_size']} at lr {s['lr']:g}"]
    for key, title, _ in FIGURES:
        lines += ["", title, f"{'layer':<{width}}" + "".join(f"{r:>12}" for r in roles)]
        for layer, cells in table.items():
            lines.append(f"{layer:<{width}}" + "".join(f"{_cell(key, cells[r][key]) if r in cells else '-':>12}" for r in roles))
    return "\n".join(lines)


def report_text(report: dict) -> str:
    """:func:`table_text`, the machine, and the problems with their advice."""
    m, problems = report["machine"], report["problems"]
    where = m["gpu"] or f"{m['cpu']}, {m['threads']} of {m['cores']} cores"
    lines = [table_text(report), "", f"(torch {m['torch']}, {where})", "",
             f"{len(problems)} problem{'s' if len(problems) != 1 else ''}" + (":" if problems else " (no threshold crossed)")]
    return "\n".join(lines + [f"  {p}" for p in problems])


def plot(report: dict, file) -> None:
    """A heat map per figure (layers x roles), written as PNG to ``file``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = report["table"]
    layers = list(table)
    roles = [r for r in ROLES if any(r in cells for cells in table.values())]
    fig, axes = plt.subplots(1, len(FIGURES), figsize=(4.2 * len(FIGURES), 1.2 + 0.45 * len(layers)), squeeze=False)
    for ax, (key, title, higher) in zip(axes[0], FIGURES):
        grid = [[_value(key, table[layer].get(role)) for role in roles] for layer in layers]
        lo, hi = _SCALES[key]  # fixed scales, red where bad: panels and runs compare at a glance
        image = ax.imshow(grid, cmap="RdYlGn_r" if higher else "RdYlGn", vmin=lo, vmax=hi, aspect="auto")
        ax.set_xticks(range(len(roles)), roles, rotation=45, ha="right")
        ax.set_yticks(range(len(layers)), layers)
        ax.set_title("log10 max |x| / format's largest" if key == "max_ratio" else title, fontsize=9)
        for i, layer in enumerate(layers):
            for j, role in enumerate(roles):
                cells = table[layer].get(role)
                ax.text(j, i, _cell(key, cells[key]) if cells else "-", ha="center", va="center", fontsize=7)
        fig.colorbar(image, ax=ax)
    s = report["settings"]
    fig.suptitle(f"swalp inspect: {s['model']} on {s['data']}, recipe {s['recipe']}"
                 + (f" ({s['bits']} bits)" if s["bits"] else "") + f", {s['steps']} steps", fontsize=10)
    fig.tight_layout()
    fig.savefig(file, format="png", dpi=80)
    plt.close(fig)


_SCALES = {"sqnr_db": (-10.0, 40.0), "flushed": (0.0, 100.0), "saturated": (0.0, 10.0), "max_ratio": (-3.0, 1.0)}


def _value(key: str, cells) -> float:
    v = None if cells is None else cells[key]
    if v is None or (key == "sqnr_db" and math.isinf(v)):
        return math.nan
    if key == "max_ratio":
        return math.log10(v) if v > 0 else math.nan
    return 100 * v if key in ("flushed", "saturated") else v
