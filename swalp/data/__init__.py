"""Data sets by name (``registry.py``) and the batches the training loop draws from them
(``batches.py``). Nothing is downloaded unless a loader is called with ``download=True``.

Example:
    >>> from swalp.data import load_data
    >>> load_data("digits").input_shape
    (1, 8, 8)
"""

from .batches import batches, epoch_order, limit, loader_options, shard
from .bundle import DataBundle
from .registry import DATASETS, load_data, register_dataset

__all__ = ["DATASETS", "DataBundle", "batches", "epoch_order", "limit", "load_data", "loader_options",
           "register_dataset", "shard"]
