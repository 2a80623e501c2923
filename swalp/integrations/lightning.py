"""SWALP as a Lightning callback: ``Trainer(callbacks=[SWALP("paper", budget=30, swa_lr=0.1)])``.

What the callback does to a ``LightningModule`` during ``fit`` (``swalp train``'s loop, in
Lightning's):

* ``setup``: :func:`swalp.quantize_model` puts Quantizers in the module (names and
  state-dict keys unchanged), and the module's ``configure_optimizers`` is wrapped for this
  fit: its one optimizer becomes a :class:`swalp.LowPrecisionOptimizer` (which rounds the
  weights), and any scheduler it returns is **replaced** by :class:`swalp.SWALPLR`, stepped
  every optimizer step (the paper's schedule: decay over the budget, then ``swa_lr``).
* from the end of epoch ``budget`` on, every ``avg_every`` epochs (at the epoch's last
  batch, so that epoch's validation sees it), a float32 average of the iterates
  (:class:`swalp.WeightAverage`).
* validation, once the average has had its first update (never before), runs on the
  average: its weights are loaded into the module, batch-norm statistics recomputed over
  the training data, the Quantizers off (full precision); the iterate comes back after.
  ``swalp/n_averaged`` is logged. ``validate_average=False`` validates the iterate instead.
* at the end of ``fit``, the module holds the average in full precision
  (``average_at_end=False`` leaves the last iterate).
* with ``stats_every=N``, a :class:`swalp.QuantizationStats` measures what rounding does every
  N steps (``callback.stats.records``); the worst figures of each measured step are logged as
  ``swalp/sqnr_db_min``, ``swalp/flushed_max`` and ``swalp/saturated_max``, and each kind of
  problem (role and figure past its threshold) is warned about once, with the advice.
* checkpoints carry the average, its count and torch's global generator (the Quantizers'
  seeds come from it), so a resumed ``fit`` continues bit for bit on the CPU.

Data order: Lightning's own shuffling differs from ``swalp train``'s; :class:`EpochSampler`
gives the same order (``tests/test_lightning.py`` trains both and compares the weights).

Example:
    >>> import torch, lightning.pytorch as pl
    >>> from torch import nn
    >>> from swalp.integrations.lightning import SWALP
    >>> class Net(pl.LightningModule):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    ...     def training_step(self, batch, i):
    ...         x, y = batch
    ...         return nn.functional.cross_entropy(self.net(x), y)
    ...     def configure_optimizers(self):
    ...         return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
    >>> data = torch.utils.data.TensorDataset(torch.randn(64, 8), torch.randint(0, 3, (64,)))
    >>> trainer = pl.Trainer(max_epochs=3, callbacks=[SWALP("paper", budget=2, swa_lr=0.05)], logger=False,
    ...                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    >>> trainer.fit(Net(), torch.utils.data.DataLoader(data, batch_size=16))
    >>> int(trainer.callbacks[0].average.n_averaged)
    2

Caveats: one optimizer per module (SWALP averages one trajectory); ``storage="packed"`` is not
offered here (the swap of weights for validation needs them as floats); the step counts of
``avg_unit="step"`` are optimizer steps (``trainer.global_step``).
"""

from __future__ import annotations

import math

import torch

from .._checks import check_bool, check_choice, check_int, check_number
from ..data import epoch_order
from ..nn import full_precision, quantize_model, quantizers
from ..optim import KINDS, SWALPLR, LowPrecisionOptimizer, QuantizationStats, WeightAverage, update_bn
from ..optim.health import new_warnings, worst
from ..recipes import Recipe, get_recipe
from . import _require

pl = _require("lightning.pytorch", "lightning")

__all__ = ["SWALP", "EpochSampler"]


class EpochSampler(torch.utils.data.Sampler):
    """``swalp train``'s data order: a permutation of ``range(n)`` drawn from ``(seed, epoch)``
    alone (:func:`swalp.data.epoch_order`), so a resumed run needs no saved generator.
    Lightning calls :meth:`set_epoch` (0-based) before each epoch."""

    def __init__(self, n: int, seed: int = 0):
        check_int("n", n, 1)
        check_int("seed", seed, 0)
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(epoch_order(self.n, self.seed, self.epoch + 1).tolist())  # swalp train counts from 1

    def __len__(self) -> int:
        return self.n


