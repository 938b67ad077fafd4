"""Models that federated clients train, and their weights as named numpy arrays.

Two architectures (:data:`MODELS`), both small enough to train on two CPU cores:

* ``cnn``: two 3x3 convolutions (padding 1) with ReLU, a 2x2 max-pool after each convolution
  whose input is still at least :data:`_POOL_MIN_SIDE` pixels on its short side, an adaptive
  average pool to 4x4, and a two-layer classifier head. The pooling rule makes one definition fit
  8x8 digits (no max-pool: the images are already tiny), 28x28 MNIST (one) and 32x32 CIFAR (two)
  while keeping the head the same size (32 x 4 x 4 inputs). It needs image input ``(C, H, W)``.
* ``mlp``: flatten, one hidden layer of 128 ReLU units, linear output. It takes any input shape,
  so it is the model for flat ``(N, D)`` tabular data.

Neither uses BatchNorm (or any other buffer): BatchNorm's running mean and variance are not
parameters, averaging them across clients with different data is ill-defined, and its
``num_batches_tracked`` counter is an ``int64`` that does not belong in a float update. Without
buffers, a model's ``state_dict`` is exactly its trainable parameters, all ``float32``.

Weights start He-normal (biases zero), which suits ReLU networks and avoids the slow start
torch's default initialisation gives these small models (measured: FedAvg on digits needed far
more rounds with it). Initialisation is deterministic and leaves global state alone: every
weight is drawn from a local ``torch.Generator`` seeded with ``seed``, in module order, and every
bias is zeroed, so nothing of torch's default initialisation survives. The layer constructors
still draw their default initialisation from torch's global generator; they run inside
:func:`torch.random.fork_rng`, which restores the global CPU RNG state afterwards, so building a
model does not disturb the caller's random stream. (``fork_rng`` is process-global while it runs:
do not build models from several threads at once; Flower runs clients in separate processes.)
The same seed gives the same weights wherever torch's normal sampler is the same; a run still
registers the hash of its initial model rather than trusting the seed.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from fedchain.errors import ConfigError
from fedchain.learning.catalog import MODELS

__all__ = [
    "MODELS",
    "build_model",
    "default_model",
    "load_numpy_state",
    "state_to_numpy",
]


_CNN_CHANNELS = (16, 32)
_CNN_POOLED_SIDE = 4  # adaptive average pool output: 4x4 per channel
_CNN_HIDDEN = 64
_MLP_HIDDEN = 128
# Max-pool after a convolution only while the map is at least this many pixels on its short side:
# cheap on large images, lossless on tiny ones.
_POOL_MIN_SIDE = 16


class SmallCNN(nn.Module):
    """Two convolutions, size-dependent max-pooling, adaptive pooling, two-layer head."""

    def __init__(self, in_channels: int, height: int, width: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, side = in_channels, min(height, width)
        for out_channels in _CNN_CHANNELS:
            layers += [nn.Conv2d(channels, out_channels, 3, padding=1), nn.ReLU()]
            if side >= _POOL_MIN_SIDE:
                layers.append(nn.MaxPool2d(2))
                side //= 2
            channels = out_channels
        layers.append(nn.AdaptiveAvgPool2d(_CNN_POOLED_SIDE))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * _CNN_POOLED_SIDE**2, _CNN_HIDDEN),
            nn.ReLU(),
            nn.Linear(_CNN_HIDDEN, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.features(x))
        return out


class MLP(nn.Module):
    """Flatten any input, one hidden ReLU layer, linear output."""

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(num_features, _MLP_HIDDEN),
            nn.ReLU(),
            nn.Linear(_MLP_HIDDEN, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


def default_model(input_shape: tuple[int, ...]) -> str:
    """``"cnn"`` for image input ``(C, H, W)``, ``"mlp"`` for anything else (e.g. ``(D,)``)."""
    return "cnn" if len(input_shape) == 3 else "mlp"


def build_model(
    name: str, input_shape: tuple[int, ...], num_classes: int, *, seed: int
) -> nn.Module:
    """Build model ``name`` for examples of ``input_shape`` (without the batch axis).

    ``input_shape`` is ``ArrayDataset.x.shape[1:]``: ``(C, H, W)`` for images, ``(D,)`` for flat
    features. Weights are a pure function of ``(name, input_shape, num_classes, seed)``; the
    caller's global RNG state is left as it was (see the module docstring).
    Raises :class:`ConfigError` for an unknown name, a bad shape or class count, or ``cnn`` on
    non-image input.
    """
    shape = _check_model_args(name, input_shape, num_classes, seed)
    with torch.random.fork_rng(devices=[]):  # the constructors draw from the global RNG
        model: nn.Module
        if name == "cnn":
            model = SmallCNN(shape[0], shape[1], shape[2], num_classes)
        else:
            model = MLP(int(np.prod(shape)), num_classes)
    _init_he(model, torch.Generator().manual_seed(seed))
    return model


def _init_he(model: nn.Module, generator: torch.Generator) -> None:
    """He (Kaiming) normal weights for ReLU networks, zero biases, drawn in module order.

    torch's default (uniform, about 0.4x the He scale) shrinks the signal at every layer; with four
    layers and inputs in [0, 1] the first epochs then sit on a loss plateau, which costs FedAvg
    many rounds (measured in experiments/bench_training.py).
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=generator)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def _check_model_args(
    name: str, input_shape: tuple[int, ...], num_classes: int, seed: int
) -> tuple[int, ...]:
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    shape = tuple(int(d) for d in input_shape)
    if not shape or any(d < 1 for d in shape):
        raise ConfigError(
            f"input_shape must be a non-empty tuple of positive sizes (one example, no batch "
            f"axis), got {input_shape}"
        )
    if name == "cnn" and len(shape) != 3:
        raise ConfigError(
            f"model 'cnn' needs image input of shape (C, H, W), got {shape}; "
            "use model 'mlp' for flat features"
        )
    if num_classes < 2:
        raise ConfigError(f"num_classes must be >= 2, got {num_classes}")
    if not 0 <= seed < 2**63:
        raise ConfigError(f"seed must be an integer in 0 .. 2**63 - 1, got {seed}")
    return shape


