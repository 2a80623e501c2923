"""Low precision inside a model: the :class:`Quantizer` module and the module swap that
places it (:func:`quantize_model`).

Example:
    >>> from torch import nn
    >>> from swalp.nn import quantize_model, quantizers
    >>> net = quantize_model(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), "paper")
    >>> len(quantizers(net))
    1
"""

from .convert import (
    PLACEMENTS,
    configure_quantizers,
    full_precision,
    model_recipe,
    quantize_model,
    quantizers,
    set_quantizers,
)
from .int8 import COMPUTES, PRODUCTS, compute_paths
from .quantizer import Quantizer
from .saved import packed_activations
from .weights import is_packed, packed_state_dict, packed_weight, unpack_state_dict, unpacked

__all__ = ["COMPUTES", "PLACEMENTS", "PRODUCTS", "Quantizer", "compute_paths", "configure_quantizers", "full_precision", "is_packed", "model_recipe",
           "packed_activations", "packed_state_dict", "packed_weight", "quantize_model", "quantizers", "set_quantizers",
           "unpack_state_dict", "unpacked"]
