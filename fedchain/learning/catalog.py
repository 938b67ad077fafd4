"""The names of the built-in model architectures, without importing torch.

Settings are checked against these names when a command starts (``fedchain simulate``,
``federation init``); importing :mod:`fedchain.learning.architectures` for them would load torch
(about 3 s) on every command, ``--help`` included.
"""

from __future__ import annotations

MODELS: tuple[str, ...] = ("cnn", "mlp")
