"""Built-in task ``cnn``: a small convolutional network for images ``(C, H, W)``.

Two 3x3 convolutions (padding 1) with ReLU, a 2x2 max-pool after each convolution whose input is
still at least :data:`_POOL_MIN_SIDE` pixels on its short side, an adaptive average pool to 4x4,
and a two-layer classifier head. The pooling rule makes one definition fit 8x8 digits (no
max-pool: the images are already tiny), 28x28 MNIST (one) and 32x32 CIFAR (two) while keeping the
head the same size (32 x 4 x 4 inputs). No BatchNorm, no buffers: the state is exactly the
trainable parameters, all float32.

The adaptive pool is :class:`UniformAveragePool`: ATen's kernel with its float operations
written as whole-tensor ones where that gives the same bits, since ATen's computes each
window's bounds with integer divisions per output value: 42 % of a validation pass of the
digits model (1.6 ms of 3.8, :mod:`fedchain.rounds.validation`), about 0.4 ms this way.

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
_MAX_WINDOW = 4  # UniformAveragePool's largest window side computed by tensor adds (k * k adds)


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
        layers.append(UniformAveragePool(_POOLED_SIDE))
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


class UniformAveragePool(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d(side)``, bit for bit, computed by whole-tensor adds where it can.

    Where the output side divides the input's (uniform ``k x k`` windows), ATen's CPU kernel for
    a contiguous ``(N, C, H, W)`` float input computes each output as ``0``, plus the window's
    values row by row, then ``/ k / k`` (the float operations of ``at::native``'s
    ``cpu_adaptive_avg_pool2d``); here each of those steps is one tensor operation over all
    windows at once: the same operations in the same order, so the same bits (pinned by
    ``tests/test_cnn.py``), about 4x faster. Only without autograd (the validation and
    evaluation passes), only on the CPU, for sides above 1 (ATen takes a 1x1 output as a
    mean) and at most 4x4 windows; anything else goes to ATen's kernel.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side = self.output_size
        if not (isinstance(side, int) and _computes_exactly(x, side)):
            return super().forward(x)
        n, c, h = x.shape[:3]
        k = h // side
        windows = x.view(n, c, side, k, side, k)
        total = windows[:, :, :, 0, :, 0] + 0.0  # ATen's sum starts at 0: -0.0 becomes 0.0
        for dh in range(k):
            for dw in range(k):
                if dh or dw:
                    total += windows[:, :, :, dh, :, dw]
        return total.div_(k).div_(k)


def _computes_exactly(x: torch.Tensor, side: int) -> bool:
    """Whether :class:`UniformAveragePool` computes ``x``'s pool itself (see there)."""
    return (
        not (torch.is_grad_enabled() and x.requires_grad)
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.dim() == 4
        and x.is_contiguous()
        and side > 1
        and x.shape[2] == x.shape[3]
        and x.shape[2] % side == 0
        and x.shape[2] // side <= _MAX_WINDOW
    )


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
