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
]
