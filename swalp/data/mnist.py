"""MNIST from its four IDX files (LeCun et al.), with no torchvision.

``data_dir`` holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each raw or gzipped (``.gz``);
torchvision's layout ``data_dir/MNIST/raw/`` is found as well. Nothing is downloaded unless
``download=True`` (``--download``), which fetches the ``.gz`` files from torchvision's mirror.

Example:
    >>> from swalp.data.mnist import load_mnist_arrays
    >>> x_train, y_train, x_test, y_test = load_mnist_arrays("~/data/mnist")  # doctest: +SKIP
    >>> x_train.shape, x_train.dtype, y_train.dtype                            # doctest: +SKIP
    ((60000, 28, 28), dtype('uint8'), dtype('int64'))
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .bundle import DataBundle
from ._download import download as _download

# IDX type codes -> big-endian numpy dtypes (the IDX spec on yann.lecun.com/exdb/mnist).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"  # torchvision's mirror of yann.lecun.com/exdb/mnist
MNIST_MD5 = {  # of the .gz files, as published (and checked by torchvision)
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}
# Per-pixel mean and std of the MNIST training images (in [0, 1]), the usual normalisation.
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (raw, or gzipped: detected from its first bytes, not its name).

    Returns:
        an array of the file's dtype (native byte order) and shape, e.g. ``(N, 28, 28)``
        uint8 for images and ``(N,)`` uint8 for labels.

    Raises:
        ValueError: the file is not IDX (bad magic number, unknown type code) or its size
            does not match the dimensions its header states (truncated or padded).
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(2)
        f.seek(0)
        data = gzip.decompress(f.read()) if head == b"\x1f\x8b" else f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (magic number {data[:4].hex() or 'missing'}; expected 0000 then type and rank bytes)")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02x}; accepted: {', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes for rank {ndim})")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"{path}: {len(data)} bytes but its header {shape} of {dtype.str} needs {expected}; the file is truncated or corrupt")
    array = np.frombuffer(data, dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def _find(data_dir: Path, stem: str) -> Path | None:
    for folder in (data_dir, data_dir / "MNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def _missing_error(data_dir: Path, missing: list[str]) -> FileNotFoundError:
    names = ", ".join(f"{m}[.gz]" for m in missing)
    return FileNotFoundError(
        f"MNIST: {names} not found in {data_dir} (nor in {data_dir / 'MNIST' / 'raw'}). Expected the four IDX files "
        f"{', '.join(MNIST_FILES.values())}, raw or .gz, from http://yann.lecun.com/exdb/mnist/ "
        f"(mirror {MNIST_URL}); pass --download to fetch them into {data_dir}."
    )


def load_mnist_arrays(data_dir: str | Path, download: bool = False):
    """The four MNIST arrays from ``data_dir``.

    Returns:
        ``(x_train, y_train, x_test, y_test)``: images uint8 ``(N, 28, 28)``, labels int64 ``(N,)``
        (60,000 and 10,000 for the real files).

    Raises:
        FileNotFoundError: a file is missing (the message names the files and where they come from).
        ValueError: a file is not a valid IDX file, or images and labels disagree.
    """
    data_dir = Path(data_dir).expanduser()
    if download:
        for stem in MNIST_FILES.values():
            if _find(data_dir, stem) is None:
                _download(MNIST_URL + stem + ".gz", data_dir / (stem + ".gz"), MNIST_MD5[stem])
    paths = {key: _find(data_dir, stem) for key, stem in MNIST_FILES.items()}
    missing = [MNIST_FILES[k] for k, p in paths.items() if p is None]
    if missing:
        raise _missing_error(data_dir, missing)
    arrays = []
    for split in ("train", "test"):
        images, labels = read_idx(paths[f"{split}_images"]), read_idx(paths[f"{split}_labels"])
        if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
            raise ValueError(f"{paths[f'{split}_images']}: expected uint8 images (N, 28, 28), got {images.dtype} {images.shape}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(f"{paths[f'{split}_labels']}: expected {len(images)} labels (one per image), got shape {labels.shape}")
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise ValueError(f"{paths[f'{split}_labels']}: labels must be digits 0-9, got range [{labels.min()}, {labels.max()}]")
        arrays += [images, labels.astype(np.int64)]
    return tuple(arrays)


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).float().div_(255).unsqueeze(1)
    return x.sub_(MNIST_MEAN).div_(MNIST_STD)


def load_mnist(data_dir=None, download: bool = False, seed: int = 0) -> DataBundle:
    """The ``"mnist"`` data set: images ``(1, 28, 28)`` normalised with the training mean and
    std (0.1307, 0.3081), 10 classes, no augmentation. ``seed`` is unused (no randomness)."""
    if data_dir is None:
        raise FileNotFoundError(
            "MNIST needs --data-dir: a folder holding the four IDX files "
            f"({', '.join(MNIST_FILES.values())}, raw or .gz) from http://yann.lecun.com/exdb/mnist/; "
            "add --download to fetch them into it."
        )
    x_train, y_train, x_test, y_test = load_mnist_arrays(data_dir, download=download)
    return DataBundle(
        train=TensorDataset(_to_tensor(x_train), torch.from_numpy(y_train)),
        test=TensorDataset(_to_tensor(x_test), torch.from_numpy(y_test)),
        num_classes=10,
        input_shape=(1, 28, 28),
        name="mnist",
        train_transform=None,
    )

