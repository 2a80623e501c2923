"""VGG-16 for CIFAR without batch norm, with its quantizers where the SWALP reference code puts them.

Layout (the reference ``vgg_low.py``): 13 Conv3x3(bias)+ReLU in five stages of 64, 128, 256,
512, 512 channels, each stage ended by MaxPool2x2; then Dropout-Linear(512,512)-ReLU-Dropout-
Linear(512,512)-ReLU-Linear(512, classes). 15,245,130 parameters for 10 classes.

Quantizers (Q_A forward, Q_E backward): after each conv+ReLU (13) and after the two hidden
Linear+ReLU (2); 15 in all, none on the input or the logits. They are created with no format
(the identity): :func:`swalp.nn.configure_quantizers` gives them the recipe's activation
and error formats.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from ..nn.quantizer import Quantizer

# Channels per conv; "M" is a 2x2 max-pool.
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    """VGG for 32x32 inputs (five 2x2 pools leave 1x1x512), no batch norm.

    Args:
        num_classes: size of the output.
        cfg: channels per conv layer, ``"M"`` for a max-pool (default VGG-16's).
        in_channels: channels of the input image.

    Shapes: input (N, in_channels, 32, 32); output (N, num_classes).
    """

    def __init__(self, num_classes: int = 10, cfg=VGG16_CFG, in_channels: int = 3):
        super().__init__()
        layers, c = [], in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(c, v, kernel_size=3, padding=1), nn.ReLU(inplace=True), Quantizer()]
                c = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Dropout(),
            nn.Linear(c, 512),
            nn.ReLU(inplace=True),
            Quantizer(),
            nn.Dropout(),
            nn.Linear(512, 512),
            nn.ReLU(inplace=True),
            Quantizer(),
            nn.Linear(512, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # N(0, 2/n) with n = k*k*out_channels (He et al., fan-out), as the reference code.
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


def vgg16(num_classes: int = 10, in_channels: int = 3) -> VGG:
    """VGG-16 (CIFAR variant, no batch norm) with 15 unconfigured Quantizers.

    Example:
        >>> import torch
        >>> net = vgg16(10)
        >>> sum(p.numel() for p in net.parameters())
        15245130
        >>> net(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    return VGG(num_classes, VGG16_CFG, in_channels)


def build(num_classes: int, input_shape: tuple) -> VGG:
    if len(input_shape) != 3 or tuple(input_shape[1:]) != (32, 32):
        raise ValueError(f"vgg16 needs 32x32 images (input shape (C, 32, 32)), got {tuple(input_shape)}; "
                         "use it with cifar10/cifar100")
    return vgg16(num_classes, in_channels=input_shape[0])


# The paper's CIFAR set-up for VGG-16 (arXiv 1904.11943, its CIFAR experiments, as the
# reference scripts run them): E = 300, B = 200, lr0 0.05, swa_lr 0.01, wd 5e-4, batch 128,
# momentum 0.9; the "paper" recipe (8-bit small-block BFP) is the trainer's default.
PAPER_CIFAR = dict(epochs=300, budget=200, lr=0.05, swa_lr=0.01, wd=5e-4, batch_size=128, momentum=0.9)
