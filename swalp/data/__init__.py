"""Data sets by name: a registry of loaders that each return a :class:`DataBundle`.

Embedded data sets need no files and no network: ``"mnist1d"`` (the default) and
``"digits"`` (:mod:`swalp.data.embedded`). Others register themselves here from their
own modules (CIFAR, MNIST, ImageNet) and read files from ``data_dir``.

Example:
    >>> from swalp.data import load_data
    >>> bundle = load_data("digits")
    >>> bundle.num_classes, bundle.input_shape, len(bundle.train) + len(bundle.test)
    (10, (1, 8, 8), 1797)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch.utils.data import Dataset


@dataclass
class DataBundle:
    """A train/test pair and what a model needs to know about it.

    Args:
        train, test: map-style datasets yielding ``(x, y)`` with ``x`` a float tensor of
            ``input_shape`` and ``y`` an int class index.
        num_classes: number of classes.
        input_shape: shape of one example, without the batch dimension.
        name: the registry name.
        train_transform: ``f(x_batch) -> x_batch`` applied to each training batch on the
            batch's device (augmentation), or None. Test batches are never transformed.
    """

    train: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple
    name: str
    train_transform: Callable | None = None


# name -> loader(data_dir=None, download=False, seed=0) -> DataBundle
DATASETS: dict[str, Callable[..., DataBundle]] = {}


def register_dataset(name: str, loader: Callable[..., DataBundle]) -> Callable[..., DataBundle]:
    """Add a loader ``loader(data_dir=None, download=False, seed=0) -> DataBundle``."""
    DATASETS[name] = loader
    return loader


def load_data(name: str, data_dir=None, download: bool = False, seed: int = 0) -> DataBundle:
    """Load the data set registered as ``name``.

    Raises:
        ValueError: ``name`` is not registered (the message lists the names that are).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; accepted: {', '.join(map(repr, sorted(DATASETS)))}")
    return DATASETS[name](data_dir=data_dir, download=download, seed=seed)


def cache_dir(data_dir=None) -> Path:
    """Where generated data sets are cached: ``data_dir`` if given, else ``$SWALP_CACHE_DIR``,
    else ``$XDG_CACHE_HOME/swalp``, else ``~/.cache/swalp`` (the C++ kernels' cache too)."""
    if data_dir is not None:
        return Path(data_dir)
    if os.environ.get("SWALP_CACHE_DIR"):
        return Path(os.environ["SWALP_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "swalp"


from . import embedded  # noqa: E402,F401  (registers "mnist1d" and "digits")

# Data sets with files on disk live in their own modules; they are optional here so that
# the embedded ones keep working while those modules are written.
for _mod in ("cifar", "mnist", "imagenet"):
    try:
        __import__(f"{__name__}.{_mod}")
    except ModuleNotFoundError as _err:  # pragma: no cover - module not written yet
        if _err.name != f"{__name__}.{_mod}":
            raise

__all__ = ["DATASETS", "DataBundle", "cache_dir", "load_data", "register_dataset"]
