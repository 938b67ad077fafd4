"""torchvision architectures as tasks: built with no weights (nothing is downloaded).

A pretrained base comes from a local file (``--base-weights``, :mod:`fedchain.learning.base`).
The head is each architecture's last linear layer. Inputs are adapted in the forward pass by a
pre-hook without parameters (so the model's tensor names stay torchvision's and a torchvision
state dict loads): one grey channel is repeated to three, and an image whose short side is under
:data:`MIN_SIDE` pixels is scaled up bilinearly to it (VGG's five poolings need 32; the others
accept it too). Pixel values are used as fedchain's sources give them, in [0, 1]: a base must be
trained on the same scaling.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from fedchain.errors import ConfigError
from fedchain.learning.task import Task

MIN_SIDE = 32
HEADS = {
    "resnet18": "fc",
    "mobilenet_v3_small": "classifier.3",
    "efficientnet_b0": "classifier.1",
    "vgg11": "classifier.6",
}


def torchvision_task(name: str) -> Task:
    """The task of torchvision architecture ``name`` (one of :data:`HEADS`)."""

    def build(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        if len(input_shape) != 3 or input_shape[0] not in (1, 3):
            raise ConfigError(
                f"model {name!r} needs images of 1 or 3 channels (C, H, W), got {input_shape}"
            )
        import torchvision.models  # seconds to import: only for these architectures

        model: nn.Module = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
        model.register_forward_pre_hook(_adapt_input)
        return model

    return Task(name=name, build=build, head=HEADS[name])


def _adapt_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    x: torch.Tensor = args[0]
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    height, width = x.shape[-2:]
    if min(height, width) < MIN_SIDE:
        scale = MIN_SIDE / min(height, width)
        size = (max(MIN_SIDE, round(height * scale)), max(MIN_SIDE, round(width * scale)))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return (x, *args[1:])
