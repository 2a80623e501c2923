"""CIFAR-10 and CIFAR-100 from the official python archives (Krizhevsky 2009), with no torchvision.

``data_dir`` holds the archive as downloaded (``cifar-10-python.tar.gz``, ``cifar-100-python.tar.gz``)
or the folder extracted from it (``cifar-10-batches-py``, ``cifar-100-python``): torchvision's layout,
so a folder torchvision already filled works too. ``data_dir`` may also be that folder itself.
Nothing is downloaded unless ``download=True`` (``--download``), which fetches the archive from
https://www.cs.toronto.edu/~kriz/cifar.html into ``data_dir`` and checks its MD5.

Training augmentation is the paper's (random crop 32 with padding 4, horizontal flip), done by
:class:`CifarAugment` on whole batches in torch, on whatever device the batch is on; both splits
are normalised per channel with the training set's mean and std.

Example:
    >>> from swalp.data import load_data
    >>> bundle = load_data("cifar10", data_dir="~/data")        # doctest: +SKIP
    >>> bundle.input_shape, bundle.num_classes, len(bundle.train)  # doctest: +SKIP
    ((3, 32, 32), 10, 50000)
"""

from __future__ import annotations

import io
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from .bundle import DataBundle
from ._download import download as _download


@dataclass(frozen=True)
class _CifarSpec:
    name: str
    archive: str
    folder: str
    train_files: tuple
    test_files: tuple
    label_key: str
    num_classes: int
    url: str
    md5: str
    mean: tuple  # per-channel mean and std of the training images in [0, 1]
    std: tuple


CIFAR10 = _CifarSpec(
    "cifar10", "cifar-10-python.tar.gz", "cifar-10-batches-py",
    tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "labels", 10,
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
    (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
)
CIFAR100 = _CifarSpec(
    "cifar100", "cifar-100-python.tar.gz", "cifar-100-python", ("train",), ("test",), "fine_labels", 100,
    "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
    (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
)
SPECS = {s.name: s for s in (CIFAR10, CIFAR100)}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a CIFAR batch needs nothing else, and a
    tampered file cannot run code through ``find_class``."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR batch holds only arrays and lists")
        return super().find_class(module, name)


def _load_batch(raw: bytes, where: str, label_key: str):
    try:
        batch = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as err:  # pickle raises many types on garbage
        raise ValueError(f"{where}: not a CIFAR python batch ({err})") from err
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()} if isinstance(batch, dict) else {}
    if "data" not in batch or label_key not in batch:
        raise ValueError(f"{where}: a CIFAR batch needs the keys 'data' and {label_key!r}, found {sorted(batch)}")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise ValueError(f"{where}: expected uint8 data (N, 3072) and N labels, got {data.dtype} {data.shape} "
                         f"and {labels.shape[0]} labels")
    return data.reshape(-1, 3, 32, 32), labels


def _missing_error(spec: _CifarSpec, data_dir: Path, detail: str = "") -> FileNotFoundError:
    return FileNotFoundError(
        f"{spec.name}: {detail or 'no data'} in {data_dir}. Expected {data_dir / spec.archive} or the folder "
        f"{data_dir / spec.folder} extracted from it (torchvision's layout), from {spec.url} "
        f"(https://www.cs.toronto.edu/~kriz/cifar.html); pass --download to fetch it into {data_dir}."
    )


