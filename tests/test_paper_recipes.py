"""The paper's set-ups as `swalp train` resolves them, and each paper network end to end through the CLI."""

import json
import pickle

import numpy as np
import pytest
import torch

import swalp
from swalp.cli import build_parser, main
from swalp.cli.train import config_from_args
from swalp.experiments.compare import plan
from swalp.recipes import get_recipe
from swalp.training import resolve

# paper.md, "Averaging and schedule": E, B, lr0, swa_lr, wd; batch 128, momentum 0.9 for both.
PAPER = {
    "vgg16": dict(epochs=300, budget=200, lr=0.05, swa_lr=0.01, wd=5e-4, batch_size=128, momentum=0.9),
    "preresnet164": dict(epochs=225, budget=150, lr=0.1, swa_lr=0.01, wd=3e-4, batch_size=128, momentum=0.9),
}
# Ours (the paper gives no ImageNet set-up): swalp/models/resnet.py documents it.
OURS_IMAGENET = dict(epochs=90, budget=60, lr=0.1, swa_lr=0.01, wd=1e-4, batch_size=256, momentum=0.9)


# One torch thread (tests/conftest.py): big models on a busy 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")


def resolved(*argv):
    args = build_parser().parse_args(["train", *argv])
    return resolve(config_from_args(args))


@pytest.mark.parametrize("data", ["cifar10", "cifar100"])
@pytest.mark.parametrize("model", ["vgg16", "preresnet164"])
def test_cli_resolves_the_papers_recipe(model, data):
    cfg = resolved("--model", model, "--data", data, "--data-dir", "/nonexistent")  # resolving reads no data
    for key, value in PAPER[model].items():
        assert getattr(cfg, key) == value, key
    assert cfg.epochs == 1.5 * cfg.budget
    assert (cfg.recipe, cfg.bits, cfg.schedule, cfg.lr_ratio, cfg.avg_every, cfg.avg_unit, cfg.avg_format) == (
        "paper", None, "swalp", 0.01, 1, "epoch", None)
    recipe = get_recipe(cfg.recipe)  # 8-bit small-block BFP everywhere, stochastic rounding
    per_row, per_tensor = swalp.BlockFloat(8, block=swalp.PerAxis(0)), swalp.BlockFloat(8, block=swalp.PerTensor())
    assert (recipe.weight, recipe.grad, recipe.momentum, recipe.acc) == (per_row,) * 4
    assert (recipe.activation, recipe.error) == (per_tensor,) * 2
    assert recipe.rounding is swalp.Rounding.STOCHASTIC


def test_cifar_default_model_is_vgg16_and_imagenet_resnet18_has_our_schedule():
    assert resolved("--data", "cifar10").model == "vgg16"
    cfg = resolved("--data", "imagenet")
    assert cfg.model == "resnet18"
    assert {k: getattr(cfg, k) for k in OURS_IMAGENET} == OURS_IMAGENET


def test_flags_override_the_paper_defaults():
    cfg = resolved("--model", "preresnet164", "--data", "cifar100", "--epochs", "30", "--budget", "20", "--lr", "0.05")
    assert (cfg.epochs, cfg.budget, cfg.lr, cfg.wd) == (30, 20, 0.05, 3e-4)


def test_compare_plans_the_four_methods_with_the_papers_schedule(tmp_path):
    args = build_parser().parse_args(["compare", "--model", "vgg16", "--data", "cifar10", "--seeds", "0", "--bits", "8"])
    runs = plan(config_from_args(args), bits=args.bits, seeds=args.seeds, out=str(tmp_path))
    assert [(r.config.recipe, r.config.bits) for r in runs] == [("fp32", None), ("paper", 8)]
    for r in runs:
        assert {k: getattr(r.config, k) for k in PAPER["vgg16"]} == PAPER["vgg16"]
    args = build_parser().parse_args(["compare", "--storage", "packed", "--packed-activations", "--seeds", "0"])
    runs = plan(config_from_args(args), bits=args.bits, seeds=args.seeds, out=str(tmp_path / "packed"))
    assert all(r.config.storage == "packed" and r.config.packed_activations for r in runs)  # every run takes them


# ----------------------------------------------------------------------------- end to end

# The pure-PyTorch reference quantizer needs ~0.6 us per element here, i.e. ~30 s per VGG-16
# step with 8-bit weights, gradients and momentum: too slow for the default suite. So the
# models run in low precision ("paper") when a fast CPU backend is registered, and in fp32
# (same code path, Quantizers as identities) otherwise; `-m slow` then runs "paper" too.
FAST_CPU = swalp.ops.cpu.load()  # the C++ kernels built and loaded
RECIPE = "paper" if FAST_CPU else "fp32"


@pytest.fixture(scope="module")
def tiny_cifar(tmp_path_factory):
    """CIFAR-10 in its extracted layout: 10 training images (two per batch file), 4 test images;
    with batch size 8 an epoch is two steps, the second a partial batch."""
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    sizes = dict(data_batch_1=2, data_batch_2=2, data_batch_3=2, data_batch_4=2, data_batch_5=2, test_batch=4)
    for name, n in sizes.items():
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": [int(v) for v in rng.integers(0, 10, n)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return root


def train_cli(data_dir, out, model, *extra, recipe=RECIPE):
    argv = ["train", "--data", "cifar10", "--data-dir", str(data_dir), "--model", model, "--recipe", recipe,
            "--epochs", "2", "--budget", "1", "--batch-size", "8", "--threads", "1", "--out", str(out), "--no-progress",
            *extra]
    assert main(argv) == 0


