"""swalp.training.distributed: two CPU processes (gloo on 127.0.0.1) train data-parallel with SWALP intact.

One spawn of two ranks (module fixture) runs every multi-process training these tests check;
each rank saves what it holds at the end of each run, and the tests compare ranks, runs and a
single-process run. A last test starts the real command line through torchrun.
"""

import copy
import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp

from swalp.cli import main
from swalp.data import shard
from swalp.models import ModelSpec, model_defaults, register_model
from swalp.training import TrainConfig, distributed, fit, load_checkpoint, resolve, start, train

# digits, 149 training images, batch 32: steps of 32, 32, 32, 32 and 21 (split 11 + 10 on two ranks)
TINY = dict(data="digits", model="cnn", epochs=3, budget=2, limit_train=149, limit_test=100, batch_size=32, threads=1)
# fp32: two steps an epoch, of 32 and 5 images (3 + 2 on two ranks), to compare with one process
FP32 = dict(TINY, recipe="fp32", epochs=2, budget=1, limit_train=37)
LOOPBACK = {"MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_ranks(worker, world: int, root, timeout: float = 300.0) -> None:
    """``mp.spawn(worker, args=(world, port, root), nprocs=world)`` with a deadline. Each worker saves
    ``root/rank{r}.pt`` and then tears its process group down; once in a 4-rank run on 2 cores
    one rank, its file saved, never finished exiting (gloo's teardown), and ``join`` waited
    forever. So: past the deadline, ranks still alive are stopped, and the run fails only if a
    rank saved nothing."""
    context = mp.spawn(worker, args=(world, free_port(), str(root)), nprocs=world, join=False)
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1):  # raises if a rank failed
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            missing = [r for r in range(world) if not os.path.exists(f"{root}/rank{r}.pt")]
            if missing:
                pytest.fail(f"ranks {missing} of {world} saved nothing in {timeout:.0f} s")
            return


# ----------------------------------------------------------------------------- the two ranks


def _worker(rank: int, world: int, port: int, root: str) -> None:
    """One rank: every training run of this file; saves what this rank holds to rank{r}.pt."""
    os.environ.update(LOOPBACK, MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))

    def bn_net(num_classes, input_shape):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.BatchNorm1d(32),
                                   torch.nn.ReLU(), torch.nn.Linear(32, num_classes))

    register_model("bn-net", ModelSpec(bn_net, model_defaults("cnn", "digits")))
    quiet = dict(progress=False, log=None)
    result, writes = {}, []

    def run(config, resume=None, **kw):  # train through a Run, and keep what this rank holds
        r = start(config, resume=resume, log=None)
        out = fit(r, **quiet, **kw)
        writes.extend(str(p) for p in r.written)
        return out, {k: copy.deepcopy(getattr(r, k).state_dict()) for k in ("model", "optimizer", "average")}

    result["summary"], result["full"] = run(TrainConfig(**TINY, out=f"{root}/full"))
    result["packed_summary"], result["packed"] = run(TrainConfig(**TINY, storage="packed", out=f"{root}/packed"))
    result["stats_summary"], result["stats"] = run(TrainConfig(**TINY, stats_every=2, out=f"{root}/stats"))
    result["comm_summary"], result["comm"] = run(TrainConfig(**TINY, comm="bfp8", out=f"{root}/comm"))
    run(TrainConfig(**TINY, comm="bfp8", out=f"{root}/comm-part"), stop_after=1)
    _, result["comm_resumed"] = run(TrainConfig(), resume=f"{root}/comm-part")
    result["stopped"], _ = run(TrainConfig(**TINY, out=f"{root}/part"), stop_after=1)
    _, result["resumed"] = run(TrainConfig(), resume=f"{root}/part")
    run(TrainConfig(**FP32, out=f"{root}/fp32"))
    bn = TrainConfig(**{**TINY, "model": "bn-net", "epochs": 2, "budget": 1}, out=f"{root}/bn")
    result["bn_summary"], result["bn"] = run(bn)
    result["writes"] = writes
    torch.save(result, f"{root}/rank{rank}.pt")
    distributed.shutdown()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    root = tmp_path_factory.mktemp("two_ranks")
    spawn_ranks(_worker, 2, root)
    return root, [torch.load(root / f"rank{r}.pt", weights_only=False) for r in range(2)]


