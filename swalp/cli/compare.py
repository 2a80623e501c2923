"""``swalp compare``: SGD-FP, SWA-FP, SGD-LP and SWALP side by side (the paper's table).

For each seed one full-precision run (SGD-FP, SWA-FP) and, per word length, one run with
the low-precision recipe (SGD-LP, SWALP), all with the same data, model and schedule.
Writes table.md, test_error.png and summary.json into --out; rerunning continues an
interrupted comparison (finished runs are read back).
"""

from __future__ import annotations

import argparse

from ..experiments import compare
from .train import add_train_flags, config_from_args


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="SGD-FP, SWA-FP, SGD-LP and SWALP over word lengths and seeds",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_flags(p)
    g = p.add_argument_group("comparison")
    g.add_argument("--recipe", default=None, help="the low-precision recipe (default paper)")
    g.add_argument("--bits", type=int, nargs="+", default=[8, 6], help="word lengths (default 8 6)")
    g.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    g.add_argument("--out", default="runs/compare", help="output folder (default runs/compare)")
    g.add_argument("--overwrite", action="store_true", help="replace runs in --out made with other settings")
    g.add_argument("--jobs", type=int, default=1, help="runs trained at once, in separate processes (default 1)")
    p.set_defaults(func=run)


def run(args) -> int:
    base = config_from_args(args, **({"recipe": args.recipe} if args.recipe else {}))
    compare(base, bits=args.bits, seeds=args.seeds, out=args.out, jobs=args.jobs, overwrite=args.overwrite)
    return 0
