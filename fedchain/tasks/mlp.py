"""Built-in task ``mlp``: flatten any input, one hidden layer of 128 ReLU units, linear output.

It takes any input shape, so it is the model for flat ``(N, D)`` tabular data. No buffers. As a
task module (:mod:`fedchain.learning.task`) it defines ``build_model`` and ``HEAD``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fedchain.tasks.he_init import init_he

HEAD = "net.3"  # the output layer

_HIDDEN = 128


class MLP(nn.Module):
    """Flatten any input, one hidden ReLU layer, linear output."""

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(num_features, _HIDDEN),
            nn.ReLU(),
            nn.Linear(_HIDDEN, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


def build_model(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The MLP for examples of ``input_shape`` (flattened), He-initialised."""
    model = MLP(math.prod(input_shape), num_classes)
    init_he(model)
    return model
