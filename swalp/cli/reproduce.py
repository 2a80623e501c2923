"""``swalp reproduce linreg|logreg``: the paper's convex experiments, one command each.

Each writes ``summary.json``, ``table.md`` and two PNGs into ``--out`` and prints the
table; ``--quick`` is a test-sized run (seconds). The set-ups are in
:mod:`swalp.experiments.convex.linreg` and :mod:`swalp.experiments.convex.logreg`, the results in docs/convex.md.
"""

from __future__ import annotations

import time

from .._checks import check_choice
from ..experiments.convex import EXPERIMENTS, linreg, logreg, report


def add_parser(sub) -> None:
    p = sub.add_parser("reproduce", help="the paper's convex experiments: linear or logistic regression in fixed point")
    p.add_argument("experiment", help="linreg (least squares, synthetic) or logreg (multinomial logistic regression)")
    p.add_argument("--out", default=None, help="output folder (default runs/convex-EXPERIMENT)")
    p.add_argument("--quick", action="store_true", help="a test-sized run: short T, 2 replicates")
    p.add_argument("--data", default=None, help="logreg only: digits (default, embedded) or mnist (needs --data-dir)")
    p.add_argument("--data-dir", default=None, help="logreg --data mnist: folder with the MNIST IDX files")
    p.add_argument("--seed", type=int, default=0, help="seed of the data (linreg), minibatches and rounding (default 0)")
    p.set_defaults(func=run)


def run(args) -> int:
    check_choice("experiment", args.experiment, EXPERIMENTS)
    if args.experiment == "linreg" and (args.data is not None or args.data_dir is not None):
        raise ValueError("--data and --data-dir apply to logreg only")
    if not 0 <= args.seed < 2**24:
        raise ValueError(f"--seed must be in [0, 2**24), got {args.seed}")
    start = time.perf_counter()
    progress = lambda msg: print(f"[{time.perf_counter() - start:6.1f}s] {msg}", flush=True)  # noqa: E731
    if args.experiment == "linreg":
        cfg = linreg.LinRegConfig.quick(seed=args.seed) if args.quick else linreg.LinRegConfig(seed=args.seed)
        summary = linreg.run(cfg, progress)
        name = "linreg"
    else:
        kw = dict(data=args.data or "digits", data_dir=args.data_dir, seed=args.seed)
        cfg = logreg.LogRegConfig.quick(**kw) if args.quick else logreg.LogRegConfig(**kw)
        summary = logreg.run(cfg, progress)
        name = "logreg" if cfg.data == "digits" else f"logreg_{cfg.data}"
    summary["quick"] = bool(args.quick)
    summary["machine"] = report.machine()
    summary["wall_s"] = round(time.perf_counter() - start, 1)
    paths = report.write(summary, args.out or f"runs/convex-{args.experiment}", name)
    print()
    print(report.markdown_table(summary))
    print(f"wrote {', '.join(str(p) for p in paths.values())} ({summary['wall_s']} s)")
    return 0
