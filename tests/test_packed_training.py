"""storage="packed" with packed weights and gradients: the same numbers as the simulated path.

swalp/optim/_storage.py and swalp/nn/weights.py: weights held packed on the parameters,
gradients packed as backward produces them, the step parameter by parameter.
"""

import copy

import pytest
import torch
from torch import nn

import swalp
from swalp.nn import is_packed, packed_state_dict, packed_weight, unpack_state_dict, unpacked


class Net(nn.Module):
    """Conv, batch norm, and a Linear used twice (tied through its own forward)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 6, 3)
        self.bn = nn.BatchNorm1d(6)
        self.fc = nn.Linear(6 * 6, 6 * 6)
        self.head = nn.Linear(6 * 6, 3)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x))).flatten(1)
        return self.head(self.fc(torch.relu(self.fc(h))))


def build(recipe, storage, kind="sgd"):
    torch.manual_seed(0)
    net = swalp.quantize_model(Net(), recipe)
    if kind == "sgd":
        inner = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    else:
        inner = torch.optim.AdamW(net.parameters(), lr=1e-3)
    return net, swalp.LowPrecisionOptimizer(inner, recipe, seed=11, storage=storage)


def batch(k):
    g = torch.Generator().manual_seed(100 + k)
    return torch.randn(8, 2, 8, generator=g), torch.randint(0, 3, (8,), generator=g)


def train(net, opt, steps, start=0):
    for k in range(start, start + steps):
        x, y = batch(k)
        torch.manual_seed(k)  # the Quantizers' rounding seeds (drawn from torch's generator)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
    return loss


def weights(net):
    with unpacked(net):
        return [p.detach().clone() for p in net.parameters()]


def moments(opt, net):
    out = {}
    for i, p in enumerate(net.parameters()):
        out.update({(i, k): v for k, v in opt.state[p].items() if torch.is_tensor(v) and v.shape == p.shape})
        out.update({(i, k): v.unpack(p.dtype) for k, v in opt.packed.get(p, {}).items()})
    return out


def same(xs, ys):
    return len(xs) == len(ys) and all(torch.equal(x, y) for x, y in zip(xs, ys))


@pytest.mark.parametrize("recipe, kind", [("paper", "sgd"), ("paper-big-block", "sgd"), ("mx", "sgd"), ("fp8", "sgd"),
                                          ("paper", "adamw")])
def test_packed_weights_gradients_and_state_give_the_simulated_numbers_bit_for_bit(recipe, kind):
    (a, sim), (b, packed) = build(recipe, "simulated", kind), build(recipe, "packed", kind)
    for k in range(4):
        la, lb = train(a, sim, 1, start=k), train(b, packed, 1, start=k)
        assert torch.equal(la, lb)
        assert same(weights(a), weights(b))
        ma, mb = moments(sim, a), moments(packed, b)
        assert ma.keys() == mb.keys() and all(torch.equal(ma[key], mb[key]) for key in ma)
    first = "momentum_buffer" if kind == "sgd" else "exp_avg"
    for p in b.parameters():  # everything held packed, no float copy of a weight, gradient or first moment
        assert is_packed(p) and p.untyped_storage().nbytes() == p.element_size()
        assert first in packed.packed[p] and first not in packed.state[p]
    x, y = batch(9)
    torch.manual_seed(9)
    packed.zero_grad()
    nn.functional.cross_entropy(b(x), y).backward()
    assert all(p.grad is None for p in b.parameters()) and len(packed.grads) == len(list(b.parameters()))
    torch.manual_seed(9)
    sim.zero_grad()
    nn.functional.cross_entropy(a(x), y).backward()
    sim.steps += 1  # the gradients, rounded as the next simulated step would round them
    sim._quantize_grads(0)
    sim.steps -= 1
    packed_grads = [packed.grads[p].unpack() for p in b.parameters()]
    assert same(packed_grads, [p.grad for p in a.parameters()])


def test_persistent_state_is_about_three_bytes_per_parameter():
    net, opt = build("paper", "packed")
    train(net, opt, 2)
    x, y = batch(5)
    nn.functional.cross_entropy(net(x), y).backward()  # gradients packed, waiting for the step
    n = sum(p.numel() for p in net.parameters())
    held = sum(packed_weight(p).nbytes + opt.grads[p].nbytes + opt.packed[p]["momentum_buffer"].nbytes
               for p in net.parameters())
    # One byte each for weight, gradient and momentum, and per role an exponent per row of each weight
    # (conv 6, fc 36, head 3), one for each 1-D tensor (three biases, the batch norm's weight and bias).
    assert held == 3 * (n + 6 + 36 + 3 + 5)  # 3.1 bytes per parameter for this small net
    assert sum(p.untyped_storage().nbytes() for p in net.parameters()) == 4 * len(list(net.parameters()))


def test_weights_are_float_only_inside_their_layer_and_saved_for_backward_packed():
    net, opt = build("paper", "packed")
    seen = {}

    def look(module, args):  # registered after quantize_model's hooks: runs inside the layer's forward
        seen[module] = bool(torch.isfinite(module.weight).all())

    for m in (net.conv, net.fc, net.head):
        m.register_forward_pre_hook(look)
    x, y = batch(0)
    loss = nn.functional.cross_entropy(net(x), y)
    assert all(seen.values()) and len(seen) == 3  # unpacked for each layer's own forward
    # Between forward and backward no layer holds a float weight; autograd kept references to the packed forms.
    assert all(p.untyped_storage().nbytes() == 4 for p in net.parameters())
    loss.backward()
    assert set(opt.grads) == set(net.parameters())
    with pytest.raises(RuntimeError, match="cannot be accumulated over several backward passes"):
        nn.functional.cross_entropy(net(x), y).backward()
    opt.zero_grad()
    nn.functional.cross_entropy(net(x), y).backward()  # after zero_grad: fine
    assert torch.isnan(net.fc.weight).all()  # outside a forward the placeholder is NaN, never a plausible number


def test_a_step_with_a_closure_matches_the_simulated_one():
    (a, sim), (b, packed) = build("paper", "simulated"), build("paper", "packed")
    for net, opt in ((a, sim), (b, packed)):
        for k in range(3):
            x, y = batch(k)
            torch.manual_seed(k)

            def closure(net=net, opt=opt, x=x, y=y):
                opt.zero_grad()
                loss = nn.functional.cross_entropy(net(x), y)
                loss.backward()
                return loss

            opt.step(closure)
    assert same(weights(a), weights(b))
    assert all(is_packed(p) for p in b.parameters())
    train(a, sim, 2, start=3)
    train(b, packed, 2, start=3)
    assert same(weights(a), weights(b))


def test_state_dicts_and_checkpoints_cross_storages():
    (a, sim), (b, packed) = build("paper", "simulated"), build("paper", "packed")
    train(a, sim, 2)
    train(b, packed, 2)
    assert same(list(a.state_dict().values()), list(b.state_dict().values()))  # floats, as any model gives
    small = packed_state_dict(b)
    assert isinstance(small["fc.weight"], dict) and small["fc.weight"]["codes"].dtype == torch.int8
    assert torch.equal(unpack_state_dict(small)["fc.weight"], a.state_dict()["fc.weight"])
    for model_state, opt_state in ((small, packed.state_dict()), (a.state_dict(), sim.state_dict())):
        for storage in ("simulated", "packed"):
            net, opt = build("paper", storage)
            net.load_state_dict(unpack_state_dict(copy.deepcopy(model_state)))
            opt.load_state_dict(copy.deepcopy(opt_state))
            assert all(is_packed(p) for p in net.parameters()) == (storage == "packed")
            train(net, opt, 2, start=2)
            ref_net, ref_opt = copy.deepcopy(a), copy.deepcopy(sim)
            ref_opt = swalp.LowPrecisionOptimizer(
                torch.optim.SGD(ref_net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4), "paper", seed=11)
            ref_opt.load_state_dict(copy.deepcopy(sim.state_dict()))
            train(ref_net, ref_opt, 2, start=2)
            assert same(weights(net), weights(ref_net))


def test_average_and_evaluation_of_a_packed_model():
    (a, sim), (b, packed) = build("paper", "simulated"), build("paper", "packed")
    avg_a, avg_b = swalp.WeightAverage(a, seed=1), swalp.WeightAverage(b, seed=1)
    assert not any(is_packed(p) for p in avg_b.module.parameters())
    for k in range(3):
        train(a, sim, 1, start=k)
        train(b, packed, 1, start=k)
        avg_a.update_parameters(a)
        avg_b.update_parameters(b)
    assert same(list(avg_a.parameters()), list(avg_b.parameters()))
    assert all(is_packed(p) for p in b.parameters())  # the average read them unpacked, and they are packed again
    a.eval(), b.eval()
    x, _ = batch(7)
    with torch.no_grad():
        outs = [(torch.manual_seed(7), net(x))[1] for net in (a, b)]
    assert torch.equal(*outs)


def test_a_model_not_converted_keeps_float_weights_but_packs_the_rest():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    opt = swalp.LowPrecisionOptimizer(torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9), "paper", seed=0,
                                      storage="packed")
    x = torch.randn(6, 5)
    net(x).square().mean().backward()
    assert not any(is_packed(p) for p in net.parameters()) and len(opt.grads) == 4
    opt.step()
    assert all(torch.isfinite(p).all() for p in net.parameters()) and len(opt.packed) == 4


@pytest.mark.parametrize("storage", ["simulated", "packed"])
def test_a_step_with_a_closure_is_closure_then_step(storage):
    """Trainers (Lightning) always pass a closure: with SGD it must change nothing."""
    results = []
    for use_closure in (False, True):
        torch.manual_seed(0)
        net = swalp.quantize_model(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)), "paper")
        opt = swalp.LowPrecisionOptimizer(torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9), seed=3,
                                          storage=storage)
        x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))

        def closure():
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x), y)
            loss.backward()
            return loss

        for _ in range(3):
            if use_closure:
                opt.step(closure)
            else:
                closure()
                opt.step()
        with unpacked(net):
            results.append([p.detach().clone() for p in net.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results))
