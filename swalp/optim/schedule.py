"""The SWALP learning-rate schedule (the one of the paper's CIFAR experiments, arXiv
1904.11943, as its reference code runs it) as a function and as a torch LR scheduler.

With ``t = epoch / budget`` (``epoch`` may be fractional):

* ``kind="swalp"`` (the reference): ``lr0`` for ``t <= 0.5``; linear from ``lr0`` to
  ``ratio * lr0`` for ``0.5 < t <= 0.9``; ``ratio * lr0`` for ``0.9 < t < 1``.
* ``kind="cosine"``: ``ratio*lr0 + (1 - ratio) * lr0 * (1 + cos(pi t)) / 2`` for ``t < 1``
  (from ``lr0`` at t = 0 down towards ``ratio * lr0`` at t = 1).
* ``kind="constant"``: ``lr0`` for ``t < 1``.

Every kind then holds ``swa_lr`` for ``t >= 1`` (the averaging phase: epoch index ``B``,
the first epoch after the budget, already runs at ``swa_lr``, as in the reference code,
whose schedule tests ``t < 1.0`` before switching).
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from .._checks import check_choice, check_int, check_number

KINDS = ("swalp", "cosine", "constant")  # the shapes of the decay before the budget


def swalp_lr(epoch: float, budget: float, lr0: float, swa_lr: float, ratio: float = 0.01, kind: str = "swalp") -> float:
    """The learning rate at (fractional) ``epoch`` of a run with averaging after ``budget``.

    Args:
        epoch: epochs completed before this step, ``>= 0`` (0-based epoch index when the
            rate changes once per epoch; ``step / steps_per_epoch`` per step).
        budget: ``B``, the epochs of ordinary training before averaging starts (> 0).
        lr0: the initial learning rate.
        swa_lr: the constant rate once ``epoch >= budget``.
        ratio: the final rate of the decay as a fraction of ``lr0`` (paper: 0.01).
        kind: ``"swalp"``, ``"cosine"`` or ``"constant"`` (module docstring).

    The boundaries follow the reference code: at ``t = 0.5`` the rate is still ``lr0``,
    at ``t = 0.9`` the decay ends, and epoch index ``B`` (``t = 1``, the first epoch
    after the budget) runs at ``swa_lr``.

    Example (B = 10, lr0 = 0.1, swa_lr = 0.01):
        >>> [round(swalp_lr(e, 10, 0.1, 0.01), 6) for e in (0, 5, 7, 9, 10, 11)]
        [0.1, 0.1, 0.0505, 0.001, 0.01, 0.01]
    """
    epoch = check_number("epoch", epoch, 0)
    budget = check_number("budget", budget, 0, lo_open=True)
    lr0 = check_number("lr0", lr0, 0)
    swa_lr = check_number("swa_lr", swa_lr, 0)
    ratio = check_number("ratio", ratio, 0)
    check_choice("schedule kind", kind, KINDS)
    t = epoch / budget
    if t >= 1.0:
        return swa_lr
    if kind == "constant":
        return lr0
    if kind == "cosine":
        return lr0 * (ratio + (1.0 - ratio) * (1.0 + math.cos(math.pi * t)) / 2.0)
    if t <= 0.5:
        return lr0
    if t <= 0.9:
        return lr0 * (1.0 - (1.0 - ratio) * (t - 0.5) / 0.4)
    return lr0 * ratio


class SWALPLR(LRScheduler):
    """:func:`swalp_lr` as a torch scheduler; ``lr0`` is each param group's initial lr.

    Call ``.step()`` once per optimizer step when ``steps_per_epoch`` is the number of
    batches per epoch (the rate then moves within an epoch, at fractional epochs
    ``step / steps_per_epoch``), or once per epoch with ``steps_per_epoch=1`` (the
    reference: one rate per epoch).

    Args:
        optimizer: a torch optimizer or a :class:`swalp.LowPrecisionOptimizer`.
        budget: epochs before averaging starts (``B``).
        swa_lr: the rate after the budget: one for every param group, or a list with one
            per group.
        ratio: final decay ratio (0.01).
        steps_per_epoch: number of ``.step()`` calls per epoch (int >= 1).
        kind: ``"swalp"``, ``"cosine"`` or ``"constant"``.
        last_epoch: index of the last step taken, to resume (-1: a fresh run).

    Per step or per epoch, the first epoch after the budget runs at ``swa_lr``, as in
    the reference; :attr:`averaging` says when that phase has begun. Resume with
    ``state_dict()``/``load_state_dict()``. Chainable, as torch's schedulers: each step
    multiplies a group's rate by this schedule's change, so inside ``ChainedScheduler`` it
    composes with the others; alone, the rates are exactly :func:`swalp_lr`'s (the closed
    form, :meth:`_get_closed_form_lr`).

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        >>> sched = SWALPLR(opt, budget=2, swa_lr=0.01, steps_per_epoch=4)
        >>> lrs = []
        >>> for _ in range(12):
        ...     lrs.append(round(opt.param_groups[0]["lr"], 6)); opt.step(); sched.step()
        >>> lrs
        [0.1, 0.1, 0.1, 0.1, 0.1, 0.069063, 0.038125, 0.007188, 0.01, 0.01, 0.01, 0.01]
    """

    def __init__(
        self,
        optimizer: Optimizer,
        budget: float,
        swa_lr: float | list[float],
        ratio: float = 0.01,
        steps_per_epoch: int = 1,
        kind: str = "swalp",
        last_epoch: int = -1,
    ):
        check_int("steps_per_epoch", steps_per_epoch, 1)
        groups = len(optimizer.param_groups)
        swa_lrs = list(swa_lr) if isinstance(swa_lr, (list, tuple)) else [swa_lr] * groups
        if len(swa_lrs) != groups:
            raise ValueError(f"swa_lr has {len(swa_lrs)} values for {groups} param groups; give one, or one per group")
        for value in swa_lrs:  # validates before torch touches the optimizer
            swalp_lr(0, budget, 1.0, value, ratio, kind)
        self.budget, self.swa_lrs, self.ratio = budget, swa_lrs, ratio
        self.steps_per_epoch, self.kind = steps_per_epoch, kind
        super().__init__(optimizer, last_epoch)

    @property
    def averaging(self) -> bool:
        """True once the rate is ``swa_lr``: the epochs from the end of the budget on."""
        return self.last_epoch / self.steps_per_epoch >= self.budget

    def _rates(self, step: int) -> list[float]:
        epoch = max(step, 0) / self.steps_per_epoch
        return [swalp_lr(epoch, self.budget, lr0, swa, self.ratio, self.kind)
                for lr0, swa in zip(self.base_lrs, self.swa_lrs)]

    def _get_closed_form_lr(self) -> list[float]:
        return self._rates(self.last_epoch)

    def get_lr(self) -> list[float]:
        """Each group's rate times this schedule's change since the last step; exactly the
        closed form where nothing else moved the rate."""
        new = self._rates(self.last_epoch)
        if self.last_epoch <= 0:
            return new
        old = self._rates(self.last_epoch - 1)
        return [n if group["lr"] == o or o == 0 else group["lr"] * n / o
                for group, n, o in zip(self.optimizer.param_groups, new, old)]
