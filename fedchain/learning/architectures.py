"""The federated model: a task's model with the federation's base and fine-tuning mode applied,
and the tensors that travel (its trainable parameters) as named numpy arrays.

:func:`build_model` builds a task's model (:mod:`fedchain.learning.task`: a built-in, a
torchvision architecture or the user's own module) under a seed, copies a pretrained base into
it (:func:`fedchain.learning.base.load_base`; a head whose class count differs keeps its fresh
initialisation), then applies the fine-tuning mode (:data:`FINETUNE_MODES`):

* ``full``: every parameter trains;
* ``head``: only the task's ``HEAD`` trains, the backbone stays at the base's values;
* ``lora``: low-rank adapters of rank ``lora_rank`` (peft's LoRA, ``lora_alpha`` = the rank,
  so the adapters' scale is 1; no dropout) on every linear and ungrouped convolution layer
  outside the head (or the task's ``LORA_TARGETS``), and the head in full (peft's
  ``modules_to_save``). The adapters start as peft makes them (A random from the seed, B zero),
  so the initial model is the base.

**What travels.** Updates, their hashes, scores, aggregation and every global model version cover
exactly the trainable parameters (:func:`state_to_numpy`), named as ``named_parameters`` names
them and in that order; the genesis lists these names (``ModelRecord.trainable``). Frozen
parameters come from the base every participant holds; buffers never travel.

**Buffers (BatchNorm).** Frozen: a BatchNorm layer's running mean and variance stay the base's
(or, with no base, their initial 0 and 1), because local training keeps every BatchNorm layer
in eval mode (:func:`fedchain.learning.training.set_train_mode`), so it normalises with those
statistics and never updates them; its affine weight and bias are parameters and train like any
other in ``full`` mode. Averaging running statistics across clients with different data is
ill-defined, and ``num_batches_tracked`` is an integer counter that has no place in a float
update; frozen statistics are also what every participant can check against the base's hash.

Determinism: the same name, shapes, seed, base and mode give the same model wherever torch's
samplers are the same; the caller's global random state is left as it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedchain.errors import ConfigError
from fedchain.learning.base import load_base
from fedchain.learning.catalog import FINETUNE_MODES, MODELS
from fedchain.learning.task import Task, build_task_model, load_task

__all__ = [
    "MODELS",
    "build_model",
    "compute_update_bytes",
    "default_model",
    "load_numpy_state",
    "state_to_numpy",
    "trainable_names",
]


def default_model(input_shape: tuple[int, ...]) -> str:
    """``"cnn"`` for image input ``(C, H, W)``, ``"mlp"`` for anything else (e.g. ``(D,)``)."""
    return "cnn" if len(input_shape) == 3 else "mlp"


def build_model(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    seed: int,
    finetune: str = "full",
    lora_rank: int = 0,
    base: Mapping[str, torch.Tensor] | None = None,
    base_dir: Path | None = None,
) -> nn.Module:
    """Model ``name`` for examples of ``input_shape`` (without the batch axis), with ``base``
    copied in and fine-tuning mode ``finetune`` applied (see the module docstring).

    ``input_shape`` is ``ArrayDataset.x.shape[1:]``; ``base_dir`` the folder of the base weights
    file, for a task whose structure is described there (:mod:`fedchain.learning.task`).
    Raises :class:`ConfigError` for an unknown name or mode, a bad shape or class count or
    seed, a base that does not fit, or ``head`` / ``lora`` without a base (a frozen backbone of
    random weights learns nothing).
    """
    shape = _check_model_args(input_shape, num_classes, seed)
    if finetune not in FINETUNE_MODES:
        raise ConfigError(
            f"unknown finetune {finetune!r}; choose one of {', '.join(FINETUNE_MODES)}"
        )
    if (finetune == "lora") != (lora_rank > 0):
        raise ConfigError(f"lora-rank {lora_rank}: positive with finetune lora, else 0")
    if finetune != "full" and base is None:
        raise ConfigError(
            f"finetune {finetune} trains part of a pretrained base: give --base-weights"
        )
    task = load_task(name)
    model = build_task_model(task, shape, num_classes, seed=seed, base_dir=base_dir)
    if base is not None:
        load_base(model, base, task.head)
    if finetune == "head":
        for param_name, param in model.named_parameters():
            param.requires_grad_(_in_module(param_name, task.head))
    elif finetune == "lora":
        model = _with_lora(model, task, lora_rank, seed)
    return model


def _in_module(name: str, module: str) -> bool:
    return name == module or name.startswith(module + ".")


def _with_lora(model: nn.Module, task: Task, rank: int, seed: int) -> nn.Module:
    # peft (the lora extra; it imports transformers, seconds): only for a LoRA federation
    from peft import LoraConfig, get_peft_model

    targets = list(task.lora_targets or ()) or [
        name
        for name, module in model.named_modules()
        if not _in_module(name, task.head)
        and (
            isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)
        )
    ]
    if not targets:
        raise ConfigError(f"model {task.name!r} has no linear or convolution layer to adapt")
    config = LoraConfig(
        r=rank,
        lora_alpha=rank,
        lora_dropout=0.0,
        target_modules=targets,
        modules_to_save=[task.head],
        bias="none",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        adapted: nn.Module = get_peft_model(model, config)
    return adapted


def _check_model_args(input_shape: tuple[int, ...], num_classes: int, seed: int) -> tuple[int, ...]:
    shape = tuple(int(d) for d in input_shape)
    if not shape or any(d < 1 for d in shape):
        raise ConfigError(
            f"input_shape must be a non-empty tuple of positive sizes (one example, no batch "
            f"axis), got {input_shape}"
        )
    if num_classes < 2:
        raise ConfigError(f"num_classes must be >= 2, got {num_classes}")
    if not 0 <= seed < 2**63:
        raise ConfigError(f"seed must be an integer in 0 .. 2**63 - 1, got {seed}")
    return shape


def trainable_names(model: nn.Module) -> tuple[str, ...]:
    """The names of the tensors that travel: the trainable parameters, in the model's order."""
    return tuple(name for name, p in model.named_parameters() if p.requires_grad)


def compute_update_bytes(model: nn.Module) -> int:
    """The size of one update of ``model`` on the wire: its trainable tensors as float32
    (:func:`state_to_numpy`), ``4 x`` their element count."""
    itemsize = np.dtype(np.float32).itemsize
    return sum(itemsize * p.numel() for p in model.parameters() if p.requires_grad)


def state_to_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's trainable parameters as fresh float32, C-contiguous numpy arrays, in order.

    The arrays are copies: later training does not change them, and changing them does not
    change the model. (For the built-in models these are the whole ``state_dict``.)
    """
    return {
        name: np.array(p.detach().cpu().to(torch.float32).numpy(), dtype=np.float32, order="C")
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def load_numpy_state(model: nn.Module, arrays: Mapping[str, np.ndarray]) -> None:
    """Copy ``arrays`` into the model's trainable parameters in place (strict).

    The names must be exactly :func:`trainable_names` and every shape must match; otherwise
    :class:`ConfigError` says which names are missing, unexpected or mis-shaped and nothing is
    changed. Values are cast to each tensor's dtype. Tensors are updated in place, so an
    optimizer holding the model's parameters stays valid.
    """
    state = {name: p for name, p in model.named_parameters() if p.requires_grad}
    missing = sorted(set(state) - set(arrays))
    unexpected = sorted(set(arrays) - set(state))
    if missing or unexpected:
        raise ConfigError(
            f"model weights do not match the model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
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
