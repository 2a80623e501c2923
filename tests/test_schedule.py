import math
import warnings

import pytest
import torch

import swalp
from swalp import SWALPLR
from swalp.optim import swalp_lr

LR0, SWA = 0.05, 0.01


@pytest.mark.parametrize(
    "epoch, lr",
    [
        (0, 0.05),
        (50, 0.05),  # t = 0.5 is still lr0
        (60, 0.05 * (1 - 0.99 * 0.25)),  # 0.037625
        (70, 0.02525),
        (80.5, 0.05 * (1 - 0.99 * 0.7625)),  # fractional epoch
        (90, 0.0005),
        (95, 0.0005),
        (100, 0.01),  # t = 1, the first epoch after the budget: swa_lr (reference: t < 1.0)
        (100.25, 0.01),
        (150, 0.01),
    ],
)
def test_swalp_schedule_hand_values(epoch, lr):
    assert swalp_lr(epoch, 100, LR0, SWA) == pytest.approx(lr, rel=1e-12, abs=0)


def test_cosine_and_constant_kinds():
    assert swalp_lr(0, 10, 0.1, SWA, kind="cosine") == pytest.approx(0.1, rel=1e-12)
    assert swalp_lr(5, 10, 0.1, SWA, kind="cosine") == pytest.approx(0.1 * (0.01 + 0.99 / 2), rel=1e-12)
    quarter = 0.1 * (0.01 + 0.99 * (1 + math.sqrt(0.5)) / 2)
    assert swalp_lr(2.5, 10, 0.1, SWA, kind="cosine") == pytest.approx(quarter, rel=1e-12)
    assert swalp_lr(9.999999, 10, 0.1, SWA, kind="cosine") == pytest.approx(0.001, rel=1e-9)
    assert swalp_lr(10, 10, 0.1, SWA, kind="cosine") == SWA
    assert swalp_lr(11, 10, 0.1, SWA, kind="cosine") == SWA
    assert [swalp_lr(e, 10, 0.1, SWA, kind="constant") for e in (0, 9.9, 10, 10.1)] == [0.1, 0.1, SWA, SWA]


def test_scheduler_per_epoch_matches_the_function():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    sched = SWALPLR(opt, budget=10, swa_lr=SWA)
    seen = []
    for _ in range(15):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([swalp_lr(e, 10, 0.1, SWA) for e in range(15)], rel=1e-12)
    assert seen[9] == pytest.approx(0.001) and seen[10] == SWA


def test_scheduler_per_step_uses_fractional_epochs_and_every_group():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 1.0}], lr=0.1)
    sched = SWALPLR(opt, budget=2, swa_lr=SWA, steps_per_epoch=4, kind="swalp")
    got = []
    for _ in range(10):
        got.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    # step k is at epoch k / 4; step 5 is at t = 0.625
    assert got[5] == pytest.approx([0.1 * (1 - 0.99 * 0.3125), 1.0 * (1 - 0.99 * 0.3125)], rel=1e-12)
    assert got[7] == pytest.approx([0.1 * (1 - 0.99 * 0.9375), 1.0 * (1 - 0.99 * 0.9375)], rel=1e-12)
    assert got[8] == got[9] == [SWA, SWA]  # t = 1: the averaging phase


def test_scheduler_with_low_precision_optimizer_and_resume():
    def make():
        p = torch.nn.Parameter(torch.ones(3))
        opt = swalp.LowPrecisionOptimizer(torch.optim.SGD([p], lr=0.1), "fp32", seed=0)
        return opt, SWALPLR(opt, budget=4, swa_lr=SWA, steps_per_epoch=3)

    opt, sched = make()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "scheduler.step() before optimizer.step()" warning
        for _ in range(5):
            opt.step()
            sched.step()
    saved = sched.state_dict()
    rest = []
    for _ in range(6):
        opt.step()
        sched.step()
        rest.append(opt.param_groups[0]["lr"])
    opt2, sched2 = make()
    sched2.load_state_dict(saved)
    opt2.param_groups[0]["lr"] = sched2.get_last_lr()[0]
    rest2 = []
    for _ in range(6):
        opt2.step()
        sched2.step()
        rest2.append(opt2.param_groups[0]["lr"])
    assert rest == rest2


def test_errors():
    with pytest.raises(ValueError, match="unknown schedule kind 'linear'; accepted: 'swalp', 'cosine', 'constant'"):
        swalp_lr(1, 10, 0.1, 0.01, kind="linear")
    with pytest.raises(ValueError, match="budget must be a finite number > 0, got 0"):
        swalp_lr(1, 0, 0.1, 0.01)
    with pytest.raises(ValueError, match="epoch must be a finite number >= 0, got -1"):
        swalp_lr(-1, 10, 0.1, 0.01)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="steps_per_epoch must be an integer >= 1, got 0"):
        SWALPLR(opt, budget=10, swa_lr=0.01, steps_per_epoch=0)
    with pytest.raises(ValueError, match="swa_lr must be a finite number >= 0, got nan"):
        SWALPLR(opt, budget=10, swa_lr=float("nan"))


def test_chainable_with_torch_schedulers():
    """Inside ChainedScheduler the rates multiply: SWALPLR's times ExponentialLR's."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = torch.optim.lr_scheduler.ChainedScheduler(
        [SWALPLR(opt, budget=4, swa_lr=0.01), torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)])
    for epoch in range(1, 7):
        opt.step()
        sched.step()
        want = swalp_lr(epoch, 4, 0.1, 0.01) * 0.5**epoch
        assert opt.param_groups[0]["lr"] == pytest.approx(want, rel=1e-12)


def test_alone_the_rates_are_exactly_the_closed_form_and_averaging_says_when():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = SWALPLR(opt, budget=2, swa_lr=0.01, steps_per_epoch=3)
    for step in range(1, 10):
        assert sched.averaging == (step - 1 >= 6)
        opt.step()
        sched.step()
        assert opt.param_groups[0]["lr"] == swalp_lr(step / 3, 2, 0.1, 0.01)  # bit for bit
        assert sched.get_last_lr() == sched._get_closed_form_lr()


def test_swa_lr_per_param_group():
    opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.1},
                           {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.2}], lr=0.1)
    sched = SWALPLR(opt, budget=1, swa_lr=[0.01, 0.05])
    opt.step()
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.05]
    with pytest.raises(ValueError, match="swa_lr has 3 values for 2 param groups"):
        SWALPLR(opt, budget=1, swa_lr=[0.01, 0.05, 0.1])