def state_to_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's ``state_dict`` as fresh float32, C-contiguous numpy arrays, in its order.

    The arrays are copies: later training does not change them, and changing them does not
    change the model. Non-float entries (none in :data:`MODELS`) would be converted to float32.
    """
    return {
        name: np.array(t.detach().cpu().to(torch.float32).numpy(), dtype=np.float32, order="C")
        for name, t in model.state_dict().items()
    }


def load_numpy_state(model: nn.Module, arrays: Mapping[str, np.ndarray]) -> None:
    """Copy ``arrays`` into the model's tensors in place (strict).

    The names must be exactly the model's ``state_dict`` names and every shape must match;
    otherwise :class:`ConfigError` says which names are missing, unexpected or mis-shaped and
    nothing is changed. Values are cast to each tensor's dtype. Tensors are updated in place, so
    an optimizer holding the model's parameters stays valid.
    """
    state = model.state_dict()
    missing = sorted(set(state) - set(arrays))
    unexpected = sorted(set(arrays) - set(state))
    if missing or unexpected:
        raise ConfigError(
            f"model weights do not match the model: missing {missing}, unexpected {unexpected}"
        )
    sources: dict[str, np.ndarray] = {}
    for name, tensor in state.items():
        arr = np.asarray(arrays[name])
        if tuple(arr.shape) != tuple(tensor.shape):
            raise ConfigError(
                f"model weight {name!r} has shape {tuple(arr.shape)}, the model expects "
                f"{tuple(tensor.shape)}"
            )
        if arr.dtype.kind not in "biuf":
            raise ConfigError(f"model weight {name!r} has non-numeric dtype {arr.dtype}")
        sources[name] = arr
    with torch.no_grad():
        for name, tensor in state.items():
            tensor.copy_(torch.from_numpy(np.array(sources[name], dtype=np.float32)))
