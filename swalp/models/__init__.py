"""Models: small ones for the embedded data sets and the paper's networks, by name.

``registry.py`` names them (``MODELS``) with their training presets; the paper's networks
place their own Quantizers where the SWALP reference code does.

Example:
    >>> from swalp.models import vgg16
    >>> sum(p.numel() for p in vgg16(10).parameters())
    15245130
"""

from .preresnet import preresnet164
from .registry import DEFAULT_MODELS, MODELS, ModelSpec, build_model, default_model, model_defaults, register_model
from .resnet import resnet18
from .vgg import vgg16

__all__ = ["DEFAULT_MODELS", "MODELS", "ModelSpec", "build_model", "default_model", "model_defaults",
           "preresnet164", "register_model", "resnet18", "vgg16"]
