"""The embedded data sets (MNIST-1D, digits) and the data/model registries."""

import random

import mnist1d.data
import numpy as np
import pytest
import torch

from swalp.data import DATASETS, load_data
from swalp.data import embedded
from swalp.models import MODELS, build_model, default_model, model_defaults


@pytest.fixture(scope="module")
def mnist1d_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("mnist1d-cache")


def test_mnist1d_shapes_and_split(mnist1d_dir, monkeypatch):
    def no_download(*a, **k):
        raise AssertionError("get_dataset downloads; it must never be called")

    monkeypatch.setattr(mnist1d.data, "get_dataset", no_download)
    b = load_data("mnist1d", data_dir=mnist1d_dir)
    assert (b.name, b.num_classes, b.input_shape) == ("mnist1d", 10, (1, 40))
    assert b.train.tensors[0].shape == (8000, 1, 40) and b.test.tensors[0].shape == (2000, 1, 40)
    assert b.train.tensors[0].dtype == torch.float32 and b.train.tensors[1].dtype == torch.int64
    assert sorted(b.train.tensors[1].unique().tolist()) == list(range(10))
    assert b.train_transform is None


def test_mnist1d_matches_make_dataset_and_is_cached(mnist1d_dir, monkeypatch):
    b = load_data("mnist1d", data_dir=mnist1d_dir)  # from the cache the first test wrote
    assert len(list(mnist1d_dir.glob("mnist1d-*.npz"))) == 1
    args = mnist1d.data.get_dataset_args()
    args.num_samples = 10_000
    ref = mnist1d.data.make_dataset(args)
    np.testing.assert_array_equal(b.train.tensors[0][:, 0].numpy(), ref["x"].astype(np.float32))
    np.testing.assert_array_equal(b.test.tensors[1].numpy(), ref["y_test"])

    def no_generation(*a, **k):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(mnist1d.data, "make_dataset", no_generation)
    again = load_data("mnist1d", data_dir=mnist1d_dir)
    assert torch.equal(again.train.tensors[0], b.train.tensors[0])


def test_mnist1d_damaged_cache_is_regenerated_and_global_rng_kept(mnist1d_dir, tmp_path):
    first = embedded.mnist1d_arrays(mnist1d_dir)
    cache = tmp_path / "sub" / next(mnist1d_dir.glob("mnist1d-*.npz")).name
    cache.parent.mkdir()
    cache.write_bytes(b"not an npz file")
    np.random.seed(7)
    random.seed(7)
    expected = (np.random.rand(), random.random())
    np.random.seed(7)
    random.seed(7)
    again = embedded.mnist1d_arrays(tmp_path / "sub")  # make_dataset seeds the global generators
    assert (np.random.rand(), random.random()) == expected
    np.testing.assert_array_equal(first["x_test"], again["x_test"])


def test_digits_fixed_stratified_split():
    a, b = load_data("digits"), load_data("digits", seed=5)
    assert (len(a.train), len(a.test), a.input_shape, a.num_classes) == (1437, 360, (1, 8, 8), 10)
    assert torch.equal(a.test.tensors[0], b.test.tensors[0])  # the seed does not move the split
    x = a.train.tensors[0]
    assert x.dtype == torch.float32 and x.min() == 0 and x.max() == 1
    counts = torch.bincount(a.test.tensors[1], minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: about 36 of each digit


def test_unknown_data_set_lists_names():
    with pytest.raises(ValueError, match=r"unknown data set 'nope'; accepted: .*'digits'.*'mnist1d'"):
        load_data("nope")
    assert {"mnist1d", "digits"} <= set(DATASETS)


@pytest.mark.parametrize("name,shape", [("cnn1d", (1, 40)), ("mlp", (1, 8, 8)), ("cnn", (1, 8, 8)), ("mlp", (1, 40))])
def test_small_models_output_shape(name, shape):
    net = build_model(name, 7, shape)
    assert net(torch.zeros(3, *shape)).shape == (3, 7)


def test_cnn1d_is_three_conv32_and_a_linear():
    net = build_model("cnn1d", 10, (1, 40))
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv1d)]
    assert [c.out_channels for c in convs] == [32, 32, 32]
    # 1*32*5+32 + 2*(32*32*3+32) + 32*5*10+10 parameters (lengths 40 -> 19 -> 10 -> 5)
    assert sum(p.numel() for p in net.parameters()) == 192 + 2 * 3104 + 1610


def test_model_defaults_and_registry_errors():
    assert default_model("mnist1d") == "cnn1d" and default_model("digits") == "cnn"
    d = model_defaults("cnn1d", "mnist1d")
    assert d["budget"] < d["epochs"] and d["lr"] > 0
    assert model_defaults("cnn", "digits")["batch_size"] == 64
    assert {"cnn1d", "mlp", "cnn"} <= set(MODELS)
    with pytest.raises(ValueError, match=r"unknown model 'resnet9000'; accepted: .*'cnn1d'"):
        build_model("resnet9000", 10, (1, 40))
    with pytest.raises(ValueError, match="no default model for data set 'xyz'"):
        default_model("xyz")
