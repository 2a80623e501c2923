"""``swalp train``: the main job. With no arguments: the default small CNN on MNIST-1D with the
"paper" recipe (8-bit block floating point everywhere), SGD then SWALP averaging.

Every flag left out takes the model's preset for the data set (``swalp.models``), shown in
``config.json`` of the run; see :class:`swalp.training.TrainConfig` for all of them.

Data-parallel on N processes: ``torchrun --nproc_per_node N -m swalp train ...`` (each takes
batch_size / N examples of every batch; rank 0 writes and prints; see ``swalp/training/distributed.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from ..nn import COMPUTES, PLACEMENTS
from ..optim import KINDS, STORAGES
from ..recipes import RECIPES
from ..training import AVG_UNITS, Diverged, TrainConfig, resolve, train
from ..training import distributed

_D = TrainConfig()


def add_train_flags(p: argparse.ArgumentParser) -> None:
    """The flags shared by ``swalp train`` and ``swalp compare``; each defaults to None or
    TrainConfig's default, so "not given" can be told apart from "given"."""
    g = p.add_argument_group("data and model")
    g.add_argument("--data", default=None, help=f"data set (default {_D.data})")
    g.add_argument("--data-dir", default=None, help="folder of a file-based data set; cache of the embedded ones (default ~/.cache/swalp)")
    g.add_argument("--download", action="store_true", default=None, help="allow the data loader to download its files")
    g.add_argument("--model", default=None, help="model name (default: the data set's default model, cnn1d for mnist1d)")
    g.add_argument("--placement", default=None, choices=PLACEMENTS, help="quantizer placement (default layer; models that place their own take none)")
    g = p.add_argument_group("schedule (defaults: the model's, per data set)")
    g.add_argument("--epochs", type=int, default=None, help="total epochs E")
    g.add_argument("--budget", type=int, default=None, help="epochs B of SGD before averaging starts (< E)")
    g.add_argument("--lr", type=float, default=None, help="initial learning rate lr0")
    g.add_argument("--swa-lr", type=float, default=None, help="constant learning rate after the budget")
    g.add_argument("--lr-ratio", type=float, default=None, help=f"final decay ratio of the schedule (default {_D.lr_ratio})")
    g.add_argument("--schedule", default=None, choices=KINDS, help=f"learning-rate schedule (default {_D.schedule})")
    g.add_argument("--wd", type=float, default=None, help="weight decay")
    g.add_argument("--momentum", type=float, default=None, help="SGD momentum")
    g.add_argument("--batch-size", type=int, default=None, help="batch size")
    g = p.add_argument_group("averaging")
    g.add_argument("--avg-every", type=int, default=None, help=f"average every c units from the end of the budget (default {_D.avg_every})")
    g.add_argument("--avg-unit", default=None, choices=AVG_UNITS, help=f"unit of --avg-every (default {_D.avg_unit})")
    g.add_argument("--avg-format", default=None, help="keep the average in this number format, e.g. bfloat16 (default fp32)")
    g.add_argument("--avg-device", default=None, help="keep the average in this device's memory, e.g. cpu (default: the training device)")
    g = p.add_argument_group("run")
    g.add_argument("--device", default=None, help=f"cpu, cuda, cuda:N or auto (default {_D.device})")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the model's; 1 for the small models)")
    g.add_argument("--num-workers", type=int, default=None, help=f"data-loading workers (default {_D.num_workers})")
    g.add_argument("--data-on-device", action="store_true", default=None, help="copy in-memory data to the GPU once")
    g.add_argument("--channels-last", action="store_true", default=None, help="NHWC memory layout (GPU)")
    g.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    g.add_argument("--comm", default=None, choices=distributed.COMMS,
                   help=f"under torchrun, how gradients are averaged (default {_D.comm}; bfp8: 8-bit codes on the wire)")
    g.add_argument("--storage", default=None, choices=STORAGES,
                   help=f"how weights, gradients and momentum are held (default {_D.storage}; packed: 8 bits, same numbers)")
    g.add_argument("--compute", default=None, choices=COMPUTES,
                   help=f"how Linear/Conv products are computed (default {_D.compute}; int8: from 8-bit codes in "
                        "int32 where that is exact, listed in summary.json)")
    g.add_argument("--packed-activations", action="store_true", default=None,
                   help="keep the Quantizer outputs that backward needs packed in 8 bits (same numbers, less memory)")
    # Hidden: subsets for tests and quick looks.
    g.add_argument("--limit-train", type=int, default=None, help=argparse.SUPPRESS)
    g.add_argument("--limit-test", type=int, default=None, help=argparse.SUPPRESS)


def config_from_args(args, **extra) -> TrainConfig:
    """A TrainConfig from the flags that were given; the rest keep TrainConfig's defaults."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if getattr(args, f.name, None) is not None}
    given.update(extra)
    return TrainConfig(**given)


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model in low precision with SWALP averaging (default: MNIST-1D, 8-bit)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_flags(p)
    g = p.add_argument_group("precision and output")
    g.add_argument("--recipe", default=None, help=f"number-format recipe: {', '.join(RECIPES)} (default {_D.recipe})")
    g.add_argument("--bits", type=int, default=None, help="word length of the recipe's integer formats (default: the recipe's, 8)")
    g.add_argument("--seed", type=int, default=None, help=f"seed of the initial weights, data order and rounding (default {_D.seed})")
    g.add_argument("--out", default=None, help=f"output folder (default {_D.out}; an earlier run there is overwritten)")
    g.add_argument("--resume", metavar="DIR", default=None, help="continue the run saved in DIR (its --out); other flags but --device are taken from it")
    g.add_argument("--stats-every", type=int, default=None, metavar="N",
                   help="every N steps, measure what rounding does per layer and role (saturated, flushed to zero, "
                        "SQNR) into stats.jsonl; warns when a role is damaged (default: off)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (lines per epoch only)")
    g.add_argument("--overwrite", action="store_true", help="replace the run already in --out (without it: an error)")
    g.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # tests: stop after this epoch
    p.set_defaults(func=run)


def run(args) -> int:
    config = config_from_args(args)
    if args.resume is not None:
        given = {k for k, v in vars(args).items() if v is not None and k in {f.name for f in dataclasses.fields(TrainConfig)}}
        ignored = sorted(given - {"device"})
        if ignored:
            raise ValueError(f"--resume continues the saved configuration; drop {', '.join('--' + k.replace('_', '-') for k in ignored)}")
    else:
        resolve(config)  # every bad value fails here, before data or model are built
    try:
        train(config, resume=args.resume, progress=not args.no_progress and sys.stderr.isatty(),
              stop_after=args.stop_after, overwrite=args.overwrite)
    except Diverged as err:
        print(f"swalp train: {err}", file=sys.stderr)
        return 1
    finally:
        distributed.shutdown()  # under torchrun: leave the process group train() joined
    return 0
