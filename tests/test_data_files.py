"""File-based data sets (MNIST IDX, CIFAR python archives, ImageNet folders) on tiny files made here."""

import gzip
import io
import pickle
import struct
import tarfile

import numpy as np
import pytest
import torch

from swalp.data import DATASETS, load_data
from swalp.data.cifar import CIFAR10, CIFAR100, CifarAugment, load_cifar_arrays
from swalp.data.mnist import MNIST_FILES, load_mnist_arrays, read_idx

# ----------------------------------------------------------------------------- MNIST


def write_idx(path, array, code=0x08, gz=None):
    header = bytes([0, 0, code, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(data) if (gz if gz is not None else path.suffix == ".gz") else data)


def make_mnist(folder, n_train=6, n_test=4, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    arrays = dict(train_images=rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
                  train_labels=(np.arange(n_train) % 10).astype(np.uint8),
                  test_images=rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
                  test_labels=(9 - np.arange(n_test) % 10).astype(np.uint8))
    folder.mkdir(parents=True, exist_ok=True)
    for key, stem in MNIST_FILES.items():
        write_idx(folder / (stem + (".gz" if gz else "")), arrays[key])
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_arrays_round_trip(tmp_path, gz):
    want = make_mnist(tmp_path, gz=gz)
    x_train, y_train, x_test, y_test = load_mnist_arrays(tmp_path)
    assert x_train.dtype == np.uint8 and x_train.shape == (6, 28, 28) and y_train.dtype == np.int64
    np.testing.assert_array_equal(x_train, want["train_images"])
    np.testing.assert_array_equal(x_test, want["test_images"])
    assert y_train.tolist() == [0, 1, 2, 3, 4, 5] and y_test.tolist() == [9, 8, 7, 6]


def test_mnist_bundle_values_and_torchvision_layout(tmp_path):
    want = make_mnist(tmp_path / "MNIST" / "raw")  # torchvision's download folder
    bundle = load_data("mnist", data_dir=tmp_path)
    assert (bundle.num_classes, bundle.input_shape, len(bundle.train), len(bundle.test)) == (10, (1, 28, 28), 6, 4)
    x, y = bundle.train[2]
    expected = (torch.from_numpy(want["train_images"][2]).float() / 255 - 0.1307) / 0.3081
    torch.testing.assert_close(x[0], expected)
    assert int(y) == 2 and bundle.train_transform is None


def test_read_idx_other_dtypes_and_raw_gz_detection(tmp_path):
    a = np.arange(-3, 3, dtype=np.int32).reshape(2, 3)
    write_idx(tmp_path / "a.idx", a, code=0x0C, gz=True)  # gzipped without the .gz name
    np.testing.assert_array_equal(read_idx(tmp_path / "a.idx"), a)
    f = np.array([1.5, -2.25], dtype=np.float32)
    write_idx(tmp_path / "f.idx", f, code=0x0D)
    assert read_idx(tmp_path / "f.idx").tolist() == [1.5, -2.25]


def test_read_idx_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x08\x03\x00\x00" + b"\x00" * 12)
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(bad)
    bad.write_bytes(b"\x00\x00\x07\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="unknown IDX type code 0x07"):
        read_idx(bad)
    write_idx(bad, np.zeros((3, 28, 28), np.uint8))
    bad.write_bytes(bad.read_bytes()[:-5])
    with pytest.raises(ValueError, match=r"truncated or corrupt"):
        read_idx(bad)


def test_mnist_missing_file_names_it_and_its_source(tmp_path):
    make_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte\[\.gz\] not found.*yann\.lecun\.com.*--download"):
        load_mnist_arrays(tmp_path)
    with pytest.raises(FileNotFoundError, match="MNIST needs --data-dir"):
        load_data("mnist")


def test_mnist_labels_must_match_images(tmp_path):
    make_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    with pytest.raises(ValueError, match="expected 6 labels"):
        load_mnist_arrays(tmp_path)


# ----------------------------------------------------------------------------- CIFAR


def cifar_batches(spec, seed=0, per_batch=3, n_test=4):
    """Raw pickles shaped like the official ones (bytes keys, uint8 (N, 3072), a list of labels)."""
    rng = np.random.default_rng(seed)
    files, images, labels = {}, {}, {}
    for name in spec.train_files + spec.test_files:
        n = n_test if name in spec.test_files else per_batch
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, spec.num_classes, n)]
        batch = {b"data": x, spec.label_key.encode(): y, b"batch_label": name.encode()}
        if spec is CIFAR100:
            batch[b"coarse_labels"] = [v // 5 for v in y]
        files[name] = pickle.dumps(batch, protocol=2)
        images[name], labels[name] = x.reshape(n, 3, 32, 32), y
    return files, images, labels


def write_cifar(tmp_path, spec, archive: bool, seed=0):
    files, images, labels = cifar_batches(spec, seed)
    if archive:
        with tarfile.open(tmp_path / spec.archive, "w:gz") as tar:
            for name, raw in files.items():
                info = tarfile.TarInfo(f"{spec.folder}/{name}")
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))
    else:
        (tmp_path / spec.folder).mkdir()
        for name, raw in files.items():
            (tmp_path / spec.folder / name).write_bytes(raw)
    cat = lambda names, d: np.concatenate([np.asarray(d[n]) for n in names])  # noqa: E731
    return (cat(spec.train_files, images), cat(spec.train_files, labels),
            cat(spec.test_files, images), cat(spec.test_files, labels))


