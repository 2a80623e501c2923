"""``swalp inspect``: take a few training steps with every rounding measured and print, per
layer and tensor role, what rounding did (SQNR, flushed to zero, saturated, headroom).

A value past its threshold is marked ``!`` and listed with the recipe change that would help;
with ``--strict`` the command then exits 1, so it can guard a recipe in CI. Writes
``inspect.txt`` (this output), ``inspect.json`` and ``inspect.png`` (a heat map) into ``--out``.
"""

from __future__ import annotations

import argparse

from ..experiments.inspect import inspect_recipe, report_text
from ..recipes import RECIPES


def add_parser(sub) -> None:
    p = sub.add_parser("inspect", help="measure what rounding does to each layer's tensors over a few training steps",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="a model name, or module:function building one from "
                   "(num_classes, input_shape) (default: the data set's default model)")
    p.add_argument("--data", default="mnist1d", help="data set (default mnist1d; synthetic-cifar10 for the paper's "
                   "CIFAR networks without CIFAR files)")
    p.add_argument("--data-dir", default=None, help="folder of a file-based data set")
    p.add_argument("--recipe", default="paper", help=f"number-format recipe: {', '.join(RECIPES)} (default paper)")
    p.add_argument("--bits", type=int, default=None, help="word length of the recipe's integer formats")
    p.add_argument("--steps", type=int, default=10, help="training steps, each measured (default 10)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default: the model's preset)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the model's preset lr0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, data order and rounding (default 0)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the model's preset)")
    p.add_argument("--out", default="runs/inspect", help="folder for inspect.txt, inspect.json and inspect.png (default runs/inspect)")
    p.add_argument("--strict", action="store_true", help="exit 1 when any threshold is crossed")
    p.set_defaults(func=run)


def run(args) -> int:
    report = inspect_recipe(model=args.model, data=args.data, recipe=args.recipe, bits=args.bits, steps=args.steps,
                            seed=args.seed, batch_size=args.batch_size, lr=args.lr, device=args.device,
                            threads=args.threads, data_dir=args.data_dir, out=args.out)
    print(report_text(report))
    print(f"-> {args.out}/inspect.txt, inspect.json, inspect.png")
    return 1 if report["problems"] and args.strict else 0
