"""``swalp demo``: quantize one tensor in every format and print a table of errors."""

from __future__ import annotations

import torch

from ..formats import PRESETS, BlockFloat, FixedPoint, PerAxis, PerGroup
from ..ops import quantize

DEMO_FORMATS = {
    "fixed8 (wl=8, fl=6)": FixedPoint(8, 6),
    "bfp8 per tensor": BlockFloat(8),
    "bfp8 per row": BlockFloat(8, block=PerAxis(0)),
    "bfp8 tiles of 32": BlockFloat(8, block=PerGroup(32)),
    "bfp6 per row": BlockFloat(6, block=PerAxis(0)),
    **{name: PRESETS[name] for name in ("fp8_e4m3", "fp8_e5m2", "bfloat16", "float16", "mxint8", "mxfp8_e4m3", "mxfp8_e5m2", "mxfp4_e2m1")},
}


def error_table(x: torch.Tensor, seed: int = 0) -> list[dict]:
    """Relative RMS error and mean error (bias) of each demo format and rounding."""
    rows = []
    norm = x.pow(2).mean().sqrt().item()
    for name, fmt in DEMO_FORMATS.items():
        for rounding in ("nearest", "stochastic"):
            q = quantize(x, fmt, rounding, seed=seed)
            err = (q - x).double()
            rows.append(dict(format=name, rounding=rounding, rel_rms=err.pow(2).mean().sqrt().item() / norm,
                             bias=err.mean().item(), repr=repr(fmt)))
    return rows


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="quantize a random tensor in every format and print the errors")
    p.add_argument("--rows", type=int, default=256, help="rows of the (rows, 512) test tensor (default 256)")
    p.add_argument("--seed", type=int, default=0, help="seed of the tensor and of the rounding (default 0)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.rows < 1:
        raise ValueError(f"--rows must be >= 1, got {args.rows}")
    gen = torch.Generator().manual_seed(args.seed)
    # Rows of very different scales: what per-row exponents are for.
    x = torch.randn(args.rows, 512, generator=gen) * torch.logspace(-2, 1, args.rows).unsqueeze(1)
    print(f"x: {tuple(x.shape)} float32, rows scaled from 1e-2 to 1e1, seed {args.seed}\n")
    print(f"{'format':<22} {'rounding':<11} {'rel. RMS error':>15} {'mean error':>12}")
    for r in error_table(x, args.seed):
        print(f"{r['format']:<22} {r['rounding']:<11} {r['rel_rms']:>15.3e} {r['bias']:>12.2e}")
    return 0
