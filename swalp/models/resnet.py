"""ResNet-18 in the standard ImageNet layout (He et al. 2016; torchvision's ``resnet18``), quantized.

Layout: Conv7x7(64, stride 2)-BN-ReLU-MaxPool3x3(stride 2); four stages of two basic blocks
(64, 128, 256, 512 channels; stride 2 at the start of stages 2-4, with a 1x1 conv + BN
shortcut); global average pool; Linear. 11,689,512 parameters for 1000 classes.

Quantizers: the SWALP reference has no ResNet-18 code, so we apply PreResNet-164's rule
(``preresnet.py``): one after the stem conv, and one before and one after every
conv inside each basic block (4 per block, 32); 33 in all. Never on the input, the logits,
the shortcut (identity or 1x1 conv + BN), the residual sum, or the final pool/fc. They are
created with no format (the identity): :func:`swalp.nn.configure_quantizers` gives them
the recipe's formats.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..nn.quantizer import Quantizer


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), with a Quantizer before and after each conv.

    Shapes: input (N, inplanes, H, W); output (N, planes, H/stride, W/stride).
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.q1_in, self.q1_out = Quantizer(), Quantizer()
        self.q2_in, self.q2_out = Quantizer(), Quantizer()
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.q1_out(self.conv1(self.q1_in(x)))))
        out = self.bn2(self.q2_out(self.conv2(self.q2_in(out))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ResNet(nn.Module):
    """ResNet with basic blocks, ImageNet stem.

    Args:
        num_classes: size of the output.
        layers: blocks per stage (ResNet-18: (2, 2, 2, 2)).
        in_channels: channels of the input image.

    Shapes: input (N, in_channels, H, W), 224x224 for ImageNet (any H, W >= 32 works thanks to
    the adaptive pool); output (N, num_classes).
    """

    def __init__(self, num_classes: int = 1000, layers=(2, 2, 2, 2), in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.q_stem = Quantizer()
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.inplanes = 64
        stages = []
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if i == 0 else 2
            stage = [BasicBlock(self.inplanes, planes, stride)] + [BasicBlock(planes, planes) for _ in range(1, blocks)]
            self.inplanes = planes
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.q_stem(self.conv1(x)))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def resnet18(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-18 (ImageNet layout) with 33 unconfigured Quantizers.

    Example:
        >>> net = resnet18()
        >>> sum(p.numel() for p in net.parameters())
        11689512
    """
    return ResNet(num_classes, (2, 2, 2, 2), in_channels)


def build(num_classes: int, input_shape: tuple) -> ResNet:
    if len(input_shape) != 3:
        raise ValueError(f"resnet18 needs images (C, H, W), got input shape {tuple(input_shape)}")
    return resnet18(num_classes, in_channels=input_shape[0])


# OUR schedule, not the paper's (its ImageNet set-up is not ours to copy): the usual 90-epoch SGD
# recipe for ResNet-18 (lr 0.1 for batch 256, scale it by batch/256; wd 1e-4; momentum 0.9),
# read as the SWALP schedule with E = 1.5 B: budget 60, then 30 epochs of averaging at
# swa_lr 0.01 (the swa_lr/lr0 ratio of the PreResNet-164 recipe).
IMAGENET = dict(epochs=90, budget=60, lr=0.1, swa_lr=0.01, wd=1e-4, batch_size=256, momentum=0.9)
