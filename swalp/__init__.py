"""swalp: low-precision training with Stochastic Weight Averaging (SWALP, arXiv 1904.11943).

The names below are the library: number formats and recipes, :func:`quantize`, the
:class:`Quantizer` module and :func:`quantize_model`, :class:`LowPrecisionOptimizer`,
:class:`WeightAverage` and :class:`SWALPLR`, and :class:`QuantizationStats` (what rounding
does to each layer's tensors). Public sub-packages, each with ``__all__``,
in reading order (imports only point down this list):

* ``swalp.formats``, ``swalp.recipes``: number formats and recipes, pure data.
* ``swalp.ops``: rounding a tensor (:func:`swalp.ops.quantize`) and its backends.
* ``swalp.nn``: the Quantizer module and the module swap.
* ``swalp.optim``: optimizer wrapper, weight average, schedule.
* ``swalp.distributed``: the 8-bit gradient all-reduce for DistributedDataParallel.
* ``swalp.models``, ``swalp.data``: networks and data sets by name.
* ``swalp.training``: the main job (``swalp train``).
* ``swalp.experiments``: the paper's comparisons (``swalp compare``, ``swalp reproduce``).
* ``swalp.cli``: the command line.

Modules and names with a leading underscore are internal.
"""

from .formats import (
    BFLOAT16,
    FLOAT16,
    FP8_E4M3,
    FP8_E5M2,
    MXFP8_E4M3,
    MXFP8_E5M2,
    MXINT8,
    BlockFloat,
    FixedPoint,
    FloatFormat,
    MXFloat,
    PerAxis,
    PerGroup,
    PerTensor,
    Rounding,
    get_format,
)
from . import distributed
from .nn import Quantizer, full_precision, quantize_model, set_quantizers
from .ops import PackedTensor, pack, quantize
from .optim import SWALPLR, LowPrecisionOptimizer, QuantizationStats, WeightAverage, update_bn
from .recipes import Recipe, get_recipe

__version__ = "0.1.0"

__all__ = [
    "BFLOAT16",
    "FLOAT16",
    "FP8_E4M3",
    "FP8_E5M2",
    "MXFP8_E4M3",
    "MXFP8_E5M2",
    "MXINT8",
    "BlockFloat",
    "FixedPoint",
    "FloatFormat",
    "MXFloat",
    "PerAxis",
    "PerGroup",
    "PerTensor",
    "Quantizer",
    "Rounding",
    "get_format",
    "quantize",
    "Recipe",
    "get_recipe",
    "quantize_model",
    "LowPrecisionOptimizer",
    "WeightAverage",
    "update_bn",
    "SWALPLR",
    "set_quantizers",
    "full_precision",
    "pack",
    "PackedTensor",
    "QuantizationStats",
]
