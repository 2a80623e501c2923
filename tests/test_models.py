"""The paper's networks: exact parameter counts, initialisation, and where the Quantizers sit."""

import math

import pytest
import torch
from torch import nn

import swalp
from swalp.nn import quantize_model
from swalp.models import MODELS, build_model, preresnet164, resnet18, vgg16
from swalp.recipes import Recipe

# Reference counts: the reference code's networks for 10 (1000) classes; 100 classes adds 90 x (fan-in + 1).
PARAMS = [
    ("vgg16", 10, (3, 32, 32), 15_245_130),
    ("vgg16", 100, (3, 32, 32), 15_245_130 + 90 * 513),
    ("preresnet164", 10, (3, 32, 32), 1_703_258),
    ("preresnet164", 100, (3, 32, 32), 1_703_258 + 90 * 257),
    ("resnet18", 1000, (3, 224, 224), 11_689_512),
    ("resnet18", 10, (3, 32, 32), 11_181_642),
]


# One torch thread (tests/conftest.py): big models on a busy 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def quantizer_names(model):
    return [name for name, m in model.named_modules() if isinstance(m, swalp.Quantizer)]


@pytest.mark.parametrize("name, classes, shape, expected", PARAMS)
def test_parameter_counts_are_exact(name, classes, shape, expected):
    assert n_params(build_model(name, classes, shape)) == expected


def test_quantizer_counts():
    assert len(quantizer_names(vgg16(10))) == 13 + 2
    assert len(quantizer_names(preresnet164(10))) == 1 + 54 * 6
    assert len(quantizer_names(resnet18())) == 1 + 8 * 4


def call_trace(model, x):
    """Qualified names of the leaf modules in the order the forward pass calls them."""
    names, hooks = [], []
    for name, m in model.named_modules():
        if not list(m.children()):
            hooks.append(m.register_forward_hook(lambda mod, inp, out, name=name: names.append(name)))
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return names


def test_vgg16_quantizes_after_every_conv_relu_and_hidden_fc_relu_only():
    model = vgg16(10)
    trace = call_trace(model, torch.randn(1, 3, 32, 32))
    kinds = {name: type(m).__name__ for name, m in model.named_modules()}
    quantized_after = [kinds[trace[i - 2]] for i, n in enumerate(trace) if kinds[n] == "Quantizer"]
    assert quantized_after == ["Conv2d"] * 13 + ["Linear"] * 2
    assert all(kinds[trace[i - 1]] == "ReLU" for i, n in enumerate(trace) if kinds[n] == "Quantizer")
    assert kinds[trace[0]] == "Conv2d" and trace[-1] == "classifier.8"  # input and logits left alone


def test_preresnet164_quantizer_places_match_the_reference():
    model = preresnet164(10)
    expected = ["conv1", "q_stem"]
    for stage in (1, 2, 3):
        for i in range(18):
            b = f"layer{stage}.{i}"
            for k in (1, 2, 3):
                expected += [f"{b}.bn{k}", f"{b}.relu", f"{b}.q{k}_in", f"{b}.conv{k}", f"{b}.q{k}_out"]
            if i == 0:  # the projection shortcut: a bare 1x1 conv, never quantized
                expected.append(f"{b}.downsample.0")
    expected += ["bn", "relu", "avgpool", "fc"]
    assert call_trace(model, torch.randn(2, 3, 8, 8)) == expected


def test_resnet18_quantizer_places():
    model = resnet18(10)
    expected = ["conv1", "q_stem", "bn1", "relu", "maxpool"]
    for stage in (1, 2, 3, 4):
        for i in range(2):
            b = f"layer{stage}.{i}"
            expected += [f"{b}.q1_in", f"{b}.conv1", f"{b}.q1_out", f"{b}.bn1", f"{b}.relu",
                         f"{b}.q2_in", f"{b}.conv2", f"{b}.q2_out", f"{b}.bn2"]
            if stage > 1 and i == 0:
                expected += [f"{b}.downsample.0", f"{b}.downsample.1"]
            expected.append(f"{b}.relu")
    expected += ["avgpool", "fc"]
    assert call_trace(model, torch.randn(2, 3, 32, 32)) == expected


