"""swalp.train: outputs, resume bit-identity, bad input, divergence. Tiny runs on digits."""

import dataclasses
import json

import pytest
import torch

from swalp.training.checkpoint import load_checkpoint, save_checkpoint
from swalp.cli import main
from swalp.training import Diverged, TrainConfig, resolve, train

# 160 training images, batch 32: 5 steps per epoch; about a tenth of a second an epoch.
TINY = dict(data="digits", model="cnn", epochs=4, budget=2, limit_train=160, limit_test=100, batch_size=32)


def tiny(tmp_path, name="run", **kw) -> TrainConfig:
    return TrainConfig(**{**TINY, "out": str(tmp_path / name), **kw})


def run(cfg, **kw):
    return train(cfg, progress=False, log=None, **kw)


def read_metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_outputs_have_the_documented_keys(tmp_path):
    s = run(tiny(tmp_path, bits=6))
    out = tmp_path / "run"
    assert {p.name for p in out.iterdir()} >= {"config.json", "metrics.jsonl", "summary.json", "checkpoint.pt",
                                                "sgd_budget.pt", "average.pt"}
    config = json.loads((out / "config.json").read_text())
    assert TrainConfig(**config) == resolve(tiny(tmp_path, bits=6))  # resolved: lr etc. filled in
    assert config["lr"] == 0.05 and config["bits"] == 6
    m = read_metrics(out)
    assert [r["epoch"] for r in m] == [1, 2, 3, 4]
    assert "avg_test_error" not in m[0] and [r["n_averaged"] for r in m[1:]] == [1, 2, 3]  # from the end of epoch B
    assert json.loads((out / "summary.json").read_text()) == s
    assert s["sgd_lp"] == {"test_error": m[1]["test_error"], "epoch": 2}
    assert s["swalp"] == {"test_error": m[3]["avg_test_error"], "epoch": 4, "n_averaged": 3}
    assert s["sgd_lp"] == s["sgd"] and s["swalp"] == s["average"] and "sgd_fp" not in s
    for v in (s["sgd_lp"]["test_error"], s["swalp"]["test_error"]):
        assert 0 <= v <= 100 and v * 100 == int(v * 100)  # a percentage of 100 test images
    assert torch.load(out / "average.pt").keys() == torch.load(out / "sgd_budget.pt").keys()


def test_fp32_summary_has_fp_names_and_step_averaging(tmp_path):
    s = run(tiny(tmp_path, recipe="fp32", avg_unit="step", avg_every=2))
    assert s["sgd_fp"] == s["sgd_lp"] and s["swa_fp"] == s["swalp"] and s["full_precision"]
    # 5 steps per epoch, averaging at steps 10, 12, ..., 20: six iterates
    assert s["swalp"]["n_averaged"] == 6