def assert_equal(a, b, where=""):
    """Bit-identical nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def drop_wall(summary):
    return {k: v for k, v in summary.items() if k != "wall_s"}


def test_ranks_hold_bit_identical_low_precision_state(ranks):
    """Same weights, accumulator, momentum, step count and average on both ranks, although
    each rank rounded its own activations and errors (its own torch generator)."""
    root, (r0, r1) = ranks
    assert r0["full"]["optimizer"]["swalp"]["steps"] == 3 * 5
    assert r0["full"]["optimizer"]["state"]  # momentum buffers exist and are compared
    assert_equal(r0["full"], r1["full"], "full")
    ckpt = load_checkpoint(root / "full" / "checkpoint.pt")
    assert_equal(ckpt["model"], r0["full"]["model"], "checkpoint")
    assert len(ckpt["rng_ranks"]) == 2
    assert torch.equal(ckpt["rng"]["torch"], ckpt["rng_ranks"][0]["torch"])
    assert not torch.equal(ckpt["rng_ranks"][0]["torch"], ckpt["rng_ranks"][1]["torch"])


def test_packed_optimizer_state_trains_the_same_on_every_rank(ranks):
    """storage="packed" under DDP: the model and the average are the simulated run's, bit for bit."""
    _, (r0, r1) = ranks
    for r in (r0, r1):
        assert_equal(r["packed"]["model"], r0["full"]["model"], "packed model")
        assert_equal(r["packed"]["average"], r0["full"]["average"], "packed average")
        assert r["packed"]["optimizer"]["swalp"]["packed"]  # the momentum was held packed
    assert drop_wall(r0["packed_summary"]) == drop_wall(r0["summary"])


def test_8_bit_gradient_all_reduce_trains_the_same_on_every_rank_and_resumes(ranks):
    """--comm bfp8: the ranks agree bit for bit, the run differs from the float32 all-reduce's
    (the gradients went through 8-bit codes) but learns as well, and a resume is bit-identical."""
    root, (r0, r1) = ranks
    assert_equal(r0["comm"], r1["comm"], "comm")
    assert any(not torch.equal(v, r0["full"]["model"][k]) for k, v in r0["comm"]["model"].items())
    for r in (r0, r1):
        assert_equal(r["comm_resumed"], r0["comm"], "comm resumed")
    assert (root / "comm-part" / "metrics.jsonl").read_text() == (root / "comm" / "metrics.jsonl").read_text()
    assert abs(r0["comm_summary"]["swalp"]["test_error"] - r0["summary"]["swalp"]["test_error"]) <= 10
    assert json.loads((root / "comm" / "config.json").read_text())["comm"] == "bfp8"


def test_batch_norm_statistics_are_rank_0s_everywhere(ranks):
    """Each rank normalises with its own batch statistics, but the running ones are rank 0's
    (broadcast by DDP and after each epoch): same state, same evaluations on both ranks."""
    _, (r0, r1) = ranks
    assert r0["bn"]["model"]["2.num_batches_tracked"] == 2 * 5
    assert_equal(r0["bn"], r1["bn"], "bn")
    assert drop_wall(r0["bn_summary"]) == drop_wall(r1["bn_summary"])