@pytest.mark.parametrize("spec", [CIFAR10, CIFAR100], ids=["cifar10", "cifar100"])
@pytest.mark.parametrize("archive", [True, False], ids=["tar.gz", "extracted"])
def test_cifar_arrays_from_archive_or_folder(tmp_path, spec, archive):
    want = write_cifar(tmp_path, spec, archive)
    got = load_cifar_arrays(spec.name, tmp_path)
    n_train = 3 * len(spec.train_files)
    assert got[0].shape == (n_train, 3, 32, 32) and got[2].shape == (4, 3, 32, 32)
    assert got[1].dtype == np.int64
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_cifar_bundle_normalises_per_channel(tmp_path):
    x_train, y_train, _, y_test = write_cifar(tmp_path, CIFAR10, archive=True)
    bundle = load_data("cifar10", data_dir=tmp_path)
    assert (bundle.num_classes, bundle.input_shape, len(bundle.train), len(bundle.test)) == (10, (3, 32, 32), 15, 4)
    x, y = bundle.train[7]
    pixel = x_train[7, :, 5, 9] / 255.0  # channel values of one pixel
    expected = (pixel - np.array(CIFAR10.mean)) / np.array(CIFAR10.std)
    np.testing.assert_allclose(x[:, 5, 9].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert int(y) == y_train[7] and bundle.test.tensors[1].tolist() == y_test.tolist()
    assert isinstance(bundle.train_transform, CifarAugment)


def test_cifar_data_dir_may_be_the_extracted_folder_itself(tmp_path):
    write_cifar(tmp_path, CIFAR100, archive=False)
    bundle = load_data("cifar100", data_dir=tmp_path / CIFAR100.folder)
    assert bundle.num_classes == 100 and len(bundle.train) == 3


def test_cifar_missing_data_names_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar-10-python\.tar\.gz or the folder .*cifar-10-batches-py.*"
                                                r"cs\.toronto\.edu.*--download"):
        load_data("cifar10", data_dir=tmp_path)
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="data_batch_1, data_batch_2.* missing"):
        load_data("cifar10", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="cifar100 needs --data-dir"):
        load_data("cifar100")


def test_cifar_rejects_corrupt_files_and_code_in_pickles(tmp_path):
    (tmp_path / CIFAR10.archive).write_bytes(b"not a tarball")
    with pytest.raises(ValueError, match="not a readable .tar.gz"):
        load_cifar_arrays("cifar10", tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    folder = tmp_path / "x" / CIFAR10.folder
    folder.mkdir(parents=True)
    for name in CIFAR10.train_files + CIFAR10.test_files:
        (folder / name).write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(ValueError, match="refusing to load builtins.print"):
        load_cifar_arrays("cifar10", tmp_path / "x")


def test_cifar_reads_numpy1_pickles(tmp_path):
    """The official files were written by numpy 1 (module numpy.core.multiarray)."""
    files, images, _ = cifar_batches(CIFAR10)
    folder = tmp_path / CIFAR10.folder
    folder.mkdir()
    for name, raw in files.items():
        (folder / name).write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert b"numpy.core.multiarray" in (folder / "test_batch").read_bytes()
    np.testing.assert_array_equal(load_cifar_arrays("cifar10", tmp_path)[2], images["test_batch"])


def test_augment_is_a_padded_crop_and_flip_of_each_image():
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.25, 1.0)
    aug = CifarAugment(mean, std)
    x = torch.randn(64, 3, 32, 32)
    torch.manual_seed(0)
    y = aug(x)
    fill = torch.tensor([-1.0, -1.0, 0.0]).view(3, 1, 1)  # black pixels after normalisation
    padded = fill.expand(64, 3, 40, 40).clone()
    padded[:, :, 4:36, 4:36] = x
    flips, offsets = 0, set()
    for i in range(64):
        matches = [(t, l, f) for t in range(9) for l in range(9) for f in (False, True)
                   if torch.equal(y[i], (lambda c: c.flip(-1) if f else c)(padded[i, :, t:t + 32, l:l + 32]))]
        assert len(matches) == 1, f"image {i} is not one crop/flip of its padded input"
        flips += matches[0][2]
        offsets.add(matches[0][:2])
    assert 16 <= flips <= 48 and len(offsets) > 20  # both flips and many offsets occur (p of failing < 1e-4)
    torch.manual_seed(0)
    assert torch.equal(aug(x), y)  # torch.manual_seed repeats it