def on_grid(x, step=0.25):
    return bool(torch.equal(x, torch.round(x / step) * step))


@pytest.mark.parametrize("name", ["vgg16", "preresnet164", "resnet18"])
def test_convs_inside_see_quantized_inputs_but_input_shortcuts_and_head_do_not(name):
    """With activations on a 0.25 grid (nearest rounding, so no randomness), every conv/linear
    input is on the grid except the network input, the shortcuts and the classifier of the ResNets."""
    torch.manual_seed(0)
    model = build_model(name, 10, (3, 32, 32))
    swalp.nn.configure_quantizers(model, Recipe(activation=swalp.FixedPoint(12, 2), rounding="nearest"))
    size = 8 if name == "preresnet164" else 32  # any size works but VGG's 32x32; smaller is faster
    seen = {}
    for n, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.register_forward_pre_hook(lambda mod, inp, n=n: seen.__setitem__(n, on_grid(inp[0])))
    with torch.no_grad():
        logits = model.eval()(torch.randn(2, 3, size, size))
    assert not on_grid(logits)
    off = sorted(n for n, ok in seen.items() if not ok)
    if name == "vgg16":
        assert off == ["features.0"]
    elif name == "preresnet164":  # a stage's first block sees the previous residual sum
        assert off == ["conv1", "fc", "layer2.0.downsample.0", "layer3.0.downsample.0"]
    else:  # block outputs relu(sum) are off the grid, so every shortcut conv and the fc see them
        assert off == ["conv1", "fc", "layer2.0.downsample.0", "layer3.0.downsample.0", "layer4.0.downsample.0"]
    assert sum(seen.values()) == len(seen) - len(off)


@pytest.mark.parametrize("name", ["vgg16", "preresnet164", "resnet18"])
def test_quantize_model_configures_the_models_own_quantizers_and_adds_none(name):
    model = build_model(name, 10, (3, 32, 32))
    before = quantizer_names(model)
    assert all(q.forward_format is None and q.backward_format is None for q in swalp.nn.quantizers(model))
    quantize_model(model, "paper")
    assert quantizer_names(model) == before
    expected = swalp.BlockFloat(8, block=swalp.PerTensor())
    assert all(q.forward_format == expected and q.backward_format == expected for q in swalp.nn.quantizers(model))


def test_vgg16_initialisation_follows_the_reference():
    torch.manual_seed(0)
    model = vgg16(10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and all(m.bias is not None for m in convs)
    for m in convs:
        assert torch.count_nonzero(m.bias) == 0
    # n = k*k*out_channels; 2.4M samples in the 512->512 convs put the sample std within 0.2 % of it.
    w = torch.cat([m.weight.flatten() for m in convs if m.in_channels == m.out_channels == 512])
    assert w.std().item() == pytest.approx(math.sqrt(2 / (9 * 512)), rel=0.01)
    assert abs(w.mean().item()) < 1e-4
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 512), (512, 512), (512, 10)]
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 2
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_output_shapes_and_gradients_flow_through_quantizers():
    torch.manual_seed(0)
    model = swalp.models.preresnet.PreResNet(100, depth=11)  # one block per stage keeps it fast
    quantize_model(model, "paper")
    x = torch.randn(2, 3, 8, 8)
    model(x).sum().backward()
    assert model(x).shape == (2, 100)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_builders_reject_inputs_they_cannot_take():
    with pytest.raises(ValueError, match=r"vgg16 needs 32x32 images.*\(1, 28, 28\)"):
        build_model("vgg16", 10, (1, 28, 28))
    with pytest.raises(ValueError, match="preresnet164 needs images"):
        build_model("preresnet164", 10, (40,))
    with pytest.raises(ValueError, match="depth must be 9n\\+2"):
        swalp.models.preresnet.PreResNet(10, depth=21)


def test_registry_names():
    assert {"vgg16", "preresnet164", "resnet18"} <= set(MODELS)
    assert swalp.models.default_model("cifar10") == "vgg16"
    assert swalp.models.default_model("imagenet") == "resnet18"
