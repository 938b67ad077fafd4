"""He (Kaiming) normal initialisation for the built-in ReLU networks, drawn from the build seed.

torch's default (uniform, about 0.4x the He scale) shrinks the signal at every layer; with four
layers and inputs in [0, 1] the first epochs then sit on a loss plateau, which costs FedAvg many
rounds (measured in experiments/bench_training.py). Every weight is drawn from a local
``torch.Generator`` seeded with the seed fedchain builds the model under
(``torch.initial_seed()``, see :func:`fedchain.learning.task.build_task_model`), in module order,
and every bias is zeroed, so nothing of torch's default initialisation survives.
"""

from __future__ import annotations

import torch
from torch import nn


def init_he(model: nn.Module) -> None:
    """He-normal weights for every convolution and linear layer, zero biases, in module order."""
    generator = torch.Generator().manual_seed(torch.initial_seed())
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=generator)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
