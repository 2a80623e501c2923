"""Memory of a training step: persistent state per parameter and the peak of a step.

For each model and variant it starts one child process (so that one variant's memory never
counts against another's), with ``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc returns large
freed blocks at once and the resident memory follows the live tensors. The child builds the
model, takes ``--steps`` SGD steps (momentum 0.9, weight decay 5e-4) on one random batch,
updating an average after each, and reports:

* ``state_bytes_per_param``: the bytes of every tensor of the training state (weights,
  gradients, optimizer state, the optimizer's accumulators; packed forms by their codes and
  exponents), counted after the last backward pass, when the gradients exist in every variant,
  each storage once, divided by the number of parameters; ``average_bytes_per_param``
  likewise for the average;
* ``saved_packed_mb`` / ``saved_float_mb`` (packed activations): the saved Quantizer outputs
  of one step, packed, and as float32 tensors they would have taken;
* ``peak_mb``: the process's peak resident memory during the steps minus its resident memory
  just before the model was built (the peak is reset there through /proc/self/clear_refs), so
  that the interpreter and torch itself are not counted. Linux only. With ``--device cuda``:
  ``torch.cuda.max_memory_allocated`` during the steps less what was allocated before the model.

Variants: ``fp32`` (torch.optim.SGD and torch's AveragedModel), ``paper`` (the simulated
8-bit recipe: quantize_model, LowPrecisionOptimizer, WeightAverage; every number a grid
value held in float32) and ``paper-packed-act`` (the same, with the activations autograd
saves for backward kept packed: ``swalp.nn.packed_activations``), ``paper-packed-state``
(weights, gradients and momentum held packed: ``storage="packed"``, which also steps parameter
by parameter; with the CPU kernels' pool of freed outputs off, as ``swalp train --storage
packed`` runs: swalp.ops.cpu.set_output_pool) and ``paper-packed`` (both: real 8-bit training, the same numbers as ``paper``);
``paper-int8`` and ``paper-packed-int8``: ``paper`` and ``paper-packed`` with integer products
(``compute="int8"``), whose int8 patches (im2col) are temporaries of their own.

With ``--where``, the child also finds where the last step peaks: a thread samples the
resident memory every 0.2 ms while hooks on every autograd node of that step note the node
running; it reports the node (``peak_node``, with its rank among the nodes of its type counted
from the model's input) and the memory live when that node started (``live_at_peak_node_mb``).
The sampling costs time, so only then.

Usage:
    python benchmarks/memory.py                                   # cnn1d and vgg16, 3 steps
    python benchmarks/memory.py --models cnn1d --json docs/bench/memory.json
    python benchmarks/memory.py --models vgg16 --variants paper-packed --where
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time

import torch
import torch.nn.functional as F
from _common import machine_info, write_records

BATCH = {"cnn1d": (100, (1, 40), 10), "vgg16": (128, (3, 32, 32), 10)}
VARIANTS = ("fp32", "paper", "paper-packed-act", "paper-packed-state", "paper-packed", "paper-int8", "paper-packed-int8")


def rss_kb(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t is None or not isinstance(t, torch.Tensor):
            continue
        key = (t.untyped_storage().data_ptr(), t.device)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


class PeakFinder:
    """Which autograd node of one backward pass runs when the resident memory peaks (--where)."""

    def __init__(self, before_kb: int):
        self.before, self.order, self.running = before_kb, [], None
        self.peak, self.at = 0, None
        self._stop = threading.Event()

    def watch(self, root) -> None:
        """Hook every node of the graph below ``root`` and start sampling."""
        seen, stack = set(), [root]
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            node.register_prehook(lambda grad, node=node: self._enter(node))
            stack.extend(f for f, _ in node.next_functions)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _enter(self, node) -> None:
        self.order.append(type(node).__name__)
        self.running = (len(self.order) - 1, rss_kb())
        if self.running[1] > self.peak:  # a sample of its own: a backward shorter than a sampling period still has one
            self.peak, self.at = self.running[1], self.running

    def _sample(self) -> None:
        while not self._stop.is_set():
            now = rss_kb()
            if now > self.peak and self.running is not None:
                self.peak, self.at = now, self.running
            time.sleep(0.0002)

    def report(self) -> dict:
        self._stop.set()
        self._thread.join()
        if self.at is None:
            return {}
        index, live = self.at
        name = self.order[index]
        rank = self.order[index:].count(name)  # its place among nodes of its type, from the input
        return dict(peak_node=name, peak_node_rank=rank, live_at_peak_node_mb=(live - self.before) / 1024,
                    peak_in_backward_mb=(self.peak - self.before) / 1024)


def child(model_name: str, variant: str, steps: int, threads: int, where: bool = False, device: str = "cpu") -> dict:
    import swalp
    from swalp.models import build_model

    torch.set_num_threads(threads)
    cuda = device.startswith("cuda")
    batch, shape, classes = BATCH[model_name]
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch, *shape, generator=gen).to(device), torch.randint(0, classes, (batch,), generator=gen).to(device)
    if cuda:  # the device's own count of live tensor bytes: its peak less what is live before the model
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device) // 1024
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident memory (VmHWM) to the current one
        before = rss_kb()
    torch.manual_seed(0)
    model = build_model(model_name, classes, shape).to(device)
    sgd = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    if variant == "fp32":
        opt, average = sgd, torch.optim.swa_utils.AveragedModel(model)
    else:
        swalp.quantize_model(model, "paper", compute="int8" if variant.endswith("-int8") else "float")
        storage = "packed" if variant in ("paper-packed-state", "paper-packed", "paper-packed-int8") else "simulated"
        if storage == "packed":  # as swalp train --storage packed: no pool of freed kernel outputs
            swalp.ops.cpu.set_output_pool(0)
        opt, average = swalp.LowPrecisionOptimizer(sgd, seed=0, storage=storage), swalp.WeightAverage(model, seed=0)
    packs_act = variant in ("paper-packed-act", "paper-packed", "paper-packed-int8")
    saved = swalp.nn.packed_activations if packs_act else contextlib.nullcontext
    params = list(model.parameters())
    finder = PeakFinder(before) if where and not cuda else None  # resident memory: the CPU's
    for step in range(steps):
        opt.zero_grad()
        with saved() as kept:
            loss = F.cross_entropy(model(x), y)
            if finder is not None and step == steps - 1:
                finder.watch(loss.grad_fn)
            loss.backward()
        if step == steps - 1:
            state = [*params, *(p.grad for p in params), *(v for s in sgd.state.values() for v in s.values())]
            if variant != "fp32":
                packed = [pk for buffers in opt.packed.values() for pk in buffers.values()]
                packed += [*opt.grads.values(), *(swalp.nn.packed_weight(p) for p in params if swalp.nn.is_packed(p))]
                state += [*opt.acc.values(), *(t for pk in packed for t in (pk.codes, pk.exponents))]
            state_bytes = tensor_bytes(state)
        opt.step()
        average.update_parameters(model)
    peak = torch.cuda.max_memory_allocated(device) // 1024 if cuda else rss_kb("VmHWM")
    n = sum(p.numel() for p in params)
    return dict(model=model_name, variant=variant, params=n, steps=steps, threads=threads,
                state_bytes_per_param=state_bytes / n,
                average_bytes_per_param=tensor_bytes([*average.module.parameters()]) / n,
                peak_mb=(peak - before) / 1024, torch=torch.__version__,
                # packed-act: what the saved Quantizer outputs of one step took packed, and would as they were
                saved_packed_mb=kept.packed_bytes / 2**20 if kept else None,
                saved_float_mb=kept.float_bytes / 2**20 if kept else None,
                **(finder.report() if finder is not None else {}), device=device,
                gpu=torch.cuda.get_device_name(device) if cuda else None, machine=machine_info())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(BATCH), choices=list(BATCH))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--steps", type=int, default=3, help="training steps per variant (default 3)")
    p.add_argument("--threads", type=int, default=2, help="torch threads in the child (default 2)")
    p.add_argument("--where", action="store_true", help="also find the autograd node where the last backward peaks (CPU)")
    p.add_argument("--device", default="cpu", help="cpu (default; peak resident memory) or cuda (torch.cuda.max_memory_allocated)")
    p.add_argument("--json", metavar="FILE", help="also write the records as JSON")
    p.add_argument("--child", nargs=2, metavar=("MODEL", "VARIANT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps < 2 or args.threads < 1:
        p.error("--steps must be >= 2 (the momentum exists from the first step on) and --threads >= 1")
    if args.child:
        print(json.dumps(child(*args.child, args.steps, args.threads, args.where, args.device)))
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("memory: --device cuda, but no CUDA device here; nothing measured (exit 77)")
        return 77
    if not args.device.startswith("cuda") and not os.path.exists("/proc/self/clear_refs"):
        print("memory: needs Linux's /proc (peak resident memory); nothing measured (exit 77)")
        return 77
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    print(f"{'model':<8}{'variant':<18}{'state B/param':>15}{'average B/param':>17}{'peak MB':>10}")
    records = []
    for model in args.models:
        for variant in args.variants:
            cmd = [sys.executable, __file__, "--child", model, variant, "--steps", str(args.steps),
                   "--threads", str(args.threads), "--device", args.device] + (["--where"] if args.where else [])
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            rec = json.loads(done.stdout.strip().splitlines()[-1])
            records.append(rec)
            print(f"{model:<8}{variant:<18}{rec['state_bytes_per_param']:>15.2f}{rec['average_bytes_per_param']:>17.2f}"
                  f"{rec['peak_mb']:>10.1f}", flush=True)
            if "peak_node" in rec:
                print(f"  the last backward peaks at {rec['peak_in_backward_mb']:.1f} MB inside {rec['peak_node']} (number "
                      f"{rec['peak_node_rank']} of its kind from the input), {rec['live_at_peak_node_mb']:.1f} MB live as it "
                      "started", flush=True)
    write_records(args.json, records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
