"""The main job: train a model in low precision, average its iterates (SWALP), report both.

One readable script in the spirit of nanoGPT: every default is a field of :class:`TrainConfig`,
and :func:`train` reads top to bottom: data, model, recipe, optimizer, schedule, the epoch
loop (SGD steps, averaging, evaluation, checkpoint), and the summary.

A run writes into ``config.out``:
    config.json      the resolved configuration (``TrainConfig(**json.load(f))`` rebuilds it)
    metrics.jsonl    one JSON object per epoch: epoch, lr, train_loss, train_error,
                     test_error (the SGD iterate), avg_test_error (the average, once it exists)
    summary.json     "sgd_lp" (the SGD iterate at the end of the budget), "swalp" (the average
                     at the end), "sgd_final" (the iterate at the end); the same under the
                     neutral names "sgd" and "average", and for a full-precision recipe also
                     under "sgd_fp" and "swa_fp". Test errors are in percent.
    checkpoint.pt    everything needed to resume (written atomically after every epoch)
    sgd_budget.pt    the SGD iterate's weights at the end of the budget
    average.pt       the average's weights at the end (batch-norm statistics refreshed)

Example:
    >>> from swalp.train import TrainConfig, train
    >>> s = train(TrainConfig(data="digits", epochs=3, budget=2, out="/tmp/swalp-doc"), progress=False, log=None)
    >>> sorted(s["swalp"])
    ['epoch', 'n_averaged', 'test_error']

Started by torchrun (``torchrun --nproc_per_node N -m swalp train``), the same script trains
data-parallel: each rank takes ``batch_size / N`` examples of every batch, rank 0 writes the
files; see :mod:`swalp.distributed` for what is identical across ranks and what differs.

Caveat: bit-identical resumption holds on one machine and torch version; evaluation uses its
own fixed seed, so evaluating more or less often never changes the training trajectory.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .accel import place_dataset, prepare_batch, prepare_model
from .averaging import WeightAverage, update_bn
from .checkpoint import atomic_write_bytes, atomic_write_text, load_checkpoint, rng_state, save_checkpoint, write_json
from .convert import quantize_model, set_quantizers
from .data import DATASETS, load_data
from .data.batches import batches, epoch_order, limit
from .models import MODELS, build_model, default_model, model_defaults
from .optim import LowPrecisionOptimizer
from .recipes import get_recipe
from .schedule import SWALPLR

EVAL_SEED = 12345  # the stochastic rounding of evaluation passes; fixed so runs compare
SYNC_EVERY = 50  # steps between checks of the loss for NaN/inf (each check waits for the device)
RUN_FILES = ("checkpoint.pt", "summary.json", "metrics.jsonl", "config.json", "sgd_budget.pt", "average.pt")


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run. ``None`` means: the model's default for this data set
    (see :func:`swalp.models.model_defaults`); :func:`resolve` fills them in."""

    # data
    data: str = "mnist1d"           # a name in swalp.data.DATASETS
    data_dir: str | None = None     # where file-based data sets live (and the embedded ones' cache)
    download: bool = False          # let a loader download its files (never needed by the embedded sets)
    limit_train: int | None = None  # train on the first N training examples only (tests, quick looks)
    limit_test: int | None = None   # evaluate on the first N test examples only
    # model and precision
    model: str | None = None        # a name in swalp.models.MODELS; None: the data set's default
    recipe: str = "paper"           # a name in swalp.recipes.RECIPES ("fp32" = full precision)
    bits: int | None = None         # word length override for the recipe's formats (>= 2)
    placement: str = "layer"        # where quantize_model puts activation/error quantizers
    # optimisation (SGD with momentum and weight decay, as the paper)
    epochs: int | None = None       # total epochs E (the paper: 1.5 x budget)
    budget: int | None = None       # B: epochs of ordinary training; averaging starts at its end
    lr: float | None = None         # lr0
    swa_lr: float | None = None     # the constant learning rate after the budget
    lr_ratio: float = 0.01          # the schedule's floor, as a fraction of lr0
    schedule: str = "swalp"         # "swalp", "cosine" or "constant"
    wd: float | None = None         # weight decay
    momentum: float | None = None
    batch_size: int | None = None
    # averaging
    avg_every: int = 1              # c: average every c units from the end of the budget on
    avg_unit: str = "epoch"         # "epoch" or "step"
    avg_format: str | None = None   # keep the average in this format (swalp.get_format name); None: fp32
    # run
    seed: int = 0
    device: str = "cpu"             # "cpu", "cuda", "cuda:N" or "auto"
    num_workers: int = 0            # data-loading worker processes (file-based data sets)
    data_on_device: bool = False    # copy in-memory data sets to the GPU once (else one host-to-device copy per batch)
    channels_last: bool = False     # NHWC layout for 4-D inputs and conv weights (GPU tensor cores)
    compile: bool = False           # torch.compile the model (measure first: quantizers may break graphs)
    threads: int | None = None      # torch CPU threads; None: the model's default, else torch's
    out: str = "runs/train"


