"""``TrainConfig``: every setting of the main job, and :func:`resolve`, which checks them.

Every default is in sight: a field's default is the job's, and a ``None`` means the model's
preset for the data set (``swalp/models/small.py`` for the small models, beside each paper
network in ``swalp/models/``). The default job, resolved (``swalp train`` with no flags):

    >>> c = resolve(TrainConfig())
    >>> c.data, c.model, c.recipe, c.epochs, c.budget, c.lr, c.swa_lr, c.wd, c.momentum, c.batch_size, c.threads
    ('mnist1d', 'cnn1d', 'paper', 45, 30, 0.15, 0.1, 0.0005, 0.9, 128, 1)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from .._checks import check_choice, check_int, check_number
from ..data import DATASETS
from ..formats import get_format
from ..models import MODELS, default_model, model_defaults
from ..nn import COMPUTES, PLACEMENTS
from ..optim import KINDS, STORAGES
from ..recipes import get_recipe
from . import distributed

AVG_UNITS = ("epoch", "step")  # what --avg-every counts


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run. ``None`` means: the model's preset for this data set
    (:func:`swalp.models.model_defaults`); :func:`resolve` fills them in."""

    # data
    data: str = "mnist1d"           # a name in swalp.data.DATASETS
    data_dir: str | None = None     # where file-based data sets live (and the embedded ones' cache)
    download: bool = False          # let a loader download its files (never needed by the embedded sets)
    limit_train: int | None = None  # train on the first N training examples only (tests, quick looks)
    limit_test: int | None = None   # evaluate on the first N test examples only
    # model and precision
    model: str | None = None        # a name in swalp.models.MODELS; None: the data set's default (cnn1d)
    recipe: str = "paper"           # a name in swalp.recipes.RECIPES ("fp32" = full precision)
    bits: int | None = None         # word length override for the recipe's formats (>= 2)
    placement: str | None = None    # where quantize_model puts quantizers (swalp.nn.PLACEMENTS); None: "layer"
    packed_activations: bool = False  # keep Quantizer outputs saved for backward in 8 bits (swalp.nn.packed_activations)
    storage: str = "simulated"      # swalp.optim.STORAGES: "packed" holds weights, gradients, momentum in 8 bits
    compute: str = "float"          # swalp.nn.COMPUTES: "int8" multiplies 8-bit codes in int32 where exact
    comm: str = "fp32"              # under torchrun: "bfp8" averages gradients sending 8-bit codes (swalp.distributed)
    # optimisation (SGD with momentum and weight decay, as the paper); cnn1d on mnist1d in brackets
    epochs: int | None = None       # total epochs E (45; the paper: 1.5 x budget)
    budget: int | None = None       # B: epochs of ordinary training; averaging starts at its end (30)
    lr: float | None = None         # lr0 (0.15)
    swa_lr: float | None = None     # the constant learning rate after the budget (0.1)
    lr_ratio: float = 0.01          # the schedule's floor, as a fraction of lr0
    schedule: str = "swalp"         # swalp.optim.KINDS: "swalp", "cosine" or "constant"
    wd: float | None = None         # weight decay (5e-4)
    momentum: float | None = None   # (0.9)
    batch_size: int | None = None   # (128)
    # averaging
    avg_every: int = 1              # c: average every c units from the end of the budget on
    avg_unit: str = "epoch"         # AVG_UNITS: "epoch" or "step"
    avg_format: str | None = None   # keep the average in this format (swalp.get_format name); None: fp32
    avg_device: str | None = None   # keep the average in this device's memory (e.g. "cpu"); None: the training device
    # run
    seed: int = 0
    device: str = "cpu"             # "cpu", "cuda", "cuda:N" or "auto"
    num_workers: int = 0            # data-loading worker processes (file-based data sets)
    data_on_device: bool = False    # copy in-memory data sets to the GPU once (else one host-to-device copy per batch)
    channels_last: bool = False     # NHWC layout for 4-D inputs and conv weights (GPU tensor cores)
    compile: bool = False           # torch.compile the model (no graph break; measure whether it pays)
    threads: int | None = None      # torch CPU threads; None: the model's preset (1), else torch's
    stats_every: int | None = None  # measure what rounding does every N steps, into stats.jsonl (training/health.py)
    out: str = "runs/train"


def resolve(config: TrainConfig) -> TrainConfig:
    """Fill ``None`` fields from the model's presets and check every value.

    Raises ValueError (naming the bad value and what is accepted) before any training work.
    """
    c = config
    check_choice("data set", c.data, sorted(DATASETS))
    model = c.model if c.model is not None else default_model(c.data)
    check_choice("model", model, sorted(MODELS))
    defaults = model_defaults(model, c.data)
    filled = {k: (getattr(c, k) if getattr(c, k) is not None else defaults.get(k)) for k in defaults}
    c = dataclasses.replace(c, model=model, **filled)
    for key in ("epochs", "budget", "lr", "swa_lr", "wd", "momentum", "batch_size"):
        if getattr(c, key) is None:
            raise ValueError(f"{key} has no default for model {model!r} on {c.data!r}; pass {_flag(key)}")
    if c.bits is not None:
        check_int("--bits", c.bits, 2, hint="(a word length)")
    get_recipe(c.recipe, c.bits)  # ValueError listing RECIPES if unknown
    check_int("--epochs", c.epochs, 2)
    if not (isinstance(c.budget, int) and 1 <= c.budget < c.epochs):
        raise ValueError(f"--budget must be an integer in [1, epochs) = [1, {c.epochs}) (averaging runs from the end "
                         f"of the budget to the end of the epochs), got {c.budget!r}")
    check_number("--lr", c.lr, 0, lo_open=True)
    check_number("--swa-lr", c.swa_lr, 0, lo_open=True)
    check_number("--wd", c.wd, 0)
    check_number("--momentum", c.momentum, 0, 1, hi_open=True)
    check_number("lr_ratio", c.lr_ratio, 0, 1, lo_open=True)
    check_int("--batch-size", c.batch_size, 1)
    distributed.check_batch_size(c.batch_size)  # a multiple of the number of processes (under torchrun)
    check_choice("--schedule", c.schedule, KINDS)
    check_choice("--avg-unit", c.avg_unit, AVG_UNITS)
    check_choice("--storage", c.storage, STORAGES)
    check_choice("--comm", c.comm, distributed.COMMS)
    check_choice("--compute", c.compute, COMPUTES)
    if c.storage == "packed" and c.compile:
        raise ValueError("--storage packed unpacks each layer's weights in module hooks, which torch.compile does not "
                         "trace; use one of --storage packed and --compile")
    check_int("--avg-every", c.avg_every, 1)
    if c.placement is not None:
        check_choice("--placement", c.placement, PLACEMENTS)
    for key in ("limit_train", "limit_test", "threads", "stats_every"):
        if getattr(c, key) is not None:
            check_int(_flag(key), getattr(c, key), 1)
    check_int("--seed", c.seed, 0, 2**63 - 1)
    if c.avg_format is not None:
        get_format(c.avg_format)
    pick_device(c.device)
    if c.avg_device is not None:
        pick_device(c.avg_device, "--avg-device")
    out = Path(c.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file; it must be a folder (created if missing)")
    return c


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def pick_device(name: str, flag: str = "--device") -> torch.device:
    """The device called ``name``: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (a GPU if any);
    ``flag`` names the setting in error messages."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown {flag} {name!r}; accepted: 'cpu', 'cuda', 'cuda:N', 'auto'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{flag} {name!r}: CUDA is not available here; use {flag} cpu")
    return device