def _read_members(spec: _CifarSpec, data_dir: Path, names: tuple) -> dict:
    """Raw bytes of the batch files ``names``, from the extracted folder or else the archive."""
    for folder in (data_dir / spec.folder, data_dir):
        if all((folder / n).is_file() for n in names):
            return {n: (folder / n).read_bytes() for n in names}
    archive = data_dir / spec.archive
    if not archive.is_file():
        folder = data_dir / spec.folder
        if folder.is_dir():
            missing = [n for n in names if not (folder / n).is_file()]
            raise _missing_error(spec, data_dir, f"{', '.join(missing)} missing from {folder}")
        raise _missing_error(spec, data_dir)
    wanted, found = {f"{spec.folder}/{n}": n for n in names}, {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:  # one pass: seeking backwards in a .gz stream re-decompresses it
                if member.name in wanted and member.isfile():
                    found[wanted[member.name]] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise ValueError(f"{archive}: not a readable .tar.gz ({err}); delete it and download it again") from err
    missing = [m for m, n in wanted.items() if n not in found]
    if missing:
        raise ValueError(f"{archive}: does not contain {', '.join(missing)}; is it {spec.url}?")
    return found


def load_cifar_arrays(name: str, data_dir: str | Path, download: bool = False):
    """The CIFAR arrays: ``(x_train, y_train, x_test, y_test)``, images uint8 ``(N, 3, 32, 32)``
    (CHW, as stored), labels int64 (CIFAR-100: the 100 fine labels).

    Raises:
        ValueError: unknown ``name`` (accepted: cifar10, cifar100), or a corrupt file.
        FileNotFoundError: neither the archive nor the extracted folder is in ``data_dir``.
    """
    if name not in SPECS:
        raise ValueError(f"unknown CIFAR data set {name!r}; accepted: {', '.join(SPECS)}")
    spec, data_dir = SPECS[name], Path(data_dir).expanduser()
    has_folder = (data_dir / spec.folder / spec.test_files[0]).is_file() or (data_dir / spec.test_files[0]).is_file()
    if download and not has_folder:
        _download(spec.url, data_dir / spec.archive, spec.md5)
    raw = _read_members(spec, data_dir, spec.train_files + spec.test_files)
    out = []
    for files in (spec.train_files, spec.test_files):
        parts = [_load_batch(raw[f], f"{data_dir}: {f}", spec.label_key) for f in files]
        x, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        if y.size and (y.min() < 0 or y.max() >= spec.num_classes):
            raise ValueError(f"{data_dir}: {spec.name} labels must be in [0, {spec.num_classes}), got [{y.min()}, {y.max()}]")
        out += [x, y]
    return tuple(out)


class CifarAugment:
    """The paper's CIFAR augmentation on a normalised batch: random crop 32 with padding 4, then a
    horizontal flip with probability 1/2, each drawn per image.

    One gather does both, on the batch's device, with torch's global generator (so
    ``torch.manual_seed`` repeats it and a checkpoint of the RNG state resumes it). The padding is
    black in pixel space, i.e. ``-mean/std`` after normalisation, as torchvision's
    ``RandomCrop(32, padding=4)`` before ``Normalize`` gives.

    Args:
        mean, std: the per-channel normalisation the batch went through.
        padding: pixels of padding on each side.

    Shapes: (N, C, H, W) -> (N, C, H, W).

    Example:
        >>> import torch
        >>> aug = CifarAugment((0.5,) * 3, (0.25,) * 3)
        >>> aug(torch.zeros(4, 3, 32, 32)).shape
        torch.Size([4, 3, 32, 32])
    """

    def __init__(self, mean, std, padding: int = 4):
        self.fill = tuple(-m / s for m, s in zip(mean, std))
        self.padding = padding

    def __call__(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        p, dev = self.padding, x.device
        fill = torch.tensor(self.fill, dtype=x.dtype, device=dev).view(1, c, 1, 1)
        padded = fill.expand(n, c, h + 2 * p, w + 2 * p).clone()
        padded[:, :, p:p + h, p:p + w] = x
        top = torch.randint(0, 2 * p + 1, (n, 1), device=dev)
        left = torch.randint(0, 2 * p + 1, (n, 1), device=dev)
        flip = torch.rand(n, 1, device=dev) < 0.5
        rows = top + torch.arange(h, device=dev)
        cols = torch.arange(w, device=dev)
        cols = left + torch.where(flip, w - 1 - cols, cols)
        batch = torch.arange(n, device=dev).view(n, 1, 1, 1)
        chan = torch.arange(c, device=dev).view(1, c, 1, 1)
        return padded[batch, chan, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]

    def __repr__(self) -> str:
        return f"CifarAugment(crop=32, padding={self.padding}, hflip=0.5)"


def _normalise(images: np.ndarray, spec: _CifarSpec) -> Tensor:
    x = torch.from_numpy(images).float().div_(255)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)


def _loader(name: str):
    spec = SPECS[name]

    def load(data_dir=None, download: bool = False, seed: int = 0) -> DataBundle:
        if data_dir is None:
            raise FileNotFoundError(
                f"{name} needs --data-dir: a folder holding {spec.archive} or the folder {spec.folder} "
                f"extracted from it, from {spec.url}; add --download to fetch it into that folder."
            )
        x_train, y_train, x_test, y_test = load_cifar_arrays(name, data_dir, download=download)
        return DataBundle(
            train=TensorDataset(_normalise(x_train, spec), torch.from_numpy(y_train)),
            test=TensorDataset(_normalise(x_test, spec), torch.from_numpy(y_test)),
            num_classes=spec.num_classes,
            input_shape=(3, 32, 32),
            name=name,
            train_transform=CifarAugment(spec.mean, spec.std),
        )

    load.__doc__ = (f"The {name!r} data set: normalised images (3, 32, 32), {spec.num_classes} classes, the "
                    "paper's augmentation as ``train_transform``. ``seed`` is unused (the split is fixed).")
    return load


load_cifar10 = _loader("cifar10")
load_cifar100 = _loader("cifar100")
