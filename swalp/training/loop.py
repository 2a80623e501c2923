"""The main job: train a model in low precision, average its iterates (SWALP), report both.

One readable script in the spirit of nanoGPT: every setting is a field of
:class:`~swalp.training.config.TrainConfig`, and :func:`train` reads top to bottom:
:func:`start` builds the run (data, model, recipe, optimizer, schedule, average), then
each epoch is :func:`train_epoch` (SGD steps and averaging), :func:`evaluate` and
:func:`save`, and :func:`finish` evaluates the average and writes the summary.

A run writes into ``config.out``:
    config.json      the resolved configuration (``TrainConfig(**json.load(f))`` rebuilds it)
    metrics.jsonl    one JSON object per epoch: epoch, lr, train_loss, train_error,
                     test_error (the SGD iterate), avg_test_error (the average, once it exists)
    summary.json     "sgd_lp" (the SGD iterate at the end of the budget), "swalp" (the average
                     at the end), "sgd_final" (the iterate at the end); the same under the
                     neutral names "sgd" and "average", and for a full-precision recipe also
                     under "sgd_fp" and "swa_fp". Test errors are in percent.
    stats.jsonl      with ``stats_every``: what rounding did per layer and role (``health.py``)
    checkpoint.pt    everything needed to resume (written atomically after every epoch)
    sgd_budget.pt    the SGD iterate's weights at the end of the budget
    average.pt       the average's weights at the end (batch-norm statistics refreshed)

Example:
    >>> from swalp.training import TrainConfig, train
    >>> s = train(TrainConfig(data="digits", epochs=3, budget=2, out="/tmp/swalp-doc"), progress=False, log=None,
    ...           overwrite=True)  # replace this example's earlier run, if any
    >>> sorted(s["swalp"])
    ['epoch', 'n_averaged', 'test_error']

Started by torchrun (``torchrun --nproc_per_node N -m swalp train``), the same script trains
data-parallel: each rank takes ``batch_size / N`` examples of every batch, rank 0 writes the
files; see ``distributed.py`` for what is identical across ranks and what differs.

Caveat: bit-identical resumption holds on one machine and torch version; evaluation uses its
own fixed seed, so evaluating more or less often never changes the training trajectory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .._files import atomic_write, atomic_write_text, to_json
from ..data import DataBundle, epoch_order, limit, load_data
from ..distributed import BFPCommState
from ..models import build_model
from ..nn import PRODUCTS, compute_paths, packed_activations, packed_state_dict, quantize_model, unpack_state_dict
from ..ops.cpu import set_output_pool
from ..optim import SWALPLR, LowPrecisionOptimizer, WeightAverage
from ..recipes import Recipe, get_recipe
from . import distributed
from .accel import place_dataset, prepare_batch, prepare_model
from .checkpoint import load_checkpoint, rng_state, save_checkpoint
from .config import TrainConfig, pick_device, resolve
from .evaluate import averaged_model, error_percent
from .health import STATS_FILE, StatsLog, read_records, stats_line

SYNC_EVERY = 50  # steps between checks of the loss for NaN/inf (each check waits for the device)
RUN_FILES = ("checkpoint.pt", "summary.json", "metrics.jsonl", "config.json", "sgd_budget.pt", "average.pt", STATS_FILE)


def _silent(line: str) -> None:
    pass


class Diverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step."""


@dataclass
class Run:
    """A training run between two epochs: what :func:`start` builds and :func:`fit` trains.

    ``model`` is what is saved and averaged; ``net`` is what the steps call (``model`` itself,
    or its DistributedDataParallel / ``torch.compile`` wrapper). ``written`` lists every file
    this process wrote (rank 0 only, under torchrun).
    """

    cfg: TrainConfig
    device: torch.device
    recipe: Recipe
    data: DataBundle
    train_set: torch.utils.data.Dataset
    test_set: torch.utils.data.Dataset
    model: nn.Module
    net: nn.Module
    optimizer: LowPrecisionOptimizer
    scheduler: SWALPLR
    average: WeightAverage
    comm: BFPCommState | None = None  # the 8-bit gradient all-reduce's state (--comm bfp8 under torchrun)
    stats: StatsLog | None = None  # --stats-every: the quantization statistics
    epoch: int = 0  # the last finished epoch
    step: int = 0
    metrics: list[dict] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    @property
    def steps_per_epoch(self) -> int:
        return self.scheduler.steps_per_epoch

    def write(self, name: str, content) -> None:
        """``content`` (text, or ``write(file)``) into ``out/name``, atomically, on the process
        that writes files."""
        if distributed.is_main():
            path = self.out / name
            self.written.append(atomic_write_text(path, content) if isinstance(content, str) else atomic_write(path, content))


