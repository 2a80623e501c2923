"""Embedded data sets, made locally with no files and no network.

- ``"mnist1d"``: MNIST-1D (Greydanus, 2020), generated with ``mnist1d.data.make_dataset``
  from its default arguments with ``num_samples=10000``: 8,000 training and 2,000 test
  sequences of length 40, 10 classes. Generating takes a few seconds, so the arrays are
  cached as an ``.npz`` file (in :func:`swalp._files.cache_dir`).
- ``"digits"``: scikit-learn's 8x8 handwritten digits (1,797 images), split 80/20 with a
  fixed seed, stratified by class, scaled to [0, 1].

- ``"synthetic-cifar10"``: CIFAR-shaped images (3, 32, 32) in 10 classes, made from a fixed
  seed: each class a smooth random pattern (4x4 noise, upsampled), each image its class's
  pattern at a random contrast plus white noise, about zero mean and unit variance as
  normalized CIFAR. 2,560 training and 512 test images. For the paper's CIFAR networks where
  no CIFAR files are at hand (``swalp inspect``, benchmarks): learnable, but not CIFAR.

All are fixed: the ``seed`` argument of the loaders does not change them, so runs with
different seeds are measured on the same test set.
"""

from __future__ import annotations

import hashlib
import json
import random

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .._files import atomic_write, cache_dir
from .bundle import DataBundle

MNIST1D_SAMPLES = 10_000
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2
SYNTHETIC_SEED, SYNTHETIC_SIZES = 2019, (2560, 512)


def mnist1d_args():
    """MNIST-1D's default generation arguments with ``num_samples=10000``.

    ``get_dataset_args`` only builds the argument object; ``get_dataset`` (which would
    download a pickle) is never called.
    """
    from mnist1d.data import get_dataset_args

    args = get_dataset_args()
    args.num_samples = MNIST1D_SAMPLES
    return args


def mnist1d_arrays(data_dir=None) -> dict[str, np.ndarray]:
    """The MNIST-1D arrays ``x`` (8000, 40), ``y``, ``x_test`` (2000, 40), ``y_test``,
    generated once and then read from the cache.

    The cache file name carries a hash of the generation arguments, so changing them
    (or the mnist1d defaults) never reads a stale file.
    """
    args = {k: v for k, v in vars(mnist1d_args()).items() if k != "url"}
    key = hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:12]
    path = cache_dir(data_dir) / f"mnist1d-{key}.npz"
    if path.exists():
        try:
            with np.load(path) as f:
                return {k: f[k] for k in ("x", "y", "x_test", "y_test")}
        except Exception:  # a damaged cache file is regenerated, not trusted
            pass
    from mnist1d.data import make_dataset

    # make_dataset seeds numpy's and python's global generators; keep the caller's state.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(mnist1d_args())
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    arrays = {
        "x": data["x"].astype(np.float32), "y": data["y"].astype(np.int64),
        "x_test": data["x_test"].astype(np.float32), "y_test": data["y_test"].astype(np.int64),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: np.savez(f, **arrays))  # a concurrent reader sees the old file or the whole new one
    return arrays


def load_mnist1d(data_dir=None, download: bool = False, seed: int = 0) -> DataBundle:
    """MNIST-1D as a :class:`DataBundle`; examples have shape (1, 40)."""
    a = mnist1d_arrays(data_dir)
    train = TensorDataset(torch.from_numpy(a["x"]).unsqueeze(1), torch.from_numpy(a["y"]))
    test = TensorDataset(torch.from_numpy(a["x_test"]).unsqueeze(1), torch.from_numpy(a["y_test"]))
    return DataBundle(train, test, num_classes=10, input_shape=(1, 40), name="mnist1d")


def load_digits(data_dir=None, download: bool = False, seed: int = 0) -> DataBundle:
    """scikit-learn's digits as a :class:`DataBundle`; examples have shape (1, 8, 8).

    The 80/20 split is stratified and fixed (seed ``DIGITS_SPLIT_SEED``), whatever ``seed``.
    """
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    d = sk_digits()
    x = (d.images / 16.0).astype(np.float32)  # pixel values are 0..16
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, d.target.astype(np.int64), test_size=DIGITS_TEST_FRACTION,
        random_state=DIGITS_SPLIT_SEED, stratify=d.target)
    train = TensorDataset(torch.from_numpy(x_tr).unsqueeze(1), torch.from_numpy(y_tr))
    test = TensorDataset(torch.from_numpy(x_te).unsqueeze(1), torch.from_numpy(y_te))
    return DataBundle(train, test, num_classes=10, input_shape=(1, 8, 8), name="digits")



def load_synthetic_cifar10(data_dir=None, download: bool = False, seed: int = 0) -> DataBundle:
    """Synthetic CIFAR-shaped images (module docstring) as a :class:`DataBundle`; shape (3, 32, 32)."""
    gen = torch.Generator().manual_seed(SYNTHETIC_SEED)
    patterns = torch.nn.functional.interpolate(torch.randn(10, 3, 4, 4, generator=gen), size=(32, 32),
                                               mode="bilinear", align_corners=False)
    patterns /= patterns.std(dim=(1, 2, 3), keepdim=True)

    def split(n):
        y = torch.randint(0, 10, (n,), generator=gen)
        contrast = 0.5 + torch.rand(n, 1, 1, 1, generator=gen)
        x = (patterns[y] * contrast + torch.randn(n, 3, 32, 32, generator=gen)) / 1.5
        return TensorDataset(x, y)

    train, test = (split(n) for n in SYNTHETIC_SIZES)
    return DataBundle(train, test, num_classes=10, input_shape=(3, 32, 32), name="synthetic-cifar10")
