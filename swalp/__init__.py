"""swalp: low-precision training with Stochastic Weight Averaging (SWALP).

The public surface is what ``__all__`` lists; every other module is internal.
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
from .quantize import quantize
from .quantizer import Quantizer
from . import _cpp, _triton  # noqa: F401,E402  register the fast backends (built on first use, not here)
from .recipes import Recipe, get_recipe
from .convert import quantize_model, set_quantizers
from .optim import LowPrecisionOptimizer
from .averaging import WeightAverage, update_bn
from .schedule import SWALPLR

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
]