# ----------------------------------------------------------------------------- the job


def train(config: TrainConfig = TrainConfig(), *, resume: str | None = None, progress: bool = True,
          log=print, stop_after: int | None = None, overwrite: bool = False) -> dict:
    """Train, average and evaluate as ``config`` says; write the run into ``config.out``.

    Args:
        config: the run's settings (``None`` fields take the model's presets).
        resume: a stopped run's folder; its saved configuration is used (only ``device``
            is taken from ``config``) and training continues after its last saved epoch,
            bit-identical to a run that was never stopped.
        progress: show a tqdm progress bar.
        log: ``log(line)`` receives a line per epoch; None for silence.
        stop_after: stop (as if killed) after saving this epoch; for tests and time limits.
        overwrite: a fresh run may replace the run already in ``config.out`` (without it,
            a folder that holds a run is an error: nothing is ever deleted unasked).

    Under torchrun every rank calls it with the same arguments (``distributed.py``); only
    rank 0 writes files, logs and shows progress.

    Returns:
        the summary (also written to ``summary.json``; every rank returns it); a run stopped
        by ``stop_after`` returns ``{"stopped_after": epoch}``.

    Raises:
        ValueError: bad settings, a corrupt or foreign checkpoint, an ``out`` that holds a
            run without ``overwrite`` (all before any training).
        FileNotFoundError: ``resume`` holds no checkpoint.
        Diverged: the loss became NaN or inf (the last good checkpoint stays in place).
    """
    return fit(start(config, resume=resume, log=log, overwrite=overwrite), progress=progress, log=log,
               stop_after=stop_after)


def fit(run: Run, *, progress: bool = True, log=print, stop_after: int | None = None) -> dict:
    """Train ``run`` from its last finished epoch to the end (see :func:`train`)."""
    if not distributed.is_main():
        log, progress = _silent, False
    log, cfg = log or _silent, run.cfg
    say = log  # lines that must not break the progress bar
    started = time.time()
    bar = tqdm(total=cfg.epochs * run.steps_per_epoch, initial=run.epoch * run.steps_per_epoch, disable=not progress,
               desc=f"{cfg.model}/{cfg.data} {run.recipe.name}", unit="step", dynamic_ncols=True, leave=False)
    if progress:
        say = bar.write
    for epoch in range(run.epoch + 1, cfg.epochs + 1):
        row = train_epoch(run, epoch, bar)
        row.update(evaluate(run))
        warnings = []
        if run.stats is not None:
            row["stats"] = run.stats.end_epoch(epoch, warnings.append)
        run.metrics.append(row)
        run.epoch = epoch
        save(run)
        say(epoch_line(cfg, row))
        for line in ([stats_line(row["stats"])] + warnings if run.stats is not None else []):
            say(line)
        if cfg.compute == "int8" and epoch == 1:
            log(int8_line(run.model))
        if stop_after is not None and stop_after <= epoch < cfg.epochs:
            bar.close()
            distributed.barrier()  # the checkpoint is written when any rank returns
            return {"stopped_after": epoch}
    bar.close()
    return finish(run, started, log)


# ----------------------------------------------------------------------------- building a run