def check_run(out, model):
    config = json.loads((out / "config.json").read_text())
    assert (config["model"], config["data"], config["epochs"], config["budget"]) == (model, "cifar10", 2, 1)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2] and [m["n_averaged"] for m in metrics] == [1, 2]
    assert metrics[0]["lr"] == config["lr"]  # the paper's lr0 during the budget
    summary = json.loads((out / "summary.json").read_text())
    for key in ("sgd_lp", "swalp"):
        err = summary[key]["test_error"]
        assert err in (0.0, 25.0, 50.0, 75.0, 100.0)  # a count out of 4 test images
    assert (out / "checkpoint.pt").is_file() and (out / "sgd_budget.pt").is_file()
    average = torch.load(out / "average.pt", map_location="cpu")
    bn_means = [v for k, v in average.items() if k.endswith("running_mean")]
    if model == "vgg16":
        assert not bn_means  # no batch norm: nothing to refresh
    else:  # refreshed on the training data: no longer the initial zeros
        assert bn_means and all(torch.count_nonzero(v) > 0 for v in bn_means)


@pytest.mark.parametrize("model", ["vgg16", "preresnet164"])
def test_paper_network_trains_averages_and_evaluates_through_the_cli(tiny_cifar, tmp_path, model):
    train_cli(tiny_cifar, tmp_path, model)
    check_run(tmp_path, model)


def test_resnet18_through_the_cli_and_its_resume_is_bit_identical(tiny_cifar, tmp_path):
    train_cli(tiny_cifar, tmp_path / "whole", "resnet18")
    check_run(tmp_path / "whole", "resnet18")
    train_cli(tiny_cifar, tmp_path / "stopped", "resnet18", "--stop-after", "1")
    assert not (tmp_path / "stopped" / "summary.json").exists()
    assert main(["train", "--resume", str(tmp_path / "stopped"), "--no-progress"]) == 0
    whole = torch.load(tmp_path / "whole" / "average.pt")
    resumed = torch.load(tmp_path / "stopped" / "average.pt")
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert (tmp_path / "whole" / "metrics.jsonl").read_text() == (tmp_path / "stopped" / "metrics.jsonl").read_text()


@pytest.mark.slow
@pytest.mark.skipif(FAST_CPU, reason="the default suite runs these networks in the paper recipe already")
@pytest.mark.parametrize("model", ["vgg16", "preresnet164", "resnet18"])
def test_each_paper_network_in_low_precision_through_the_cli(tiny_cifar, tmp_path, model):
    train_cli(tiny_cifar, tmp_path, model, recipe="paper")
    check_run(tmp_path, model)


# ----------------------------------------------------------------------------- GPU path


def test_accel_helpers_are_no_ops_on_cpu_and_channels_last_keeps_the_values():
    from torch.utils.data import TensorDataset

    from swalp.data import loader_options
    from swalp.models.vgg import vgg16
    from swalp.training import accel

    ds = TensorDataset(torch.zeros(4, 3, 32, 32), torch.zeros(4, dtype=torch.long))
    assert accel.place_dataset(ds, torch.device("cpu")) is ds
    assert loader_options("cpu", num_workers=0) == dict(num_workers=0, pin_memory=False)
    assert loader_options("cuda", num_workers=2) == dict(num_workers=2, pin_memory=True, persistent_workers=True, prefetch_factor=4)
    with pytest.raises(ValueError, match="num_workers must be an integer >= 0, got -1"):
        loader_options("cpu", num_workers=-1)
    torch.manual_seed(0)
    model = vgg16(10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        net = accel.prepare_model(model, "cpu", channels_last=True)
        assert net is model and model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
        got = net(accel.prepare_batch(x, channels_last=True))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_gpu_smoke_without_a_gpu_exits_77(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: run benchmarks/gpu_smoke.py itself")
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_smoke.py"
    spec = importlib.util.spec_from_file_location("gpu_smoke", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([]) == 77
    assert "no CUDA device" in capsys.readouterr().out


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_data_and_augmentation_on_the_gpu():
    from torch.utils.data import TensorDataset

    from swalp.training import accel
    from swalp.data.cifar import CIFAR10, CifarAugment

    ds = accel.place_dataset(TensorDataset(torch.randn(16, 3, 32, 32), torch.arange(16)), torch.device("cuda"))
    assert ds.tensors[0].is_cuda
    x = ds.tensors[0][torch.tensor([3, 1])]  # a CPU index into a GPU tensor
    torch.manual_seed(0)
    y = CifarAugment(CIFAR10.mean, CIFAR10.std)(x)
    assert y.is_cuda and y.shape == x.shape


def test_resnet18_on_an_imagenet_tree_through_the_cli(tmp_path):
    """The file-based path (a DataLoader over decoded JPEGs rather than in-memory tensors)."""
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 1)):
        for cls in ("a", "b"):
            (tmp_path / "inet" / split / cls).mkdir(parents=True)
            for i in range(n):
                image = rng.integers(0, 256, (64 + 8 * i, 80, 3), dtype=np.uint8)
                Image.fromarray(image).save(tmp_path / "inet" / split / cls / f"{i}.JPEG")
    argv = ["train", "--data", "imagenet", "--data-dir", str(tmp_path / "inet"), "--epochs", "2", "--budget", "1",
            "--batch-size", "4", "--threads", "1", "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(argv) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["model"], config["lr"], config["wd"]) == ("resnet18", 0.1, 1e-4)  # imagenet's defaults but the flags
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["swalp"]["test_error"] in (0.0, 50.0, 100.0)  # 2 validation images
