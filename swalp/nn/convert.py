"""Put a model in low precision by inserting :class:`swalp.Quantizer` modules.

A module swap, never a global patch of ``torch.nn``: each chosen module ``m`` is replaced
in its parent by ``nn.Sequential(m, Quantizer(recipe.activation, recipe.error))``, so the
output is rounded going forward and its gradient (the error) going back. Two placements:

* ``"layer"`` (QPyTorch's port): after every Conv/Linear output except the last such
  layer (the logits stay full precision).
* ``"activation"`` (the reference VGG): after every activation module (ReLU, GELU, ...).
  Activations called as functions (``F.relu``) cannot be seen; use modules or place
  Quantizers in the model class.

Model classes may place Quantizers themselves (the paper's VGG16/PreResNet164): a model
that already contains a Quantizer anywhere is left as it is, and its Quantizers get the
recipe's formats (:func:`configure_quantizers`). So converting twice does not add a
second layer of Quantizers, and a model that places its own never gets extra ones.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from .._checks import check_bool, check_choice
from ..recipes import Recipe, get_recipe
from .quantizer import Quantizer

PLACEMENTS = ("layer", "activation")  # where quantize_model puts Quantizers (module docstring)

LAYER_TYPES = (nn.modules.conv._ConvNd, nn.Linear)
ACTIVATION_TYPES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
    nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid, nn.Threshold, nn.GLU,
)  # fmt: skip


def _make_quantizer(recipe: Recipe) -> Quantizer:
    return Quantizer(recipe.activation, recipe.error, recipe.rounding)


def quantize_model(
    model: nn.Module,
    recipe: Recipe | str,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
    placement: str = "layer",
) -> nn.Module:
    """Insert Quantizers into ``model`` (in place) and return it.

    Args:
        model: any ``nn.Module``; one that already contains Quantizers is only
            configured (module docstring).
        recipe: a :class:`~swalp.recipes.Recipe` or a recipe name; its ``activation``,
            ``error`` and ``rounding`` set the Quantizers. With the "fp32" recipe the
            Quantizers are inserted anyway (as identities), so full- and low-precision
            models have the same structure and :func:`configure_quantizers` can switch.
        filter_fn: ``filter_fn(module, fqn) -> bool``, called for each candidate module
            (Conv/Linear or activation) with its fully qualified name (``"features.0"``);
            False leaves that module alone. It narrows the placement: the last
            Conv/Linear is never quantized in "layer" placement.
        placement: ``"layer"`` or ``"activation"`` (module docstring).

    Returns:
        ``model``; a wrapped module's parameters move from ``"fc.weight"`` to
        ``"fc.0.weight"``, so load full-precision checkpoints before converting.

    Caveat: "last" means last in registration order (``model.modules()``), which is the
    forward order of usual models. The weights themselves are quantized by
    :class:`swalp.LowPrecisionOptimizer`, not here.

    Example:
        >>> from torch import nn
        >>> net = quantize_model(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), "paper")
        >>> [type(m).__name__ for m in net]
        ['Sequential', 'ReLU', 'Linear']
    """
    recipe = get_recipe(recipe)
    check_choice("placement", placement, PLACEMENTS)
    if filter_fn is not None and not callable(filter_fn):
        raise ValueError(f"filter_fn must be callable(module, fqn) -> bool or None, got {filter_fn!r}")
    if quantizers(model):
        configure_quantizers(model, recipe)
        return model
    kinds = LAYER_TYPES if placement == "layer" else ACTIVATION_TYPES

    # Collect first, then swap: swapping while iterating named_modules() would revisit.
    targets: list[tuple[nn.Module, str, str]] = []

    def walk(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            fqn = f"{prefix}.{name}" if prefix else name
            if isinstance(child, kinds):
                targets.append((module, name, fqn))
            else:
                walk(child, fqn)

    if isinstance(model, kinds):
        raise ValueError(f"cannot wrap the model itself ({type(model).__name__}); pass a model that contains it")
    walk(model, "")
    if placement == "layer":
        last = [fqn for fqn, m in model.named_modules() if isinstance(m, LAYER_TYPES)][-1:]
        targets = [t for t in targets if t[2] not in last]
    for parent, name, fqn in targets:
        child = getattr(parent, name)
        if filter_fn is None or filter_fn(child, fqn):
            setattr(parent, name, nn.Sequential(child, _make_quantizer(recipe)))
    return model


def quantizers(model: nn.Module) -> list[Quantizer]:
    """Every :class:`swalp.Quantizer` in ``model``, in registration order."""
    return [m for m in model.modules() if isinstance(m, Quantizer)]


def set_quantizers(model: nn.Module, enabled: bool) -> None:
    """Turn every Quantizer in ``model`` on or off (off = full-precision evaluation).

    Example:
        >>> from torch import nn
        >>> net = quantize_model(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), "paper")
        >>> set_quantizers(net, False); net[0][1].enabled
        False
    """
    check_bool("enabled", enabled)
    for q in quantizers(model):
        q.enabled = enabled


def configure_quantizers(model: nn.Module, recipe: Recipe | str) -> None:
    """Give every Quantizer in ``model`` the recipe's activation/error formats and rounding.

    For models that place their own Quantizer modules (built with any formats, or None).
    """
    recipe = get_recipe(recipe)
    for q in quantizers(model):
        q.forward_format, q.backward_format, q.rounding = recipe.activation, recipe.error, recipe.rounding
