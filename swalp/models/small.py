"""Small models for the embedded data sets; quantizers are placed by ``quantize_model``.

- ``"cnn1d"`` (MNIST-1D's default): three Conv1d(32, stride 2)+ReLU, then a Linear.
- ``"mlp"``: two hidden Linear(128)+ReLU layers, on flattened input.
- ``"cnn"`` (digits' default): two Conv2d(32)+ReLU (the second with stride 2), then a Linear.

None has batch norm, so the average needs no statistics refresh. Defaults come from short
tuning runs on this repository's 2-core CPU (see ``swalp compare``'s README section).
"""

from __future__ import annotations

import math

from torch import nn



def _conv_out(n: int, kernel: int, stride: int, padding: int) -> int:
    return (n + 2 * padding - kernel) // stride + 1


def cnn1d(num_classes: int = 10, input_shape: tuple = (1, 40), width: int = 32) -> nn.Sequential:
    """Three Conv1d(width) layers with stride 2 and ReLU, then Linear to the classes.

    Shapes: input (N, C, L) with (C, L) = ``input_shape``; output (N, num_classes).

    Example:
        >>> import torch
        >>> cnn1d(10, (1, 40))(torch.zeros(2, 1, 40)).shape
        torch.Size([2, 10])
    """
    channels, length = input_shape
    layers, c = [], channels
    for kernel in (5, 3, 3):
        layers += [nn.Conv1d(c, width, kernel, stride=2, padding=1), nn.ReLU()]
        length, c = _conv_out(length, kernel, 2, 1), width
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(width * length, num_classes))


def mlp(num_classes: int = 10, input_shape: tuple = (1, 8, 8), hidden: int = 128) -> nn.Sequential:
    """Flatten, two Linear(hidden)+ReLU layers, Linear to the classes.

    Example:
        >>> import torch
        >>> mlp(10, (1, 8, 8))(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """
    n_in = math.prod(input_shape)
    return nn.Sequential(nn.Flatten(), nn.Linear(n_in, hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def cnn(num_classes: int = 10, input_shape: tuple = (1, 8, 8), width: int = 32) -> nn.Sequential:
    """Conv2d(width, 3x3)+ReLU, Conv2d(width, 3x3, stride 2)+ReLU, Linear to the classes.

    Example:
        >>> import torch
        >>> cnn(10, (1, 8, 8))(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """
    c, h, w = input_shape
    h2, w2 = _conv_out(h, 3, 2, 1), _conv_out(w, 3, 2, 1)
    return nn.Sequential(nn.Conv2d(c, width, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(width * h2 * w2, num_classes))


# Training presets (TrainConfig fields) of the small models. One CPU thread: for layers
# this small, a second thread costs more in synchronisation than it gains (and on a busy
# machine, far more: OpenMP threads wait for each other). Schedules are SWALP's: `budget`
# epochs of SGD, then averaging to `epochs` = 1.5 x budget. MNIST-1D: lr0 0.15 and swa_lr
# 0.1 came from single runs (seeds 0 and 1) of lr0 in {0.05, 0.1, 0.15, 0.2} and swa_lr in
# {0.01, 0.03, 0.05, 0.1}: 0.15 gave the best full-precision SGD among them, and a swa_lr
# near lr0 the best averages (more diverse iterates to average).
MNIST1D = dict(epochs=45, budget=30, lr=0.15, swa_lr=0.1, wd=5e-4, batch_size=128, momentum=0.9, threads=1)
DIGITS = dict(epochs=30, budget=20, lr=0.05, swa_lr=0.01, wd=5e-4, batch_size=64, momentum=0.9, threads=1)
