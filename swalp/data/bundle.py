"""``DataBundle``: what every data set loader returns."""

from __future__ import annotations

from dataclasses import dataclass
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
