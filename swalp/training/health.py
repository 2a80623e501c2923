"""``swalp train --stats-every N``: quantization health statistics in the training job.

A :class:`swalp.QuantizationStats` (swalp/optim/health.py) measures steps 1, 1 + N, 1 + 2N, ...
(the optimizer's step count, so a resumed run measures the steps it would have). The run
folder gets ``stats.jsonl``: one JSON object per measured step, ``{"epoch", "step", "layers":
{layer: {role: {"saturated", "flushed", "sqnr_db", "max_ratio", "numel"}}}}`` (an exact
rounding has ``sqnr_db`` Infinity, as Python's json writes it). Each epoch's metrics row and
log line carry its worst figures (:func:`swalp.optim.health.worst`), ``summary.json`` the
run's, with every problem found; the run warns once per role and kind of problem, naming the
worst layer, its figure and the recipe change that would help.

Measuring changes no number of the run (tests/test_health.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..optim import QuantizationStats
from ..optim.health import new_warnings, worst

STATS_FILE = "stats.jsonl"


class StatsLog:
    """The statistics of one run: ``records`` (what ``stats.jsonl`` holds) and the collector."""

    def __init__(self, model, optimizer, every: int, epoch: int = 0, records: list[dict] = ()):
        self.records = list(records)
        self.epoch = epoch + 1  # the epoch being trained
        self.warned: set[tuple[str, str]] = set()
        self.collector = QuantizationStats(model, optimizer, every=every, on_record=self._add)

    def _add(self, record: dict) -> None:
        self.records.append({"epoch": self.epoch, **record})

    def end_epoch(self, epoch: int, log) -> dict:
        """The epoch's worst figures (for its metrics row); logs each new kind of problem once."""
        mine = [r for r in self.records if r["epoch"] == epoch]
        for line in new_warnings(self.collector.problems(mine), self.warned):
            log(f"warning: {line}")
        self.epoch = epoch + 1
        return worst(mine)

    def summary(self) -> dict:
        return dict(every=self.collector.every, measured_steps=len(self.records), worst=worst(self.records),
                    problems=[str(p) for p in self.collector.problems(self.records)])

    def text(self) -> str:
        return "".join(json.dumps(r) + "\n" for r in self.records)


def read_records(out: Path, last_step: int) -> list[dict]:
    """The records of ``out/stats.jsonl`` up to ``last_step`` (a resumed run's checkpoint)."""
    path = Path(out) / STATS_FILE
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in lines if r["step"] <= last_step]


def stats_line(figures: dict) -> str:
    """The per-epoch line: the epoch's lowest SQNR, most flushed and most saturated role."""
    parts = []
    for figure, label in (("sqnr_db", "lowest SQNR"), ("flushed", "most flushed"), ("saturated", "most saturated")):
        w = figures.get(figure)
        if w is not None:
            shown = f"{w['value']:.1f} dB" if figure == "sqnr_db" else f"{100 * w['value']:.1f} %"
            parts.append(f"{label} {shown} ({w['role']} of {w['layer']})")
    return "  stats: " + ("; ".join(parts) if parts else "nothing measured this epoch")