def start(config: TrainConfig = TrainConfig(), *, resume: str | None = None, log=print, overwrite: bool = False) -> Run:
    """Check ``config``, build the run (or restore it from ``resume``) and write its config.

    Under torchrun this joins the process group (``distributed.init``).
    """
    state = None
    if resume is not None:
        state = load_checkpoint(Path(resume) / "checkpoint.pt")
        try:
            saved = TrainConfig(**state["config"])
        except TypeError as err:
            raise ValueError(f"checkpoint in {resume} has an incompatible configuration ({err})") from None
        config = dataclasses.replace(saved, device=config.device, out=str(resume))
    cfg = resolve(config)
    if state is None and not overwrite:
        check_out_is_free(Path(cfg.out))
    device = distributed.init(pick_device(cfg.device))  # under torchrun: join the group; this rank's GPU
    log = (log or _silent) if distributed.is_main() else _silent
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    run = build(cfg, device)  # before the folder is touched: a run that cannot start loses no earlier run
    if cfg.comm != "fp32" and run.comm is None:
        log(f"--comm {cfg.comm} applies between processes (under torchrun); one process has no all-reduce")
    if distributed.is_main():
        _prepare_out(Path(cfg.out), fresh=state is None, log=log)
    if state is not None:
        _restore(run, state, resume)
        log(f"resuming {run.out} after epoch {run.epoch}/{cfg.epochs}")
    if cfg.stats_every is not None:
        run.stats = StatsLog(run.model, run.optimizer, cfg.stats_every, run.epoch,
                             read_records(run.out, run.step) if state is not None else [])
    run.write("config.json", to_json(dataclasses.asdict(cfg)))
    _write_metrics(run)
    return run


def build(cfg: TrainConfig, device: torch.device) -> Run:
    """A fresh run of the resolved ``cfg`` on ``device``: data, model, optimizer, schedule, average."""
    recipe = get_recipe(cfg.recipe, cfg.bits)
    data = load_data(cfg.data, data_dir=cfg.data_dir, download=cfg.download, seed=cfg.seed)
    train_set = place_dataset(limit(data.train, cfg.limit_train), device, cfg.data_on_device)
    test_set = place_dataset(limit(data.test, cfg.limit_test), device, cfg.data_on_device)
    distributed.check_batch_size(cfg.batch_size, len(train_set))  # every process gets a part of every batch

    torch.manual_seed(cfg.seed)  # the initial weights and every stochastic rounding follow from it
    model = build_model(cfg.model, data.num_classes, data.input_shape)
    quantize_model(model, recipe, placement=cfg.placement, compute=cfg.compute)  # also configures a model's own quantizers
    prepare_model(model, device, cfg.channels_last)
    net = distributed.wrap(model, device)  # DistributedDataParallel under torchrun, else `model` itself
    comm = distributed.compress(net, cfg.comm, cfg.seed)
    net = torch.compile(net) if cfg.compile else net  # train through `net`, save `model`
    if cfg.storage == "packed":  # memory first: the CPU kernels keep no freed outputs for reuse
        set_output_pool(0)
    base = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.wd)
    optimizer = LowPrecisionOptimizer(base, recipe, seed=cfg.seed, storage=cfg.storage)
    scheduler = SWALPLR(base, budget=cfg.budget, swa_lr=cfg.swa_lr, ratio=cfg.lr_ratio,
                        steps_per_epoch=math.ceil(len(train_set) / cfg.batch_size), kind=cfg.schedule)
    avg_device = device if cfg.avg_device is None else pick_device(cfg.avg_device)
    average = WeightAverage(model, fmt=cfg.avg_format, device=avg_device, seed=cfg.seed)
    distributed.seed_rank(cfg.seed)  # the weights are built: from here on each rank rounds activations its own way
    return Run(cfg, device, recipe, data, train_set, test_set, model, net, optimizer, scheduler, average, comm)


def check_out_is_free(out: Path) -> None:
    """A ValueError if ``out`` holds a run (finished or stopped): a fresh run never replaces one unasked."""
    held = [f for f in RUN_FILES if (out / f).exists()]
    if held:
        raise ValueError(f"--out {str(out)!r} holds a run ({', '.join(held)}); --resume {out} continues it, "
                         f"--overwrite replaces it, or give another --out")


def _prepare_out(out: Path, fresh: bool, log) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if fresh:  # (with overwrite) a fresh run replaces an earlier one here, so --resume can never mix the two
        stale = [out / f for f in RUN_FILES if (out / f).exists()]
        for f in stale:
            f.unlink()
        if stale:
            log(f"replacing the earlier run in {out}")


def _restore(run: Run, state: dict, resume: str) -> None:
    try:
        run.model.load_state_dict(unpack_state_dict(state["model"]))  # either storage loads into either
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        run.average.load_state_dict(state["average"])
    except (KeyError, RuntimeError, ValueError) as err:
        raise ValueError(f"checkpoint in {resume} does not match this model/recipe ({err})") from None
    run.metrics, run.epoch, run.step = state["metrics"], state["epoch"], state["step"]
    distributed.restore_rng(state, run.cfg.seed)  # on one process: set_rng_state(state["rng"])


