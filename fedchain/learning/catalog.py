"""The model names a federation may choose, checked without importing torch.

Settings are checked against these when a command starts (``fedchain simulate``,
``federation init``); importing the model code for them would load torch (about 3 s) on every
command, ``--help`` included. A model is one of:

* a built-in (:data:`MODELS`): task modules shipped in :mod:`fedchain.tasks`;
* a torchvision architecture (:data:`TORCHVISION_MODELS`), built by torchvision with no
  weights downloaded; a pretrained base comes from a local file (``--base-weights``);
* the import path of the user's own task module (``mypackage.mytask``: it has a dot), whose
  contract :mod:`fedchain.learning.task` states.
"""

from __future__ import annotations

import re

from fedchain.errors import ConfigError
from fedchain.ledger.objects import FINETUNE_MODES

__all__ = [
    "BASE_WEIGHTS_SUFFIXES",
    "FINETUNE_MODES",
    "MODELS",
    "TORCHVISION_MODELS",
    "check_model_name",
    "is_task_module",
]

MODELS: tuple[str, ...] = ("cnn", "mlp")
TORCHVISION_MODELS: tuple[str, ...] = ("resnet18", "mobilenet_v3_small", "efficientnet_b0", "vgg11")
BASE_WEIGHTS_SUFFIXES: tuple[str, ...] = (".safetensors", ".pth", ".pt")

_IMPORT_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")


def is_task_module(name: str) -> bool:
    """Whether ``name`` is an import path (``package.module``) rather than a catalogue name."""
    return _IMPORT_PATH.fullmatch(name) is not None


def check_model_name(name: str) -> None:
    """Raise :class:`ConfigError` unless ``name`` is a built-in, a torchvision architecture or a
    task module's import path (whether that module imports is checked when the model is
    built)."""
    if name in MODELS or name in TORCHVISION_MODELS or is_task_module(name):
        return
    raise ConfigError(
        f"unknown model {name!r}: choose one of {', '.join(MODELS + TORCHVISION_MODELS)}, or "
        "give the import path of your own task module (package.module; see "
        "fedchain.learning.task)"
    )
