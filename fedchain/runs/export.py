"""Export a registered global model for use outside fedchain: plain torch and safetensors.

A model file in ``models/`` holds only the tensors that travel (the genesis's
``ModelRecord.trainable``); the frozen parameters and the buffers come from the federation's
base. An export joins them again:

``model.safetensors`` (:data:`MODEL_FILENAME`)
    The whole ``state_dict`` of the plain architecture, buffers included, which
    ``model.load_state_dict(safetensors.torch.load_file(...))`` loads (strictly) into the model
    the task module builds (``fedchain.learning.task``: torchvision's, a built-in, or the user's
    own). For ``lora`` the adapters are merged into the weights they adapt (peft's
    ``merge_and_unload``), so no peft is needed to use it.
``adapters.safetensors`` (:data:`ADAPTERS_FILENAME`, ``lora`` only)
    The version's trainable tensors as the ledger's hash covers them (the adapters and the
    head, named as peft names them), for whoever holds the base and wants them apart.

The base is the local file the caller gives, checked against the genesis's hash before
anything is built: an export never silently joins a model to another base.

Files go into a new folder, or an empty one, and are never written over: each is written under
a temporary name and hard-linked to its name, which fails if anything (a file, a link) took it
meanwhile.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save
from torch import nn

from fedchain.config import RunConfig
from fedchain.durable import write_atomically
from fedchain.errors import ConfigError
from fedchain.learning.architectures import load_numpy_state
from fedchain.learning.base import compute_base_hash, read_base
from fedchain.learning.record import model_from_record
from fedchain.ledger.objects import EMPTY_HASH, ModelRecord
from fedchain.runs.prepare import load_split
from fedchain.runs.registry import ModelEntry, load_model

__all__ = [
    "ADAPTERS_FILENAME",
    "MODEL_FILENAME",
    "Export",
    "ExportedFile",
    "build_version_model",
    "check_export_base",
    "compute_export_tensors",
    "export_version",
    "make_export_folder",
    "write_export_file",
]

MODEL_FILENAME = "model.safetensors"
ADAPTERS_FILENAME = "adapters.safetensors"

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ExportedFile:
    """One file of an export: its name in the folder, SHA-256 (hex), size, and what it holds."""

    name: str
    sha256: str
    bytes: int
    contents: str


@dataclass(frozen=True)
class Export:
    """What an export wrote, and the input its model takes: one example's ``input_shape`` (no
    batch axis), the ``classes`` its logits score in order, and ``value_max``, what the raw
    values were divided by to make them [0, 1] (None: token ids, used as they are)."""

    files: tuple[ExportedFile, ...]
    input_shape: tuple[int, ...]
    classes: tuple[str, ...]
    value_max: float | None

    def input_json(self) -> dict[str, object]:
        return {
            "shape": list(self.input_shape),
            "classes": list(self.classes),
            "value_max": self.value_max,
        }


def make_export_folder(out: Path) -> Path:
    """``out``, created, or as it is when it is an empty folder; :class:`ConfigError` when it is
    a link, a file or a folder with anything in it (an export writes over nothing)."""
    out = Path(out)
    if out.is_symlink():
        raise ConfigError(f"{out}: is a symbolic link; give a new folder for the export")
    if out.exists():
        if not out.is_dir():
            raise ConfigError(f"{out}: exists and is not a folder; give a new folder")
        if any(out.iterdir()):
            raise ConfigError(
                f"{out}: is not empty; give a new or empty folder (an export overwrites nothing)"
            )
        return out
    try:
        out.mkdir(parents=True)
    except OSError as e:
        raise ConfigError(f"{out}: cannot create the export folder ({e.strerror})") from None
    return out


def check_export_base(record: ModelRecord, base_weights: str | Path | None) -> None:
    """Refuse (:class:`ConfigError`) a missing base, or one whose hash is not the genesis's,
    for a model record that names a base."""
    if record.base_hash == EMPTY_HASH:
        return
    wanted = record.base_hash.hex()[:16]
    if not base_weights:
        raise ConfigError(
            f"this model fine-tunes the base {wanted}… "
            f"({record.base_source or 'source not stated'}), whose frozen weights are not in "
            "the run's model files: give your copy of the base weights file (--base-weights)"
        )
    actual = compute_base_hash(read_base(base_weights))
    if actual != record.base_hash:
        raise ConfigError(
            f"{base_weights}: this base has hash {actual.hex()[:16]}…, but the genesis records "
            f"base {wanted}…: refusing to export the model joined to another base"
        )


def build_version_model(
    record: ModelRecord,
    arrays: Mapping[str, np.ndarray],
    input_shape: tuple[int, ...],
    num_classes: int,
    base_weights: str | Path | None,
    *,
    seed: int,
) -> nn.Module:
    """fedchain's model of a version: the record's model on the checked base, with the
    version's trainable tensors ``arrays`` loaded, in eval mode. (The base file is read twice,
    once for the check with an export's own message and once to build.)"""
    check_export_base(record, base_weights)
    model = model_from_record(record, input_shape, num_classes, base_weights, seed=seed)
    load_numpy_state(model, arrays)
    return model.eval()


