import copy
import io

import pytest
import torch
from torch import nn

import swalp
from swalp import BlockFloat, LowPrecisionOptimizer, PerAxis, Recipe, get_recipe, quantize, quantize_model
from swalp.ops._reference import block_absmax, floor_log2
from swalp._rng import derive_seed
from swalp.optim.optimizer import _ACC, _GRAD, _INIT, _STATE
from swalp.recipes import param_format
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

LR, MOM, WD = 0.1, 0.9, 5e-4


def data(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)


def net_and_opt(recipe="paper", seed=7, make=None):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3))
    inner = (make or (lambda ps: torch.optim.SGD(ps, lr=LR, momentum=MOM, weight_decay=WD)))(net.parameters())
    return net, LowPrecisionOptimizer(inner, recipe, seed=seed)


def train(net, opt, steps, start=0):
    for k in range(start, start + steps):
        x, y = data(seed=k)
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()


def on_grid(x, fmt):
    """x is representable in BlockFloat ``fmt``: wl-bit integers times 2^(e - (wl - 2)),
    where e is floor(log2 max|block|) or one less (a value rounded up to -2^e, which
    re-quantizing would move to a coarser grid)."""
    fmt = param_format(fmt, x)
    e = floor_log2(block_absmax(x, fmt.block).clamp(min=1e-30))
    ok = torch.zeros_like(x, dtype=torch.bool)
    for shift in (fmt.wl - 2 - e, fmt.wl - 1 - e):
        q = x * torch.pow(2.0, shift.float())
        ok |= (q == q.round()) & (q >= fmt.qmin) & (q <= fmt.qmax)
    return bool(ok.all())


def test_step_equals_the_hand_written_paper_update():
    r = get_recipe("paper")
    torch.manual_seed(0)
    params0 = [p.detach().clone() for p in nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3)).parameters()]
    net, opt = net_and_opt()
    S = 7

    def Q(x, fmt, step, i, role, sub=0):
        return quantize(x, param_format(fmt, x), "stochastic", derive_seed(S, step, i, role, sub))

    a = [Q(p, r.acc, 0, i, _INIT) for i, p in enumerate(params0)]  # the weights are quantized at construction
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), a))
    m = [None] * len(a)
    for step in (1, 2, 3):
        x, y = data(seed=step)
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        grads = [p.grad.clone() for p in net.parameters()]
        opt.step()
        for i, g in enumerate(grads):
            g = Q(g, r.grad, step, i, _GRAD)
            d = g.add(a[i], alpha=WD)
            m[i] = d if m[i] is None else m[i].mul(MOM).add(d)  # m = 0.9 m + g + wd a
            a[i] = Q(a[i].add(m[i], alpha=-LR), r.acc, step, i, _ACC)  # a = Q_ACC(a - lr m); w = a
            m[i] = Q(m[i], r.momentum, step, i, _STATE)  # m = Q(m)
        for i, p in enumerate(net.parameters()):
            assert torch.equal(p, a[i]), (step, i)
            assert torch.equal(opt.state[p]["momentum_buffer"], m[i]), (step, i)


def test_weights_and_momentum_lie_on_the_grid():
    net, opt = net_and_opt()
    train(net, opt, 3)
    fmt = BlockFloat(8, block=PerAxis(0))
    for p in net.parameters():
        assert on_grid(p, fmt) and on_grid(opt.state[p]["momentum_buffer"], fmt)
        assert not on_grid(p, BlockFloat(4, block=PerAxis(0)))  # a check that can fail
    assert opt.acc == {}  # acc == weight: no full-precision master copy


def test_separate_accumulator_in_state():
    recipe = Recipe(weight=BlockFloat(4, block=PerAxis(0)), grad=BlockFloat(8), acc=None, name="fp32-acc")
    net, opt = net_and_opt(recipe)
    train(net, opt, 2)
    for p in net.parameters():
        a = opt.acc[p]
        assert on_grid(p, recipe.weight) and not torch.equal(a, p)
        assert (a - p).abs().max() > 0
    assert set(opt.state_dict()["swalp"]["acc"]) == {0, 1, 2, 3}


def test_params_without_grads_are_skipped_and_closure_works():
    net, opt = net_and_opt()
    net[0].weight.requires_grad_(False)
    frozen = net[0].weight.detach().clone()
    x, y = data()
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and len(calls) == 1
    assert torch.equal(net[0].weight, frozen) and net[0].weight not in opt.state
    assert on_grid(net[2].weight.grad, BlockFloat(8, block=PerAxis(0)))  # the closure's grads were quantized


