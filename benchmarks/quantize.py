"""Throughput of swalp.quantize: every format, rounding and registered backend.

For each (format, rounding, backend) it times ``swalp.quantize`` on one float32 tensor
and, interleaved with it, ``torch.mul(x, 2, out=y)`` on the same tensor, so the ratio
is measured under the same machine load. The quantize time is the median of
``--repeats`` runs after one warm-up run; the mul time the median of 3 per repeat.

    ratio_to_mul = throughput of quantize / throughput of torch.mul(x, 2, out=y)
                 (1 means as fast as one multiply, 0.5 half as fast; our targets
                 are >= 0.5 for stochastic rounding and >= 0.7 for nearest)

Usage:
    python benchmarks/quantize.py                       # 2^24 elements, every backend
    python benchmarks/quantize.py --backend reference --threads 1 2 --json out.json
    python benchmarks/quantize.py --numel 1048576 --repeats 3 --formats fixed8 fp8_e4m3

A backend that does not support a format, or the device, is skipped with a note.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import swalp
from swalp.formats import BlockFloat, FixedPoint, PerAxis, PerGroup, get_format
from swalp.ops import backends
from _common import describe, machine_info, write_records

FORMATS = {
    "fixed8": FixedPoint(8, 6),
    "bfp8_tensor": BlockFloat(8),  # one exponent for the whole tensor
    "bfp8_row": BlockFloat(8, block=PerAxis(0)),  # one per row of 1024
    "bfp8_tile32": BlockFloat(8, block=PerGroup(32, -1)),  # one per 32 along the row
    "fp8_e4m3": get_format("fp8_e4m3"),
    "fp8_e5m2": get_format("fp8_e5m2"),
    "mxint8": get_format("mxint8"),
    "mxfp8_e4m3": get_format("mxfp8_e4m3"),
}
ROUNDINGS = ("nearest", "stochastic")
ROW = 1024  # the tensor is (numel / ROW, ROW): "per row" means 1024-element rows


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def bench_one(x, y, op, repeats) -> tuple[float, float]:
    """Median seconds of one call of ``op`` (a quantize, a pack or an unpack) and of one
    torch.mul, measured alternately."""

    def mul():
        torch.mul(x, 2, out=y)

    op(), mul()  # warm-up: compilation, caches, allocator
    tq, tm = [], []
    for _ in range(repeats):
        tm += [timed(mul, x.device) for _ in range(3)]  # cheap: more samples for a steadier median
        tq.append(timed(op, x.device))
    return statistics.median(tq), statistics.median(tm)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--numel", type=int, default=2**24, help="elements of the float32 tensor (default 2^24)")
    p.add_argument("--backend", nargs="+", help=f"backends to run (default: every registered one: {' '.join(backends())})")
    p.add_argument(
        "--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS), metavar="NAME", help=f"default: {' '.join(FORMATS)}"
    )
    p.add_argument("--rounding", nargs="+", default=list(ROUNDINGS), choices=ROUNDINGS)
    p.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()], help="torch.set_num_threads values")
    p.add_argument("--repeats", type=int, default=3, help="timed quantize runs per record, median reported (default 3)")
    p.add_argument("--device", default="cpu", help="torch device of the tensor (default cpu)")
    p.add_argument("--packed", action="store_true",
                   help="also time swalp.pack (int8 codes and exponents, a quarter of the bytes written) "
                        "and PackedTensor.unpack")
    p.add_argument("--json", metavar="FILE", help="also write the records as JSON")
    args = p.parse_args(argv)

    if args.numel < ROW or args.numel % ROW:
        p.error(f"--numel must be a positive multiple of {ROW}, got {args.numel}")
    if args.repeats < 1 or min(args.threads) < 1:
        p.error("--repeats and --threads must be >= 1")
    names = backends() if args.backend is None else args.backend
    unknown = sorted(set(names) - set(backends()))
    if unknown:
        p.error(f"unknown backend(s) {unknown}; registered: {backends()}")
    formats = {n: FORMATS[n] for n in args.formats}

    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.numel // ROW, ROW, generator=gen).to(device)
    y = torch.empty_like(x)
    info = machine_info()
    print(f"swalp.quantize on {args.numel} float32 elements ({x.shape[0]} x {ROW}), {device}, torch {torch.__version__}")
    print(f"machine: {describe(info)}")
    print(f"ratio = quantize throughput / torch.mul(x, 2, out=y) throughput; medians of {args.repeats} runs after a warm-up\n")

    records = []
    header = f"{'format':<18}{'rounding':<12}{'backend':<12}{'threads':>8}{'Melem/s':>10}{'ratio':>8}"
    header += f"{'packed ratio':>14}{'unpack ratio':>14}" if args.packed else ""
    print(header)
    print("-" * len(header))
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name, fmt in formats.items():
            for rounding in args.rounding:
                for backend in names:
                    try:
                        tq, tm = bench_one(x, y, lambda: swalp.quantize(x, fmt, rounding, 0, backend=backend), args.repeats)
                    except ValueError as err:  # the backend does not support this input
                        print(f"{name:<18}{rounding:<12}{backend:<12}{threads:>8}  skipped: {err}")
                        continue
                    rec = dict(
                        format=name,
                        format_repr=repr(fmt),
                        rounding=rounding,
                        backend=backend,
                        numel=args.numel,
                        threads=threads,
                        device=str(device),
                        seconds=tq,
                        mul_seconds=tm,
                        elems_per_s=args.numel / tq,
                        ratio_to_mul=tm / tq,
                        torch=torch.__version__,
                        swalp=swalp.__version__,
                        machine=info,
                    )
                    line = ""
                    if args.packed:
                        tp, tm2 = bench_one(x, y, lambda: swalp.pack(x, fmt, rounding, 0, backend=backend), args.repeats)
                        packed = swalp.pack(x, fmt, rounding, 0, backend=backend)
                        tu, tm3 = bench_one(x, y, packed.unpack, args.repeats)
                        rec.update(packed_seconds=tp, packed_mul_seconds=tm2, packed_ratio_to_mul=tm2 / tp,
                                   unpack_seconds=tu, unpack_mul_seconds=tm3, unpack_ratio_to_mul=tm3 / tu)
                        line = f"{tm2 / tp:>14.3f}{tm3 / tu:>14.3f}"
                    records.append(rec)
                    speed, ratio = rec["elems_per_s"] / 1e6, rec["ratio_to_mul"]
                    print(f"{name:<18}{rounding:<12}{backend:<12}{threads:>8}{speed:>10.1f}{ratio:>8.3f}" + line)
                    sys.stdout.flush()

    write_records(args.json, records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