def compute_export_tensors(model: nn.Module, record: ModelRecord) -> dict[str, Tensors]:
    """The files' tensors by file name: the plain model's whole state (LoRA merged), and for
    ``lora`` the trainable tensors apart. Merging changes ``model``: build it for this alone."""
    files: dict[str, Tensors] = {}
    if record.finetune == "lora":
        files[ADAPTERS_FILENAME] = {
            n: p.detach().clone().contiguous()
            for n, p in model.named_parameters()
            if p.requires_grad
        }
        model = model.merge_and_unload()  # type: ignore[operator]
    files[MODEL_FILENAME] = {
        n: t.detach().clone().contiguous() for n, t in model.state_dict().items()
    }
    return dict(sorted(files.items(), key=lambda item: item[0] != MODEL_FILENAME))


def _copy(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().clone().contiguous()


def write_export_file(out: Path, name: str, content: bytes, contents: str) -> ExportedFile:
    """Write ``content`` as ``out/name``, never over an existing entry (:class:`ConfigError`)."""
    path = Path(out) / name
    try:
        write_atomically(path, content, overwrite=False)
    except FileExistsError:
        raise ConfigError(f"{path}: exists; an export overwrites nothing") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot write ({e.strerror or e})") from None
    return ExportedFile(name, hashlib.sha256(content).hexdigest(), len(content), contents)


def export_version(
    run_dir: Path,
    entry: ModelEntry,
    record: ModelRecord,
    config: RunConfig,
    out: Path,
    base_weights: str | Path | None,
) -> Export:
    """Export the registered model ``entry`` of ``run_dir`` into the new folder ``out`` (see the
    module docstring); ``config`` is the run's (its data gives the input shape and the classes,
    as for ``fedchain verify``). The folder is made only once the model is built: a refused
    base leaves nothing behind."""
    arrays = load_model(run_dir, entry.model_hash)  # RegistryError naming the file if bad
    validation = load_split(config)[1]
    shape, classes = tuple(validation.x.shape[1:]), validation.classes
    model = build_version_model(record, arrays, shape, len(classes), base_weights, seed=config.seed)
    metadata = {
        "format": "pt",
        "fedchain.run_id": config.run_id,
        "fedchain.model_hash": entry.model_hash.hex(),
        "fedchain.round": str(entry.round),
        "fedchain.architecture": record.architecture,
        "fedchain.finetune": record.finetune,
        "fedchain.base_hash": "" if record.base_hash == EMPTY_HASH else record.base_hash.hex(),
    }
    encoded = [
        (name, encode_tensors(tensors, metadata), describe_file(name, tensors, record))
        for name, tensors in compute_export_tensors(model, record).items()
    ]
    folder = make_export_folder(out)
    files = [write_export_file(folder, name, data, what) for name, data, what in encoded]
    return Export(tuple(files), shape, classes, validation.value_max)


def encode_tensors(tensors: Tensors, metadata: Mapping[str, str]) -> bytes:
    """The safetensors bytes of ``tensors`` with string ``metadata``."""
    return save(tensors, metadata=dict(metadata))


def describe_file(name: str, tensors: Tensors, record: ModelRecord) -> str:
    """What an export file holds, in words (for the card)."""
    count = f"{len(tensors)} tensors, {sum(t.numel() for t in tensors.values()):,} values"
    if name == ADAPTERS_FILENAME:
        return f"the trained LoRA adapters and head, named as in peft's model ({count})"
    merged = ", LoRA merged" if record.finetune == "lora" else ""
    return f"the full state dict of {record.architecture}{merged} ({count}, buffers included)"
