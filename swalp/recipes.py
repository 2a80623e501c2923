"""Recipes: which number format each kind of tensor is rounded to during training.

A :class:`Recipe` is plain data (a frozen dataclass of formats from :mod:`swalp.formats`):
weights, activations, errors (the gradient w.r.t. an activation), weight gradients,
momentum (every first-moment optimizer buffer) and the weight accumulator, plus the
rounding. ``None`` means full precision. Named recipes come from :func:`get_recipe`.

One rule lives here rather than in the recipes: :func:`param_format` maps a recipe's
format to the one used for a given parameter (or its gradient, momentum, accumulator).
A per-axis blocking (one exponent per output channel/row) on a 1-D or 0-D tensor (bias,
batch-norm scale) becomes one exponent per tensor, as in the paper's "small block"
scripts: ``PerAxis(0)`` on a vector would give each element its own exponent, i.e.
almost no quantization. So a recipe says "per output channel" once and the same recipe
works for every parameter shape.

Example:
    >>> from swalp.recipes import get_recipe
    >>> get_recipe("paper", bits=6).weight
    BlockFloat(wl=6, ebits=8, block=PerAxis(axis=0))
    >>> get_recipe("fp32").weight is None
    True
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ._checks import check_int
from .formats import (
    FORMAT_TYPES,
    FP8_E4M3,
    FP8_E5M2,
    MXINT8,
    BlockFloat,
    FixedPoint,
    Format,
    PerAxis,
    PerGroup,
    PerTensor,
    Rounding,
    get_format,
)

__all__ = ["RECIPES", "ROLES", "Recipe", "get_recipe", "param_format"]

ROLES = ("weight", "activation", "error", "grad", "momentum", "acc")


@dataclass(frozen=True)
class Recipe:
    """The formats of one low-precision training set-up; ``None`` is full precision.

    Args:
        weight: the weights the forward pass uses (``w = Q_W(a)``).
        activation: layer outputs, quantized by :class:`swalp.Quantizer` going forward.
        error: gradients w.r.t. those outputs, quantized by the same Quantizer going back.
        grad: weight gradients, quantized before the optimizer step (``g = Q_G(grad)``).
        momentum: SGD momentum and other first-moment optimizer buffers (Adam's ``exp_avg``).
        acc: the weight accumulator ``a = Q_ACC(a - lr m)``. When ``acc == weight`` the
            accumulator and the weights are one tensor (no full-precision master copy).
        rounding: ``"stochastic"`` (the paper) or ``"nearest"``, for every role.
        name: a label, shown in logs and configs.

    Formats may be given as preset names (``"e4m3"``); they are stored as format objects.

    Example:
        >>> from swalp import FixedPoint
        >>> r = Recipe(weight=FixedPoint(8, 6), acc=FixedPoint(8, 6), name="w-only")
        >>> r.activation is None, r.rounding.value
        (True, 'stochastic')
    """

    weight: Format | None = None
    activation: Format | None = None
    error: Format | None = None
    grad: Format | None = None
    momentum: Format | None = None
    acc: Format | None = None
    rounding: Rounding = Rounding.STOCHASTIC
    name: str = "custom"

    def __post_init__(self):
        for role in ROLES:
            value = getattr(self, role)
            if value is not None:
                try:
                    value = get_format(value)
                except ValueError as e:
                    raise ValueError(f"Recipe.{role}: {e}") from None
                if not isinstance(value, FORMAT_TYPES):
                    raise ValueError(f"Recipe.{role} must be a format or None, got {value!r}")
                object.__setattr__(self, role, value)
        object.__setattr__(self, "rounding", Rounding.parse(self.rounding))
        if not isinstance(self.name, str):
            raise ValueError(f"Recipe.name must be a str, got {self.name!r}")

    def __repr__(self) -> str:
        parts = [f"name={self.name!r}"] + [f"{r}={getattr(self, r)!r}" for r in ROLES]
        return "Recipe(" + ", ".join(parts) + f", rounding={self.rounding.value!r})"

    @property
    def is_full_precision(self) -> bool:
        """True when every role is ``None`` (the "fp32" recipe)."""
        return all(getattr(self, r) is None for r in ROLES)

    def to_dict(self) -> dict:
        """JSON-friendly description: each format as its repr, ``None`` kept."""
        d = {r: (None if getattr(self, r) is None else repr(getattr(self, r))) for r in ROLES}
        return {"name": self.name, **d, "rounding": self.rounding.value}

    def with_bits(self, bits: int) -> "Recipe":
        """Every integer format (FixedPoint, BlockFloat incl. MXINT8) with ``bits`` bits.

        FixedPoint keeps its integer bits (``FixedPoint(8, 6)`` -> ``FixedPoint(6, 4)``).
        Float formats (FP8, MXFP8, bf16) have no single word length to change, so a
        recipe with no integer format raises ValueError rather than ignoring ``bits``.
        """
        check_int("bits", bits, 2, 32)
        integer = (FixedPoint, BlockFloat)
        changes = {r: getattr(self, r).with_bits(bits) for r in ROLES if isinstance(getattr(self, r), integer)}
        if not changes:
            raise ValueError(
                f"recipe {self.name!r} has no integer formats (fixed point or block float), so bits={bits} "
                "has nothing to set; for floats build a Recipe with FloatFormat(exp, man) or MXFloat instead"
            )
        return dataclasses.replace(self, **changes)


def param_format(fmt: Format | None, tensor) -> Format | None:
    """The format used for one parameter-shaped tensor (weight, gradient, momentum, acc).

    * A per-axis blocking on a tensor with at most one dimension (bias, BN scale) becomes
      one block per tensor (the paper's rule: 1-D parameters get one exponent).
    * An MX-style ``PerGroup(size, -1)`` on a conv weight ``(out, in, k...)`` runs along
      the input channels (axis 1), the reduction dimension, instead of the kernel width.
    * Everything else is returned unchanged.

    Args:
        fmt: a format or None.
        tensor: anything with ``.dim()`` (a Tensor or Parameter).

    >>> import torch
    >>> param_format(BlockFloat(8, block=PerAxis(0)), torch.zeros(5))
    BlockFloat(wl=8, ebits=8, block=PerTensor())
    """
    block = getattr(fmt, "block", None)
    if block is None:
        return fmt
    ndim = tensor.dim()
    if isinstance(block, PerAxis) and ndim <= 1:
        return dataclasses.replace(fmt, block=PerTensor())
    if isinstance(block, PerGroup) and block.axis in (-1, ndim - 1) and ndim > 2:
        return dataclasses.replace(fmt, block=PerGroup(block.size, 1))
    return fmt


def _paper(block_w, block_a, name) -> Recipe:
    w, a = BlockFloat(8, block=block_w), BlockFloat(8, block=block_a)
    return Recipe(weight=w, activation=a, error=a, grad=w, momentum=w, acc=w, name=name)


# Why these fixed-point fractional lengths (8 bits, stochastic rounding): each role gets
# the range its values need. Training the cnn1d on MNIST-1D at lr 0.05 for 10 epochs, the
# largest magnitudes seen were: weights 1.1 (fl=6: range +-2, grid 1/64), conv/linear
# outputs 14 (fl=3: +-16), errors 1e-2 (fl=11: +-0.0625, grid 5e-4), gradients 0.3
# (fl=8: +-0.5) and momentum, about grad / (1 - 0.9), 0.6 (fl=7: +-1). One shared fl
# would either saturate activations or flush most errors and gradients to zero (unbiased
# with stochastic rounding, but with a variance far above the signal).
_FIXED8 = Recipe(
    weight=FixedPoint(8, 6),
    activation=FixedPoint(8, 3),
    error=FixedPoint(8, 11),
    grad=FixedPoint(8, 8),
    momentum=FixedPoint(8, 7),
    acc=FixedPoint(8, 6),
    name="fixed8",
)

_RECIPES: dict[str, Recipe] = {
    "fp32": Recipe(name="fp32"),
    "paper": _paper(PerAxis(0), PerTensor(), "paper"),
    "paper-big-block": _paper(PerTensor(), PerTensor(), "paper-big-block"),
    # QPyTorch's port of the paper's small block: activations and errors one exponent per sample.
    "paper-per-sample": _paper(PerAxis(0), PerAxis(0), "paper-per-sample"),
    "fixed8": _FIXED8,
    "mx": Recipe(weight=MXINT8, activation=MXINT8, error=MXINT8, grad=MXINT8, momentum=MXINT8, acc=MXINT8, name="mx"),
    # Everything in 8 bits, as the paper: the accumulator is the E4M3 weight tensor
    # (stochastic rounding keeps small updates unbiased); momentum is E5M2 like the
    # gradients it sums, because it needs their dynamic range more than mantissa bits.
    # For a 16-bit accumulator: dataclasses.replace(get_recipe("fp8"), acc=BFLOAT16).
    "fp8": Recipe(
        weight=FP8_E4M3, activation=FP8_E4M3, error=FP8_E5M2, grad=FP8_E5M2, momentum=FP8_E5M2, acc=FP8_E4M3, name="fp8"
    ),
}

RECIPES: tuple[str, ...] = tuple(_RECIPES)  # the names get_recipe, --recipe and TrainConfig accept


def get_recipe(name_or_recipe: str | Recipe, bits: int | None = None) -> Recipe:
    """A named recipe (or a :class:`Recipe` passed through), optionally with ``bits`` bits.

    Args:
        name_or_recipe: one of :data:`RECIPES` (``"fp32"``, ``"paper"``, ``"paper-big-block"``,
            ``"paper-per-sample"``, ``"fixed8"``, ``"mx"``, ``"fp8"``) or a Recipe.
        bits: word length for every integer format (see :meth:`Recipe.with_bits`); None
            keeps 8. Float-only recipes ("fp32", "fp8") raise ValueError for any bits.

    Raises:
        ValueError: unknown name (the message lists the names), bits < 2 or > 32, or
            bits for a recipe without integer formats.

    Example:
        >>> get_recipe("fixed8", bits=6).weight
        FixedPoint(wl=6, fl=4)
    """
    if isinstance(name_or_recipe, Recipe):
        recipe = name_or_recipe
    else:
        key = str(name_or_recipe).lower().replace("_", "-")
        if key not in _RECIPES:
            raise ValueError(f"unknown recipe {name_or_recipe!r}; accepted: {', '.join(RECIPES)}")
        recipe = _RECIPES[key]
    return recipe if bits is None else recipe.with_bits(bits)
