"""PreResNet-164 for CIFAR (bottleneck pre-activation ResNet, He et al. 2016), quantized as the
SWALP reference code does (``preresnet_low.py``).

Layout: Conv3x3(16) stem; three stages of 18 bottleneck blocks with 16, 32, 64 planes
(expansion 4, so 64, 128, 256 output channels; stride 2 at the start of stages 2 and 3);
then BN-ReLU-global average pool-Linear. Each block computes
``x + conv3(relu(bn3(conv2(relu(bn2(conv1(relu(bn1(x)))))))))``, the shortcut being the
identity or a strided 1x1 conv (no BN) where the shape changes. 1,703,258 parameters for 10 classes.

Quantizers (Q_A forward, Q_E backward): after the stem conv (1), and before and after every
conv inside each bottleneck (6 per block, 324); 325 in all. Never on the input, the logits,
the shortcut, the residual sum, or the final BN/pool/fc. They are created with no format (the
identity): :func:`swalp.nn.configure_quantizers` gives them the recipe's formats.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from ..nn.quantizer import Quantizer


class Bottleneck(nn.Module):
    """Pre-activation bottleneck: (BN-ReLU-Q-conv-Q) x 3 plus a shortcut.

    Shapes: input (N, inplanes, H, W); output (N, 4*planes, H/stride, W/stride).
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, kernel_size=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        # One Quantizer per place (the reference reuses one module; the effect is the same,
        # since each call draws its own seed, but separate modules can be inspected and toggled).
        self.q1_in, self.q1_out = Quantizer(), Quantizer()
        self.q2_in, self.q2_out = Quantizer(), Quantizer()
        self.q3_in, self.q3_out = Quantizer(), Quantizer()
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, kernel_size=1, stride=stride, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        out = self.q1_out(self.conv1(self.q1_in(self.relu(self.bn1(x)))))
        out = self.q2_out(self.conv2(self.q2_in(self.relu(self.bn2(out)))))
        out = self.q3_out(self.conv3(self.q3_in(self.relu(self.bn3(out)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class PreResNet(nn.Module):
    """Bottleneck pre-activation ResNet for CIFAR; ``depth = 9 n + 2`` (164: n = 18 blocks per stage).

    Args:
        num_classes: size of the output.
        depth: 9 n + 2 for n blocks per stage.
        in_channels: channels of the input image.

    Shapes: input (N, in_channels, H, W) (32x32 for CIFAR); output (N, num_classes).
    """

    def __init__(self, num_classes: int = 10, depth: int = 164, in_channels: int = 3):
        super().__init__()
        if depth < 11 or (depth - 2) % 9:
            raise ValueError(f"PreResNet depth must be 9n+2 with n >= 1 (e.g. 164), got {depth}")
        n = (depth - 2) // 9
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, padding=1, bias=False)
        self.q_stem = Quantizer()
        self.inplanes = 16
        self.layer1 = self._make_layer(16, n, stride=1)
        self.layer2 = self._make_layer(32, n, stride=2)
        self.layer3 = self._make_layer(64, n, stride=2)
        self.bn = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        # AvgPool2d(8) in the reference; the same on CIFAR's 8x8 maps, and any input size works.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.inplanes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n_fan = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n_fan))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [Bottleneck(self.inplanes, planes, stride)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.q_stem(self.conv1(x))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.avgpool(self.relu(self.bn(x)))
        return self.fc(x.flatten(1))


def preresnet164(num_classes: int = 10, in_channels: int = 3) -> PreResNet:
    """PreResNet-164 (bottleneck, 18 blocks per stage) with 325 unconfigured Quantizers.

    Example:
        >>> net = preresnet164(10)
        >>> sum(p.numel() for p in net.parameters())
        1703258
    """
    return PreResNet(num_classes, 164, in_channels)


def build(num_classes: int, input_shape: tuple) -> PreResNet:
    if len(input_shape) != 3:
        raise ValueError(f"preresnet164 needs images (C, H, W), got input shape {tuple(input_shape)}")
    return preresnet164(num_classes, in_channels=input_shape[0])


# The paper's CIFAR set-up for PreResNet-164 (arXiv 1904.11943, its CIFAR experiments, as the
# reference scripts run them): E = 225, B = 150, lr0 0.1, swa_lr 0.01, wd 3e-4, batch 128, momentum 0.9.
PAPER_CIFAR = dict(epochs=225, budget=150, lr=0.1, swa_lr=0.01, wd=3e-4, batch_size=128, momentum=0.9)