# ----------------------------------------------------------------------------- configuration


def resolve(config: TrainConfig) -> TrainConfig:
    """Fill ``None`` fields from the model's defaults and check every value.

    Raises ValueError (naming the bad value and what is accepted) before any training work.
    """
    c = config
    if c.data not in DATASETS:
        raise ValueError(f"unknown data set {c.data!r}; accepted: {', '.join(map(repr, sorted(DATASETS)))}")
    model = c.model if c.model is not None else default_model(c.data)
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; accepted: {', '.join(map(repr, sorted(MODELS)))}")
    defaults = model_defaults(model, c.data)
    filled = {k: (getattr(c, k) if getattr(c, k) is not None else defaults.get(k)) for k in defaults}
    c = dataclasses.replace(c, model=model, **filled)
    for key in ("epochs", "budget", "lr", "swa_lr", "wd", "momentum", "batch_size"):
        if getattr(c, key) is None:
            raise ValueError(f"{key} has no default for model {model!r} on {c.data!r}; pass --{key.replace('_', '-')}")
    if c.bits is not None and (isinstance(c.bits, bool) or not isinstance(c.bits, int) or c.bits < 2):
        raise ValueError(f"--bits must be an integer >= 2 (a word length), got {c.bits!r}")
    get_recipe(c.recipe, c.bits)  # ValueError listing the recipes if unknown
    _check(isinstance(c.epochs, int) and c.epochs >= 2, f"--epochs must be an integer >= 2, got {c.epochs!r}")
    _check(isinstance(c.budget, int) and 1 <= c.budget < c.epochs,
           f"--budget must be an integer in [1, epochs) = [1, {c.epochs}) (averaging runs from the end of "
           f"the budget to the end of the epochs), got {c.budget!r}")
    for key in ("lr", "swa_lr"):
        _check(getattr(c, key) > 0 and math.isfinite(getattr(c, key)), f"--{key.replace('_', '-')} must be a positive number, got {getattr(c, key)!r}")
    _check(c.wd >= 0, f"--wd must be >= 0, got {c.wd!r}")
    _check(0 <= c.momentum < 1, f"--momentum must be in [0, 1), got {c.momentum!r}")
    _check(0 < c.lr_ratio <= 1, f"lr_ratio must be in (0, 1], got {c.lr_ratio!r}")
    _check(isinstance(c.batch_size, int) and c.batch_size >= 1, f"--batch-size must be an integer >= 1, got {c.batch_size!r}")
    distributed.check_batch_size(c.batch_size)  # a multiple of the number of processes (under torchrun)
    _check(c.schedule in ("swalp", "cosine", "constant"), f"unknown schedule {c.schedule!r}; accepted: 'swalp', 'cosine', 'constant'")
    _check(c.avg_unit in ("epoch", "step"), f"unknown --avg-unit {c.avg_unit!r}; accepted: 'epoch', 'step'")
    _check(isinstance(c.avg_every, int) and c.avg_every >= 1, f"--avg-every must be an integer >= 1, got {c.avg_every!r}")
    _check(c.placement in ("layer", "activation"), f"unknown placement {c.placement!r}; accepted: 'layer', 'activation'")
    for key in ("limit_train", "limit_test"):
        v = getattr(c, key)
        _check(v is None or (isinstance(v, int) and v >= 1), f"--{key.replace('_', '-')} must be an integer >= 1, got {v!r}")
    _check(c.threads is None or (isinstance(c.threads, int) and c.threads >= 1), f"--threads must be an integer >= 1, got {c.threads!r}")
    _check(isinstance(c.seed, int) and 0 <= c.seed < 2**63, f"--seed must be an integer in [0, 2**63), got {c.seed!r}")
    if c.avg_format is not None:
        from .formats import get_format
        get_format(c.avg_format)
    pick_device(c.device)
    out = Path(c.out)
    _check(not (out.exists() and not out.is_dir()), f"--out {str(out)!r} is a file; it must be a folder (created if missing)")
    return c


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown --device {name!r}; accepted: 'cpu', 'cuda', 'cuda:N', 'auto'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r}: CUDA is not available here; use --device cpu")
    return device


class Diverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step."""


def check_finite(losses: list, first_step: int, epoch: int, metrics: list, out: Path, bar) -> None:
    """Raise :class:`Diverged` naming the first step of this epoch whose loss is not finite.

    Checked every ``SYNC_EVERY`` steps and at the end of the epoch, not at every step (a host
    sync per step would stall a GPU); a few steps may run on NaN weights, but they are never
    saved: the last checkpoint is the previous epoch's.
    """
    bad = (~torch.isfinite(torch.stack(losses))).nonzero()
    if bad.numel():
        i = int(bad[0, 0])
        bar.close()
        last = metrics[-1]["epoch"] if metrics else None
        kept = f"the last good checkpoint (epoch {last}) is kept in {out / 'checkpoint.pt'}" if last else "no checkpoint was written"
        raise Diverged(f"loss is {losses[i].item()} at step {first_step + i} (epoch {epoch}); stopped: {kept}; "
                       f"try a lower --lr")


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def error_percent(model, dataset, device, batch_size=1024, num_workers=0, channels_last=False) -> float:
    """Percent of misclassified examples, with the model in eval mode and a fixed rounding seed."""
    was_training = model.training
    model.eval()
    wrong = torch.zeros((), dtype=torch.int64, device=device)  # summed on the device: one sync at the end
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(EVAL_SEED)
        for x, y in batches(dataset, torch.arange(len(dataset)), batch_size, device, num_workers):
            wrong += (model(prepare_batch(x, channels_last)).argmax(1) != y).sum()
    model.train(was_training)
    return 100.0 * wrong.item() / len(dataset)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def averaged_model(avg: WeightAverage, data, dataset, cfg, device) -> nn.Module:
    """The average as a full-precision model; batch-norm statistics recomputed in one pass
    over the (augmented) training data. A copy, so the running average is never touched."""
    model = copy.deepcopy(avg.module)
    set_quantizers(model, False)
    if has_batchnorm(model):
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(EVAL_SEED)
            loader = batches(dataset, torch.arange(len(dataset)), cfg.batch_size, device, cfg.num_workers)
            update_bn(loader, model, device=device, transform=data.train_transform)
    return model


# ----------------------------------------------------------------------------- training


def train(config: TrainConfig = TrainConfig(), *, resume: str | None = None, progress: bool = True,
          log=print, stop_after: int | None = None) -> dict:
    """Train, average and evaluate as ``config`` says; write the run into ``config.out``.

    Args:
        config: the run's settings (``None`` fields take the model's defaults).
        resume: a stopped run's folder; its saved configuration is used (only ``device``
            is taken from ``config``) and training continues after its last saved epoch,
            bit-identical to a run that was never stopped.
        progress: show a tqdm progress bar.
        log: ``log(line)`` receives a line per epoch; None for silence.
        stop_after: stop (as if killed) after saving this epoch; for tests and time limits.

    Under torchrun every rank calls it with the same arguments (:mod:`swalp.distributed`);
    only rank 0 writes files, logs and shows progress.

    Returns:
        the summary (also written to ``summary.json``; every rank returns it); a run stopped
        by ``stop_after`` returns ``{"stopped_after": epoch}``.

    Raises:
        ValueError: bad settings, a corrupt or foreign checkpoint (before any training).
        FileNotFoundError: ``resume`` holds no checkpoint.
        Diverged: the loss became NaN or inf (the last good checkpoint stays in place).
    """
    log = log or (lambda line: None)
    state = None
    if resume is not None:
        state = load_checkpoint(Path(resume) / "checkpoint.pt")
        try:
            saved = TrainConfig(**state["config"])
        except TypeError as err:
            raise ValueError(f"checkpoint in {resume} has an incompatible configuration ({err})") from None
        config = dataclasses.replace(saved, device=config.device, out=str(resume))
    cfg = resolve(config)
    device = distributed.init(pick_device(cfg.device))  # under torchrun: join the group; this rank's GPU
    main = distributed.is_main()  # the one process that writes files and prints
    if not main:
        log, progress = (lambda line: None), False
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    recipe = get_recipe(cfg.recipe, cfg.bits)
    out = Path(cfg.out)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if state is None:  # a fresh run replaces an earlier one here, so --resume can never mix the two
            stale = [out / f for f in RUN_FILES if (out / f).exists()]
            for f in stale:
                f.unlink()
            if stale:
                log(f"replacing the earlier run in {out}")

    data = load_data(cfg.data, data_dir=cfg.data_dir, download=cfg.download, seed=cfg.seed)
    train_set = place_dataset(limit(data.train, cfg.limit_train), device, cfg.data_on_device)
    test_set = place_dataset(limit(data.test, cfg.limit_test), device, cfg.data_on_device)
    steps_per_epoch = math.ceil(len(train_set) / cfg.batch_size)
    distributed.check_batch_size(cfg.batch_size, len(train_set))  # every process gets a part of every batch

    torch.manual_seed(cfg.seed)  # the initial weights and every stochastic rounding follow from it
    model = build_model(cfg.model, data.num_classes, data.input_shape)
    quantize_model(model, recipe, placement=cfg.placement)  # also configures quantizers a model placed itself
    prepare_model(model, device, cfg.channels_last)
    net = distributed.wrap(model, device)  # DistributedDataParallel under torchrun, else `model` itself
    net = torch.compile(net) if cfg.compile else net  # train through `net`, save `model`
    base = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.wd)
    optimizer = LowPrecisionOptimizer(base, recipe, seed=cfg.seed)
    scheduler = SWALPLR(base, budget=cfg.budget, swa_lr=cfg.swa_lr, ratio=cfg.lr_ratio,
                        steps_per_epoch=steps_per_epoch, kind=cfg.schedule)
    average = WeightAverage(model, fmt=cfg.avg_format, device=device, seed=cfg.seed)
    distributed.seed_rank(cfg.seed)  # the weights are built: from here on each rank rounds activations its own way
    metrics, start_epoch, step = [], 0, 0

    if state is not None:
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            average.load_state_dict(state["average"])
        except (KeyError, RuntimeError, ValueError) as err:
            raise ValueError(f"checkpoint in {resume} does not match this model/recipe ({err})") from None
        metrics, start_epoch, step = state["metrics"], state["epoch"], state["step"]
        distributed.restore_rng(state, cfg.seed)  # on one process: set_rng_state(state["rng"])
        log(f"resuming {out} after epoch {start_epoch}/{cfg.epochs}")
    if main:
        write_json(out / "config.json", dataclasses.asdict(cfg))
        _write_metrics(out, metrics)

    avg_start = cfg.budget * (1 if cfg.avg_unit == "epoch" else steps_per_epoch)
    started = time.time()
    bar = tqdm(total=cfg.epochs * steps_per_epoch, initial=start_epoch * steps_per_epoch, disable=not progress,
               desc=f"{cfg.model}/{cfg.data} {recipe.name}", unit="step", dynamic_ncols=True, leave=False)
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        # -- one epoch of (low-precision) SGD
        model.train()
        first_step = step + 1
        losses, wrongs, sizes = [], [], []  # per step, left on the device: no host sync per step
        order = epoch_order(len(train_set), cfg.seed, epoch)
        for x, y, weight in distributed.batches(train_set, order, cfg.batch_size, device, cfg.num_workers):
            if data.train_transform is not None:
                x = data.train_transform(x)
            lr = base.param_groups[0]["lr"]  # the epoch's line reports its last step's rate
            logits = net(prepare_batch(x, cfg.channels_last))
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            (loss if weight == 1 else loss * weight).backward()  # weight: this rank's share of the batch
            optimizer.step()
            scheduler.step()
            step += 1
            if cfg.avg_unit == "step" and step >= avg_start and (step - avg_start) % cfg.avg_every == 0:
                average.update(model)
            losses.append(loss.detach())
            wrongs.append((logits.argmax(1) != y).sum())
            sizes.append(len(y))
            bar.update(1)
            if step % SYNC_EVERY == 0:
                check_finite(losses, first_step, epoch, metrics, out, bar)
                bar.set_postfix(epoch=epoch, loss=f"{losses[-1].item():.3f}", refresh=False)
        losses, wrongs, sizes = distributed.sum_steps(losses, wrongs, sizes)  # over the whole batches
        check_finite(losses, first_step, epoch, metrics, out, bar)
        distributed.sync_buffers(model)  # rank 0's batch-norm statistics everywhere, for averaging and evaluation
        if cfg.avg_unit == "epoch" and epoch >= avg_start and (epoch - avg_start) % cfg.avg_every == 0:
            average.update(model)

        # -- evaluation: the SGD iterate as it is (low precision), the average in full precision
        seen = sum(sizes)
        loss_sum = sum(v * n for v, n in zip(torch.stack(losses).double().tolist(), sizes))
        row = dict(epoch=epoch, lr=lr, train_loss=loss_sum / seen, train_error=100.0 * torch.stack(wrongs).sum().item() / seen,
                   test_error=error_percent(model, test_set, device, num_workers=cfg.num_workers, channels_last=cfg.channels_last))
        if average.n_averaged > 0:
            avg_model = averaged_model(average, data, train_set, cfg, device)
            row.update(avg_test_error=error_percent(avg_model, test_set, device, num_workers=cfg.num_workers,
                                                 channels_last=cfg.channels_last),
                       n_averaged=int(average.n_averaged))
        metrics.append(row)
        rng_ranks = distributed.rng_states()  # every rank's generators ({} on one process)
        if main:
            if epoch == cfg.budget:
                atomic_write_bytes(out / "sgd_budget.pt", partial(torch.save, model.state_dict()))
            # The checkpoint first, then the metrics: a crash in between is repaired on resume,
            # which rewrites metrics.jsonl from the checkpoint.
            save_checkpoint(out / "checkpoint.pt", dict(
                config=dataclasses.asdict(cfg), epoch=epoch, step=step, metrics=metrics, rng=rng_state(), **rng_ranks,
                model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                average=average.state_dict()))
            _write_metrics(out, metrics)
        line = (f"epoch {epoch:>3}/{cfg.epochs}  lr {lr:.4g}  loss {row['train_loss']:.4f}  "
                f"train err {row['train_error']:5.2f}%  test err {row['test_error']:5.2f}%")
        if "avg_test_error" in row:
            line += f"  avg err {row['avg_test_error']:5.2f}% (n={row['n_averaged']})"
        bar.write(line) if progress else log(line)
        if stop_after is not None and epoch >= stop_after and epoch < cfg.epochs:
            bar.close()
            distributed.barrier()  # the checkpoint is written when any rank returns
            return {"stopped_after": epoch}
    bar.close()

    avg_model = averaged_model(average, data, train_set, cfg, device)
    if main:
        atomic_write_bytes(out / "average.pt", partial(torch.save, avg_model.state_dict()))
    summary = make_summary(cfg, recipe, metrics, average)
    summary["wall_s"] = round(time.time() - started, 2)
    if main:
        write_json(out / "summary.json", summary)
    log(f"SGD iterate at the budget (epoch {cfg.budget}): {summary['sgd']['test_error']:.2f}%  "
        f"average at the end (epoch {cfg.epochs}): {summary['average']['test_error']:.2f}%  -> {out}")
    distributed.barrier()
    return summary


def make_summary(cfg: TrainConfig, recipe, metrics: list[dict], average) -> dict:
    by_epoch = {m["epoch"]: m for m in metrics}
    sgd = dict(test_error=by_epoch[cfg.budget]["test_error"], epoch=cfg.budget)
    avg = dict(test_error=by_epoch[cfg.epochs]["avg_test_error"], epoch=cfg.epochs, n_averaged=int(average.n_averaged))
    summary = dict(sgd_lp=sgd, swalp=avg, sgd=sgd, average=avg,
                   sgd_final=dict(test_error=by_epoch[cfg.epochs]["test_error"], epoch=cfg.epochs),
                   recipe=recipe.name, bits=cfg.bits, full_precision=recipe.is_full_precision,
                   model=cfg.model, data=cfg.data, seed=cfg.seed)
    if summary["full_precision"]:
        summary.update(sgd_fp=sgd, swa_fp=avg)
    return summary


def _write_metrics(out: Path, metrics: list[dict]) -> None:
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in metrics))
