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
from .quantizer import Quantizer
from .saved import packed_activations

__all__ = ["PLACEMENTS", "Quantizer", "configure_quantizers", "full_precision", "model_recipe", "packed_activations",
           "quantize_model", "quantizers", "set_quantizers"]
