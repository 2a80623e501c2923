import pytest
import torch
from torch import nn

import swalp
from swalp import BlockFloat, Quantizer, quantize_model
from swalp.nn import configure_quantizers, quantizers, set_quantizers


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 4, 3, padding=1)
        self.act = nn.GELU()

    def forward(self, x):
        return self.act(self.conv(x))


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(1, 4, 3, padding=1), nn.ReLU(), Block(), nn.Flatten(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3)
    )


def names(net):
    return [n for n, m in net.named_modules() if isinstance(m, Quantizer)]


def test_layer_placement_after_every_conv_linear_but_the_last():
    net = quantize_model(small_net(), "paper", placement="layer")
    assert names(net) == ["0.quantizer", "2.conv.quantizer", "4.quantizer"]
    assert not hasattr(net[6], "quantizer")  # the logits stay full precision
    q = net[0].quantizer
    assert (q.forward_format, q.backward_format) == (BlockFloat(8), BlockFloat(8))


def test_names_types_and_state_dict_keys_are_kept_and_a_pretrained_state_dict_loads():
    pretrained = small_net()
    with torch.no_grad():
        for p in pretrained.parameters():
            p.add_(1.0)
    net = quantize_model(small_net(), "paper")
    assert list(net.state_dict()) == list(pretrained.state_dict())
    assert [type(m) for m in net] == [type(m) for m in pretrained]
    assert isinstance(net[4], nn.Linear) and [n for n, _ in net.named_parameters()] == [
        n for n, _ in pretrained.named_parameters()]
    net.load_state_dict(pretrained.state_dict())  # strict: every key matches
    assert torch.equal(net[4].weight, pretrained[4].weight)


def test_a_deep_copy_uses_its_own_quantizers():
    import copy

    net = quantize_model(small_net(), "paper")
    twin = copy.deepcopy(net)
    set_quantizers(twin, False)
    x = torch.randn(2, 1, 8)
    assert torch.equal(twin(x), small_net()(x))  # the copy's hooks call the copy's (disabled) Quantizers
    assert all(q.enabled for q in quantizers(net))


def test_activation_placement_after_every_activation():
    net = quantize_model(small_net(), "paper", placement="activation")
    assert names(net) == ["1.quantizer", "2.act.quantizer", "5.quantizer"]


def test_filter_fn_sees_fqns_and_narrows():
    seen = []

    def keep(module, fqn):
        seen.append((type(module).__name__, fqn))
        return fqn != "2.conv"

    net = quantize_model(small_net(), "paper", filter_fn=keep)
    assert seen == [("Conv1d", "0"), ("Conv1d", "2.conv"), ("Linear", "4")]
    assert names(net) == ["0.quantizer", "4.quantizer"]
    net = quantize_model(small_net(), "paper", filter_fn=lambda m, fqn: isinstance(m, nn.ReLU), placement="activation")
    assert names(net) == ["1.quantizer", "5.quantizer"]


def test_converting_twice_adds_nothing():
    net = quantize_model(quantize_model(small_net(), "paper"), "fp8")
    assert len(names(net)) == 3
    assert net[0].quantizer.forward_format == swalp.FP8_E4M3  # the second recipe configured them


def test_model_with_its_own_quantizers_is_left_alone_and_configured():
    class Own(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Linear(2, 4)  # no Quantizer next to it: still not wrapped
            self.body = nn.Sequential(nn.Linear(4, 4), Quantizer(), nn.ReLU())
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.body(self.stem(x)))

    net = quantize_model(Own(), "paper")
    assert names(net) == ["body.1"] and not hasattr(net.stem, "quantizer")
    with pytest.raises(ValueError, match="places its own Quantizers; placement='activation' does not apply"):
        quantize_model(Own(), "paper", placement="activation")
    unchosen = quantize_model(Own(), "paper", filter_fn=lambda m, fqn: fqn != "body.1").body[1]
    assert (unchosen.forward_format, unchosen.backward_format) == (None, None)  # filter_fn chose it out
    q = net.body[1]
    assert (q.forward_format, q.backward_format) == (BlockFloat(8), BlockFloat(8))
    configure_quantizers(net, swalp.Recipe(activation="e4m3", rounding="nearest"))
    assert (q.forward_format, q.backward_format, q.rounding) == (swalp.FP8_E4M3, None, swalp.Rounding.NEAREST)


