"""torch.compile: quantized models compile with no graph break, and compiled runs equal eager
ones bit for bit, forward and backward (the Quantizers' seeds are drawn inside the graph)."""

import pytest
import torch
import torch._inductor.config
from torch import nn

import swalp
from swalp.models import build_model
from swalp.models.preresnet import PreResNet

NEAREST = swalp.Recipe(activation="bfp8", error="bfp8", rounding="nearest", name="nearest")

MODELS = {
    "mlp": (lambda: nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)), (4, 8)),
    "cnn1d": (lambda: build_model("cnn1d", 10, (1, 40)), (4, 1, 40)),
    "vgg16": (lambda: build_model("vgg16", 10, (3, 32, 32)), (2, 3, 32, 32)),
    "preresnet": (lambda: PreResNet(10, depth=11), (2, 3, 32, 32)),  # one block per stage: the same places
    "resnet18": (lambda: build_model("resnet18", 10, (3, 32, 32)), (2, 3, 32, 32)),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_no_graph_break(name, one_thread):
    make, shape = MODELS[name]
    model = swalp.quantize_model(make(), "paper")
    assert swalp.nn.quantizers(model)
    explained = torch._dynamo.explain(model)(torch.randn(*shape, requires_grad=True))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


@pytest.fixture
def torch_random():
    """Inductor draws random numbers its own way unless told to fall back to torch's: with
    it, the seeds of stochastic rounding are the eager run's."""
    with torch._inductor.config.patch(fallback_random=True):
        yield


@pytest.mark.slow
def test_no_graph_break_in_preresnet164(one_thread):
    """All 325 Quantizers of the paper's PreResNet-164 in one graph (12 s to trace here)."""
    model = swalp.quantize_model(build_model("preresnet164", 10, (3, 32, 32)), "paper")
    explained = torch._dynamo.explain(model)(torch.randn(2, 3, 32, 32, requires_grad=True))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)


def grads_after_one_pass(model, net, x, seed=0):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    x = x.clone().requires_grad_()
    y = net(x)
    y.square().sum().backward()
    return [y.detach(), x.grad, *(p.grad for p in model.parameters())]


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("recipe", ["paper", NEAREST], ids=["stochastic", "nearest"])
@pytest.mark.parametrize("name", ["mlp", "cnn1d"])
def test_compiled_equals_eager_bit_for_bit(name, recipe, backend, torch_random, one_thread):
    make, shape = MODELS[name]
    torch.manual_seed(0)
    model = swalp.quantize_model(make(), recipe)
    x = torch.randn(*shape)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    eager, traced = grads_after_one_pass(model, model, x), grads_after_one_pass(model, compiled, x)
    assert all(torch.equal(a, b) for a, b in zip(eager, traced))
    assert not torch.equal(traced[0], make()(x))  # the compiled model did quantize


def test_swalp_train_compile_equals_eager(tmp_path, torch_random, one_thread):
    from swalp.training import TrainConfig, train

    tiny = dict(data="digits", epochs=2, budget=1, limit_train=96, limit_test=64, batch_size=32, threads=1)
    eager = train(TrainConfig(**tiny, out=str(tmp_path / "eager")), progress=False, log=None)
    torch._dynamo.reset()
    compiled = train(TrainConfig(**tiny, compile=True, out=str(tmp_path / "compiled")), progress=False, log=None)
    drop = lambda s: {k: v for k, v in s.items() if k != "wall_s"}  # noqa: E731
    assert drop(compiled) == drop(eager)
    assert (tmp_path / "eager" / "metrics.jsonl").read_text() == (tmp_path / "compiled" / "metrics.jsonl").read_text()


@pytest.mark.parametrize("name", ["mlp", "cnn1d"])
def test_compiled_int8_equals_eager(name, torch_random, one_thread):
    """The int8 products are custom ops (their path depends on the data): one graph, and the
    compiled model takes the same paths to the same numbers."""
    make, shape = MODELS[name]
    torch.manual_seed(0)
    model = swalp.quantize_model(make(), "paper-big-block", compute="int8")
    swalp.LowPrecisionOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))  # weights onto their grid
    x = torch.randn(*shape)
    explained = torch._dynamo.explain(model)(x.clone().requires_grad_())
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    eager = grads_after_one_pass(model, model, x)
    counts = swalp.nn.compute_paths(model)
    assert sum(c["int8"] for layer in counts.values() for c in layer.values()) > 0
    traced = grads_after_one_pass(model, compiled, x)
    assert all(torch.equal(a, b) for a, b in zip(eager, traced))
    assert swalp.nn.compute_paths(model) == counts  # compiled calls are not counted


def test_stats_of_a_compiled_model_measure_the_optimizer_and_change_nothing(torch_random, one_thread):
    make, shape = MODELS["cnn1d"]
    x, runs = torch.randn(*shape), []
    for watch in (False, True):
        torch.manual_seed(0)
        model = swalp.quantize_model(make(), "paper")
        opt = swalp.LowPrecisionOptimizer(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), seed=0)
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True)
        stats = swalp.QuantizationStats(model, opt) if watch else None
        for _ in range(2):
            compiled(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
        runs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    roles = {role for r in stats.records for layer in r["layers"].values() for role in layer}
    assert roles == {"grad", "momentum", "acc"}  # Quantizers inside the graph are not measured
