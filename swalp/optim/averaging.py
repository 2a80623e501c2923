"""``WeightAverage``: the running mean of low-precision SGD iterates (the "SWA" in SWALP).

``w_avg = (n w_avg + w) / (n + 1)`` per update, kept in fp32 by default or rounded to a
format of the user's choice after each update (to study low-precision averaging).

Why not ``torch.optim.swa_utils.AveragedModel`` itself (its idea, the deep copy plus a
running mean, is kept):

* it averages in the copied parameters' dtype; here the average is always fp32 (or
  float64 if the model is), whatever the iterates are stored as, and can be rounded
  to ``fmt`` after each update, which its ``avg_fn`` hook cannot do with a seed per update;
* its ``n_averaged`` is a tensor buffer and each update branches on ``n_averaged == 0``,
  a host-device sync per update on GPU; here it is a Python int.

What is added: the copy's :class:`swalp.Quantizer` modules are disabled, since the
average is evaluated in full precision (arXiv 1904.11943, Algorithm 1: the averaged
model's forward pass is full precision).

The caller decides when to update (every ``c`` steps or ``c`` epochs from a start point:
the paper's Algorithm 1 averages every ``c`` iterations from iteration ``S``; its CIFAR
scripts once per epoch from the end of the budget ``B``). Buffers (batch-norm running
statistics) are copied from the model at each update; call :func:`update_bn` on the
average before evaluating it, as the paper's experiments do.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn
from torch.optim import swa_utils

from .._rng import check_seed, derive_seed, draw_seed
from ..formats import Format, Rounding, get_format
from ..nn.convert import set_quantizers
from ..ops._dispatch import quantize
from ..recipes import param_format


class WeightAverage(nn.Module):
    """An equal-weight running mean of a model's parameters, as a full-precision model.

    Args:
        model: the model being trained (deep-copied once; later updates read any model
            with the same parameter shapes).
        fmt: None keeps the average in full precision; a format (or preset name) rounds
            it after every update (per-parameter rule of :func:`swalp.recipes.param_format`).
        device: where the average lives (e.g. ``"cpu"`` to save accelerator memory);
            None: the model's device.
        rounding: rounding of ``fmt`` (``"stochastic"`` or ``"nearest"``).
        seed: base seed of the stochastic rounding of the average (per update ``n``);
            None draws one from torch's generator.

    Attributes:
        module: the averaged ``nn.Module`` (its Quantizers disabled); ``avg(x)`` calls it.
        n_averaged: number of iterates averaged so far (int).

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(1, 1, bias=False)
        >>> avg = WeightAverage(net)
        >>> for w in (1.0, 2.0, 6.0):
        ...     with torch.no_grad(): _ = net.weight.fill_(w)
        ...     avg.update(net)
        >>> avg.module.weight.item(), avg.n_averaged
        (3.0, 3)

    Caveat: the average's batch-norm statistics are the last iterate's until
    :func:`update_bn` recomputes them for the averaged weights.
    """

    def __init__(
        self,
        model: nn.Module,
        fmt: Format | str | None = None,
        device: torch.device | str | None = None,
        rounding: Rounding | str = "stochastic",
        seed: int | None = None,
    ):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
        self.fmt = None if fmt is None else get_format(fmt)
        self.rounding = Rounding.parse(rounding)
        self.seed = draw_seed() if seed is None else check_seed(seed)
        self.module = copy.deepcopy(model)
        set_quantizers(self.module, False)
        for p in self.module.parameters():
            p.requires_grad_(False)
            p.data = p.data.to(torch.float64 if p.dtype == torch.float64 else torch.float32)
        if device is not None:
            self.module.to(device)
        self.n_averaged = 0

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Add ``model``'s current parameters to the mean and copy its buffers."""
        avg_params, params = list(self.module.parameters()), list(model.parameters())
        if len(avg_params) != len(params) or any(a.shape != p.shape for a, p in zip(avg_params, params)):
            raise ValueError("model's parameters do not match the averaged model's (count or shapes differ)")
        n = self.n_averaged
        for i, (a, p) in enumerate(zip(avg_params, params)):
            w = p.detach().to(a.device, a.dtype)
            if n == 0:
                a.copy_(w)
            else:
                a.mul_(n).add_(w).div_(n + 1)
            if self.fmt is not None:
                a.copy_(quantize(a, param_format(self.fmt, a), self.rounding, derive_seed(self.seed, n, i)))
        avg_buffers, buffers = list(self.module.buffers()), list(model.buffers())
        if len(avg_buffers) != len(buffers):
            raise ValueError("model's buffers do not match the averaged model's")
        for a, b in zip(avg_buffers, buffers):
            a.copy_(b.detach().to(a.device))
        self.n_averaged = n + 1

    def get_extra_state(self) -> dict:
        return {"n_averaged": self.n_averaged, "seed": self.seed}

    def set_extra_state(self, state: dict) -> None:
        self.n_averaged, self.seed = int(state["n_averaged"]), check_seed(state["seed"])

    def extra_repr(self) -> str:
        return f"fmt={self.fmt!r}, n_averaged={self.n_averaged}"


def update_bn(
    loader: Iterable,
    model: nn.Module,
    device: torch.device | str | None = None,
    transform: Callable[[Tensor], Tensor] | None = None,
) -> None:
    """Recompute batch-norm statistics with one pass over ``loader``; wraps
    :func:`torch.optim.swa_utils.update_bn` (reset, then a cumulative average).

    Args:
        loader: yields inputs, or ``(x, y, ...)`` tuples/lists whose first item is the input.
        model: an ``nn.Module`` or a :class:`WeightAverage` (its ``.module`` is updated).
        device: where each input batch is moved before the forward pass.
        transform: applied to each input batch after the move (e.g. a data set's
            per-batch normalisation), so the statistics match what training saw.

    A model without batch norm is left unchanged (and the loader is not read).

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
        >>> update_bn([(torch.randn(8, 2), torch.zeros(8))], net)
    """
    if isinstance(model, WeightAverage):
        model = model.module

    def inputs() -> Any:
        for batch in loader:
            x = batch[0] if isinstance(batch, (list, tuple)) else batch
            if device is not None:
                x = x.to(device)
            yield transform(x) if transform is not None else x

    swa_utils.update_bn(inputs(), model)
