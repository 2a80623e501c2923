"""The one prepared script for a lent GPU: every kernel checked bit for bit, then the figures.

1. ``benchmarks/gpu_quantize.py``: every Triton quantization kernel against the reference
   (formats, blockings, dtypes, NaN/inf/subnormals), then stochastic BFP8 on 2^28 elements
   timed against a device-to-device copy (target >= 0.5 of copy bandwidth).
2. Packed form: ``swalp.pack`` on the GPU, unpacked, against ``swalp.quantize`` on the CPU
   reference, bit for bit, for every format that packs.
3. Integer products: ``int8_mm`` and the ``int8_conv`` ops on the GPU (cuBLAS int8, padded
   shapes included) against the float64 product of the same grid values.
3a. The packed SGD step (``swalp.ops.sgd.packed_sgd``, what ``storage="packed"`` steps with) on
   the GPU against the CPU's C++ kernel, codes and exponents bit for bit.
3b. The BFP all-reduce (``swalp.distributed``): its four local steps on the GPU (the PyTorch
   definitions) against the CPU's C++ kernels, bit for bit; then a DDP model on the GPU under
   NCCL (one rank: NCCL takes one GPU per rank) with the hook, against the same model on the
   CPU under gloo, gradients bit for bit.
3c. Rounding statistics (``swalp inspect``, ``--stats-every``): ``swalp.ops.stats.rounding_sums``
   on the GPU (the torch path) against the CPU's C++ kernel, counts exactly, sums to 1e-5.
4. A VGG-16 training step at CIFAR size (batch 128, SGD momentum 0.9, wd 5e-4) for fp32, the
   simulated paper recipe, packed storage, and int8 products (paper and paper-big-block),
   eager and (with ``--compile``) compiled: median step time (CUDA-synchronised) and
   ``torch.cuda.max_memory_allocated`` of each, and the ratio to fp32 (targets: paper <= 1.3,
   int8 < 1.0).

Everything is written to ``--json`` (default ``gpu_check.json``), after every part, so that a
run cut short keeps what it measured. A part that raises is recorded (``errors``, or a
configuration's ``error``) and counted as a failure, and the rest still run; with
``--max-minutes`` no timing starts after that long (those configurations say ``skipped``), to
fit a lent machine's time. Without a GPU it exits 77 ("skipped") with a message; ``--device
cpu`` runs parts 2 to 4 on the CPU to check the script itself (slow; not a figure).

    python benchmarks/gpu_check.py --json gpu_check.json --compile --max-minutes 7
    python benchmarks/gpu_check.py --device cpu --steps 2 --warmup 1 --batch 8   # the script's own check

Exit codes: 0 every check passed; 1 a result differed; 77 no CUDA device.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback

import torch
import torch.nn.functional as F
from _common import describe, machine_info

import swalp
from swalp._files import atomic_write_text
from swalp.models import build_model
from swalp.ops.intmm import int8_mm

SKIPPED = 77
PACK_FORMATS = ["bfp8", "fixed8", "e4m3", "e5m2", "mxint8", "mxfp8_e4m3"]
PACK_BLOCKINGS = [swalp.PerTensor(), swalp.PerAxis(0), swalp.PerAxis(1), swalp.PerGroup(32, -1)]
STEP_CONFIGS = [  # name, recipe, storage, compute
    ("fp32", None, "simulated", "float"),
    ("paper", "paper", "simulated", "float"),
    ("paper-packed", "paper", "packed", "float"),
    ("paper-int8", "paper", "simulated", "int8"),
    ("big-block", "paper-big-block", "simulated", "float"),
    ("big-block-int8", "paper-big-block", "simulated", "int8"),
]
COMPILED = ("fp32", "paper", "paper-int8", "big-block-int8")


def check_pack(device) -> int:
    from swalp.formats import BlockFloat

    failures = cases = 0
    g = torch.Generator().manual_seed(0)
    x = torch.randn(67, 129, generator=g) * torch.exp(3 * torch.randn(67, 129, generator=g))
    x[0, :3] = torch.tensor([1e-42, 0.0, -0.0])  # no NaN: the integer formats have no code for it
    fmts = [swalp.get_format(n) for n in PACK_FORMATS] + [BlockFloat(8, block=b) for b in PACK_BLOCKINGS]
    for fmt in fmts:
        for rounding in ("nearest", "stochastic"):
            want = swalp.quantize(x, fmt, rounding, seed=11, backend="reference")
            got = swalp.pack(x.to(device), fmt, rounding, seed=11).unpack().cpu()
            cases += 1
            if not torch.equal(torch.nan_to_num(got, 7.0), torch.nan_to_num(want, 7.0)):
                failures += 1
                print(f"MISMATCH pack {fmt!r} {rounding}")
    print(f"pack/unpack: {cases} cases, {failures} mismatches")
    return failures


def _grid(shape, scale_shape, g):
    codes = torch.randint(-128, 128, shape, generator=g).float()
    return codes * torch.ldexp(torch.ones(scale_shape), torch.randint(-12, 4, scale_shape, generator=g))


def check_int8(device) -> int:
    failures = cases = 0
    g = torch.Generator().manual_seed(1)
    for m, k, n in [(1, 1, 1), (16, 8, 8), (17, 24, 40), (5, 13, 3), (128, 4608, 512), (4096, 512, 10)]:
        a, b = _grid((m, k), (m, 1), g), _grid((k, n), (1, n), g)
        got = int8_mm(a.to(device), b.to(device))
        cases += 1
        if got is None or not torch.equal(got.cpu(), (a.double() @ b.double()).float()):
            failures += 1
            print(f"MISMATCH int8_mm {m}x{k}x{n}")
    for shape, out_ch, stride, pad in [((2, 3, 9, 9), 8, 1, 1), ((4, 16, 16, 16), 32, 2, 0)]:
        x = torch.randint(0, 128, shape, generator=g).float() * 2.0**-6  # a ReLU output on a per-tensor grid
        w = _grid((out_ch, shape[1], 3, 3), (1, 1, 1, 1), g)
        out, took = torch.ops.swalp.int8_conv(x.to(device), w.to(device), None, [stride] * 2, [pad] * 2, [1, 1])
        cases += 1
        want = F.conv2d(x.double(), w.double(), None, stride, pad).float()
        if not (bool(took) and torch.equal(out.cpu(), want)):
            failures += 1
            print(f"MISMATCH int8_conv {shape} took_int8={bool(took)}")
    print(f"integer products: {cases} cases, {failures} mismatches")
    return failures


def check_stats(device) -> int:
    from swalp.ops.stats import _layout, _reference_sums, rounding_sums

    failures = cases = 0
    g = torch.Generator().manual_seed(2)
    x = torch.randn(64, 2048, generator=g) * torch.exp(2 * torch.randn(64, 1, generator=g))
    x[3, ::97] = float("nan")
    for name in PACK_FORMATS + ["bfp6"]:
        fmt = swalp.get_format(name)
        y = swalp.quantize(x, fmt, "stochastic", seed=3)
        want = rounding_sums(x, y, fmt)  # the CPU's C++ kernel
        if device.type == "cuda":
            got = rounding_sums(x.to(device), y.to(device), fmt).cpu()
        else:  # the script's own check: the torch path on the CPU
            got = _reference_sums(x, y, _layout(x, fmt))
        cases += 1
        same_counts = got[:4].tolist() == want[:4].tolist() and got[6] == want[6]
        if not (same_counts and torch.allclose(got[4:6], want[4:6], rtol=1e-5)):
            failures += 1
            print(f"MISMATCH rounding_sums {fmt!r}: {got.tolist()} against {want.tolist()}")
    print(f"rounding statistics: {cases} cases, {failures} mismatches")
    return failures


def check_sgd(device) -> int:
    """The packed SGD step (swalp/ops/sgd.py) on the device against the CPU's C++ kernel."""
    from swalp.ops.sgd import packed_sgd

    failures = cases = 0
    g = torch.Generator().manual_seed(4)
    for fmt in [swalp.get_format(n) for n in PACK_FORMATS]:
        w, grad, m = (swalp.pack(torch.randn(64, 129, generator=g) * s, fmt, "stochastic", seed=k)
                      for k, s in ((1, 1.0), (2, 0.1), (3, 0.1)))
        for settings in ({"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}, {"lr": 0.1, "momentum": 0.9, "nesterov": True}):
            want = packed_sgd(w, grad, m, fmt, fmt, "stochastic", (5, 6), **settings)  # C++
            on = [t.to(device) for t in (w, grad, m)]
            backend = "reference" if device.type == "cpu" else None  # the script's own check: the torch path
            got = packed_sgd(*on, fmt, fmt, "stochastic", (5, 6), backend=backend, **settings)
            cases += 1
            for a, b in zip(got, want):
                a = a.to(torch.device("cpu"))
                if not (torch.equal(a.codes.view(torch.uint8), b.codes.view(torch.uint8))
                        and (a.exponents is None or torch.equal(a.exponents, b.exponents))):
                    failures += 1
                    print(f"MISMATCH packed_sgd {fmt!r} {settings}")
                    break
    print(f"packed SGD step: {cases} cases, {failures} mismatches")
    return failures


def check_comm(device) -> int:
    """The BFP all-reduce's local steps on the device against the C++ kernels, then one DDP
    backward with the hook under NCCL on the device against gloo on the CPU."""
    import os
    import socket

    import torch.distributed as dist

    from swalp.distributed import _bfp_math as bm

    failures = cases = 0
    g = torch.Generator().manual_seed(8)
    grads = [torch.randn(n, generator=g) * 10.0 ** torch.randint(-5, 5, (n,), generator=g) for n in (1000, 77, 4096)]
    grads[1][3] = float("nan")
    grads.append(torch.tensor([1.5 * 2.0**127, -1.0, 2.0**-140]))
    sizes, wl = [256, 32, 4096, 3], 8
    on = [t.to(device) for t in grads]
    kernels = device.type != "cpu"  # on the CPU (the script's own check): definitions against kernels
    for rounding in (swalp.Rounding.STOCHASTIC, swalp.Rounding.NEAREST):
        e = bm.exponents(grads, sizes)
        length = sum(bm.blocks_of(t.numel(), s) * s for t, s in zip(grads, sizes)) + 9
        codes = bm.codes(grads, sizes, e, wl, rounding, [3, 4, 5, 6], length)
        received = torch.cat([codes, torch.randint(-128, 128, (2 * length,), generator=g, dtype=torch.int8)])
        segments = [(length // 2, 7, 100), (length - length // 2 - 5, 8, 0)]
        starts = [0, 1000, 1077, 5173]
        want = [e, codes, bm.mean(received, 3, segments, rounding),
                bm.decode_into(torch.zeros(5176), codes, e, [t.numel() for t in grads], sizes, starts, wl)]
        got = [bm.exponents(on, sizes, kernels=kernels),
               bm.codes(on, sizes, e.to(device), wl, rounding, [3, 4, 5, 6], length, kernels=kernels),
               bm.mean(received.to(device), 3, segments, rounding, kernels=kernels),
               bm.decode_into(torch.zeros(5176, device=device), codes.to(device), e.to(device),
                              [t.numel() for t in grads], sizes, starts, wl, kernels=kernels)]
        for name, a, b in zip(("exponents", "codes", "mean", "decode"), got, want):
            cases += 1
            a = a.cpu()
            if not (torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())):
                failures += 1
                print(f"MISMATCH BFP all-reduce {name} ({rounding})")
    # One DDP backward with the hook: NCCL on the device, gloo on the CPU (one rank each).
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    try:
        results = []
        for dev, group in ((device, None), (torch.device("cpu"), dist.new_group([0], backend="gloo"))):
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Linear(64, 300), torch.nn.ReLU(), torch.nn.Linear(300, 10)).to(dev)
            ddp = torch.nn.parallel.DistributedDataParallel(model, process_group=group, bucket_cap_mb=0.05)
            state = swalp.distributed.register_bfp_hook(ddp, seed=1, process_group=group)
            x = torch.randn(32, 64, generator=torch.Generator().manual_seed(1)).to(dev)
            ddp(x).square().mean().backward()
            results.append([p.grad.cpu() for p in model.parameters()] + [state.bytes_sent])
            del ddp, state
        cases += 1
        if not all(torch.equal(a, b) if torch.is_tensor(a) else a == b for a, b in zip(*results)):
            failures += 1
            print(f"MISMATCH BFP all-reduce hook: {dist.get_backend()} on {device} against gloo on the CPU")
    finally:
        dist.destroy_process_group()
    print(f"BFP all-reduce: {cases} cases, {failures} mismatches")
    return failures


def make_step(recipe, storage, compute, device, compile):
    torch.manual_seed(0)
    model = build_model("vgg16", 10, (3, 32, 32)).to(device)
    sgd = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    opt = sgd
    if recipe is not None:
        swalp.quantize_model(model, recipe, compute=compute)
        opt = swalp.LowPrecisionOptimizer(sgd, recipe, seed=0, storage=storage)
    net = torch.compile(model) if compile else model

    def step(x, y):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step, model


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(args, device, deadline: float, save) -> list[dict]:
    """Each configuration's median step; one that fails is recorded with its error and the rest
    go on; those not started by ``deadline`` (time.monotonic) are recorded as skipped. ``save``
    is called with the records after each configuration (a partial JSON survives a kill)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=g).to(device)
    configs = [(name, *rest, False) for name, *rest in STEP_CONFIGS]
    if args.compile:
        configs += [(name + " compiled", *rest, True) for name, *rest in STEP_CONFIGS if name in COMPILED]
    records = []
    for name, recipe, storage, compute, compile in configs:
        rec = dict(name=name, recipe=recipe or "fp32", storage=storage, compute=compute, compiled=compile,
                   batch=args.batch)
        records.append(rec)
        if time.monotonic() > deadline:
            rec["skipped"] = f"--max-minutes {args.max_minutes} reached"
            continue
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        try:
            step, model = make_step(recipe, storage, compute, device, compile)
            times = []
            for i in range(args.warmup + args.steps):
                sync(device)
                start = time.perf_counter()
                step(x, y)
                sync(device)
                if i >= args.warmup:
                    times.append(time.perf_counter() - start)
            rec.update(step_ms=statistics.median(times) * 1e3,
                       max_memory_allocated=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None)
            if compute == "int8":
                rec["compute_paths"] = swalp.nn.compute_paths(model)
            del step, model
        except Exception as e:  # one configuration's failure must not cost the others' figures
            traceback.print_exc()
            rec["error"] = f"{type(e).__name__}: {e}"
        save(records)
    timed = [r for r in records if "step_ms" in r]
    base = {r["compiled"]: r["step_ms"] for r in timed if r["recipe"] == "fp32"}
    print(f"\nVGG-16, batch {args.batch}, median of {args.steps} steps after {args.warmup}")
    print(f"{'config':<24}{'ms':>9}{'/ fp32':>8}{'peak MiB':>10}")
    for r in records:
        if "step_ms" not in r:
            print(f"{r['name']:<24}  {r.get('error') or r.get('skipped')}")
            continue
        fp32 = base.get(r["compiled"], base.get(False))
        r["ratio_to_fp32"] = r["step_ms"] / fp32 if fp32 else None
        peak = "" if r["max_memory_allocated"] is None else f"{r['max_memory_allocated'] / 2**20:>10.0f}"
        ratio = f"{r['ratio_to_fp32']:>8.2f}" if fp32 else f"{'':>8}"
        print(f"{r['name']:<24}{r['step_ms']:>9.1f}{ratio}{peak}")
    return records


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (checks the script only)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per configuration (default 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    p.add_argument("--batch", type=int, default=128, help="batch size (default 128, as the paper)")
    p.add_argument("--compile", action="store_true", help="also time compiled steps (inductor)")
    p.add_argument("--skip-quantize", action="store_true", help="skip part 1 (gpu_quantize.py)")
    p.add_argument("--json", default="gpu_check.json", help="where the records go (default gpu_check.json)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="start no timing after this many minutes from the start (default: no limit)")
    args = p.parse_args(argv)
    started = time.monotonic()
    deadline = started + 60 * args.max_minutes if args.max_minutes is not None else float("inf")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing was checked or measured (exit 77). "
              "`--device cpu` checks the script itself.")
        return SKIPPED
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else describe(machine_info())
    print(f"gpu_check on {where}, torch {torch.__version__}")
    result = dict(device=where, torch=torch.__version__, machine=machine_info(), failures=0, errors={})

    def save(steps=None):  # after every part: what ran is on disk if the machine goes away
        if steps is not None:
            result["steps"] = steps
        result["seconds"] = round(time.monotonic() - started, 1)
        atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")

    def quantize(device) -> int:
        import gpu_quantize

        code = gpu_quantize.main(["--json", args.json + ".quantize.json"])
        with open(args.json + ".quantize.json") as f:
            result["quantize"] = json.load(f)
        return int(code == 1)

    parts = [("quantize", quantize)] if device.type == "cuda" and not args.skip_quantize else []
    parts += [("pack", check_pack), ("int8", check_int8), ("stats", check_stats), ("sgd", check_sgd),
              ("comm", check_comm)]
    for name, check in parts:
        try:  # an exception in one check is a failure of that check; the others still run
            result["failures"] += check(device)
        except Exception as e:
            traceback.print_exc()
            result["errors"][name] = f"{type(e).__name__}: {e}"
            result["failures"] += 1
        save()
    steps = time_steps(args, device, deadline, save)
    result["failures"] += sum("error" in r for r in steps)
    save(steps)
    print(f"wrote {args.json} ({result['seconds']} s)")
    failures = result["failures"]
    print("\nPASS" if failures == 0 else f"\nFAIL: {failures} failed checks or configurations")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
