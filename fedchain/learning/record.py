"""A federation's model and its genesis record: make the record from the run's settings, and
build the model a record describes, checking the local base against it.

The record (:class:`fedchain.ledger.objects.ModelRecord`) is part of the genesis rules, so every
registration signs it; a participant builds its model from the record its own replica of the
ledger holds, never from what the coordinator says in a round, and refuses a base file whose
hash is not the record's (:func:`fedchain.learning.base.read_checked_base`).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from fedchain.config import RunConfig
from fedchain.crypto.hashing import compute_update_hash
from fedchain.errors import ConfigError
from fedchain.learning.architectures import (
    build_model,
    compute_update_bytes,
    state_to_numpy,
    trainable_names,
)
from fedchain.learning.base import compute_base_hash, read_base, read_checked_base
from fedchain.ledger.objects import EMPTY_HASH, ModelRecord

__all__ = [
    "build_from_file",
    "check_initial_model",
    "model_for_config",
    "model_for_run",
    "model_from_record",
]


def build_from_file(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    seed: int,
    finetune: str,
    lora_rank: int,
    base_weights: str | Path | None,
    expected: bytes | None = None,
) -> tuple[nn.Module, bytes]:
    """:func:`~fedchain.learning.architectures.build_model` with the base read from the file
    ``base_weights`` (none: no base), refused unless its hash is ``expected`` when one is given;
    ``(model, base hash)`` (:data:`EMPTY_HASH` without a base)."""
    if not base_weights:
        base = None
    elif expected is None:
        base = read_base(base_weights)
    else:
        base = read_checked_base(base_weights, expected)
    model = build_model(
        name,
        input_shape,
        num_classes,
        seed=seed,
        finetune=finetune,
        lora_rank=lora_rank,
        base=base,
        base_dir=Path(base_weights).parent if base_weights else None,
    )
    return model, EMPTY_HASH if base is None else compute_base_hash(base)


def model_for_config(
    config: RunConfig, input_shape: tuple[int, ...], num_classes: int, *, seed: int
) -> tuple[nn.Module, ModelRecord]:
    """The initial model of a run with ``config`` (built with ``seed``) and its record."""
    rank = config.lora_rank if config.finetune == "lora" else 0
    model, base_hash = build_from_file(
        config.model,
        input_shape,
        num_classes,
        seed=seed,
        finetune=config.finetune,
        lora_rank=rank,
        base_weights=config.base_weights or None,
    )
    record = ModelRecord(
        architecture=config.model,
        finetune=config.finetune,
        lora_rank=rank,
        base_hash=base_hash,
        base_source=config.base_source or Path(config.base_weights).name,
        base_licence=config.base_licence,
        trainable=trainable_names(model),
        update_bytes=compute_update_bytes(model),
    )
    return model, record


def model_from_record(
    record: ModelRecord,
    input_shape: tuple[int, ...],
    num_classes: int,
    base_weights: str | Path | None,
    *,
    seed: int = 0,
) -> nn.Module:
    """The model ``record`` describes, from the local base file ``base_weights``.

    Raises :class:`ConfigError` when the record names a base and no file is given, when the
    file's hash is not the record's, or when the model built here trains other tensors than the
    record lists, or tensors of another size (another version of the task module, torchvision or
    peft).
    """
    has_base = record.base_hash != EMPTY_HASH
    if has_base and not base_weights:
        raise ConfigError(
            f"this federation fine-tunes the base model {record.base_hash.hex()[:16]}… "
            f"({record.base_source or 'source not stated'}): give your copy of its weights "
            "file (--base-weights)"
        )
    model, _ = build_from_file(
        record.architecture,
        input_shape,
        num_classes,
        seed=seed,
        finetune=record.finetune,
        lora_rank=record.lora_rank,
        base_weights=base_weights if has_base else None,
        expected=record.base_hash,
    )
    names = trainable_names(model)
    if names != record.trainable:
        differ = sorted(set(names) ^ set(record.trainable))[:3] or ["(their order)"]
        raise ConfigError(
            f"model {record.architecture!r} built here trains other tensors than the genesis "
            f"lists ({len(names)} here, {len(record.trainable)} there; e.g. {differ}): another "
            "version of its task module, torchvision or peft?"
        )
    size = compute_update_bytes(model)
    if record.update_bytes and size != record.update_bytes:
        raise ConfigError(
            f"model {record.architecture!r} built here makes updates of {size} bytes, the "
            f"genesis agreed to {record.update_bytes}: its tensors have other shapes here"
        )
    return model


def model_for_run(
    config: RunConfig,
    record: ModelRecord | None,
    input_shape: tuple[int, ...],
    num_classes: int,
) -> nn.Module:
    """The coordinator's model of a run (weights to be loaded): from the genesis record where
    the run has one, else from its settings (the ledger off)."""
    if record is not None and record.architecture:
        return model_from_record(record, input_shape, num_classes, config.base_weights or None)
    return model_for_config(config, input_shape, num_classes, seed=0)[0]


def check_initial_model(
    record: ModelRecord,
    config: RunConfig,
    input_shape: tuple[int, ...],
    num_classes: int,
    initial_model_hash: bytes,
    base_weights: str | Path | None,
) -> str | None:
    """Why the genesis's initial model is not the model ``record`` makes from the base file
    ``base_weights`` with the run's seed, or None when it is: the lineage's first link, from
    the base to round 0 (the ledger's ModelVersions link every later version)."""
    try:
        model = model_from_record(record, input_shape, num_classes, base_weights, seed=config.seed)
    except ConfigError as exc:
        return str(exc)
    rebuilt = compute_update_hash(state_to_numpy(model))
    if rebuilt != initial_model_hash:
        return (
            f"the genesis's initial model {initial_model_hash.hex()[:16]}… is not the model its "
            f"record makes from this base with seed {config.seed} ({rebuilt.hex()[:16]}…)"
        )
    return None