# ----------------------------------------------------------------------------- one epoch


def train_epoch(run: Run, epoch: int, bar) -> dict:
    """One epoch of (low-precision) SGD with averaging; returns the epoch's training figures."""
    cfg, model = run.cfg, run.model
    avg_start = cfg.budget * (1 if cfg.avg_unit == "epoch" else run.steps_per_epoch)
    model.train()
    first_step = run.step + 1
    losses, wrongs, sizes = [], [], []  # per step, left on the device: no host sync per step
    order = epoch_order(len(run.train_set), cfg.seed, epoch)
    saved = packed_activations if cfg.packed_activations else contextlib.nullcontext  # the same numbers
    for x, y, weight in distributed.batches(run.train_set, order, cfg.batch_size, run.device, cfg.num_workers):
        if run.data.train_transform is not None:
            x = run.data.train_transform(x)
        lr = run.optimizer.param_groups[0]["lr"]  # the epoch's line reports its last step's rate
        run.optimizer.zero_grad(set_to_none=True)
        if run.comm is not None:
            run.comm.step = run.step  # its roundings' seeds follow the run's step, across a resume too
        with saved():
            logits = run.net(prepare_batch(x, cfg.channels_last))
            loss = F.cross_entropy(logits, y)
            (loss if weight == 1 else loss * weight).backward()  # weight: this rank's share of the batch
        run.optimizer.step()
        run.scheduler.step()
        run.step += 1
        if cfg.avg_unit == "step" and run.step >= avg_start and (run.step - avg_start) % cfg.avg_every == 0:
            run.average.update_parameters(model)
        losses.append(loss.detach())
        wrongs.append((logits.argmax(1) != y).sum())
        sizes.append(len(y))
        bar.update(1)
        if run.step % SYNC_EVERY == 0:
            _check_finite(run, losses, first_step, epoch, bar)
            bar.set_postfix(epoch=epoch, loss=f"{losses[-1].item():.3f}", refresh=False)
    losses, wrongs, sizes = distributed.sum_steps(losses, wrongs, sizes)  # over the whole batches
    _check_finite(run, losses, first_step, epoch, bar)
    distributed.sync_buffers(model)  # rank 0's batch-norm statistics everywhere, for averaging and evaluation
    if cfg.avg_unit == "epoch" and epoch >= avg_start and (epoch - avg_start) % cfg.avg_every == 0:
        run.average.update_parameters(model)
    seen = sum(sizes)
    loss_sum = sum(v * n for v, n in zip(torch.stack(losses).double().tolist(), sizes))
    return dict(epoch=epoch, lr=lr, train_loss=loss_sum / seen, train_error=100.0 * torch.stack(wrongs).sum().item() / seen)


def _check_finite(run: Run, losses: list, first_step: int, epoch: int, bar) -> None:
    """Raise :class:`Diverged` naming the first step of this epoch whose loss is not finite.

    Checked every ``SYNC_EVERY`` steps and at the end of the epoch, not at every step (a host
    sync per step would stall a GPU); a few steps may run on NaN weights, but they are never
    saved: the last checkpoint is the previous epoch's.
    """
    bad = (~torch.isfinite(torch.stack(losses))).nonzero()
    if bad.numel():
        i = int(bad[0, 0])
        bar.close()
        last = run.metrics[-1]["epoch"] if run.metrics else None
        kept = (f"the last good checkpoint (epoch {last}) is kept in {run.out / 'checkpoint.pt'}" if last
                else "no checkpoint was written")
        raise Diverged(f"loss is {losses[i].item()} at step {first_step + i} (epoch {epoch}); stopped: {kept}; "
                       f"try a lower --lr")


# ----------------------------------------------------------------------------- evaluation and saving


def evaluate(run: Run) -> dict:
    """Test error of the SGD iterate as it is (low precision), and of the average in full precision."""
    cfg = run.cfg
    row = dict(test_error=error_percent(run.model, run.test_set, run.device, num_workers=cfg.num_workers,
                                        channels_last=cfg.channels_last))
    if run.average.n_averaged > 0:
        row.update(avg_test_error=error_percent(_averaged(run), run.test_set, run.device, num_workers=cfg.num_workers,
                                                channels_last=cfg.channels_last),
                   n_averaged=int(run.average.n_averaged))
    return row


