"""Models by name: ``MODELS`` maps a name to a :class:`ModelSpec` (how to build the model,
and its training presets per data set).

Small models for the embedded data sets live in ``small.py``; the paper's networks in
``vgg.py``, ``preresnet.py`` and ``resnet.py``, each with its presets beside it.
:func:`register_model` adds a model of your own.

Example:
    >>> net = build_model("cnn1d", num_classes=10, input_shape=(1, 40))
    >>> sorted(model_defaults("cnn1d", "mnist1d"))[:3]
    ['batch_size', 'budget', 'epochs']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from .._checks import check_choice
from . import preresnet, resnet, small, vgg

# Keys a defaults dict may hold; they are TrainConfig fields of the same name.
DEFAULT_KEYS = ("epochs", "budget", "lr", "swa_lr", "wd", "batch_size", "momentum", "threads")


@dataclass
class ModelSpec:
    """How to build a model, and the training defaults that suit it.

    Args:
        build: ``build(num_classes, input_shape) -> nn.Module``.
        defaults: training defaults (keys in ``DEFAULT_KEYS``), either one flat dict or a
            dict keyed by data set name whose values are such dicts; the key ``"*"`` is the
            fallback for data sets not listed.
    """

    build: Callable[[int, tuple], nn.Module]
    defaults: dict = field(default_factory=dict)


MODELS: dict[str, ModelSpec] = {
    "cnn1d": ModelSpec(small.cnn1d, {"mnist1d": small.MNIST1D, "*": small.MNIST1D}),
    "mlp": ModelSpec(small.mlp, {"digits": small.DIGITS, "*": small.MNIST1D}),
    "cnn": ModelSpec(small.cnn, {"digits": small.DIGITS, "*": small.DIGITS}),
    "vgg16": ModelSpec(vgg.build, {"*": vgg.PAPER_CIFAR}),
    "preresnet164": ModelSpec(preresnet.build, {"*": preresnet.PAPER_CIFAR}),
    "resnet18": ModelSpec(resnet.build, {"*": resnet.IMAGENET}),
}

# data set name -> the model `swalp train --data NAME` uses when --model is not given.
DEFAULT_MODELS: dict[str, str] = {
    "mnist1d": "cnn1d", "digits": "cnn", "mnist": "cnn", "cifar10": "vgg16", "cifar100": "vgg16",
    "synthetic-cifar10": "vgg16", "imagenet": "resnet18",
}


def register_model(name: str, spec: ModelSpec, default_for: tuple[str, ...] = ()) -> ModelSpec:
    """Add ``spec`` as ``name``; make it the default model of the data sets ``default_for``."""
    MODELS[name] = spec
    for data in default_for:
        DEFAULT_MODELS[data] = name
    return spec


def _spec(name: str) -> ModelSpec:
    check_choice("model", name, sorted(MODELS))
    return MODELS[name]


def build_model(name: str, num_classes: int, input_shape: tuple) -> nn.Module:
    """Build the model registered as ``name`` (ValueError listing the names if unknown)."""
    return _spec(name).build(num_classes, tuple(input_shape))


def model_defaults(name: str, data: str | None = None) -> dict:
    """The training defaults of model ``name`` on data set ``data`` (a new dict)."""
    d = _spec(name).defaults
    if d and all(isinstance(v, dict) for v in d.values()):  # keyed by data set
        d = d.get(data, d.get("*", {}))
    unknown = set(d) - set(DEFAULT_KEYS)
    if unknown:
        raise ValueError(f"model {name!r} has unknown default keys {sorted(unknown)}; accepted: {list(DEFAULT_KEYS)}")
    return dict(d)


def default_model(data: str) -> str:
    """The model used for data set ``data`` when none is named."""
    if data not in DEFAULT_MODELS:
        raise ValueError(f"no default model for data set {data!r}; pass --model (one of "
                         f"{', '.join(map(repr, sorted(MODELS)))})")
    return DEFAULT_MODELS[data]