def test_average_is_the_mean_of_epoch_end_iterates(tmp_path):
    """With c = 1 epoch the average is the plain mean of the iterates saved at epochs 2, 3, 4."""
    iterates = []
    for stop in (2, 3):
        run(tiny(tmp_path, name=f"s{stop}", recipe="fp32"), stop_after=stop)
        iterates.append(load_checkpoint(tmp_path / f"s{stop}" / "checkpoint.pt")["model"])
    run(tiny(tmp_path, name="full", recipe="fp32"))
    iterates.append(load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"])
    avg = torch.load(tmp_path / "full" / "average.pt")
    for k, v in avg.items():
        torch.testing.assert_close(v, sum(it[k] for it in iterates) / 3, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("stop", [1, 3])
def test_resume_is_bit_identical(tmp_path, stop):
    cfg = tiny(tmp_path, name="full", bits=6)
    full = run(cfg)
    part = dataclasses.replace(cfg, out=str(tmp_path / "part"))
    assert run(part, stop_after=stop) == {"stopped_after": stop}
    assert len(read_metrics(tmp_path / "part")) == stop
    resumed = run(TrainConfig(), resume=str(tmp_path / "part"))
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    for key in ("model", "average"):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            x, y = a[key][k], b[key][k]
            assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y, (key, k)
    assert a["optimizer"]["swalp"]["steps"] == b["optimizer"]["swalp"]["steps"]
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert read_metrics(tmp_path / "full") == read_metrics(tmp_path / "part")
    drop = lambda s: {k: v for k, v in s.items() if k != "wall_s"}  # noqa: E731
    assert drop(full) == drop(resumed)


def test_resume_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*checkpoint.pt"):
        run(TrainConfig(), resume=str(tmp_path / "nothing"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "checkpoint.pt").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="corrupt or not a swalp training checkpoint"):
        run(TrainConfig(), resume=str(bad))
    torch.save({"state_dict": {}}, bad / "checkpoint.pt")  # a foreign torch file
    with pytest.raises(ValueError, match="not a swalp training checkpoint"):
        run(TrainConfig(), resume=str(bad))
    save_checkpoint(bad / "checkpoint.pt", {"config": {"nonsense": 1}})
    with pytest.raises(ValueError, match="incompatible configuration"):
        run(TrainConfig(), resume=str(bad))
    torch.save({"kind": "swalp-train-checkpoint", "version": 1}, bad / "checkpoint.pt")
    with pytest.raises(ValueError, match="has version 1; this swalp reads versions 2, 3"):
        run(TrainConfig(), resume=str(bad))


def test_truncated_checkpoint_is_reported(tmp_path):
    run(tiny(tmp_path, epochs=3), stop_after=1)
    path = tmp_path / "run" / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(path)


@pytest.mark.parametrize("change,message", [
    (dict(recipe="fp64"), r"unknown recipe 'fp64'; accepted: fp32, paper"),
    (dict(model="resnet9000"), r"unknown model 'resnet9000'; accepted: .*'cnn1d'"),
    (dict(data="cifar1000"), r"unknown data set 'cifar1000'; accepted: .*'digits'"),
    (dict(bits=1), r"--bits must be an integer >= 2 .*got 1"),
    (dict(budget=4), r"--budget must be an integer in \[1, epochs\) = \[1, 4\).*got 4"),
    (dict(budget=9), r"--budget must be .*got 9"),
    (dict(lr=0.0), r"--lr must be a finite number > 0, got 0.0"),
    (dict(avg_unit="week"), r"unknown --avg-unit 'week'; accepted: 'epoch', 'step'"),
    (dict(batch_size=0), r"--batch-size must be an integer >= 1, got 0"),
    (dict(device="tpu"), r"unknown --device 'tpu'"),
])
def test_bad_input_fails_before_training(tmp_path, change, message):
    cfg = tiny(tmp_path, **change)
    with pytest.raises(ValueError, match=message):
        run(cfg)
    assert not (tmp_path / "run").exists()  # nothing was written


def test_out_that_is_a_file(tmp_path):
    (tmp_path / "run").write_text("I am a file")
    with pytest.raises(ValueError, match=r"--out '.*run' is a file; it must be a folder"):
        run(tiny(tmp_path))


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    # Epoch 1 is sane; from epoch 2 on the rate explodes and the loss overflows.
    cfg = tiny(tmp_path, recipe="fp32", epochs=3, budget=1, lr=0.01, swa_lr=1e30)
    with pytest.raises(Diverged, match=r"loss is (nan|inf) at step ([6-9]|10) \(epoch 2\).*last good checkpoint \(epoch 1\)"):
        run(cfg)
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert len(read_metrics(tmp_path / "run")) == 1


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1})

    def crash(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of the write

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left behind


def test_batchnorm_statistics_of_the_average_are_recomputed_with_the_transform(tmp_path, monkeypatch):
    """BN on the raw input: after update_bn its running mean is the mean of the (transformed)
    training inputs, whatever the iterates' statistics were."""
    from swalp import data as data_mod
    from swalp import models as models_mod

    def shifted_digits(data_dir=None, download=False, seed=0):
        b = data_mod.load_data("digits")
        b.train_transform = lambda x: x + 1.0  # augmentation stand-in: applied to training batches only
        return b

    def bn_net(num_classes, input_shape):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.BatchNorm1d(64), torch.nn.Linear(64, num_classes))

    monkeypatch.setitem(data_mod.DATASETS, "digits-shifted", shifted_digits)
    monkeypatch.setitem(models_mod.MODELS, "bn-net", models_mod.ModelSpec(bn_net, models_mod.model_defaults("cnn", "digits")))
    s = run(tiny(tmp_path, data="digits-shifted", model="bn-net"))
    avg = torch.load(tmp_path / "run" / "average.pt")
    x = data_mod.load_data("digits").train.tensors[0][:160].flatten(1) + 1.0
    torch.testing.assert_close(avg["1.running_mean"], x.mean(0), rtol=1e-5, atol=1e-5)
    # the summary's error is the saved average's, with these statistics, on the (untransformed) test set
    net = bn_net(10, (1, 8, 8))
    net.load_state_dict(avg)
    x_test, y_test = (t[:100] for t in data_mod.load_data("digits").test.tensors)
    assert s["swalp"]["test_error"] == 100.0 * (net.eval()(x_test).argmax(1) != y_test).sum().item() / 100


def test_the_average_can_live_on_another_device(tmp_path):
    """--avg-device: where the average's memory is; the run's numbers do not change (here both
    are the CPU: what is checked is the wiring and the identity of the results)."""
    base = run(tiny(tmp_path, "base"))
    moved = run(tiny(tmp_path, "moved", avg_device="cpu"))
    assert {k: v for k, v in moved.items() if k != "wall_s"} == {k: v for k, v in base.items() if k != "wall_s"}
    assert json.loads((tmp_path / "moved" / "config.json").read_text())["avg_device"] == "cpu"
    with pytest.raises(ValueError, match="unknown --avg-device 'gpu7'"):
        resolve(tiny(tmp_path, avg_device="gpu7"))