def _averaged(run: Run) -> nn.Module:
    return averaged_model(run.average, run.train_set, run.cfg.batch_size, run.device, run.cfg.num_workers,
                          run.data.train_transform)


def save(run: Run) -> None:
    """The checkpoint of the last finished epoch (and the SGD iterate at the budget), then the metrics."""
    rng_ranks = distributed.rng_states()  # every rank's generators ({} on one process); every rank calls it
    if run.epoch == run.cfg.budget:
        run.write("sgd_budget.pt", _torch_save(run.model.state_dict()))
    # The checkpoint first, then the metrics: a crash in between is repaired on resume,
    # which rewrites metrics.jsonl from the checkpoint.
    if distributed.is_main():
        state = dict(config=dataclasses.asdict(run.cfg), epoch=run.epoch, step=run.step, metrics=run.metrics,
                     rng=rng_state(), **rng_ranks, model=packed_state_dict(run.model), optimizer=run.optimizer.state_dict(),
                     scheduler=run.scheduler.state_dict(), average=run.average.state_dict())
        save_checkpoint(run.out / "checkpoint.pt", state)
        run.written.append(run.out / "checkpoint.pt")
    _write_metrics(run)


def finish(run: Run, started: float, log) -> dict:
    """Evaluate the average at the end, save its weights, write and return the summary."""
    cfg = run.cfg
    run.write("average.pt", _torch_save(_averaged(run).state_dict()))
    summary = make_summary(cfg, run.recipe, run.metrics, run.average, run.model)
    summary["wall_s"] = round(time.time() - started, 2)
    if run.stats is not None:
        summary["stats"] = run.stats.summary()
    run.write("summary.json", to_json(summary))
    log(f"SGD iterate at the budget (epoch {cfg.budget}): {summary['sgd']['test_error']:.2f}%  "
        f"average at the end (epoch {cfg.epochs}): {summary['average']['test_error']:.2f}%  -> {run.out}")
    distributed.barrier()
    return summary


def make_summary(cfg: TrainConfig, recipe: Recipe, metrics: list[dict], average: WeightAverage,
                 model: nn.Module | None = None) -> dict:
    by_epoch = {m["epoch"]: m for m in metrics}
    sgd = dict(test_error=by_epoch[cfg.budget]["test_error"], epoch=cfg.budget)
    avg = dict(test_error=by_epoch[cfg.epochs]["avg_test_error"], epoch=cfg.epochs, n_averaged=int(average.n_averaged))
    summary = dict(sgd_lp=sgd, swalp=avg, sgd=sgd, average=avg,
                   sgd_final=dict(test_error=by_epoch[cfg.epochs]["test_error"], epoch=cfg.epochs),
                   recipe=recipe.name, bits=cfg.bits, full_precision=recipe.is_full_precision,
                   model=cfg.model, data=cfg.data, seed=cfg.seed)
    if summary["full_precision"]:
        summary.update(sgd_fp=sgd, swa_fp=avg)
    if cfg.compute == "int8":
        summary["compute_paths"] = compute_paths(model)
    return summary


def int8_line(model: nn.Module) -> str:
    """How many of the model's products (training and evaluation so far) took the int8 path."""
    paths = compute_paths(model).values()
    parts = []
    for product in PRODUCTS:
        n = sum(layer[product]["int8"] for layer in paths)
        parts.append(f"{product} {n}/{n + sum(layer[product]['float'] for layer in paths)}")
    return "int8 products so far: " + ", ".join(parts) + " (the rest in float: swalp.nn.compute_paths)"


def epoch_line(cfg: TrainConfig, row: dict) -> str:
    line = (f"epoch {row['epoch']:>3}/{cfg.epochs}  lr {row['lr']:.4g}  loss {row['train_loss']:.4f}  "
            f"train err {row['train_error']:5.2f}%  test err {row['test_error']:5.2f}%")
    if "avg_test_error" in row:
        line += f"  avg err {row['avg_test_error']:5.2f}% (n={row['n_averaged']})"
    return line


def _torch_save(obj):
    return lambda f: torch.save(obj, f)


def _write_metrics(run: Run) -> None:
    run.write("metrics.jsonl", "".join(json.dumps(m) + "\n" for m in run.metrics))
    if run.stats is not None:
        run.write(STATS_FILE, run.stats.text())