def test_seed_none_repeats_with_manual_seed():
    def run():
        net, opt = net_and_opt(seed=None)
        train(net, opt, 2)
        return [p.clone() for p in net.parameters()]

    assert all(torch.equal(a, b) for a, b in zip(run(), run()))


ACC8 = Recipe(weight=BlockFloat(6), acc=BlockFloat(8), momentum="e5m2", name="acc8")


@pytest.mark.parametrize("recipe", ["paper", ACC8])
def test_state_dict_round_trip_then_identical_training(recipe):
    net, opt = net_and_opt(recipe)
    quantize_model(net, recipe)
    train(net, opt, 3)
    assert len(opt.acc) == (4 if recipe is ACC8 else 0)
    buf = io.BytesIO()
    torch.save({"model": net.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf)  # weights_only: the state holds plain ints, dicts and tensors
    model_sd, opt_sd = saved["model"], saved["opt"]
    torch.manual_seed(123)  # the activation Quantizers draw from the global generator
    train(net, opt, 3, start=3)

    net2, opt2 = net_and_opt(recipe, seed=99)
    quantize_model(net2, recipe)
    net2.load_state_dict(model_sd)
    opt2.load_state_dict(opt_sd)
    assert opt2.seed == 7 and opt2.steps == 3
    sd2 = opt2.state_dict()
    for k, v in opt_sd["state"].items():
        assert torch.equal(sd2["state"][k]["momentum_buffer"], v["momentum_buffer"])
    torch.manual_seed(123)
    train(net2, opt2, 3, start=3)
    for p, q in zip(net.parameters(), net2.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(net.parameters(), net2.parameters()):
        assert p not in opt.acc or torch.equal(opt.acc[p], opt2.acc[q])


def test_adamw_works_and_keeps_the_second_moment_in_full_precision():
    def adamw(ps):
        return torch.optim.AdamW(ps, lr=0.02, weight_decay=0.01)

    net, opt = net_and_opt("paper", make=adamw)
    x, _ = data(64)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses
    fmt = BlockFloat(8, block=PerAxis(0))
    w = net[0].weight
    assert on_grid(w, fmt) and on_grid(opt.state[w]["exp_avg"], fmt)
    assert not on_grid(opt.state[w]["exp_avg_sq"], fmt)  # full precision (see swalp.optim)
    assert opt.state_format("exp_avg_sq") is None

    net, opt = net_and_opt("paper", make=adamw)
    opt.state_formats["exp_avg_sq"] = swalp.BFLOAT16
    train(net, opt, 2)
    v = opt.state[net[0].weight]["exp_avg_sq"]
    assert torch.equal(v.bfloat16().float(), v)

    scalar = nn.Parameter(torch.tensor(0.3))  # its shape is the step counter's
    coarse = Recipe(momentum=BlockFloat(2), name="coarse")  # would turn a step count of 3 into 2
    opt = LowPrecisionOptimizer(torch.optim.AdamW([scalar], lr=0.01), coarse, seed=0)
    for _ in range(3):
        scalar.grad = torch.tensor(0.123456)
        opt.step()
    assert opt.state[scalar]["step"].item() == 3.0


def test_add_param_group_deepcopy_and_torch_schedulers():
    net, opt = net_and_opt()
    extra = nn.Parameter(torch.tensor([[1.0, 0.3], [100.0, 0.3]]))
    opt.add_param_group({"params": extra, "lr": 0.01})
    assert on_grid(extra, BlockFloat(8, block=PerAxis(0))) and extra[1, 1] == 0.0
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)  # needs isinstance(opt, Optimizer)
    twin = copy.deepcopy((net, opt))
    train(net, opt, 1)
    sched.step()
    assert opt.param_groups[0]["lr"] == LR / 2 and opt.optimizer.param_groups[1]["lr"] == 0.005
    net2, opt2 = twin
    assert opt2.optimizer is not opt.optimizer and opt2.param_groups[0]["params"][0] is net2[0].weight
    train(net2, opt2, 1)
    assert torch.equal(net2[0].weight, net[0].weight)


def test_errors():
    with pytest.raises(ValueError, match="torch.optim.Optimizer"):
        LowPrecisionOptimizer([nn.Parameter(torch.zeros(1))], "paper")
    with pytest.raises(ValueError, match="unknown recipe"):
        LowPrecisionOptimizer(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), "paper9")
    net, opt = net_and_opt()
    with pytest.raises(ValueError, match="already a LowPrecisionOptimizer"):
        LowPrecisionOptimizer(opt, "paper")
    with pytest.raises(ValueError, match="no 'swalp' entry"):
        opt.load_state_dict(opt.optimizer.state_dict())
    with pytest.raises(ValueError, match="seed"):
        LowPrecisionOptimizer(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), "paper", seed=-1)


