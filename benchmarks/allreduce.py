"""Gradient all-reduce under DistributedDataParallel: swalp's 8-bit BFP hook against torch's hooks.

For each world size it starts that many gloo processes on this machine (NCCL with one GPU
per process where there are enough GPUs). Each rank holds a model of one parameter of
``--sizes`` elements in one DDP bucket; a step is a backward pass whose gradient the hook
averages. It reports the median time of a step after a warm-up step, for each hook:

* ``fp32``: torch's ``allreduce_hook`` (DDP's default: a float32 all-reduce);
* ``fp16``, ``bf16``: torch's ``fp16_compress_hook`` and ``bf16_compress_hook`` (16 bits on
  the wire; DDP accepts the bfloat16 one only with NCCL or XCCL: skipped on gloo);
* ``perchannel``: torch's ``quantization_perchannel_hook`` (uint8 rows of 512, all-gather;
  skipped above ``--perchannel-max`` elements). With gloo in torch 2.13 it fails inside its
  own callback (it indexes the list an all-gather returns as one stacked tensor, an
  IndexError), so it is timed only with NCCL;
* ``bfp8``: :func:`swalp.distributed.bfp_allreduce_hook` (8-bit BFP codes, blocks of 256).

Bytes sent per rank and step: counted by swalp's hook; for torch's hooks, the ring
all-reduce's ``2 (w-1)/w`` times the buffer (4 or 2 bytes an element), and the all-gather's
``(w-1)`` times the rank's own uint8 buffer and scales.

Usage:
    python benchmarks/allreduce.py                                    # 2 and 4 ranks, 1M to 64M
    python benchmarks/allreduce.py --worlds 2 --sizes 1000000 --json docs/bench/allreduce.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, quantization_hooks

from _common import describe, machine_info, write_records

HOOKS = ("fp32", "fp16", "bf16", "perchannel", "bfp8")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bytes(hook: str, n: int, world: int) -> int:
    ring = 2 * (world - 1) / world
    if hook == "fp32":
        return int(ring * 4 * n)
    if hook in ("fp16", "bf16"):
        return int(ring * 2 * n)
    rows = -(-n // 512)  # perchannel: uint8 rows of 512 and a float scale and zero point per row
    return (world - 1) * (rows * 512 + 8 * rows)


def _rank(rank: int, world: int, port: int, sizes: list[int], hooks: list[str], steps: int, out: str) -> None:
    import swalp

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    cuda = torch.cuda.device_count() >= world
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    records = []
    for n in sizes:
        for hook in hooks:
            if hook in ("bf16", "perchannel") and not cuda:
                continue  # refused by DDP, or broken, on gloo (module docstring)
            model = nn.Linear(n, 1, bias=False).to(device)  # one parameter of n elements
            ddp = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=4 * n / 2**20 + 1)
            state = None
            if hook in ("fp16", "bf16"):
                ddp.register_comm_hook(None, getattr(default_hooks, f"{hook}_compress_hook"))
            elif hook == "perchannel":
                ddp.register_comm_hook(dist.group.WORLD, quantization_hooks.quantization_perchannel_hook)
            elif hook == "bfp8":
                state = swalp.distributed.register_bfp_hook(ddp, seed=0)
            x = torch.randn(1, n, generator=torch.Generator().manual_seed(rank)).to(device)
            times = []
            for _ in range(steps + 1):
                model.zero_grad()
                dist.barrier()
                start = time.perf_counter()
                ddp(x).sum().backward()
                if cuda:
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            sent = state.bytes_sent // (steps + 1) if state is not None else _bytes(hook, n, world)
            records.append(dict(world=world, elements=n, hook=hook, step_seconds=statistics.median(times[1:]),
                                bytes_per_step=sent, fp32_bytes_per_step=_bytes("fp32", n, world),
                                backend=dist.get_backend()))
            del ddp, model
    if rank == 0:
        with open(out, "w") as f:
            json.dump(records, f)
    dist.destroy_process_group()


def _spawn(world: int, rank_args: tuple, out: str, grace: float = 60.0) -> None:
    """``mp.spawn(_rank, ...)``, but once rank 0 has written ``out``, ranks still alive ``grace``
    seconds later are stopped: a rank can hang in gloo's teardown after its work is done (seen
    in tests/test_comm.py's 4-rank runs), and the records are complete by then."""
    if os.path.exists(out):
        os.remove(out)
    context = mp.spawn(_rank, args=rank_args, nprocs=world, join=False)
    written = None
    while not context.join(timeout=1):  # raises if a rank failed
        if os.path.exists(out):
            written = written or time.monotonic()
            if time.monotonic() - written > grace:
                for process in context.processes:
                    if process.is_alive():
                        process.kill()
                return


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worlds", type=int, nargs="+", default=[2, 4], help="processes (default 2 4)")
    p.add_argument("--sizes", type=int, nargs="+", default=[2**20, 2**22, 2**24, 2**26],
                   help="elements of the bucket (default 2^20 to 2^26)")
    p.add_argument("--hooks", nargs="+", default=list(HOOKS), choices=HOOKS)
    p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up (default 3)")
    p.add_argument("--perchannel-max", type=int, default=2**22,
                   help="largest bucket timed with the per-channel hook, whose Python loop is slow (default 2^22)")
    p.add_argument("--json", metavar="FILE", help="also write the records as JSON")
    args = p.parse_args(argv)
    if min(args.worlds) < 2 or min(args.sizes) < 1 or args.steps < 1:
        p.error("--worlds must be >= 2, --sizes >= 1 and --steps >= 1")
    machine = machine_info()
    print(f"gradient all-reduce, {describe(machine)}, torch {torch.__version__}")
    print(f"{'ranks':>5}{'elements':>11}{'hook':>12}{'ms/step':>10}{'MB sent':>10}{'/ fp32':>8}")
    records = []
    for world in args.worlds:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "records.json")
            for n in args.sizes:
                hooks = [h for h in args.hooks if h != "perchannel" or n <= args.perchannel_max]
                _spawn(world, (world, _free_port(), [n], hooks, args.steps, out), out)
                with open(out) as f:
                    for r in json.load(f):
                        r.update(machine=machine, torch=torch.__version__)
                        records.append(r)
                        print(f"{world:>5}{n:>11}{r['hook']:>12}{r['step_seconds'] * 1e3:>10.1f}"
                              f"{r['bytes_per_step'] / 2**20:>10.1f}{r['bytes_per_step'] / r['fp32_bytes_per_step']:>8.3f}",
                              flush=True)
    write_records(args.json, records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
