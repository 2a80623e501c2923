"""Evaluation in the training job: the test error of a model, and the average as a model.

Both run with a fixed seed of their own (:data:`EVAL_SEED`) inside a forked generator, so
evaluating more or less often never changes the training trajectory.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..data import batches
from ..nn import set_quantizers
from ..optim import WeightAverage, update_bn
from .accel import prepare_batch

EVAL_SEED = 12345  # the stochastic rounding of evaluation passes; fixed so runs compare


def _fork_rng(device: torch.device):
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


@torch.no_grad()
def error_percent(model: nn.Module, dataset, device: torch.device, batch_size: int = 1024, num_workers: int = 0,
                  channels_last: bool = False) -> float:
    """Percent of misclassified examples, with the model in eval mode and a fixed rounding seed."""
    was_training = model.training
    model.eval()
    wrong = torch.zeros((), dtype=torch.int64, device=device)  # summed on the device: one sync at the end
    with _fork_rng(device):
        torch.manual_seed(EVAL_SEED)
        for x, y in batches(dataset, torch.arange(len(dataset)), batch_size, device, num_workers):
            wrong += (model(prepare_batch(x, channels_last)).argmax(1) != y).sum()
    model.train(was_training)
    return 100.0 * wrong.item() / len(dataset)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def averaged_model(average: WeightAverage, dataset, batch_size: int, device: torch.device, num_workers: int = 0,
                   transform=None) -> nn.Module:
    """The average as a full-precision model; batch-norm statistics recomputed in one pass
    over the training data (``transform``: its augmentation). A copy on ``device`` (the
    average may live elsewhere, ``--avg-device``), so the running average is never touched."""
    model = copy.deepcopy(average.module).to(device)
    set_quantizers(model, False)
    if has_batchnorm(model):
        with _fork_rng(device):
            torch.manual_seed(EVAL_SEED)
            loader = batches(dataset, torch.arange(len(dataset)), batch_size, device, num_workers)
            update_bn(loader, model, device=device, transform=transform)
    return model