def test_stats_change_nothing_under_data_parallel_and_rank_0_writes_them(ranks):
    root, (r0, r1) = ranks
    assert_equal(r0["stats"], r0["full"], "stats")
    assert_equal(r1["stats"], r1["full"], "stats")
    records = [json.loads(line) for line in (root / "stats" / "stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 3, 5, 7, 9, 11, 13, 15] and r0["stats_summary"]["stats"]["problems"] == []
    assert {"stats.jsonl"} == {os.path.basename(p) for p in r0["writes"] if "/stats/" in p} - {
        "config.json", "metrics.jsonl", "checkpoint.pt", "sgd_budget.pt", "average.pt", "summary.json"}


def test_only_rank_0_writes_and_every_rank_returns_the_summary(ranks):
    root, (r0, r1) = ranks
    assert r1["writes"] == []
    names = {os.path.basename(p) for p in r0["writes"] if "/full/" in p}
    assert names == {"config.json", "metrics.jsonl", "checkpoint.pt", "sgd_budget.pt", "average.pt", "summary.json"}
    assert drop_wall(r0["summary"]) == drop_wall(r1["summary"])
    assert drop_wall(json.loads((root / "full" / "summary.json").read_text())) == drop_wall(r0["summary"])
    metrics = [json.loads(line) for line in (root / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3] and metrics[-1]["n_averaged"] == 2
    for m in metrics:  # errors counted over all 149 images, both ranks' parts
        wrong = m["train_error"] * 149 / 100
        assert abs(wrong - round(wrong)) < 1e-9


def test_resume_is_bit_identical_on_every_rank(ranks):
    root, (r0, r1) = ranks
    assert r0["stopped"] == r1["stopped"] == {"stopped_after": 1}
    for r in (r0, r1):
        assert_equal(r["resumed"], r0["full"], "resumed")
    assert (root / "part" / "metrics.jsonl").read_text() == (root / "full" / "metrics.jsonl").read_text()


def test_global_batch_matches_one_process(ranks, tmp_path):
    """fp32, no dropout: two ranks with 16 (and 3 + 2) images each take the steps of one process
    with 32 (and 5), up to float rounding; the uneven last batch is weighted by its parts' sizes."""
    root, _ = ranks
    train(TrainConfig(**FP32, out=str(tmp_path / "one")), progress=False, log=None)
    one, two = (load_checkpoint(p / "checkpoint.pt") for p in (tmp_path / "one", root / "fp32"))
    assert one["step"] == two["step"] == 4
    budget = torch.load(tmp_path / "one" / "sgd_budget.pt")
    for k, v in one["model"].items():
        torch.testing.assert_close(two["model"][k], v, rtol=0, atol=1e-6)
        assert (v - budget[k]).abs().max() > 1e-4  # the weights did move in epoch 2
    for a, b in zip(one["metrics"], two["metrics"]):
        assert a["train_error"] == b["train_error"] and a["test_error"] == b["test_error"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6)


# ----------------------------------------------------------------------------- one process


def test_shard_splits_every_batch_into_disjoint_parts():
    assert shard(torch.arange(10), 4, 0, 2).tolist() == [0, 1, 4, 5, 8]
    assert shard(torch.arange(10), 4, 1, 2).tolist() == [2, 3, 6, 7, 9]
    order = torch.randperm(149, generator=torch.Generator().manual_seed(0))
    parts = [shard(order, 32, r, 4).split(8) for r in range(4)]
    for i, batch in enumerate(order.split(32)):  # the ranks' i-th pieces make batch i
        assert torch.cat([p[i] for p in parts]).tolist() == batch.tolist()
    with pytest.raises(ValueError, match="batch_size divisible by world_size.*batch_size 30"):
        shard(order, 30, 0, 4)


def test_batch_size_not_divisible_by_the_processes_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"--batch-size 33 is not divisible by the 2 processes.*accepted: a multiple of 2"):
        resolve(TrainConfig(**{**TINY, "batch_size": 33}))
    with pytest.raises(ValueError, match=r"last batch of each epoch has 1 example\(s\) \(33 training examples, "
                                         r"batch size 32\), fewer than the 2 processes"):
        distributed.check_batch_size(32, 33)
    assert main(["train", "--data", "digits", "--batch-size", "9", "--out", str(tmp_path / "r")]) == 2
    assert "--batch-size 9 is not divisible by the 2 processes" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_one_process_is_untouched(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert (distributed.world_size(), distributed.rank(), distributed.is_main(), distributed.active()) == (1, 0, True, False)
    net = torch.nn.Linear(2, 2)
    assert distributed.wrap(net, torch.device("cpu")) is net and distributed.rng_states() == {}
    x = torch.arange(5.0)
    got = distributed.batches(torch.utils.data.TensorDataset(x, x), torch.arange(5), 2, "cpu")
    assert [(a.tolist(), w) for a, _, w in got] == [([0.0, 1.0], 1), ([2.0, 3.0], 1), ([4.0], 1)]


# ----------------------------------------------------------------------------- the command line


def test_torchrun_command_line(tmp_path):
    """`torchrun --nproc_per_node 2 -m swalp train`: one line per epoch (rank 0 prints), the files."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(LOOPBACK, OMP_NUM_THREADS="1")
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), "-m", "swalp", "train", "--no-progress", "--out", str(tmp_path / "r"),
            *[f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("test err") == 3 and done.stdout.count("SGD iterate at the budget") == 1
    assert {p.name for p in (tmp_path / "r").iterdir()} == {
        "config.json", "metrics.jsonl", "summary.json", "checkpoint.pt", "sgd_budget.pt", "average.pt"}
    assert len(load_checkpoint(tmp_path / "r" / "checkpoint.pt")["rng_ranks"]) == 2


def _saves_then_hangs(rank: int, world: int, port: int, root: str) -> None:
    torch.save({"rank": rank}, f"{root}/rank{rank}.pt")
    if rank == 1:
        time.sleep(600)  # as a rank stuck in its teardown


def _hangs_unsaved(rank: int, world: int, port: int, root: str) -> None:
    if rank == 0:
        torch.save({"rank": rank}, f"{root}/rank{rank}.pt")
    else:
        time.sleep(600)


def test_spawned_ranks_have_a_deadline(tmp_path):
    start = time.monotonic()
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    spawn_ranks(_saves_then_hangs, 2, tmp_path / "a", timeout=3)  # every rank saved: the straggler is stopped
    with pytest.raises(pytest.fail.Exception, match=r"ranks \[1\] of 2 saved nothing in 3 s"):
        spawn_ranks(_hangs_unsaved, 2, tmp_path / "b", timeout=3)
    assert time.monotonic() - start < 60
