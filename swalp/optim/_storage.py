"""``storage="packed"``: the optimizer's half of real 8-bit training. Not public.

:class:`swalp.LowPrecisionOptimizer` with ``storage="packed"`` holds, between steps:

* the weights (which are the accumulator, for recipes with ``acc == weight``) packed on the
  parameters themselves (swalp/nn/weights.py), where the model was converted by
  :func:`swalp.quantize_model` (whose hooks unpack a layer's weights for its forward);
* each gradient packed as soon as backward has accumulated it (a
  ``register_post_accumulate_grad_hook``), rounded with the seed the simulated path gives it,
  so the float gradients of all layers never exist at once; ``p.grad`` is then None;
* the optimizer's first moments (momentum) packed; second moments stay full precision.

With a plain ``torch.optim.SGD`` (the paper's optimizer) a step reads and writes packed
tensors: one call per parameter (:func:`swalp.ops.sgd.packed_sgd`, C++ on the CPU) unpacks
its weights, gradient and momentum, takes torch's SGD step on them and rounds the results
straight back into packed form; the float temporaries are one parameter's. It applies where
nothing can tell the wrapped step was not called: no step hooks on the SGD or global ones,
no ``step`` of the SGD's replaced (except by an LR scheduler built on it, whose only mark of a
step, ``_opt_called``, is set here as its wrapper would), no statistics being collected, a
float ``lr``, weights that are the accumulator, float32 parameters.

Any other step goes a few parameters at a time (up to ``STEP_CHUNK`` elements, or one larger
parameter): unpack their weights, gradients and state, run the wrapped torch optimizer on
them alone (every other parameter has no ``.grad`` at that moment, and torch optimizers
skip those), round and pack the results. The wrapped optimizer's own arithmetic on a tensor
does not depend on which others step with it, so either way the numbers equal the simulated
path's bit for bit (tests/test_packed_training.py); the float temporaries are a chunk's. A
step with a closure unpacks everything for that step instead.

Where something cannot be packed (a format without a packed form, a NaN, a parameter whose
module has no hooks, gradients under torch.distributed, where DDP's buckets own them) it
stays a float tensor with the same numbers. Caveats: packed gradients are rounded per
backward pass, so they cannot be accumulated over several (an error says so), and
``clip_grad_norm_`` or a ``GradScaler`` see no ``.grad`` between backward and step.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor
from torch.optim import optimizer as _torch_optimizer

from .._rng import chain_seed
from ..formats import Format
from ..nn.weights import can_pack, is_packed, packed_weight, store, unstore
from ..ops.packed import PackedTensor, pack
from ..ops.sgd import packed_sgd
from ..recipes import param_format

# Roles in the per-tensor seed (optimizer.py uses them too); the numbers are part of the run's
# definition (4, once the weights' own role, is no longer drawn: a parameter without a gradient
# keeps its weight).
_INIT, _GRAD, _ACC, _STATE = 1, 2, 3, 5
_SGD = ("lr", "weight_decay", "momentum", "dampening", "nesterov", "maximize")  # packed_sgd's settings

# Elements stepped at once: the float temporaries of a step are those of this many elements
# (or of the largest parameter), and small models take one wrapped step, not one per tensor.
STEP_CHUNK = 1 << 20

_PARAM_FORMATS: dict = {}  # (id(fmt), ndim) -> (fmt, its format for such tensors)


def _param_format(fmt: Format, x: Tensor) -> Format:
    """:func:`param_format`, remembered per (format, number of dimensions): it is called for
    every parameter at every step, and builds a new format object where it changes one."""
    key = (id(fmt), x.dim())  # by identity, as swalp/ops/_schema.py pack: the recipe's formats live on
    hit = _PARAM_FORMATS.get(key)
    if hit is None or hit[0] is not fmt:
        if len(_PARAM_FORMATS) > 1024:
            _PARAM_FORMATS.clear()
        hit = _PARAM_FORMATS[key] = (fmt, param_format(fmt, x))
    return hit[1]


class PackedStorage:
    """The packed-storage methods of LowPrecisionOptimizer (which provides ``recipe``,
    ``storage``, ``optimizer``, ``steps``, ``stats``, ``_params``, ``_seed``, ``_q_many_``,
    ``_record`` and ``_round_after_step``; this class holds ``packed``, ``grads`` and the hooks)."""

    def _packs(self, fmt: Format | None) -> bool:
        return self.storage == "packed" and fmt is not None

    def _pack_into(self, x: Tensor, fmt: Format, seed_key: tuple, steps: int | None = None) -> PackedTensor | None:
        """``x`` rounded straight into packed form with the seed ``_q`` would use; None where it
        has no packed form or holds a NaN (it then stays float: the training loop reports NaN)."""
        try:
            packed = pack(x, _param_format(fmt, x), self.recipe.rounding, chain_seed(self._seed(steps), seed_key))
        except ValueError:
            return None
        if self.stats is not None:
            self._record(seed_key, x, packed.unpack(x.dtype), fmt)
        return packed

    def _pack_weight(self, p: Tensor, a: Tensor, fmt: Format | None, seed_key: tuple) -> bool:
        """Hold parameter ``p`` as ``a`` rounded to ``fmt``, packed; False where it cannot be."""
        if not (self._packs(fmt) and can_pack(p)):
            return False
        packed = self._pack_into(a, fmt, seed_key)
        if packed is None:
            return False
        store(p, packed)
        return True

    def _pack_state(self, p: Tensor, key: str, s: Tensor, fmt: Format | None, seed_key: tuple) -> bool:
        """Hold state buffer ``key`` of ``p`` packed and drop the float one; False where it stays."""
        packed = self._pack_into(s, fmt, seed_key) if self._packs(fmt) else None
        if packed is None:
            return False
        self.packed.setdefault(p, {})[key] = packed
        del self.optimizer.state[p][key]
        return True

    def _unpack_state(self, params) -> None:
        """Put the packed state buffers of ``params`` back as float tensors for the wrapped step."""
        for p in params:
            for key, packed in self.packed.pop(p, {}).items():
                self.optimizer.state[p][key] = packed.unpack(p.dtype)

    # --- gradients ----------------------------------------------------------------------

    def _hook_grads(self, params: list[Tensor]) -> None:
        if self.recipe.grad is None or dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return  # under DDP the reducer writes the averaged gradients after these hooks would run
        self._index = {p: i for i, p in enumerate(self._params())}
        for p in params:
            if p.requires_grad:
                self._grad_hooks.append(p.register_post_accumulate_grad_hook(self._pack_grad))

    def _pack_grad(self, p: Tensor) -> None:
        """After backward accumulated ``p.grad``: round it (the seed the next step's ``_quantize_grads``
        would use) into packed form and free the float gradient."""
        if self._hold_grads or p.grad is None or p.grad.layout is not torch.strided:
            return
        if p in self.grads:
            raise RuntimeError("storage='packed' packs each gradient when backward produces it, so gradients "
                               "cannot be accumulated over several backward passes: call zero_grad() on the "
                               "LowPrecisionOptimizer between them, or use storage='simulated'")
        i = self._index[p]
        packed = self._pack_into(p.grad, self.recipe.grad, (i, _GRAD, 0), steps=self.steps + 1)
        if packed is not None:
            self.grads[p] = packed
            p.grad = None

    # --- steps --------------------------------------------------------------------------

    def _step_each(self):
        """One step: fused per parameter, or a few parameters at a time (module docstring);
        returns None (no closure)."""
        params = self._params()
        floats = {}  # gradients that stayed float: hidden while the other parameters step
        for p in params:
            if p.grad is not None:
                floats[p], p.grad = p.grad, None
        settings = self._sgd_settings()
        scheduled = "step" in vars(self.optimizer)  # an LR scheduler's wrapper (_sgd_settings allows no other)
        chunk, size = [], 0
        for i, p in enumerate(params):
            if p in settings and self._step_fused(i, p, settings[p]):
                if scheduled:
                    self.optimizer._opt_called = True  # what that wrapper records of a step, all it does besides
                continue
            if p in self.grads or p in floats:
                chunk.append((i, p))
                size += p.numel()
            if chunk and size >= STEP_CHUNK:
                self._step_chunk(chunk, floats)
                chunk, size = [], 0
        if chunk:
            self._step_chunk(chunk, floats)
        for p, grad in floats.items():  # rounded, as the simulated step leaves them
            p.grad = grad

    def _sgd_settings(self) -> dict:
        """``{parameter: its SGD settings}`` for the fused step: empty unless the wrapped
        optimizer is a plain ``torch.optim.SGD`` whose ``step`` nothing could miss (module
        docstring)."""
        opt = self.optimizer
        step = vars(opt).get("step")  # an instance attribute: the class's step replaced
        if (type(opt) is not torch.optim.SGD or self.stats is not None
                or step is not None and not getattr(step, "_wrapped_by_lr_sched", False)
                or opt._optimizer_step_pre_hooks or opt._optimizer_step_post_hooks
                or _torch_optimizer._global_optimizer_pre_hooks or _torch_optimizer._global_optimizer_post_hooks):
            return {}
        settings = {}
        for group in opt.param_groups:
            if group.get("fused") or group.get("differentiable") or any(isinstance(group[k], Tensor) for k in _SGD):
                continue
            chosen = {k: group[k] for k in _SGD}
            settings.update((p, chosen) for p in group["params"])
        return settings

    def _step_fused(self, i: int, p: Tensor, settings: dict) -> bool:
        """Parameter ``i``'s SGD step on its packed weights, gradient and momentum, in one call;
        False (nothing changed) where something is not packed, or the result holds a NaN."""
        r, weights, grad = self.recipe, packed_weight(p), self.grads.get(p)
        heavy = settings["momentum"] != 0
        held = self.packed.get(p, {})
        fmt_m = self.state_format("momentum_buffer") if heavy else r.acc
        if (weights is None or grad is None or p.dtype != torch.float32 or r.acc != r.weight or fmt_m is None
                or self.optimizer.state.get(p) or set(held) - {"momentum_buffer"}
                or held and not heavy):
            return False
        z = self._seed()
        seeds = (chain_seed(z, (i, _ACC, 0)), chain_seed(z, (i, _STATE, 0)))  # _round_after_step's
        try:
            new, buf = packed_sgd(weights, grad, held.get("momentum_buffer"), _param_format(r.acc, p),
                                  _param_format(fmt_m, p), r.rounding, seeds, **settings)
        except ValueError:  # a NaN with no code: the chunked step keeps it in a float tensor
            return False
        store(p, new)
        del self.grads[p]
        self.optimizer.state.setdefault(p, {})  # the (empty) entry the chunked step leaves
        if heavy:
            self.packed.setdefault(p, {})["momentum_buffer"] = buf
        return True

    def _step_chunk(self, chunk: list[tuple[int, Tensor]], floats: dict) -> None:
        """The wrapped step on the parameters of ``chunk`` alone, unpacked for it and packed after."""
        grads = []  # gradients that stayed float, rounded together as _quantize_grads rounds them
        for i, p in chunk:
            packed_grad = self.grads.pop(p, None)
            if packed_grad is not None:
                p.grad = packed_grad.unpack(p.dtype)
            else:
                p.grad = floats[p]
                if p.grad.is_sparse:
                    raise ValueError("sparse gradients are not supported by LowPrecisionOptimizer")
                grads.append((p.grad, self.recipe.grad, (i, _GRAD, 0)))
            unstore(p)
            if p in self.acc:
                p.copy_(self.acc[p])
        self._q_many_(grads)
        self._unpack_state([p for _, p in chunk])
        self.optimizer.step()
        jobs = []
        for i, p in chunk:
            self._round_after_step(i, p, jobs)
        self._q_many_(jobs)
        for _, p in chunk:
            p.grad = None

    def _step_unpacked(self, closure):
        """A step with a closure: the model is evaluated again, so everything is float for it."""
        params = self._params()
        held = {p: packed_weight(p) for p in params if is_packed(p)}
        for p in held:
            unstore(p)
        for p, packed in self.grads.items():
            p.grad = packed.unpack(p.dtype)
        self.grads = {}
        self._hold_grads = True
        try:
            loss = self._step_all(closure)
        finally:
            self._hold_grads = False
        for p, packed in held.items():
            if not is_packed(p) and p.grad is None:  # a parameter the step left alone keeps its packed form
                store(p, packed)
        return loss
