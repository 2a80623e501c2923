"""The ``swalp`` command line: one module per subcommand, each with ``add_parser``.

A subcommand module defines ``add_parser(subparsers)`` that adds its parser and sets
``func=run`` where ``run(args) -> int`` is the exit status.
"""

from __future__ import annotations

import argparse
import sys

from . import ablation, compare, demo, inspect, reproduce, train

__all__ = ["build_parser", "main"]

COMMANDS = [demo, train, inspect, compare, ablation, reproduce]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swalp", description="Low-precision training with SWALP.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"swalp {args.command}: error: {err}", file=sys.stderr)
        return 2
