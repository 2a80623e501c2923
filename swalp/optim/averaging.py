"""``WeightAverage``: the running mean of low-precision SGD iterates (the "SWA" in SWALP).

A :class:`torch.optim.swa_utils.AveragedModel` (a subclass: ``update_parameters``, the
``n_averaged`` buffer, ``avg_fn``/``multi_avg_fn`` for EMA, ``use_buffers``, its state
dicts, ``swa_utils.update_bn``), with what SWALP needs on top:

* the average is kept in ``dtype`` (float32 by default), whatever the iterates are
  stored as, and its forward accepts inputs of the model's dtype;
* optionally rounded to a format ``fmt`` after each update, with a seed per update and
  parameter (to study low-precision averaging; the paper's ablation);
* the copy's :class:`swalp.Quantizer` modules are disabled, since the average is
  evaluated in full precision (arXiv 1904.11943, Algorithm 1).

The caller decides when to update (every ``c`` steps or ``c`` epochs from a start point:
the paper's Algorithm 1 averages every ``c`` iterations from iteration ``S``; its CIFAR
scripts once per epoch from the end of the budget ``B``). Buffers (batch-norm running
statistics) are copied from the model at each update unless ``use_buffers``; call
:func:`update_bn` on the average before evaluating it, as the paper's experiments do.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn
from torch.optim import swa_utils

from .._rng import check_generator, check_seed, derive_seed, draw_seed
from ..formats import Format, Rounding, get_format
from ..nn.convert import set_quantizers
from ..nn.weights import unpacked
from ..ops._dispatch import dispatch_many_
from ..recipes import param_format


class WeightAverage(swa_utils.AveragedModel):
    """An average of a model's parameters (equal weights, or EMA), as a full-precision model.

    Args:
        model: the model being trained (deep-copied once; later updates read any model
            with the same parameter shapes).
        fmt: None keeps the average in ``dtype``; a format (or preset name) rounds it after
            every update (per-parameter rule of :func:`swalp.recipes.param_format`).
        device: where the average lives (e.g. ``"cpu"`` to save accelerator memory);
            None: the model's device.
        rounding: rounding of ``fmt`` (``"stochastic"`` or ``"nearest"``).
        seed: base seed of the stochastic rounding of the average (per update ``n`` and
            parameter); None draws one at the first update that needs it.
        avg_fn, multi_avg_fn, use_buffers: as :class:`~torch.optim.swa_utils.AveragedModel`
            (``multi_avg_fn=swa_utils.get_ema_multi_avg_fn(0.999)`` keeps an EMA).
        dtype: the floating dtype of the average (float32).
        generator: where a missing seed is drawn from (default: torch's global generator).

    Attributes:
        module: the averaged ``nn.Module`` (its Quantizers disabled); ``avg(x)`` calls it.
        n_averaged: number of iterates averaged so far (a long tensor, as torch's).

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(1, 1, bias=False)
        >>> avg = WeightAverage(net)
        >>> for w in (1.0, 2.0, 6.0):
        ...     with torch.no_grad(): _ = net.weight.fill_(w)
        ...     avg.update_parameters(net)
        >>> avg.module.weight.item(), int(avg.n_averaged)
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
        *,
        avg_fn: Callable | None = None,
        multi_avg_fn: Callable | None = None,
        use_buffers: bool = False,
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        fmt = None if fmt is None else get_format(fmt)
        rounding, seed = Rounding.parse(rounding), None if seed is None else check_seed(seed)
        generator = check_generator(generator)
        with unpacked(model):  # the copy holds float tensors, whatever storage the model's weights are in
            super().__init__(model, device=device, avg_fn=avg_fn, multi_avg_fn=multi_avg_fn, use_buffers=use_buffers)
        self.fmt, self.rounding, self.seed, self.dtype, self._generator = fmt, rounding, seed, dtype, generator
        set_quantizers(self.module, False)
        for p in self.module.parameters():
            p.requires_grad_(False)
        for t in (*self.module.parameters(), *(self.module.buffers() if use_buffers else ())):
            if t.is_floating_point():
                t.data = t.data.to(dtype)

    def forward(self, *args, **kwargs):
        """The averaged model on inputs of any floating dtype (cast to :attr:`dtype`)."""
        cast = lambda v: v.to(self.dtype) if isinstance(v, Tensor) and v.is_floating_point() else v  # noqa: E731
        return self.module(*map(cast, args), **{k: cast(v) for k, v in kwargs.items()})

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        """Add ``model``'s current parameters to the average (torch's update), then round
        the average to ``fmt`` if one is given; copies the buffers unless ``use_buffers``."""
        avg_params, params = list(self.module.parameters()), list(model.parameters())
        if len(avg_params) != len(params) or any(a.shape != p.shape for a, p in zip(avg_params, params)):
            raise ValueError("model's parameters do not match the averaged model's (count or shapes differ)")
        if len(list(self.module.buffers())) != len(list(model.buffers())):
            raise ValueError("model's buffers do not match the averaged model's")
        n = int(self.n_averaged)
        with unpacked(model):
            super().update_parameters(_Cast(model, self.dtype))
        if self.fmt is not None:
            if self.seed is None:
                self.seed = draw_seed(self._generator) if self.rounding is Rounding.STOCHASTIC else 0
            fmts = [param_format(self.fmt, a) for a in avg_params]  # in place, in one kernel call where it can
            dispatch_many_(avg_params, fmts, self.rounding, [derive_seed(self.seed, n, i) for i in range(len(avg_params))])

    update = update_parameters  # the name swalp 0.1 used

    def get_extra_state(self) -> dict:
        return {"seed": self.seed}

    def set_extra_state(self, state: dict) -> None:
        self.seed = None if state.get("seed") is None else check_seed(state["seed"])

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors):
        # An AveragedModel's state dict has no extra state; swalp 0.1's kept n_averaged in it.
        extra = state_dict.get(prefix + "_extra_state")
        if prefix + "n_averaged" not in state_dict and isinstance(extra, dict) and "n_averaged" in extra:
            state_dict[prefix + "n_averaged"] = torch.tensor(int(extra["n_averaged"]), dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors)
        if prefix + "_extra_state" in missing_keys:
            missing_keys.remove(prefix + "_extra_state")

    def extra_repr(self) -> str:
        return f"fmt={self.fmt!r}, dtype={self.dtype}, n_averaged={int(self.n_averaged)}"


class _Cast(nn.Module):
    """``model``'s parameters and buffers seen in ``dtype``: torch's update averages tensors of
    one dtype, and the iterates may be bfloat16 while the average is float32."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model, dtype

    def _cast(self, tensors):
        return (t.to(self.dtype) if t.is_floating_point() else t for t in tensors)

    def parameters(self, recurse: bool = True):
        return self._cast(self.model.parameters(recurse))

    def buffers(self, recurse: bool = True):
        return self._cast(self.model.buffers(recurse))


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
