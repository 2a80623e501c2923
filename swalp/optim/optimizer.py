"""``LowPrecisionOptimizer``: any torch optimizer, with SWALP's rounding around its step.

One step (arXiv 1904.11943, Algorithm 1, with the reference code's momentum), for every
parameter that has a gradient:

1. ``g = Q_G(grad)`` (before the wrapped optimizer sees it; inside the closure too).
2. The wrapped optimizer's own step, in the parameter's dtype, on the accumulator ``a``.
   For ``torch.optim.SGD(momentum=0.9, weight_decay=wd)`` that is
   ``m = 0.9 m + g + wd a; a = a - lr m``.
3. ``a = Q_ACC(a)``; ``w = Q_W(a)``; each optimizer state buffer ``s = Q_S(s)``.

With ``acc == weight`` the parameter *is* the accumulator: no full-precision copy of the
weights exists between steps. Otherwise the accumulator lives in this wrapper's state and
the parameter holds ``Q_W(a)``.

State buffer formats (``state_formats`` overrides any key):

* first moments (``momentum_buffer``, ``exp_avg``, ``grad_avg``, and any other floating
  buffer of the parameter's shape): ``recipe.momentum``.
* second moments (``exp_avg_sq``, ``max_exp_avg_sq``, ``square_avg``, ``sum``,
  ``acc_delta``, ``exp_inf``, Rprop's ``step_size``): full precision. These hold
  squared gradients, whose dynamic range is the square of the gradients': with one
  exponent per row or tensor most entries round to 0 or one grid step, and the update
  ``g / (sqrt(v) + eps)`` divides by ``eps`` wherever ``v`` rounds to 0. Even unbiased
  rounding of ``v`` biases the step, since ``1/sqrt`` is convex. Pass
  ``state_formats={"exp_avg_sq": BFLOAT16}`` to study a float format (an exponent per
  element: relative error only).
* counters (``step``, ``mu_product``, ``eta``, ``mu``): never rounded.

Seeds: every stochastic rounding uses a seed that depends only on (``seed``, step count,
parameter index, role), so a resume from ``state_dict()`` is bit-identical. Without a
``seed``, one is drawn when the first stochastic rounding happens (at construction, which
rounds the initial weights), from ``generator`` or else from torch's global generator (so
``torch.manual_seed`` repeats a run); a nearest-rounding recipe never draws.
Per-parameter formats follow :func:`swalp.recipes.param_format`.

The torch Optimizer contract holds: step hooks (the instance's and the global ones),
state-dict and load-state-dict hooks fire as torch fires them (global step hooks fire for
the wrapped optimizer's step too: two optimizers step); LR schedulers, ``GradScaler`` and
``clip_grad_norm_`` work on it; a parameter without a gradient never changes.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch
from torch import Tensor
from torch.optim import Optimizer

from .._checks import check_choice
from .._rng import chain_seed, check_generator, check_seed, derive_seed, draw_seed
from ..formats import Format, Rounding
from ..nn.convert import model_recipe
from ..ops._dispatch import dispatch, dispatch_many_
from ..ops.packed import PackedTensor
from ..recipes import Recipe, get_recipe
from ._storage import _ACC, _GRAD, _INIT, _STATE, PackedStorage, _param_format

STORAGES = ("simulated", "packed")  # how the rounded state is held between steps

SECOND_MOMENTS = ("exp_avg_sq", "max_exp_avg_sq", "square_avg", "sum", "acc_delta", "exp_inf", "step_size")
# Counters and scalars that may be tensors (of a 0-D parameter's shape, even): never rounded.
SCALARS = ("step", "mu_product", "eta", "mu")

# The role names a statistics collector sees (swalp/optim/health.py); _ACC's sub 1, Q_W(a) where
# the weights are not the accumulator, is "weight". _INIT (construction) is not measured.
_ROLE_NAMES = {_GRAD: "grad", _ACC: "acc", _STATE: "momentum"}

def _recipe_for(optimizer: Optimizer, recipe) -> Recipe:
    """The recipe given, checked against the one the model was converted with (if any)."""
    converted = model_recipe(p for g in optimizer.param_groups for p in g["params"])
    if recipe is None:
        if converted is None:
            raise ValueError("no recipe: pass one (e.g. 'paper'), or build the optimizer on the parameters of a "
                             "model converted by swalp.quantize_model, which remembers its recipe")
        return converted
    recipe = get_recipe(recipe)
    if converted is not None and converted != recipe:
        raise ValueError(f"the model was converted with recipe {converted.name!r}, given {recipe.name!r}: "
                         "give the same recipe, or none")
    return recipe


class LowPrecisionOptimizer(PackedStorage, Optimizer):
    """Wrap ``optimizer`` so that gradients, weights, accumulator and state are rounded.

    Args:
        optimizer: a constructed torch optimizer (SGD, AdamW, ...). Its param groups and
            state are shared, so LR schedulers and ``param_groups`` edits work as usual.
        recipe: a :class:`~swalp.recipes.Recipe` or a recipe name (uses ``weight``,
            ``grad``, ``momentum``, ``acc`` and ``rounding``); None: the recipe the
            parameters' model was converted with by :func:`swalp.quantize_model`.
        seed: base seed of every rounding; None draws one at the first stochastic rounding.
        state_formats: ``{state key: format or None}``, overriding the defaults above.
        generator: where a missing seed is drawn from (default: torch's global generator).
        storage: ``"simulated"`` (every buffer a float tensor of grid values) or ``"packed"``:
            weights (of a model converted by :func:`swalp.quantize_model`), gradients and
            first moments are held packed (:func:`swalp.pack`: 8 bits and an exponent per
            block) and the step goes parameter by parameter (a plain ``torch.optim.SGD`` in one
            C++ call each, from packed to packed), with the same numbers bit for bit
            (swalp/optim/_storage.py, its caveats: no gradient accumulation over several
            backward passes, no ``.grad`` between backward and step).

    The initial weights are quantized at construction (``w = Q_W(a)``, ``a = Q_ACC(p)``),
    so the first forward already uses low-precision weights. Parameters without a
    gradient are skipped by a step. ``step(closure)`` quantizes the gradients the closure
    produces each time it is called (so LBFGS-style re-evaluation works).

    Example:
        >>> import torch, swalp
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> net = torch.nn.Linear(4, 2)
        >>> opt = swalp.LowPrecisionOptimizer(
        ...     torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4), "paper", seed=0)
        >>> net(torch.randn(8, 4)).square().mean().backward()
        >>> opt.step(); opt.zero_grad()

    Caveat: the wrapped optimizer's arithmetic runs in the parameters' dtype (fp32 in
    general); only what is stored between steps is low precision.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        recipe: Recipe | str | None = None,
        seed: int | None = None,
        state_formats: dict[str, Format | None] | None = None,
        *,
        generator: torch.Generator | None = None,
        storage: str = "simulated",
    ):
        # Deliberately not Optimizer.__init__: the param groups and state are the wrapped
        # optimizer's own objects. Subclassing keeps isinstance(x, Optimizer) true, which
        # torch's LR schedulers require.
        if not isinstance(optimizer, Optimizer):
            raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if isinstance(optimizer, LowPrecisionOptimizer):
            raise ValueError("optimizer is already a LowPrecisionOptimizer; wrap the torch optimizer once")
        self.optimizer = optimizer
        self.recipe = _recipe_for(optimizer, recipe)
        self.seed = None if seed is None else check_seed(seed)
        self._generator = check_generator(generator)
        self.state_formats = dict(state_formats or {})
        self.storage = check_choice("storage", storage, STORAGES)
        self.packed: dict[Tensor, dict[str, PackedTensor]] = {}  # storage="packed": state buffers between steps
        self.steps = 0
        self._prefix = (None, 0)  # ((seed, steps), derive_seed(seed, steps)), see _seed
        self.acc: dict[Tensor, Tensor] = {}  # only when the accumulator differs from the weights
        self._optimizer_step_pre_hooks: OrderedDict = OrderedDict()  # fired by Optimizer.profile_hook_step
        self._optimizer_step_post_hooks: OrderedDict = OrderedDict()
        self._optimizer_state_dict_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_state_dict_post_hooks: OrderedDict = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_load_state_dict_post_hooks: OrderedDict = OrderedDict()
        self.grads: dict[Tensor, PackedTensor] = {}  # storage="packed": gradients between backward and step
        self._hold_grads = False  # True while a step re-evaluates a closure: gradients stay float
        self._grad_hooks = []
        self.stats = None  # a statistics collector, set by it for the steps it measures (swalp/optim/health.py)
        with torch.no_grad():
            for i, p in enumerate(self._params()):
                self._store(i, p, p.detach().clone(), _INIT)
        if self.storage == "packed":
            self._hook_grads(self._params())

    # --- delegation --------------------------------------------------------------------

    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    @property
    def state(self):
        return self.optimizer.state

    @property
    def defaults(self) -> dict:
        return self.optimizer.defaults

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.grads = {}
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict) -> None:
        """Add a group to the wrapped optimizer and quantize its initial weights."""
        first = len(self._params())
        self.optimizer.add_param_group(param_group)
        with torch.no_grad():
            for i, p in enumerate(self._params()[first:], start=first):
                self._store(i, p, p.detach().clone(), _INIT)
        if self.storage == "packed":
            self._hook_grads(self._params()[first:])

    # Optimizer pickles only (defaults, state, param_groups); this object is its __dict__,
    # less the `step` an LR scheduler patches onto the instance (it points at this one).
    # A generator does not pickle; the seed it gave (drawn at construction when needed) does.
    def __getstate__(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if k not in ("step", "_opt_called", "_grad_hooks")}
        return {**state, "_generator": None, "stats": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("_prefix", (None, 0))  # pickled before _prefix existed
        self.__dict__.setdefault("grads", {})
        self.__dict__.setdefault("_hold_grads", False)
        self.__dict__.setdefault("stats", None)
        self._grad_hooks = []  # a copy's parameters are not this one's: no hooks until add_param_group

    def __repr__(self) -> str:
        return f"LowPrecisionOptimizer({self.optimizer!r},\n  recipe={self.recipe!r}, seed={self.seed})"

    # --- quantization ------------------------------------------------------------------

    def _params(self) -> list[Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def _q(self, x: Tensor, fmt: Format | None, i: int, role: int, sub: int = 0) -> Tensor:
        if fmt is None:
            return x
        # formats, rounding and seed come from the checked recipe: no need to check them again
        seed = chain_seed(self._seed(), (i, role, sub))
        y = dispatch(x, _param_format(fmt, x), self.recipe.rounding, seed)
        self._record((i, role, sub), x, y, fmt)
        return y

    def _record(self, key: tuple, x: Tensor, y: Tensor, fmt: Format) -> None:
        """Hand the rounding ``y`` of ``x`` (seed key ``(i, role, sub)``) to the watching collector."""
        if self.stats is not None and key[1] in _ROLE_NAMES:
            role = "weight" if key[1] == _ACC and key[2] == 1 else _ROLE_NAMES[key[1]]
            self.stats.record(self._params()[key[0]], role, x, y, _param_format(fmt, x))

    def _seed(self, steps: int | None = None) -> int:
        """``derive_seed(self.seed, steps)`` (default: ``self.steps``), computed once a step:
        the seed of tensor ``(i, role, sub)`` is ``chain_seed(self._seed(), (i, role, sub))``."""
        if self.seed is None:  # the first rounding: draw only if it is stochastic
            self.seed = draw_seed(self._generator) if self.recipe.rounding is Rounding.STOCHASTIC else 0
        steps = self.steps if steps is None else steps
        if self._prefix[0] != (self.seed, steps):
            self._prefix = ((self.seed, steps), derive_seed(self.seed, steps))
        return self._prefix[1]

    def _store(self, i: int, p: Tensor, a: Tensor, role: int) -> None:
        """Round the new accumulator value ``a`` and write ``p = Q_W(Q_ACC(a))``."""
        r = self.recipe
        if (r.weight is None or r.acc == r.weight) and self._pack_weight(p, a, r.acc, (i, role, 0)):
            self.acc.pop(p, None)
            return
        a = self._q(a, r.acc, i, role, 0)
        if r.weight is None or r.acc == r.weight:
            # The accumulator is the parameter: rounding again to the same grid is a no-op.
            p.copy_(a)
            self.acc.pop(p, None)
        else:
            self.acc[p] = a.clone() if r.acc is None else a  # unrounded `a` may alias p
            if not self._pack_weight(p, a, r.weight, (i, role, 1)):
                p.copy_(self._q(a, r.weight, i, role, 1))

    def _quantize_grads(self, call: int) -> None:
        if self.recipe.grad is None:
            return
        jobs = []
        for i, p in enumerate(self._params()):
            if p.grad is not None:
                if p.grad.is_sparse:
                    raise ValueError("sparse gradients are not supported by LowPrecisionOptimizer")
                jobs.append((p.grad, self.recipe.grad, (i, _GRAD, call)))
        self._q_many_(jobs)

    def _q_many_(self, jobs: list[tuple]) -> None:
        """In place, ``x.copy_(self._q(x, fmt, i, role, sub))`` for each ``(x, fmt, (i, role, sub))``
        with a format, in one kernel call where the backend allows (the C++ one on CPU)."""
        jobs = [job for job in jobs if job[1] is not None]
        if jobs:
            xs, fmts, keys = zip(*jobs)
            z = self._seed()
            fmts = [_param_format(fmt, x) for x, fmt in zip(xs, fmts)]
            before = [x.clone() for x in xs] if self.stats is not None else ()  # in place: keep x to compare
            dispatch_many_(list(xs), fmts, self.recipe.rounding, [chain_seed(z, k) for k in keys])
            for x0, x, fmt, key in zip(before, xs, fmts, keys):
                self._record(key, x0, x, fmt)

    def state_format(self, key: str) -> Format | None:
        """The format of optimizer state buffer ``key`` (module docstring)."""
        if key in self.state_formats:
            return self.state_formats[key]
        return None if key in SECOND_MOMENTS else self.recipe.momentum

    @Optimizer.profile_hook_step  # torch's own wrapper: global and instance step hooks
    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None):
        """Quantize gradients, take the wrapped step, round weights and state; returns the loss."""
        self.steps += 1
        if self.storage == "packed":
            return self._step_each() if closure is None else self._step_unpacked(closure)
        return self._step_all(closure)

    def _step_all(self, closure):
        calls = [0]

        def quantized_closure():
            with torch.enable_grad():
                loss = closure()
            # The first call rounds as a step without closure does (call 0): with SGD,
            # step(closure) is closure() then step(), bit for bit (trainers such as Lightning
            # always pass one). Later calls (L-BFGS) draw their own seeds.
            self._quantize_grads(calls[0])
            calls[0] += 1
            return loss

        params = self._params()
        self._unpack_state(params)
        weights = {}  # the wrapped step updates the accumulator, not Q_W(a); a frozen p gets Q_W(a) back
        for p in params if self.acc else ():
            if p in self.acc:
                weights[p] = p.detach().clone()
                p.copy_(self.acc[p])
        if closure is None:
            self._quantize_grads(0)
            loss = self.optimizer.step()
        else:
            loss = self.optimizer.step(quantized_closure)
        jobs = []  # rounded in place, together: each one depends only on its own tensor and seed
        for i, p in enumerate(params):
            if p.grad is None:
                if p in weights:
                    p.copy_(weights[p])
                continue
            self._round_after_step(i, p, jobs)
        self._q_many_(jobs)
        return loss

    def _round_after_step(self, i: int, p: Tensor, jobs: list) -> None:
        """Step 3 of the module docstring for parameter ``i``: packed where the storage is, else
        appended to ``jobs`` (for ``_q_many_``)."""
        r = self.recipe
        if r.weight is None or r.acc == r.weight:  # _store, with the accumulator in p
            if not self._pack_weight(p, p.detach(), r.acc, (i, _ACC, 0)):
                jobs.append((p, r.acc, (i, _ACC, 0)))
            if self.acc:
                self.acc.pop(p, None)
        else:
            self._store(i, p, p.detach(), _ACC)
        for j, (key, s) in enumerate(sorted(self.optimizer.state[p].items())):
            if isinstance(s, Tensor) and s.is_floating_point() and s.shape == p.shape and key not in SCALARS:
                if not self._pack_state(p, key, s, self.state_format(key), (i, _STATE, j)):
                    jobs.append((s, self.state_format(key), (i, _STATE, j)))

    # --- checkpoints -------------------------------------------------------------------

    def state_dict(self) -> dict:
        """The wrapped optimizer's state dict plus ``"swalp"``: seed, step count, accumulators
        and the recipe. State-dict pre and post hooks fire as torch's."""
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        params = self._params()
        acc = {i: self.acc[p].clone() for i, p in enumerate(params) if p in self.acc}
        packed = {i: {k: v.state_dict() for k, v in self.packed[p].items()} for i, p in enumerate(params) if p in self.packed}
        swalp = {"seed": self.seed, "steps": self.steps, "acc": acc, "recipe": self.recipe.to_dict(), "packed": packed}
        state_dict = {**self.optimizer.state_dict(), "swalp": swalp}
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, state_dict)
            state_dict = state_dict if result is None else result
        return state_dict

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a :meth:`state_dict`; later steps are bit-identical to the saved run's.

        Raises ValueError if it is not a LowPrecisionOptimizer's, or was saved under another
        recipe. Load-state-dict pre and post hooks fire as torch's.
        """
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            state_dict = state_dict if result is None else result
        self._load(state_dict)
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def _load(self, state_dict: dict) -> None:
        if "swalp" not in state_dict:
            raise ValueError("not a LowPrecisionOptimizer state dict (no 'swalp' entry); "
                             "load a plain torch state dict with .optimizer.load_state_dict")  # fmt: skip
        sw = state_dict["swalp"]
        saved = sw.get("recipe")  # absent in state dicts of swalp 0.1
        if saved is not None and saved != self.recipe.to_dict():
            changed = ", ".join(f"{k}: {saved.get(k)} -> {v}" for k, v in self.recipe.to_dict().items() if saved.get(k) != v)
            raise ValueError(f"this state dict was saved under recipe {saved.get('name')!r}, this optimizer has "
                             f"{self.recipe.name!r} ({changed}); build the optimizer with the saved recipe")
        inner = {k: v for k, v in state_dict.items() if k != "swalp"}
        self.optimizer.load_state_dict(inner)
        self.seed, self.steps = (None if sw["seed"] is None else check_seed(sw["seed"])), int(sw["steps"])
        params = self._params()
        self.acc = {}
        for i, a in sw["acc"].items():
            i = int(i)
            if not 0 <= i < len(params) or a.shape != params[i].shape:
                raise ValueError(f"accumulator {i} does not match the optimizer's parameters")
            self.acc[params[i]] = a.detach().to(params[i].device, params[i].dtype).clone()
        # Packed state buffers (saved by storage="packed"): kept packed, or unpacked into the
        # wrapped optimizer's state for storage="simulated"; the numbers are the same.
        self.packed = {}
        for i, buffers in sw.get("packed", {}).items():
            p = params[int(i)]
            for key, saved in buffers.items():
                packed = PackedTensor.from_state_dict(saved).to(p.device)
                if self.storage == "packed":
                    self.packed.setdefault(p, {})[key] = packed
                else:
                    self.optimizer.state[p][key] = packed.unpack(p.dtype)
