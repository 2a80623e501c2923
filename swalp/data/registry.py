"""Data sets by name: ``DATASETS`` maps a name to a loader that returns a :class:`DataBundle`.

Embedded data sets need no files and no network: ``"mnist1d"`` (the default),
``"digits"`` and ``"synthetic-cifar10"`` (``embedded.py``). The others read files from ``data_dir``: ``"cifar10"``,
``"cifar100"`` (``cifar.py``), ``"mnist"`` (``mnist.py``), ``"imagenet"`` (``imagenet.py``).
A loader is ``loader(data_dir=None, download=False, seed=0) -> DataBundle``;
:func:`register_dataset` adds one of your own.

Example:
    >>> bundle = load_data("digits")
    >>> bundle.num_classes, bundle.input_shape, len(bundle.train) + len(bundle.test)
    (10, (1, 8, 8), 1797)
"""

from __future__ import annotations

from typing import Callable

from .._checks import check_choice
from .bundle import DataBundle
from .cifar import load_cifar10, load_cifar100
from .embedded import load_digits, load_mnist1d, load_synthetic_cifar10
from .imagenet import load_imagenet
from .mnist import load_mnist

DATASETS: dict[str, Callable[..., DataBundle]] = {
    "mnist1d": load_mnist1d,
    "digits": load_digits,
    "synthetic-cifar10": load_synthetic_cifar10,
    "mnist": load_mnist,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "imagenet": load_imagenet,
}


def register_dataset(name: str, loader: Callable[..., DataBundle]) -> Callable[..., DataBundle]:
    """Add (or replace) a loader ``loader(data_dir=None, download=False, seed=0) -> DataBundle``."""
    DATASETS[name] = loader
    return loader


def load_data(name: str, data_dir=None, download: bool = False, seed: int = 0) -> DataBundle:
    """Load the data set registered as ``name``.

    Raises:
        ValueError: ``name`` is not registered (the message lists the names that are).
    """
    check_choice("data set", name, sorted(DATASETS))
    return DATASETS[name](data_dir=data_dir, download=download, seed=seed)