# ----------------------------------------------------------------------------- ImageNet


def test_imagenet_tree(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for split, n in (("train", 2), ("val", 1)):
        for cls in ("n02", "n01"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (30 + 10 * i, 50, 3), dtype=np.uint8)).save(tmp_path / split / cls / f"{i}.png")
    (tmp_path / "train" / "n01" / "notes.txt").write_text("not an image")
    # A flat colour survives any crop and resize: check the decoded, normalised values.
    Image.fromarray(np.full((40, 60, 3), (255, 0, 51), np.uint8)).save(tmp_path / "val" / "n02" / "flat.JPEG")
    bundle = load_data("imagenet", data_dir=tmp_path)
    assert (bundle.num_classes, bundle.input_shape, len(bundle.train), len(bundle.test)) == (2, (3, 224, 224), 4, 3)
    assert [y for _, y in bundle.train.samples] == [0, 0, 1, 1]  # sorted class folders: n01 -> 0
    x, y = bundle.train[3]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and y == 1
    x, y = bundle.test[2]
    expected = (torch.tensor([1.0, 0.0, 0.2]) - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert y == 1
    torch.testing.assert_close(x[:, 100, 100], expected, atol=2e-2, rtol=0)  # JPEG is lossy
    # Decoding and augmentation run in DataLoader worker processes, as on a GPU machine.
    loader = torch.utils.data.DataLoader(bundle.train, batch_size=2, num_workers=2)
    assert [tuple(x.shape) for x, _ in loader] == [(2, 3, 224, 224)] * 2


def test_imagenet_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train not found.*val/<class>.*image-net\.org"):
        load_data("imagenet", data_dir=tmp_path)
    with pytest.raises(ValueError, match="cannot be downloaded automatically"):
        load_data("imagenet", data_dir=tmp_path, download=True)


def test_registered_names():
    assert {"mnist", "cifar10", "cifar100", "imagenet"} <= set(DATASETS)


# ----------------------------------------------------------------------------- --download (file:// URLs: no network)


def test_cifar_download_fetches_the_archive_and_checks_its_md5(tmp_path, monkeypatch):
    import dataclasses

    import swalp.data.cifar as cifar
    from swalp.data._download import md5sum

    src, dest = tmp_path / "server", tmp_path / "data"
    src.mkdir()
    want = write_cifar(src, CIFAR10, archive=True)
    spec = dataclasses.replace(CIFAR10, url=(src / CIFAR10.archive).as_uri(), md5=md5sum(src / CIFAR10.archive))
    monkeypatch.setitem(cifar.SPECS, "cifar10", spec)
    with pytest.raises(FileNotFoundError):
        load_cifar_arrays("cifar10", dest)  # nothing is fetched without download=True
    np.testing.assert_array_equal(load_cifar_arrays("cifar10", dest, download=True)[0], want[0])
    assert (dest / CIFAR10.archive).read_bytes() == (src / CIFAR10.archive).read_bytes()
    monkeypatch.setitem(cifar.SPECS, "cifar10", dataclasses.replace(spec, md5="0" * 32))
    with pytest.raises(RuntimeError, match="does not match the published 0000"):
        load_cifar_arrays("cifar10", tmp_path / "other", download=True)
    assert not any((tmp_path / "other").iterdir())  # no partial file left behind


def test_mnist_download_fetches_the_missing_files(tmp_path, monkeypatch):
    import swalp.data.mnist as mnist
    from swalp.data._download import md5sum

    src, dest = tmp_path / "server", tmp_path / "data"
    want = make_mnist(src, gz=True)
    monkeypatch.setattr(mnist, "MNIST_URL", src.as_uri() + "/")
    monkeypatch.setattr(mnist, "MNIST_MD5", {stem: md5sum(src / (stem + ".gz")) for stem in MNIST_FILES.values()})
    x_train, _, _, y_test = load_mnist_arrays(dest, download=True)
    np.testing.assert_array_equal(x_train, want["train_images"])
    assert sorted(p.name for p in dest.iterdir()) == sorted(stem + ".gz" for stem in MNIST_FILES.values())
