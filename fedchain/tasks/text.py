"""Task ``fedchain.tasks.text``: sequence classification with a Hugging Face model (BERT and
its kin) from a local model directory; needs the ``nlp`` extra (transformers).

Give the federation ``--model fedchain.tasks.text --base-weights DIR/model.safetensors``, where
``DIR`` is a directory ``save_pretrained`` wrote (``config.json`` beside the weights; nothing is
downloaded). The model is ``AutoModelForSequenceClassification`` built from that configuration
with ``num_labels`` set to the data's classes; the base's weights are then copied in, and a
classifier head trained for another number of labels keeps its fresh initialisation.

Input is the ``text`` source's ``(N, 2, L)`` array (:mod:`fedchain.data.labelled_text`): token
ids and attention mask, which reach the model as floats (exact below 2**24) and are turned back
into integers here. Hooks, not a wrapper module, adapt input and output, so the model's tensor
names stay the base file's. The genesis pins the weights' hash; ``config.json`` and the
tokenizer are not covered by it (each participant must use the same ones).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedchain.errors import ConfigError

HEAD = "classifier"


def build_model(
    input_shape: tuple[int, ...], num_classes: int, base_dir: Path | None = None
) -> nn.Module:
    """The sequence classifier the base directory's ``config.json`` describes."""
    if len(input_shape) != 2 or input_shape[0] != 2:
        raise ConfigError(
            f"model fedchain.tasks.text needs the text source's token ids and masks, shape "
            f"(2, length) per example; got {input_shape}"
        )
    if base_dir is None or not (base_dir / "config.json").is_file():
        raise ConfigError(
            "model fedchain.tasks.text builds from a local Hugging Face model directory: give "
            "--base-weights DIR/model.safetensors with DIR/config.json beside it"
        )
    try:
        from transformers import AutoConfig, AutoModelForSequenceClassification
    except ImportError as exc:
        raise ConfigError("model fedchain.tasks.text needs: pip install 'fedchain[nlp]'") from exc
    config = AutoConfig.from_pretrained(str(base_dir), local_files_only=True)
    config.num_labels = num_classes
    model: nn.Module = AutoModelForSequenceClassification.from_config(config)  # type: ignore[no-untyped-call]
    model.register_forward_pre_hook(_to_kwargs, with_kwargs=True)
    model.register_forward_hook(_to_logits)
    return model


def _to_kwargs(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if not args:  # called the Hugging Face way already
        return args, kwargs
    x: torch.Tensor = args[0]
    return (), {"input_ids": x[:, 0].long(), "attention_mask": x[:, 1].long()}


def _to_logits(module: nn.Module, args: tuple[Any, ...], output: Any) -> torch.Tensor:
    logits: torch.Tensor = output.logits
    return logits