# ----------------------------------------------------------------------------- the torch Optimizer contract


def test_every_hook_kind_fires():
    net, opt = net_and_opt()
    seen = []
    handles = [
        opt.register_step_pre_hook(lambda o, a, k: seen.append("step_pre")),
        opt.register_step_post_hook(lambda o, a, k: seen.append("step_post")),
        register_optimizer_step_pre_hook(lambda o, a, k: seen.append(f"global_pre {type(o).__name__}")),
        register_optimizer_step_post_hook(lambda o, a, k: seen.append(f"global_post {type(o).__name__}")),
        opt.register_state_dict_pre_hook(lambda o: seen.append("sd_pre")),
        opt.register_state_dict_post_hook(lambda o, sd: {**sd, "tag": 1}),
        opt.register_load_state_dict_pre_hook(lambda o, sd: (seen.append("load_pre"), {k: v for k, v in sd.items() if k != "tag"})[1]),
        opt.register_load_state_dict_post_hook(lambda o: seen.append("load_post")),
    ]
    try:
        train(net, opt, 1)
        sd = opt.state_dict()
        assert sd["tag"] == 1  # a post hook may replace the state dict
        opt.load_state_dict(sd)  # the pre hook removed "tag" again
    finally:
        for h in handles:
            h.remove()
    # the global hooks see both optimizers step: the wrapper, and the torch optimizer inside it
    assert seen == ["global_pre LowPrecisionOptimizer", "step_pre", "global_pre SGD", "global_post SGD", "step_post",
                    "global_post LowPrecisionOptimizer", "sd_pre", "load_pre", "load_post"]


@pytest.mark.parametrize("recipe", ["paper", ACC8])
def test_a_frozen_parameter_never_changes(recipe):
    net, opt = net_and_opt(recipe)
    net[0].weight.requires_grad_(False)
    frozen = net[0].weight.detach().clone()
    train(net, opt, 3)
    assert torch.equal(net[0].weight, frozen)
    assert not torch.equal(net[2].weight, net_and_opt(recipe)[0][2].weight)  # the others trained


@pytest.mark.parametrize("make", [
    lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5),
    lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=5),
    lambda opt: torch.optim.swa_utils.SWALR(opt, swa_lr=0.01, anneal_epochs=3),
])
def test_torch_lr_schedulers_drive_it(make):
    net, opt = net_and_opt()
    sched = make(opt)
    lrs = []
    for k in range(3):
        train(net, opt, 1, start=k)
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert len(set(lrs)) == 3 and opt.optimizer.param_groups[0]["lr"] == lrs[-1]


def test_grad_scaler_and_clip_grad_norm_before_step():
    net, opt = net_and_opt()
    twin_net, twin_opt = net_and_opt()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    x, y = data()
    for model, o, scaled in ((net, opt, True), (twin_net, twin_opt, False)):
        o.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        if scaled:
            scaler.scale(loss).backward()
            scaler.unscale_(o)
        else:
            loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.05)
        assert norm > 0.05  # the clip did act
        scaler.step(o) if scaled else o.step()
    scaler.update()
    for a, b in zip(net.parameters(), twin_net.parameters()):  # 1024 is exact: the same step
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_state_dict_records_the_recipe_and_refuses_another():
    _, opt = net_and_opt("paper")
    sd = opt.state_dict()
    assert sd["swalp"]["recipe"]["name"] == "paper"
    _, other = net_and_opt(get_recipe("paper", bits=6))
    with pytest.raises(ValueError, match=r"saved under recipe 'paper'.*weight: .*wl=8.* -> .*wl=6"):
        other.load_state_dict(sd)