def test_outputs_on_the_grid_and_set_quantizers_gives_full_precision():
    ref = small_net()
    net = quantize_model(small_net(), swalp.Recipe(activation=BlockFloat(4), error=BlockFloat(4), rounding="nearest"))
    x = torch.randn(5, 1, 8)
    hidden = net[0](x)  # Conv1d then its Quantizer
    assert torch.equal(swalp.quantize(hidden, BlockFloat(4), "nearest"), hidden)
    assert not torch.equal(net(x), ref(x))
    set_quantizers(net, False)
    assert torch.equal(net(x), ref(x))
    set_quantizers(net, True)
    assert all(q.enabled for q in quantizers(net))
    with pytest.raises(ValueError, match="enabled"):
        set_quantizers(net, 1)


def test_errors_are_quantized_going_back():
    def conv_output_grad(recipe):
        net = quantize_model(small_net(), recipe)
        seen = {}  # the gradient w.r.t. the conv's raw output: what its Quantizer sends back
        def watch(module, inputs, output):
            inputs[0].register_hook(lambda g: seen.update(g=g))

        net[2].conv.quantizer.register_forward_hook(watch)
        net(torch.randn(5, 1, 8, generator=torch.Generator().manual_seed(1))).square().sum().backward()
        return seen["g"]

    fmt = BlockFloat(3)
    g = conv_output_grad(swalp.Recipe(error=fmt, rounding="nearest"))
    assert torch.equal(swalp.quantize(g, fmt, "nearest"), g) and g.count_nonzero() > 0
    g = conv_output_grad("fp32")  # the same check fails without the Quantizer
    assert not torch.equal(swalp.quantize(g, fmt, "nearest"), g)


def test_fp32_recipe_inserts_identities():
    ref, net = small_net(), quantize_model(small_net(), "fp32")
    assert len(names(net)) == 3
    x = torch.randn(2, 1, 8)
    assert torch.equal(net(x), ref(x))


def test_bad_placement_and_recipe():
    with pytest.raises(ValueError, match="placement 'conv'.*'layer', 'activation'"):
        quantize_model(small_net(), "paper", placement="conv")
    with pytest.raises(ValueError, match="unknown recipe"):
        quantize_model(small_net(), "int8")
    with pytest.raises(ValueError, match="filter_fn"):
        quantize_model(small_net(), "paper", filter_fn="0")


def test_full_precision_context_restores_each_quantizer():
    net = quantize_model(small_net(), "paper")
    net[4].quantizer.enabled = False  # a choice of the user's, kept
    ref, x = small_net(), torch.randn(3, 1, 8)
    with swalp.full_precision(net):
        assert torch.equal(net(x), ref(x))
    assert [q.enabled for q in quantizers(net)] == [True, True, False]


def test_the_model_remembers_its_recipe_for_the_optimizer():
    net = quantize_model(small_net(), "fixed8")
    opt = swalp.LowPrecisionOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), seed=0)
    assert opt.recipe.name == "fixed8"
    with pytest.raises(ValueError, match="converted with recipe 'fixed8'.*given 'paper'"):
        swalp.LowPrecisionOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "paper", seed=0)
    with pytest.raises(ValueError, match="no recipe"):
        swalp.LowPrecisionOptimizer(torch.optim.SGD(small_net().parameters(), lr=0.1), seed=0)


def test_a_bad_argument_leaves_the_model_untouched():
    net = small_net()
    with pytest.raises(ValueError, match="generator must be a torch.Generator or None, got int"):
        quantize_model(net, "paper", generator=5)
    assert not quantizers(net) and swalp.nn.model_recipe(net.parameters()) is None
