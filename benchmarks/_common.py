"""What every benchmark here shares: the machine it ran on, and writing its records.

Not a benchmark itself; the scripts beside it import it (they run as ``python
benchmarks/NAME.py``, which puts this folder on the import path).
"""

from __future__ import annotations

import json
import os
import platform

from swalp._files import atomic_write_text


def machine_info() -> dict:
    """The CPU model, cores, memory and system, so that every figure says where it came from."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        mem_gib = None
    return dict(
        cpu=cpu, cores=os.cpu_count(), memory_gib=mem_gib, system=platform.platform(), python=platform.python_version()
    )


def describe(info: dict) -> str:
    return f"{info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB, {info['system']}"


def write_records(path: str | None, records: list[dict]) -> None:
    """The records as JSON at ``path`` (atomically), if a path was given."""
    if path:
        atomic_write_text(path, json.dumps(records, indent=1) + "\n")
        print(f"\nwrote {len(records)} records to {path}")
