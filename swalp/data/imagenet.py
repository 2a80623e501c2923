"""ImageNet (ILSVRC-2012) from a class-per-folder tree, decoded with Pillow, with no torchvision.

``data_dir`` holds ``train/<class>/<image>`` and ``val/<class>/<image>`` (the usual layout; the
official validation images come in one folder and must first be sorted into class folders, e.g.
with the widely used ``valprep.sh``). Classes are the sorted folder names of ``train/``; label i
is the i-th. Images are decoded with Pillow, the optional extra ``vision``
(``pip install 'swalp[vision]'`` or ``pip install pillow``).

Augmentation, per image in the DataLoader's worker processes (images differ in size, so it
cannot be batched before decoding): training takes a random resized crop to 224 (scale
0.08-1, aspect ratio 3/4-4/3) and a horizontal flip with probability 1/2; validation resizes
the short side to 256 and takes the central 224 crop. Both normalise with ImageNet's
per-channel mean and std. ImageNet cannot be downloaded without registering at image-net.org,
so ``download=True`` is an error.

Example:
    >>> from swalp.data import load_data
    >>> bundle = load_data("imagenet", data_dir="/data/imagenet")   # doctest: +SKIP
    >>> bundle.num_classes, bundle.input_shape                        # doctest: +SKIP
    (1000, (3, 224, 224))
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .bundle import DataBundle

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _pil():
    try:
        from PIL import Image
    except ImportError as err:
        raise ImportError("ImageNet images are decoded with Pillow, which is not installed: "
                          "pip install 'swalp[vision]' (or pip install pillow)") from err
    return Image


def find_images(root: str | Path, classes: list[str] | None = None):
    """``(classes, samples)`` of a class-per-folder tree: ``samples`` is a list of (path, label).

    Args:
        root: the folder holding one sub-folder per class.
        classes: class names fixing the labels (e.g. those of ``train/`` for ``val/``); by default
            the sorted sub-folder names of ``root``.

    Raises:
        FileNotFoundError: ``root`` is missing or holds no images.
        ValueError: ``root`` has a class folder not in ``classes``.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    if classes is None:
        classes = found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise ValueError(f"{root}: class folders {unknown[:5]} are not among the {len(classes)} training classes")
    index = {c: i for i, c in enumerate(classes)}
    samples = [
        (path, index[c])
        for c in found
        for path in sorted((root / c).rglob("*"))
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
    ]
    if not samples:
        raise FileNotFoundError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in class folders")
    return list(classes), samples


def _random_resized_box(width: int, height: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """A crop box (left, top, right, bottom) as torchvision's RandomResizedCrop draws it, from torch's RNG."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(1).item())
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * torch.rand(1).item())
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(torch.randint(0, width - w + 1, (1,)))
            top = int(torch.randint(0, height - h + 1, (1,)))
            return left, top, left + w, top + h
    # Fallback: the central crop with the aspect ratio clamped into range.
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def _center_box(width: int, height: int, resize: int, crop: int):
    """The box in the original image that "resize short side to ``resize``, centre crop ``crop``" keeps."""
    s = resize / min(width, height)
    w, h = crop / s, crop / s
    left, top = (width - w) / 2, (height - h) / 2
    return left, top, left + w, top + h


class ImageFolder(Dataset):
    """Images of a class-per-folder tree as normalised float tensors (3, size, size).

    Args:
        samples: list of (path, label), e.g. from :func:`find_images`.
        train: random resized crop and flip (True) or resize 256 + centre crop (False).
        size: output side (224).
    """

    def __init__(self, samples, train: bool, size: int = 224):
        self.samples, self.train, self.size = samples, train, size
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        image_cls = _pil()
        path, label = self.samples[i]
        with image_cls.open(path) as img:
            img = img.convert("RGB")
            w, h = img.size
            if self.train:
                box = _random_resized_box(w, h)
            else:
                box = _center_box(w, h, round(self.size * 256 / 224), self.size)
            # resize with a box crops and resamples in one step (no intermediate image).
            img = img.resize((self.size, self.size), image_cls.BILINEAR, box=box)
            if self.train and torch.rand(1).item() < 0.5:
                img = img.transpose(image_cls.FLIP_LEFT_RIGHT)
            array = np.asarray(img, dtype=np.uint8)
        x = torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)
        return x.sub_(self.mean).div_(self.std), label


def load_imagenet(data_dir=None, download: bool = False, seed: int = 0, size: int = 224) -> DataBundle:
    """The ``"imagenet"`` data set from ``data_dir/train`` and ``data_dir/val`` (see the module doc).

    Raises:
        FileNotFoundError: ``data_dir``, ``train/`` or ``val/`` is missing (the message says what is expected).
        ImportError: Pillow is not installed.
        ValueError: ``download=True`` (ImageNet needs a registered download).
    """
    where = "http://image-net.org/ (ILSVRC-2012, registration needed)"
    if download:
        raise ValueError(f"ImageNet cannot be downloaded automatically: get it from {where}, "
                         "arrange train/ and val/ in class folders and pass --data-dir")
    if data_dir is None:
        raise FileNotFoundError(f"imagenet needs --data-dir: a folder holding train/<class>/*.JPEG and "
                                f"val/<class>/*.JPEG, from {where}")
    data_dir = Path(data_dir).expanduser()
    for split in ("train", "val"):
        if not (data_dir / split).is_dir():
            raise FileNotFoundError(f"imagenet: {data_dir / split} not found. Expected {data_dir}/train/<class>/*.JPEG and "
                                    f"{data_dir}/val/<class>/*.JPEG (validation images sorted into class folders), "
                                    f"from {where}")
    _pil()  # fail before training starts, not in a worker
    classes, train = find_images(data_dir / "train")
    _, val = find_images(data_dir / "val", classes)
    return DataBundle(
        train=ImageFolder(train, train=True, size=size),
        test=ImageFolder(val, train=False, size=size),
        num_classes=len(classes),
        input_shape=(3, size, size),
        name="imagenet",
        train_transform=None,  # augmentation happens per image in ImageFolder (worker processes)
    )

