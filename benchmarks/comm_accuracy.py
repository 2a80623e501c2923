"""Does sending 8-bit gradients cost accuracy? ``--comm bfp8`` against ``--comm fp32`` under torchrun.

For each seed and each all-reduce it runs ``torchrun --nproc_per_node N -m swalp train`` (gloo
on this machine; the default MNIST-1D CNN and the paper recipe unless ``--train-args`` says
otherwise) and reads the run's summary. It writes, per all-reduce, the mean and standard
deviation over the seeds of the SGD-LP and SWALP test errors, every run listed, as JSON and
as a Markdown table, and says whether the mean difference is below one standard deviation.

Usage:
    python benchmarks/comm_accuracy.py --out runs/comm --json docs/results/comm_accuracy.json \\
        --md docs/results/comm_accuracy.md
    python benchmarks/comm_accuracy.py --seeds 0 --train-args "--epochs 3 --budget 2 --limit-train 200"
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import describe, machine_info, write_records

COMMS = ("fp32", "bfp8")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(comm: str, seed: int, procs: int, out: Path, extra: list[str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(MASTER_ADDR="127.0.0.1", GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    folder = out / f"{comm}-seed{seed}"
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_addr",
            "127.0.0.1", "--master_port", str(_free_port()), "-m", "swalp", "train", "--no-progress", "--comm", comm,
            "--seed", str(seed), "--out", str(folder), *extra]
    started = time.time()
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    summary = json.loads((folder / "summary.json").read_text())
    return dict(comm=comm, seed=seed, processes=procs, sgd_lp=summary["sgd_lp"]["test_error"],
                swalp=summary["swalp"]["test_error"], wall_s=round(time.time() - started, 1))


def mean_std(values: list[float]) -> dict:
    return dict(mean=statistics.mean(values), std=statistics.stdev(values) if len(values) > 1 else 0.0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--procs", type=int, default=2, help="processes per run (default 2)")
    p.add_argument("--out", default="runs/comm_accuracy", help="the runs' folders (default runs/comm_accuracy)")
    p.add_argument("--train-args", default="", help="more swalp train flags, quoted (default: none)")
    p.add_argument("--json", metavar="FILE", help="write the summary as JSON")
    p.add_argument("--md", metavar="FILE", help="write the table as Markdown")
    args = p.parse_args(argv)
    if args.procs < 2:
        p.error("--procs must be >= 2")
    machine = machine_info()
    extra = shlex.split(args.train_args)
    runs = [run(comm, seed, args.procs, Path(args.out), extra) for comm in COMMS for seed in args.seeds]
    for r in runs:
        print(f"{r['comm']:>5} seed {r['seed']}: SGD-LP {r['sgd_lp']:.2f}%  SWALP {r['swalp']:.2f}%  ({r['wall_s']} s)")
    cells = {c: {k: mean_std([r[k] for r in runs if r["comm"] == c]) for k in ("sgd_lp", "swalp")} for c in COMMS}
    diff = cells["bfp8"]["swalp"]["mean"] - cells["fp32"]["swalp"]["mean"]
    noise = max(cells["bfp8"]["swalp"]["std"], cells["fp32"]["swalp"]["std"])
    summary = dict(cells=cells, swalp_difference=diff, within_noise=abs(diff) < noise, runs=runs,
                   train_args=args.train_args, processes=args.procs, seeds=args.seeds, machine=machine)
    command = f"swalp train {args.train_args}".strip()
    title = (f"`--comm` on {args.procs} gloo processes, seeds {' '.join(map(str, args.seeds))}, `{command}` "
             f"(its defaults: MNIST-1D, the CNN, the paper recipe); {describe(machine)}")
    lines = [title, "", "| all-reduce | SGD-LP test error (%) | SWALP test error (%) |", "|---|---|---|"]
    for c in COMMS:
        lines.append(f"| {c} | {cells[c]['sgd_lp']['mean']:.2f} ± {cells[c]['sgd_lp']['std']:.2f} "
                     f"| {cells[c]['swalp']['mean']:.2f} ± {cells[c]['swalp']['std']:.2f} |")
    lines += ["", f"SWALP: bfp8 minus fp32 = {diff:+.2f} points; the larger standard deviation is {noise:.2f}."]
    print("\n".join(lines))
    if args.md:
        Path(args.md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md).write_text("\n".join(lines) + "\n")
    if args.json:
        write_records(args.json, [summary])
    return 0


if __name__ == "__main__":
    sys.exit(main())
