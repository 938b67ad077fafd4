"""The task-module contract: how a user brings their own model to a federation.

A task module is a Python module importable on every participant's machine (``--model
mypackage.mytask``; the built-ins :mod:`fedchain.tasks.cnn` and :mod:`fedchain.tasks.mlp` are
examples). It defines:

``build_model(input_shape, num_classes) -> torch.nn.Module`` (required)
    The model for examples of ``input_shape`` (one example, no batch axis: ``(C, H, W)`` for
    images, ``(D,)`` for features, ``(L,)`` for token ids) and ``num_classes`` classes, taking a
    float batch ``(N, *input_shape)`` to logits ``(N, num_classes)``. fedchain calls it under a
    seeded torch random generator (``torch.manual_seed(seed)`` inside ``torch.random.fork_rng``),
    so draw any random initialisation from torch's global generator (or seed your own from
    ``torch.initial_seed()``) and the weights are a pure function of the seed. A model whose
    structure is described beside its weights (a Hugging Face model directory's
    ``config.json``) declares a third parameter, ``base_dir``: fedchain then passes the folder
    of the federation's base weights file (None without a base).
``HEAD: str`` (required)
    The name (as in ``model.named_modules()``) of the classifier head: what ``head`` fine-tuning
    trains with the rest frozen, what ``lora`` trains in full beside the adapters, and what is
    re-initialised when a base model's head has another number of classes.
``LORA_TARGETS: list[str]`` (optional)
    The modules ``lora`` fine-tuning adapts (peft's ``target_modules``); by default every
    ``nn.Linear`` and ``nn.Conv2d`` outside the head.
``train(model, data, config) -> fedchain.learning.training.TrainResult`` (optional)
    Local training on ``data`` (a :class:`fedchain.data.sources.ArrayDataset`) with a
    :class:`fedchain.learning.training.TrainConfig`; by default
    :func:`fedchain.learning.training.train_local` (SGD on cross-entropy). Train only the
    parameters that require gradients, and call
    :func:`fedchain.learning.training.set_train_mode` rather than ``model.train()`` so that
    BatchNorm statistics stay frozen (the federation's buffer policy).

What travels is decided by fedchain, not by the task: the trainable parameters after the
federation's fine-tuning mode is applied (:mod:`fedchain.learning.architectures`).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedchain.errors import ConfigError
from fedchain.learning.catalog import MODELS, TORCHVISION_MODELS, check_model_name

__all__ = ["Task", "build_task_model", "load_task"]


@dataclass(frozen=True)
class Task:
    """A loaded task module: see the module docstring for each part."""

    name: str
    build: Callable[..., nn.Module]
    head: str
    lora_targets: tuple[str, ...] | None = None
    train: Callable[..., Any] | None = None


def load_task(name: str) -> Task:
    """The task of model ``name``: a built-in, a torchvision architecture or an import path.

    Raises :class:`ConfigError` for an unknown name, a module that does not import, or one that
    lacks ``build_model`` or ``HEAD``.
    """
    check_model_name(name)
    if name in TORCHVISION_MODELS:
        from fedchain.tasks.vision import torchvision_task

        return torchvision_task(name)
    path = f"fedchain.tasks.{name}" if name in MODELS else name
    try:
        module = importlib.import_module(path)
    except Exception as exc:  # any failure inside the user's module is theirs to read
        raise ConfigError(f"model {name!r}: cannot import task module {path}: {exc}") from exc
    build, head = getattr(module, "build_model", None), getattr(module, "HEAD", None)
    if not callable(build) or not isinstance(head, str) or not head:
        raise ConfigError(
            f"task module {path} must define build_model(input_shape, num_classes) and HEAD "
            "(the classifier head's module name); see fedchain.learning.task"
        )
    targets = getattr(module, "LORA_TARGETS", None)
    train = getattr(module, "train", None)
    return Task(
        name=name,
        build=build,
        head=head,
        lora_targets=None if targets is None else tuple(str(t) for t in targets),
        train=train if callable(train) else None,
    )


def build_task_model(
    task: Task,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    seed: int,
    base_dir: Path | None = None,
) -> nn.Module:
    """``task.build(input_shape, num_classes)`` under torch's generator seeded with ``seed``,
    leaving the caller's random state as it was (``fork_rng`` is process-global while it runs:
    do not build models from several threads at once). Raises :class:`ConfigError` if the task
    returns no module or one without its ``HEAD``."""
    extra = {"base_dir": base_dir} if _takes_base_dir(task.build) else {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = task.build(tuple(input_shape), num_classes, **extra)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {task.name!r}: build_model returned {type(model).__name__}")
    if task.head not in dict(model.named_modules()):
        raise ConfigError(f"model {task.name!r}: its HEAD {task.head!r} is not a module of it")
    return model


def _takes_base_dir(build: Callable[..., nn.Module]) -> bool:
    try:
        return "base_dir" in inspect.signature(build).parameters
    except (TypeError, ValueError):  # a builtin or extension callable: the plain contract
        return False
