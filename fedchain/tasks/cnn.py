"""Built-in task ``cnn``: a small convolutional network for images ``(C, H, W)``.

Two 3x3 convolutions (padding 1) with ReLU, a 2x2 max-pool after each convolution whose input is
still at least :data:`_POOL_MIN_SIDE` pixels on its short side, an adaptive average pool to 4x4,
and a two-layer classifier head. The pooling rule makes one definition fit 8x8 digits (no
max-pool: the images are already tiny), 28x28 MNIST (one) and 32x32 CIFAR (two) while keeping the
head the same size (32 x 4 x 4 inputs). No BatchNorm, no buffers: the state is exactly the
trainable parameters, all float32.

As a task module (:mod:`fedchain.learning.task`) it defines ``build_model`` and ``HEAD``.
"""

from __future__ import annotations

import torch
from torch import nn

from fedchain.errors import ConfigError
from fedchain.tasks.he_init import init_he

HEAD = "classifier"

_CHANNELS = (16, 32)
_POOLED_SIDE = 4  # adaptive average pool output: 4x4 per channel
_HIDDEN = 64
# Max-pool after a convolution only while the map is at least this many pixels on its short side:
# cheap on large images, lossless on tiny ones.
_POOL_MIN_SIDE = 16


class SmallCNN(nn.Module):
    """Two convolutions, size-dependent max-pooling, adaptive pooling, two-layer head."""

    def __init__(self, in_channels: int, height: int, width: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, side = in_channels, min(height, width)
        for out_channels in _CHANNELS:
            layers += [nn.Conv2d(channels, out_channels, 3, padding=1), nn.ReLU()]
            if side >= _POOL_MIN_SIDE:
                layers.append(nn.MaxPool2d(2))
                side //= 2
            channels = out_channels
        layers.append(nn.AdaptiveAvgPool2d(_POOLED_SIDE))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * _POOLED_SIDE**2, _HIDDEN),
            nn.ReLU(),
            nn.Linear(_HIDDEN, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.features(x))
        return out


def build_model(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The CNN for images of ``input_shape`` ``(C, H, W)``, He-initialised."""
    if len(input_shape) != 3:
        raise ConfigError(
            f"model 'cnn' needs image input of shape (C, H, W), got {input_shape}; "
            "use model 'mlp' for flat features"
        )
    model = SmallCNN(*input_shape, num_classes)
    init_he(model)
    return model