def test_packed_storage_gives_the_same_run_and_resumes_across_storages(tmp_path):
    sim = run(tiny(tmp_path, "sim"))
    packed = run(tiny(tmp_path, "packed", storage="packed"))
    drop = lambda s: {k: v for k, v in s.items() if k != "wall_s"}  # noqa: E731
    assert drop(packed) == drop(sim)
    assert read_metrics(tmp_path / "sim") == read_metrics(tmp_path / "packed")
    ckpt = load_checkpoint(tmp_path / "packed" / "checkpoint.pt")
    assert ckpt["optimizer"]["swalp"]["packed"]  # the momentum is in the checkpoint packed, and the weights:
    weights = {k: v for k, v in ckpt["model"].items() if isinstance(v, dict)}
    assert weights and all(v["codes"].dtype == torch.int8 for v in weights.values())
    floats = load_checkpoint(tmp_path / "sim" / "checkpoint.pt")["model"]
    assert set(weights) == {k for k in floats if k.endswith(("weight", "bias"))}
    packed_bytes = sum(v["codes"].nbytes + v["exponents"].nbytes for v in weights.values())
    assert packed_bytes < 0.3 * sum(floats[k].nbytes for k in weights)
    run(tiny(tmp_path, "stopped", storage="packed"), stop_after=2)
    train(TrainConfig(), resume=str(tmp_path / "stopped"), progress=False, log=None)
    assert read_metrics(tmp_path / "stopped") == read_metrics(tmp_path / "sim")
    with pytest.raises(ValueError, match="unknown --storage 'ram'"):
        resolve(tiny(tmp_path, storage="ram"))
    with pytest.raises(ValueError, match="use one of --storage packed and --compile"):
        resolve(tiny(tmp_path, storage="packed", compile=True))


def test_a_run_that_cannot_start_leaves_the_earlier_run_in_its_folder(tmp_path):
    run(tiny(tmp_path))
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    with pytest.raises(FileNotFoundError, match="cifar10"):  # even when told to overwrite
        run(tiny(tmp_path, data="cifar10", model="vgg16", data_dir=str(tmp_path / "no-cifar-here")), overwrite=True)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before  # nothing deleted
    assert not (tmp_path / "no-cifar-here").exists()


def test_a_folder_that_holds_a_run_is_never_replaced_unasked(tmp_path, capsys):
    first = run(tiny(tmp_path))
    ckpt = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    with pytest.raises(ValueError, match="holds a run \\(checkpoint.pt, summary.json.*--resume .* continues it, "
                                         "--overwrite replaces it, or give another --out"):
        run(tiny(tmp_path, seed=5))
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == ckpt  # untouched
    out = str(tmp_path / "run")
    assert main(["train", "--data", "digits", "--model", "cnn", "--epochs", "3", "--budget", "2", "--out", out,
                 "--no-progress"]) == 2
    assert "--overwrite replaces it" in capsys.readouterr().err
    again = run(tiny(tmp_path), overwrite=True)
    drop = lambda s: {k: v for k, v in s.items() if k != "wall_s"}  # noqa: E731
    assert drop(again) == drop(first)


def test_comm_on_one_process_says_it_does_nothing_and_changes_nothing(tmp_path):
    lines = []
    comm = train(tiny(tmp_path, "comm", comm="bfp8"), progress=False, log=lines.append)
    assert any("--comm bfp8 applies between processes" in line for line in lines)
    plain = run(tiny(tmp_path, "plain"))
    drop = lambda s: {k: v for k, v in s.items() if k != "wall_s"}  # noqa: E731
    assert drop(comm) == drop(plain)
    with pytest.raises(ValueError, match="unknown --comm 'int4'; accepted: 'fp32', 'bfp8'"):
        resolve(tiny(tmp_path, comm="int4"))


def test_compute_int8_lists_its_products_and_keeps_the_numbers(tmp_path):
    lines = []
    int8 = train(tiny(tmp_path, "int8", compute="int8"), progress=False, log=lines.append)
    plain = run(tiny(tmp_path, "plain"))
    assert any(line.startswith("int8 products so far: forward ") for line in lines)
    paths = int8.pop("compute_paths")
    assert sum(c["int8"] for layer in paths.values() for c in layer.values()) > 0
    drop = lambda s: {k: v for k, v in s.items() if k != "wall_s"}  # noqa: E731
    assert drop(int8) == drop(plain)  # the products are exact; on this small model the float ones are too
    with pytest.raises(ValueError, match="unknown --compute 'int4'; accepted: 'float', 'int8'"):
        resolve(tiny(tmp_path, compute="int4"))