class SWALP(pl.Callback):
    """Low-precision training with SWALP averaging for any ``LightningModule`` (module docstring).

    Args:
        recipe: a recipe name or :class:`swalp.Recipe` (``"paper"``: 8-bit block floating point).
        budget: epochs of ordinary training; averaging starts at the end of this epoch. Must be
            below the Trainer's ``max_epochs``.
        swa_lr: the constant learning rate from the budget on.
        bits: word length for the recipe's integer formats (None: the recipe's).
        avg_every: average every this many epochs (or steps, with ``avg_unit="step"``).
        avg_unit: ``"epoch"`` or ``"step"``.
        lr_ratio: the schedule's floor as a fraction of the optimizer's initial rate.
        schedule: ``"swalp"``, ``"cosine"`` or ``"constant"`` (:class:`swalp.SWALPLR`).
        seed: the seed of the optimizer's and the average's roundings.
        placement, compute: passed to :func:`swalp.quantize_model`.
        avg_format: keep the average in this format (None: float32).
        validate_average: validate the average once it exists (else the iterate).
        average_at_end: leave the module holding the average after ``fit``.
        stats_every: measure quantization statistics every this many steps (None: never).
    """

    def __init__(self, recipe: str | Recipe = "paper", *, budget: int, swa_lr: float, bits: int | None = None,
                 avg_every: int = 1, avg_unit: str = "epoch", lr_ratio: float = 0.01, schedule: str = "swalp",
                 seed: int = 0, placement: str | None = None, compute: str = "float", avg_format=None,
                 validate_average: bool = True, average_at_end: bool = True, stats_every: int | None = None):
        check_int("budget", budget, 1)
        check_number("swa_lr", swa_lr, 0, lo_open=True)
        check_int("avg_every", avg_every, 1)
        check_choice("avg_unit", avg_unit, ("epoch", "step"))
        check_choice("schedule", schedule, KINDS)
        check_number("lr_ratio", lr_ratio, 0, 1, lo_open=True)
        check_int("seed", seed, 0, 2**63 - 1)
        check_bool("validate_average", validate_average)
        check_bool("average_at_end", average_at_end)
        if stats_every is not None:
            check_int("stats_every", stats_every, 1)
        self.recipe = get_recipe(recipe, bits)
        self.budget, self.swa_lr, self.avg_every, self.avg_unit = budget, swa_lr, avg_every, avg_unit
        self.lr_ratio, self.schedule, self.seed = lr_ratio, schedule, seed
        self.placement, self.compute, self.avg_format = placement, compute, avg_format
        self.validate_average, self.average_at_end = validate_average, average_at_end
        self.average: WeightAverage | None = None
        self.steps_per_epoch: int | None = None
        self._restored: dict | None = None
        self._swapped: tuple | None = None
        self._last_step: int | None = None  # avg_unit "step": the global step last looked at
        self.stats_every, self.stats = stats_every, None
        self._reported, self._warned = 0, set()  # records logged so far; (role, figure) warned about

    # --- set-up -------------------------------------------------------------------------

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        if trainer.max_epochs is None or trainer.max_epochs <= self.budget:
            raise ValueError(f"SWALP(budget={self.budget}) needs Trainer(max_epochs=...) above the budget, "
                             f"got max_epochs={trainer.max_epochs}")
        if not quantizers(pl_module):  # a second fit of the same module keeps its conversion
            quantize_model(pl_module, self.recipe, placement=self.placement, compute=self.compute)
        original = type(pl_module).configure_optimizers

        def configure_optimizers():
            return self._wrap(trainer, original(pl_module), pl_module)

        pl_module.configure_optimizers = configure_optimizers  # this instance, this fit (teardown undoes it)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        pl_module.__dict__.pop("configure_optimizers", None)
        if self.stats is not None:
            self.stats.close()

    def _wrap(self, trainer, returned, pl_module):
        optimizer = _one_optimizer(returned)
        self.steps_per_epoch = math.ceil(trainer.estimated_stepping_batches / trainer.max_epochs)
        wrapped = LowPrecisionOptimizer(optimizer, self.recipe, seed=self.seed)
        if self.stats_every is not None:
            self.stats, self._reported = QuantizationStats(pl_module, wrapped, every=self.stats_every), 0
        schedule = SWALPLR(wrapped, budget=self.budget, swa_lr=self.swa_lr, ratio=self.lr_ratio,
                           steps_per_epoch=self.steps_per_epoch, kind=self.schedule)
        return {"optimizer": wrapped, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_fit_start(self, trainer, pl_module) -> None:
        self.average = WeightAverage(pl_module, fmt=self.avg_format, seed=self.seed)
        if self._restored is not None:
            self.average.load_state_dict(self._restored["average"])
            torch.set_rng_state(self._restored["rng"])  # the Quantizers' seeds, where the checkpoint left them
            self._restored = None

    # --- averaging ----------------------------------------------------------------------

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.avg_unit == "step":
            start = self.budget * self.steps_per_epoch
            step = trainer.global_step
            # With gradient accumulation a step spans several batches: average once per step.
            due = step >= start and (step - start) % self.avg_every == 0 and step != self._last_step
            self._last_step = step
        else:
            epoch = trainer.current_epoch + 1
            last = batch_idx + 1 == trainer.num_training_batches
            due = last and epoch >= self.budget and (epoch - self.budget) % self.avg_every == 0
        if due:
            self.average.update_parameters(pl_module)
        if self.stats is not None and len(self.stats.records) > self._reported:
            self._report(pl_module, self.stats.records[self._reported:])
            self._reported = len(self.stats.records)

    def _report(self, pl_module, records: list[dict]) -> None:
        for figure, w in worst(records).items():
            if figure != "max_ratio":
                pl_module.log(f"swalp/{figure}_{'min' if figure == 'sqnr_db' else 'max'}", float(w["value"]))
        for line in new_warnings(self.stats.problems(records), self._warned):
            pl.utilities.rank_zero_warn(f"swalp: {line}")

    # --- validation of the average ------------------------------------------------------

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not self.validate_average or self.average is None:
            return
        if self.average.n_averaged == 0:
            return
        backup = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        fp = full_precision(pl_module)
        fp.__enter__()
        self._load_average(trainer, pl_module)
        self._swapped = (backup, fp)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._swapped is not None:
            pl_module.log("swalp/n_averaged", float(self.average.n_averaged))

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._swapped is not None:
            backup, fp = self._swapped
            pl_module.load_state_dict(backup)
            fp.__exit__(None, None, None)
            self._swapped = None

    def _load_average(self, trainer, pl_module) -> None:
        """The average's weights (and buffers) into ``pl_module``; batch-norm statistics
        recomputed over the training data with the module's RNG left as it was."""
        pl_module.load_state_dict(self.average.module.state_dict())
        if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in pl_module.modules()):
            with torch.random.fork_rng(devices=[]):
                update_bn(trainer.train_dataloader, pl_module, device=pl_module.device)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.average_at_end and self.average is not None and self.average.n_averaged > 0:
            self._load_average(trainer, pl_module)
            for q in quantizers(pl_module):
                q.enabled = False

    # --- checkpoints --------------------------------------------------------------------

    def state_dict(self) -> dict:
        if self.average is None:
            return {}
        return {"average": self.average.state_dict(), "rng": torch.get_rng_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        # Called before on_fit_start has built the average: kept until then.
        self._restored = state_dict or None


def _one_optimizer(returned):
    """The optimizer in what ``configure_optimizers`` returned (an optimizer, a dict, a list
    or tuple of them, or ``([optimizers], [schedulers])``); ValueError unless exactly one."""
    found = []

    def visit(x):
        if isinstance(x, torch.optim.Optimizer):
            found.append(x)
        elif isinstance(x, dict):
            visit(x.get("optimizer"))
        elif isinstance(x, (list, tuple)):
            for item in x:
                visit(item)

    visit(returned)
    if len(found) != 1:
        raise ValueError(f"SWALP wraps exactly one optimizer; configure_optimizers returned {len(found)} "
                         f"({returned!r})")
    if isinstance(found[0], LowPrecisionOptimizer):
        raise ValueError("configure_optimizers already returns a LowPrecisionOptimizer; return the plain "
                         "torch optimizer and let the SWALP callback wrap it")
    return found[0]
