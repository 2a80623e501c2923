"""``swalp ablation bits|frequency|avg-precision|blocking``: the paper's ablations, one command each.

Each trains a grid of cells (seeds 0 1 2 by default) on the settings of ``swalp compare``
(every ``swalp train`` flag applies) and writes table.md, summary.json and a PNG plot into
--out (default runs/ablation-NAME); rerunning continues an interrupted ablation cell by cell.
The rows of each are in :mod:`swalp.experiments.ablations`; the results in docs/ablations.md.
"""

from __future__ import annotations

import argparse

from .._checks import check_choice
from ..experiments.ablations import ABLATIONS, DEFAULT_BITS, ablation
from .train import add_train_flags, config_from_args


def add_parser(sub) -> None:
    p = sub.add_parser("ablation", help="the paper's ablations: bits, frequency, avg-precision, blocking",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help=f"one of {', '.join(ABLATIONS)}")
    add_train_flags(p)
    g = p.add_argument_group("ablation")
    g.add_argument("--recipe", default=None, help="the low-precision recipe (default paper)")
    g.add_argument("--bits", type=int, nargs="+", default=None,
                   help="word lengths: the rows of 'bits' (default 4 5 6 7 8), the columns of the others (default 8 6)")
    g.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    g.add_argument("--out", default=None, help="output folder (default runs/ablation-NAME)")
    g.add_argument("--overwrite", action="store_true", help="replace runs in --out made with other settings")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    check_choice("ablation", args.name, ABLATIONS)
    base = config_from_args(args, **({"recipe": args.recipe} if args.recipe else {}))
    bits = DEFAULT_BITS[args.name] if args.bits is None else args.bits
    ablation(args.name, base, seeds=args.seeds, bits=bits, out=args.out, progress=args.progress, overwrite=args.overwrite)
    return 0
