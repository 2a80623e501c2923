"""Put a model in low precision by attaching :class:`swalp.Quantizer` modules to its layers.

A module swap that changes no name: each chosen layer ``m`` gets a child
``m.quantizer = Quantizer(recipe.activation, recipe.error)`` and a forward hook that
passes its output through it, so the output is rounded going forward and its gradient
(the error) going back. The layer keeps its type (``isinstance(model.fc, nn.Linear)``),
its parameter names and its state-dict keys (a Quantizer holds no tensors), so a
checkpoint saved before conversion loads after it. Never a global patch of ``torch.nn``.
Two placements:

* ``"layer"`` (QPyTorch's port): after every Conv/Linear output except the last such
  layer (the logits stay full precision).
* ``"activation"`` (the reference VGG): after every activation module (ReLU, GELU, ...).
  Activations called as functions (``F.relu``) cannot be seen; use modules or place
  Quantizers in the model class.

Model classes may place Quantizers themselves (the paper's VGG16/PreResNet164): a model
that already contains a Quantizer anywhere gets no new ones; ``filter_fn`` selects which
of its Quantizers take the recipe's formats (the others become the identity). So
converting twice does not add a second layer of Quantizers.

The parameters remember the recipe (:func:`model_recipe`), so
``LowPrecisionOptimizer(torch.optim.SGD(model.parameters(), ...))`` takes it without
being told twice.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from torch import nn

from .._checks import check_bool, check_choice
from .._rng import check_generator
from ..recipes import Recipe, get_recipe
from .int8 import COMPUTES, use_int8
from .quantizer import Quantizer
from .weights import install_hooks

PLACEMENTS = ("layer", "activation")  # where quantize_model puts Quantizers (module docstring)

LAYER_TYPES = (nn.modules.conv._ConvNd, nn.Linear)
ACTIVATION_TYPES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
    nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid, nn.Threshold, nn.GLU,
)  # fmt: skip

_RECIPE_ATTR = "_swalp_recipe"  # on each parameter of a converted model


def _quantize_output(module: nn.Module, inputs, output):
    # A module-level function that finds the Quantizer on the module it is called with:
    # a deep copy of the model (WeightAverage) then uses its own copy of the Quantizer.
    return module.quantizer(output)


def quantize_model(
    model: nn.Module,
    recipe: Recipe | str,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
    placement: str | None = None,
    generator=None,
    compute: str = "float",
) -> nn.Module:
    """Attach Quantizers to ``model``'s layers (in place) and return it.

    Args:
        model: any ``nn.Module``; one that already contains Quantizers gets no new ones
            (module docstring).
        recipe: a :class:`~swalp.recipes.Recipe` or a recipe name; its ``activation``,
            ``error`` and ``rounding`` set the Quantizers. With the "fp32" recipe the
            Quantizers are attached anyway (as identities), so full- and low-precision
            models have the same structure and :func:`configure_quantizers` can switch.
        filter_fn: ``filter_fn(module, fqn) -> bool``, called for each candidate module
            (Conv/Linear or activation, or a Quantizer the model placed itself) with its
            fully qualified name (``"features.0"``); False leaves that module alone (a
            model's own Quantizer: full precision). It narrows the placement: the last
            Conv/Linear is never quantized in "layer" placement.
        placement: ``"layer"`` (None: the default) or ``"activation"``.
        generator: a ``torch.Generator`` the new Quantizers draw their seeds from (default:
            torch's global generator).
        compute: ``"float"`` (default) or ``"int8"``: every Linear, Conv1d and Conv2d computes
            its products from 8-bit codes with int32 sums where that is exact, and in float
            elsewhere (swalp/nn/int8.py; :func:`swalp.nn.compute_paths` lists which).

    Returns:
        ``model``, with the same parameter names, module types and state-dict keys.

    Raises:
        ValueError: an unknown recipe, placement or compute, a ``placement`` for a model that
            places its own Quantizers, a module already converted with another recipe.

    Caveat: "last" means last in registration order (``model.modules()``), which is the
    forward order of usual models. The weights themselves are quantized by
    :class:`swalp.LowPrecisionOptimizer`, not here.

    Example:
        >>> from torch import nn
        >>> net = quantize_model(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), "paper")
        >>> [type(m).__name__ for m in net], list(net.state_dict())[:2]
        (['Linear', 'ReLU', 'Linear'], ['0.weight', '0.bias'])
        >>> net[0].quantizer
        Quantizer(forward=BlockFloat(wl=8, ebits=8, block=PerTensor()), backward=BlockFloat(wl=8, ebits=8, block=PerTensor()), rounding=stochastic)
    """
    recipe = get_recipe(recipe)
    check_generator(generator)  # every check before the model is touched
    check_choice("compute", compute, COMPUTES)
    if placement is not None:
        check_choice("placement", placement, PLACEMENTS)
    if filter_fn is not None and not callable(filter_fn):
        raise ValueError(f"filter_fn must be callable(module, fqn) -> bool or None, got {filter_fn!r}")
    _remember(model, recipe)
    if compute == "int8":
        use_int8(model)
    install_hooks(model)  # inert until LowPrecisionOptimizer(storage="packed") packs the weights (weights.py)
    if quantizers(model):
        if placement is not None:
            raise ValueError(f"this model places its own Quantizers; placement={placement!r} does not apply "
                             "(use filter_fn to choose among them)")
        configure_quantizers(model, recipe, filter_fn)
        return model
    kinds = ACTIVATION_TYPES if placement == "activation" else LAYER_TYPES
    if isinstance(model, kinds):
        raise ValueError(f"cannot quantize the model's own output ({type(model).__name__}); pass a model that contains it")
    targets = [(fqn, m) for fqn, m in model.named_modules() if fqn and isinstance(m, kinds)]
    if placement != "activation":
        targets = targets[:-1]  # the last Conv/Linear: the logits stay full precision
    for fqn, module in targets:
        if filter_fn is None or filter_fn(module, fqn):
            if hasattr(module, "quantizer"):
                raise ValueError(f"{fqn} ({type(module).__name__}) already has an attribute 'quantizer'")
            module.quantizer = Quantizer(recipe.activation, recipe.error, recipe.rounding, generator=generator)
            module.register_forward_hook(_quantize_output)
    return model


def _remember(model: nn.Module, recipe: Recipe) -> None:
    for p in model.parameters():
        setattr(p, _RECIPE_ATTR, recipe)


def model_recipe(params) -> Recipe | None:
    """The recipe :func:`quantize_model` converted these parameters' model with (None if
    it did not); ValueError if they come from models converted with different recipes."""
    recipes = {getattr(p, _RECIPE_ATTR, None) for p in params} - {None}
    if len(recipes) > 1:
        raise ValueError(f"these parameters come from models converted with different recipes: "
                         f"{', '.join(sorted(r.name for r in recipes))}")
    return recipes.pop() if recipes else None


def quantizers(model: nn.Module) -> list[Quantizer]:
    """Every :class:`swalp.Quantizer` in ``model``, in registration order."""
    return [m for m in model.modules() if isinstance(m, Quantizer)]


def set_quantizers(model: nn.Module, enabled: bool) -> None:
    """Turn every Quantizer in ``model`` on or off (off = full-precision evaluation).

    Example:
        >>> from torch import nn
        >>> net = quantize_model(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), "paper")
        >>> set_quantizers(net, False); net[0].quantizer.enabled
        False
    """
    check_bool("enabled", enabled)
    for q in quantizers(model):
        q.enabled = enabled


@contextlib.contextmanager
def full_precision(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``model``'s Quantizers are off; afterwards each is as it was.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = quantize_model(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), "paper")
        >>> with full_precision(net):
        ...     net[0].quantizer.enabled
        False
        >>> net[0].quantizer.enabled
        True
    """
    saved = [(q, q.enabled) for q in quantizers(model)]
    set_quantizers(model, False)
    try:
        yield model
    finally:
        for q, enabled in saved:
            q.enabled = enabled


def configure_quantizers(model: nn.Module, recipe: Recipe | str,
                         filter_fn: Callable[[nn.Module, str], bool] | None = None) -> None:
    """Give every Quantizer in ``model`` the recipe's activation/error formats and rounding;
    with ``filter_fn(quantizer, fqn)``, only those it selects (the others: the identity).

    For models that place their own Quantizer modules (built with any formats, or None).
    """
    recipe = get_recipe(recipe)
    for fqn, q in model.named_modules():
        if isinstance(q, Quantizer):
            chosen = filter_fn is None or filter_fn(q, fqn)
            q.forward_format, q.backward_format = (recipe.activation, recipe.error) if chosen else (None, None)
            q.rounding = recipe.rounding
