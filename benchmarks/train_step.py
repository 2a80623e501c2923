"""Time per training step: the "paper" recipe against plain FP32, on the same batch.

For each model it builds two copies from the same seed: a plain PyTorch one trained with
``torch.optim.SGD`` (FP32), and one converted as ``swalp train`` does it
(``swalp.quantize_model(model, recipe)`` + ``swalp.LowPrecisionOptimizer``), then times
whole steps (forward, cross-entropy, zero_grad, backward, optimizer step), alternating
FP32 and low-precision steps so that both see the same machine load. It reports the
median of ``--steps`` steps after ``--warmup`` warm-up steps, and their ratio (our
target: at most 1.3).

Models:
* ``cnn1d``: the default MNIST-1D model, batch 100 of real MNIST-1D examples
  (generated locally by mnist1d, no download);
* ``vgg16``: VGG-16 at CIFAR size, batch 128 of random 3x32x32 images.

    python benchmarks/train_step.py                               # both models
    python benchmarks/train_step.py --models cnn1d --steps 50 --json steps.json
    python benchmarks/train_step.py --recipe paper-big-block --threads 2
    python benchmarks/train_step.py --packed    # also the real 8-bit storage: packed weights,
                                                # gradients, momentum and saved activations
    python benchmarks/train_step.py --int8      # also integer products (swalp/nn/int8.py)
    python benchmarks/train_step.py --stats-every 10 --steps 20   # also the recipe measured by
        # swalp.QuantizationStats every 10 steps: the mean step time against the unmeasured
        # recipe's (means, not medians: one step in 10 costs more; --steps a multiple of 10)

SGD settings are the paper's VGG-16 ones (lr 0.05, momentum 0.9, wd 5e-4) for both
models; the learning rate does not change the cost of a step.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import swalp
from swalp.models import build_model, default_model
from swalp.ops import backends
from _common import describe, machine_info, write_records

BATCH = {"cnn1d": 100, "vgg16": 128}


def batch_for(name: str, generator: torch.Generator):
    """(model name, inputs, targets, number of classes)."""
    if name == "cnn1d":
        from swalp.data import load_data

        data = load_data("mnist1d")
        xs, ys = zip(*(data.train[i] for i in range(BATCH[name])))
        return default_model("mnist1d"), torch.stack(xs).float(), torch.as_tensor(ys), data.num_classes
    if name == "vgg16":
        x = torch.randn(BATCH[name], 3, 32, 32, generator=generator)
        return "vgg16", x, torch.randint(0, 10, (BATCH[name],), generator=generator), 10
    raise ValueError(f"unknown model {name!r}; accepted: {', '.join(map(repr, BATCH))}")


def make_step(model_name, num_classes, input_shape, recipe, compile=False, packed=False, compute="float",
              stats_every=None):
    """A closure running one training step; recipe None is plain PyTorch FP32; ``compile``
    calls the model through ``torch.compile`` (the optimizer step stays eager); ``packed``
    holds the state packed (``storage="packed"``) and the saved activations too; ``compute``
    "int8" multiplies 8-bit codes where that is exact (``quantize_model(compute=...)``);
    ``stats_every`` measures quantization statistics every that many steps."""
    torch.manual_seed(0)
    model = build_model(model_name, num_classes, input_shape)
    sgd = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    opt = sgd
    if recipe is not None:
        swalp.quantize_model(model, recipe, compute=compute)
        opt = swalp.LowPrecisionOptimizer(sgd, recipe, seed=0, storage="packed" if packed else "simulated")
        if stats_every is not None:
            opt.watcher = swalp.QuantizationStats(model, opt, every=stats_every)  # kept alive with the step
    model.train()
    net = torch.compile(model, fullgraph=True) if compile else model
    saved = swalp.nn.packed_activations if packed else contextlib.nullcontext

    def step(x, y):
        with saved():
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
        return loss

    return step


def timed(step, x, y) -> float:
    start = time.perf_counter()
    step(x, y)
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(BATCH), choices=list(BATCH))
    p.add_argument("--recipe", default="paper", help="low-precision recipe to time against FP32 (default paper)")
    p.add_argument("--steps", type=int, default=12, help="timed steps per model and recipe (default 12)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--compile", action="store_true", help="also time both with torch.compile (inductor)")
    p.add_argument("--packed", action="store_true", help="also time the recipe with packed storage and activations")
    p.add_argument("--int8", action="store_true", help="also time the recipe with int8 products (compute='int8')")
    p.add_argument("--stats-every", type=int, default=None, metavar="N",
                   help="also time the recipe with quantization statistics every N steps (mean step times)")
    p.add_argument("--json", metavar="FILE", help="also write the records as JSON")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    if args.stats_every is not None and (args.stats_every < 1 or args.steps % args.stats_every):
        p.error("--stats-every must be >= 1 and divide --steps (each measured step counted as often as it occurs)")
    recipe = swalp.get_recipe(args.recipe)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    machine = machine_info()
    print(f"train step: FP32 vs {recipe.name!r}, {threads} threads, torch {torch.__version__}, {describe(machine)}")
    print(f"median of {args.steps} steps after {args.warmup} warm-up steps, FP32 and low-precision steps alternating\n")
    header = f"{'model':<8}{'batch':>6}{'fp32 ms':>10}{recipe.name + ' ms':>14}{'ratio':>8}"
    header += f"{'packed ms':>11}{'/ simulated':>12}" if args.packed else ""
    header += f"{'int8 ms':>9}{'/ fp32':>8}" if args.int8 else ""
    header += f"{'mean ms':>9}{'stats mean':>12}{'/ mean':>8}" if args.stats_every else ""
    print(header + (f"{'fp32 compiled':>15}{recipe.name + ' compiled':>17}{'ratio':>8}" if args.compile else ""))
    records = []
    gen = torch.Generator().manual_seed(0)
    for name in args.models:
        model_name, x, y, classes = batch_for(name, gen)
        shape = tuple(x.shape[1:])
        steps = {"fp32": make_step(model_name, classes, shape, None), recipe.name: make_step(model_name, classes, shape, recipe)}
        if args.packed:
            steps["packed"] = make_step(model_name, classes, shape, recipe, packed=True)
        if args.int8:
            steps["int8"] = make_step(model_name, classes, shape, recipe, compute="int8")
        if args.stats_every:
            steps["stats"] = make_step(model_name, classes, shape, recipe, stats_every=args.stats_every)
        if args.compile:
            steps.update({"fp32 compiled": make_step(model_name, classes, shape, None, compile=True),
                          f"{recipe.name} compiled": make_step(model_name, classes, shape, recipe, compile=True)})
        times = {k: [] for k in steps}
        for i in range(args.warmup + args.steps):
            for k, step in steps.items():
                t = timed(step, x, y)
                if i >= args.warmup:
                    times[k].append(t)
        med = {k: statistics.median(v) for k, v in times.items()}
        ratio = med[recipe.name] / med["fp32"]
        line = f"{name:<8}{len(y):>6}{med['fp32'] * 1e3:>10.1f}{med[recipe.name] * 1e3:>14.1f}{ratio:>8.2f}"
        compiled = {}
        if args.packed:
            compiled = dict(packed_seconds=med["packed"], packed_ratio=med["packed"] / med[recipe.name])
            line += f"{med['packed'] * 1e3:>11.1f}{med['packed'] / med[recipe.name]:>12.2f}"
        if args.int8:
            compiled.update(int8_seconds=med["int8"], int8_ratio=med["int8"] / med["fp32"])
            line += f"{med['int8'] * 1e3:>9.1f}{med['int8'] / med['fp32']:>8.2f}"
        if args.stats_every:
            plain, watched = statistics.mean(times[recipe.name]), statistics.mean(times["stats"])
            compiled.update(stats_every=args.stats_every, recipe_mean_seconds=plain, stats_mean_seconds=watched,
                            stats_ratio=watched / plain)
            line += f"{plain * 1e3:>9.1f}{watched * 1e3:>12.1f}{watched / plain:>8.3f}"
        if args.compile:
            fp, lp = med["fp32 compiled"], med[f"{recipe.name} compiled"]
            compiled.update(fp32_compiled_seconds=fp, recipe_compiled_seconds=lp, compiled_ratio=lp / fp)
            line += f"{fp * 1e3:>15.1f}{lp * 1e3:>17.1f}{lp / fp:>8.2f}"
        print(line)
        sys.stdout.flush()
        records.append(dict(model=name, batch=len(y), recipe=recipe.name, fp32_seconds=med["fp32"],
                            recipe_seconds=med[recipe.name], ratio=ratio, **compiled, steps=args.steps, warmup=args.warmup,
                            threads=threads, torch=torch.__version__, machine=machine,
                            backends=backends(),
                            step_seconds={k: v for k, v in times.items()}))  # fmt: skip
    write_records(args.json, records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
