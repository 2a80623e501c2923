"""SWALP's optimisation pieces, each composing with torch's own.

* :class:`LowPrecisionOptimizer` wraps any ``torch.optim.Optimizer`` and rounds gradients,
  weights, momentum and the weight accumulator around its step.
* :class:`WeightAverage` keeps the running mean of the low-precision iterates in full
  precision; :func:`update_bn` refreshes its batch-norm statistics.
* :class:`SWALPLR` (and :func:`swalp_lr`) is the paper's learning-rate schedule.
* :class:`QuantizationStats` records what rounding does to each layer's tensors (health.py).

Example:
    >>> import torch
    >>> from swalp.optim import LowPrecisionOptimizer, SWALPLR, WeightAverage
    >>> net = torch.nn.Linear(4, 2)
    >>> opt = LowPrecisionOptimizer(torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9), "paper", seed=0)
    >>> sched, avg = SWALPLR(opt, budget=2, swa_lr=0.01), WeightAverage(net, seed=0)
"""

from .averaging import WeightAverage, update_bn
from .health import QuantizationStats
from .optimizer import STORAGES, LowPrecisionOptimizer
from .schedule import KINDS, SWALPLR, swalp_lr

__all__ = ["KINDS", "LowPrecisionOptimizer", "QuantizationStats", "STORAGES", "SWALPLR", "WeightAverage", "swalp_lr", "update_bn"]
