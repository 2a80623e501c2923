"""Hugging Face Accelerate with swalp's optimizer, schedule and average (README, "With Accelerate")."""

import pytest
import torch
from torch import nn

accelerate = pytest.importorskip("accelerate")

import swalp  # noqa: E402


def _build(seed=0):
    torch.manual_seed(seed)
    model = swalp.quantize_model(nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 4)), "paper")
    opt = swalp.LowPrecisionOptimizer(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4),
                                      seed=seed)
    g = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(torch.randn(96, 10, generator=g), torch.randint(0, 4, (96,), generator=g))
    loader = torch.utils.data.DataLoader(data, batch_size=16)
    sched = swalp.SWALPLR(opt, budget=2, swa_lr=0.05, steps_per_epoch=len(loader))
    average = swalp.WeightAverage(model)
    accelerator = accelerate.Accelerator(cpu=True)
    model, opt, loader, sched = accelerator.prepare(model, opt, loader, sched)
    accelerator.register_for_checkpointing(average)
    return accelerator, model, opt, loader, sched, average


def _epoch(accelerator, model, opt, loader, sched, average, epoch):
    for x, y in loader:
        loss = nn.functional.cross_entropy(model(x), y)
        accelerator.backward(loss)
        opt.step()
        sched.step()
        opt.zero_grad()
    if epoch >= 2:  # from the end of the budget on
        average.update_parameters(accelerator.unwrap_model(model))


def test_prepare_train_save_and_load_state_continue_bit_for_bit(tmp_path, one_thread):
    run = _build()
    for epoch in (1, 2):
        _epoch(*run, epoch)
    run[0].save_state(str(tmp_path / "state"))
    for epoch in (3, 4):
        _epoch(*run, epoch)

    again = _build()
    again[0].load_state(str(tmp_path / "state"))
    assert int(again[-1].n_averaged) == 1
    for epoch in (3, 4):
        _epoch(*again, epoch)
    assert int(again[-1].n_averaged) == int(run[-1].n_averaged) == 3
    for a, b in zip(run[1].state_dict().values(), again[1].state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(run[-1].module.parameters(), again[-1].module.parameters()):
        assert torch.equal(a, b)
    # The optimizer's state (momentum, its step counter) came back too: the schedule is past the budget.
    assert again[2].param_groups[0]["lr"] == pytest.approx(0.05)


def test_quantization_stats_see_through_the_prepared_optimizer(one_thread):
    accelerator, model, opt, loader, sched, average = _build()
    with swalp.QuantizationStats(accelerator.unwrap_model(model), opt, every=3) as stats:
        _epoch(accelerator, model, opt, loader, sched, average, 1)  # 6 steps
    assert [r["step"] for r in stats.records] == [1, 4]
    assert sorted(stats.records[0]["layers"]["0"]) == ["acc", "activation", "error", "grad", "momentum"]
