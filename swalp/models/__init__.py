"""Models by name: a registry of :class:`ModelSpec` (how to build, and training defaults).

Small models for the embedded data sets live in :mod:`swalp.models.small`; the paper's
networks (VGG-16, PreResNet-164, ResNet-18) register themselves from their own modules.

Example:
    >>> from swalp.models import build_model, model_defaults
    >>> net = build_model("cnn1d", num_classes=10, input_shape=(1, 40))
    >>> sorted(model_defaults("cnn1d", "mnist1d"))[:3]
    ['batch_size', 'budget', 'epochs']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn

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


MODELS: dict[str, ModelSpec] = {}

# data set name -> the model `swalp train --data NAME` uses when --model is not given.
DEFAULT_MODELS: dict[str, str] = {}


def register_model(name: str, spec: ModelSpec, default_for: tuple[str, ...] = ()) -> ModelSpec:
    """Add ``spec`` as ``name``; make it the default model of the data sets ``default_for``."""
    MODELS[name] = spec
    for data in default_for:
        DEFAULT_MODELS[data] = name
    return spec


def _spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; accepted: {', '.join(map(repr, sorted(MODELS)))}")
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


from . import small  # noqa: E402,F401  (registers "cnn1d", "mlp", "cnn")

# The paper's networks live in their own modules, optional here while they are written.
for _mod in ("vgg", "preresnet", "resnet"):
    try:
        __import__(f"{__name__}.{_mod}")
    except ModuleNotFoundError as _err:  # pragma: no cover - module not written yet
        if _err.name != f"{__name__}.{_mod}":
            raise

__all__ = ["DEFAULT_MODELS", "MODELS", "ModelSpec", "build_model", "default_model", "model_defaults", "register_model"]

# The paper's networks by function (swalp.models.vgg16(10), ...), as the issue names them.
from .preresnet import preresnet164  # noqa: E402
from .resnet import resnet18  # noqa: E402
from .vgg import vgg16  # noqa: E402

__all__ += ["preresnet164", "resnet18", "vgg16"]
