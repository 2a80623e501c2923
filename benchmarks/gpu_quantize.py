"""Check the Triton quantization kernels against the reference bit for bit, then time them.

One prepared script for a machine with a CUDA GPU:

1. Correctness: every format below, both roundings, float32/float64/float16/bfloat16,
   odd and non-contiguous shapes with NaN, +-inf, +-0 and subnormals in them:
   ``backend="triton"`` on the GPU against the reference on the CPU (the definition),
   bit for bit; then one 2^28-element tensor against the reference on the GPU.
2. Speed: 2^28 float32 elements, ``swalp.quantize(x, fmt, rounding, backend="triton")``
   against a device-to-device copy ``y.copy_(x)`` of the same tensor (CUDA events, median
   of ``--repeats`` after a warm-up). ratio = copy time / quantize time; our GPU target
   is >= 0.5 for stochastic BFP8.

    python benchmarks/gpu_quantize.py                          # check, then time
    python benchmarks/gpu_quantize.py --json gpu.json --repeats 50
    python benchmarks/gpu_quantize.py --skip-check --numel 16777216

Exit codes: 0 every check passed; 1 a result differed from the reference; 77 no CUDA
device or no triton (nothing was checked or measured; 77 is the usual "skipped" code).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

import swalp
from swalp.formats import BlockFloat, FixedPoint, FloatFormat, MXFloat, PerAxis, PerGroup, PerTensor, get_format
from swalp.ops import backends

SKIPPED = 77
CHECK_FORMATS = [
    FixedPoint(8, 6), FixedPoint(4, 2), FixedPoint(32, 3), FixedPoint(16, 64),
    BlockFloat(8), BlockFloat(4, ebits=1), BlockFloat(8, block=PerAxis(0)), BlockFloat(8, block=PerAxis(1)),
    BlockFloat(8, block=PerAxis(-1)), BlockFloat(6, block=PerGroup(7, 1)), get_format("mxint8"),
    BlockFloat(32, block=PerGroup(3, 0)), BlockFloat(8, block=PerGroup(700, -1)),
    get_format("e4m3"), FloatFormat(5, 2), FloatFormat(8, 7), FloatFormat(5, 10), FloatFormat(2, 0),
    FloatFormat(3, 2, saturate=False), FloatFormat(8, 23, finite_only=True),
    get_format("mxfp8_e4m3"), get_format("mxfp4_e2m1"), MXFloat(FloatFormat(5, 2), block=PerGroup(5, 0), ebits=4),
    MXFloat(FloatFormat(3, 2), block=PerAxis(1)), MXFloat(FloatFormat(3, 2), block=PerTensor()),
]  # fmt: skip
CHECK_SHAPES = [(17, 13, 3), (5, 129), (1000,), (), (257, 1031), (3, 2048), (64, 33, 65)]
ROW = 1024
TIME_FORMATS = {
    "fixed8": FixedPoint(8, 6),
    "bfp8_tensor": BlockFloat(8),
    "bfp8_row": BlockFloat(8, block=PerAxis(0)),  # rows of 1024
    "bfp8_tile32": BlockFloat(8, block=PerGroup(32, -1)),
    "fp8_e4m3": get_format("fp8_e4m3"),
    "mxint8": get_format("mxint8"),
    "mxfp8_e4m3": get_format("mxfp8_e4m3"),
}


def sample(shape, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = torch.exp(4 * torch.randn(shape, generator=g, dtype=torch.float64))
    x = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    flat = x.view(-1)
    if flat.numel() >= 13:
        flat[3], flat[5], flat[7] = float("nan"), float("inf"), -float("inf")
        flat[9], flat[10], flat[11] = 1e-42, 0.0, -0.0
        flat[12] = -3e-41  # a negative subnormal: floor is -1, not -0
    return x.float()


def differences(a: torch.Tensor, b: torch.Tensor) -> int:
    """Elements whose bits differ (NaN matches NaN whatever its payload)."""
    a, b = a.cpu(), b.cpu()
    nan = torch.isnan(a)
    if not torch.equal(nan, torch.isnan(b)):
        return int((nan != torch.isnan(b)).sum())
    as_int = {torch.float64: torch.int64, torch.float32: torch.int32}.get(a.dtype, torch.int16)
    return int((a[~nan].contiguous().view(as_int) != b[~nan].contiguous().view(as_int)).sum())


def check(device) -> int:
    cases = failures = 0
    for fmt in CHECK_FORMATS:
        axis = getattr(getattr(fmt, "block", None), "axis", 0)
        for shape in CHECK_SHAPES:
            if not -len(shape) <= axis < max(1, len(shape)):
                continue
            base = sample(shape, seed=len(shape))
            for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
                x = base.to(dtype)
                views = [x, x.transpose(0, -1), x[::2, ::3]] if x.dim() >= 2 else [x]
                for v in views:
                    for rounding in ("nearest", "stochastic"):
                        ref = swalp.quantize(v, fmt, rounding, seed=2**64 - 7, backend="reference")
                        out = swalp.quantize(v.to(device), fmt, rounding, seed=2**64 - 7, backend="triton")
                        cases += 1
                        bad = differences(ref, out)
                        if bad:
                            failures += 1
                            print(f"MISMATCH {fmt!r} {rounding} {dtype} shape {tuple(v.shape)} "
                                  f"contiguous={v.is_contiguous()}: {bad} elements differ")  # fmt: skip
    print(f"checked {cases} cases against the CPU reference: {failures} mismatches")
    return failures


def check_big(x: torch.Tensor) -> int:
    """One full-size tensor against the reference on the GPU (index arithmetic at scale)."""
    failures = 0
    for fmt in (BlockFloat(8), get_format("mxint8")):
        ref = swalp.quantize(x, fmt, "stochastic", seed=3, backend="reference")
        out = swalp.quantize(x, fmt, "stochastic", seed=3, backend="triton")
        bad = differences(ref, out)
        del ref, out
        torch.cuda.empty_cache()
        print(f"{x.numel()} elements, {fmt!r}, stochastic: {bad} elements differ from the GPU reference")
        failures += bad > 0
    return failures


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up: Triton compilation, allocator
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--numel", type=int, default=2**28, help="elements of the timed float32 tensor (default 2^28)")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per record (default 20)")
    p.add_argument("--skip-check", action="store_true", help="time only")
    p.add_argument("--json", metavar="FILE", help="also write the records as JSON")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_quantize: no CUDA device here; nothing was checked or measured (exit 77)")
        return SKIPPED
    if "triton" not in backends():
        print("gpu_quantize: the triton backend is not registered (is triton installed?); "
              "nothing was checked or measured (exit 77)")
        return SKIPPED
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    print(f"device: {name}, torch {torch.__version__}")

    failures = 0 if args.skip_check else check(device)
    x = torch.randn(args.numel // ROW, ROW, device=device)
    if not args.skip_check:
        failures += check_big(x)
    y = torch.empty_like(x)
    t_copy = median_ms(lambda: y.copy_(x), args.repeats)
    gbps = 2 * x.numel() * 4 / t_copy / 1e6
    print(f"\ncopy of {x.numel()} float32: {t_copy:.3f} ms ({gbps:.0f} GB/s read+write)")
    print(f"{'format':<14}{'rounding':<12}{'ms':>9}{'Gelem/s':>10}{'ratio':>8}")
    records = []
    for fname, fmt in TIME_FORMATS.items():
        for rounding in ("nearest", "stochastic"):
            t = median_ms(lambda: swalp.quantize(x, fmt, rounding, seed=1, backend="triton"), args.repeats)
            rec = dict(format=fname, format_repr=repr(fmt), rounding=rounding, backend="triton", numel=x.numel(),
                       ms=t, copy_ms=t_copy, elems_per_s=x.numel() / t * 1e3, ratio_to_copy=t_copy / t,
                       device=name, torch=torch.__version__)  # fmt: skip
            records.append(rec)
            print(f"{fname:<14}{rounding:<12}{t:>9.3f}{rec['elems_per_s'] / 1e9:>10.2f}{rec['ratio_to_copy']:>8.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(failures=failures, records=records), f, indent=1)
        print(f"wrote {args.json}")
    print("\nPASS" if failures == 0 else f"\nFAIL: {failures} mismatching cases")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