def test_building_leaves_the_global_generator_untouched_and_generator_draws_the_seed():
    net = nn.Linear(4, 2)
    before = torch.get_rng_state()
    LowPrecisionOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "paper", seed=3)
    LowPrecisionOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "fp32")
    LowPrecisionOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), Recipe(weight=BlockFloat(8), rounding="nearest"))
    g = torch.Generator().manual_seed(5)
    a = LowPrecisionOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "paper", generator=g)
    assert torch.equal(torch.get_rng_state(), before)
    assert a.seed == int(torch.empty((), dtype=torch.int64).random_(0, 2**62, generator=torch.Generator().manual_seed(5)))
    LowPrecisionOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "paper")  # no seed: stochastic rounding draws one
    assert not torch.equal(torch.get_rng_state(), before)
    with pytest.raises(ValueError, match="generator must be a torch.Generator or None, got int"):
        LowPrecisionOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "paper", generator=5)


# ----------------------------------------------------------------------------- storage="packed"


def make(recipe, storage, kind="sgd"):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3))
    if kind == "sgd":
        inner = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOM, weight_decay=WD)
    else:
        inner = torch.optim.AdamW(net.parameters(), lr=1e-3)
    return net, LowPrecisionOptimizer(inner, recipe, seed=7, storage=storage)


def float_state(opt, net):
    """Every state buffer as a float tensor, whichever the storage."""
    out = {}
    for i, p in enumerate(net.parameters()):
        for key, v in opt.state[p].items():
            out[(i, key)] = v
        for key, packed in opt.packed.get(p, {}).items():
            out[(i, key)] = packed.unpack(p.dtype)
    return out


@pytest.mark.parametrize("recipe, kind", [("paper", "sgd"), (ACC8, "sgd"), ("mx", "sgd"), ("fp8", "sgd"),
                                          ("paper", "adamw")], ids=["paper", "acc8", "mx", "fp8", "adamw"])
def test_packed_state_is_bit_identical_to_the_simulated(recipe, kind):
    (a, sim), (b, packed) = make(recipe, "simulated", kind), make(recipe, "packed", kind)
    for k in range(4):
        train(a, sim, 1, start=k)
        train(b, packed, 1, start=k)
        assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
        fa, fb = float_state(sim, a), float_state(packed, b)
        assert fa.keys() == fb.keys() and all(torch.equal(fa[k2], fb[k2]) for k2 in fa)
    first = "momentum_buffer" if kind == "sgd" else "exp_avg"
    for p in b.parameters():  # held packed: one byte per element and an exponent per block, no float buffer
        assert first not in packed.state[p] and packed.packed[p][first].codes.element_size() == 1
    if kind == "adamw":  # the second moment stays a float tensor, as in the simulated storage
        assert all("exp_avg_sq" in packed.state[p] for p in b.parameters())


def test_a_checkpoint_loads_into_either_storage_and_training_continues_identically():
    (a, sim), (b, packed) = make("paper", "simulated"), make("paper", "packed")
    train(a, sim, 2)
    train(b, packed, 2)
    saved_packed, saved_sim = copy.deepcopy(packed.state_dict()), copy.deepcopy(sim.state_dict())
    assert saved_packed["swalp"]["packed"] and not saved_sim["swalp"]["packed"]
    for saved in (saved_packed, saved_sim):
        for storage in ("simulated", "packed"):
            net, opt = make("paper", storage)
            net.load_state_dict(a.state_dict())
            opt.load_state_dict(copy.deepcopy(saved))
            train(net, opt, 2, start=2)
            ref_net = copy.deepcopy(a)
            ref_opt = LowPrecisionOptimizer(torch.optim.SGD(ref_net.parameters(), lr=LR, momentum=MOM, weight_decay=WD),
                                            "paper", seed=7)
            ref_opt.load_state_dict(copy.deepcopy(saved_sim))
            train(ref_net, ref_opt, 2, start=2)
            assert all(torch.equal(x, y) for x, y in zip(net.parameters(), ref_net.parameters()))


def test_packed_storage_errors_and_nan_fallback():
    with pytest.raises(ValueError, match="unknown storage 'int8'; accepted: 'simulated', 'packed'"):
        make("paper", "int8")
    net, opt = make("paper", "packed")
    train(net, opt, 1)
    p = next(net.parameters())
    opt.packed[p]["momentum_buffer"] = swalp.pack(torch.full(p.shape, 0.5), opt.recipe.momentum)
    with torch.no_grad():
        p.grad = torch.full_like(p, float("nan"))
    opt.step()  # a NaN momentum cannot be packed: it stays a float tensor (the loss check reports it)
    assert torch.isnan(opt.state[p]["momentum_buffer"]).all() and p not in opt.packed
