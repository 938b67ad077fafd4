"""A pretrained base model's weights: read from a local file, hashed, checked, saved.

A base is a flat mapping of tensor names to tensors, as ``model.state_dict()`` gives it, in a
``.safetensors`` file (read with safetensors) or a ``.pth``/``.pt`` file (read with
``torch.load(weights_only=True)``, which unpickles tensors and plain containers only: a file that
would run code when loaded is refused). Nothing is downloaded.

Its hash (:func:`compute_base_hash`) is the canonical tensor hash
(:func:`fedchain.crypto.hashing.compute_update_hash`) of every tensor in the file, buffers and
integer counters included: the base exactly as the file holds it, whatever the file format. The
genesis records it (:class:`fedchain.ledger.objects.ModelRecord`), and every participant checks
its own copy against it before it trains (:func:`read_checked_base`).
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from fedchain.crypto.hashing import compute_update_hash
from fedchain.errors import ConfigError
from fedchain.learning.catalog import BASE_WEIGHTS_SUFFIXES

__all__ = ["compute_base_hash", "load_base", "read_base", "read_checked_base", "save_base"]

Tensors = dict[str, torch.Tensor]


def read_base(path: str | Path) -> Tensors:
    """The tensors of base weights file ``path``; :class:`ConfigError` if it is missing, of an
    unknown kind, unreadable, or not a flat mapping of names to tensors."""
    path = Path(path)
    if path.suffix not in BASE_WEIGHTS_SUFFIXES:
        raise ConfigError(
            f"{path}: base weights must be a {' or '.join(BASE_WEIGHTS_SUFFIXES)} file"
        )
    if not path.is_file():
        raise ConfigError(f"{path}: no such base weights file")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        if path.suffix == ".safetensors":
            loaded: object = load_file(str(path), device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (
        OSError,
        RuntimeError,
        ValueError,
        EOFError,
        pickle.UnpicklingError,
        SafetensorError,
    ) as exc:
        raise ConfigError(f"{path}: cannot read base weights: {exc}") from exc
    if not isinstance(loaded, Mapping) or not loaded:
        raise ConfigError(f"{path}: base weights must be a non-empty mapping of names to tensors")
    bad = [str(k) for k, v in loaded.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise ConfigError(f"{path}: entries that are not named tensors: {', '.join(bad[:5])}")
    return {name: tensor.detach().contiguous() for name, tensor in loaded.items()}


def compute_base_hash(tensors: Mapping[str, torch.Tensor]) -> bytes:
    """The canonical hash of every tensor of a base (see the module docstring)."""
    return compute_update_hash(tensors)


def read_checked_base(path: str | Path, expected: bytes) -> Tensors:
    """The base at ``path``, refused with :class:`ConfigError` unless its hash is ``expected``
    (the genesis's): a participant never trains on a base the federation did not agree on."""
    tensors = read_base(path)
    actual = compute_base_hash(tensors)
    if actual != expected:
        raise ConfigError(
            f"{path}: this base model has hash {actual.hex()[:16]}…, but the federation's genesis "
            f"records base {expected.hex()[:16]}…: refusing to train from another base (get the "
            "base file the federation names, and point --base-weights at it)"
        )
    return tensors


def load_base(model: nn.Module, base: Mapping[str, torch.Tensor], head: str) -> list[str]:
    """Copy ``base`` into ``model`` (its parameters and buffers); return the names of the head
    tensors that kept their fresh initialisation because the base's head has another shape
    (another number of classes). Any other missing, unexpected or mis-shaped tensor raises
    :class:`ConfigError` and nothing is changed."""
    state = model.state_dict()
    in_head = [name for name in state if name.startswith(head + ".")]
    missing = sorted(set(state) - set(base) - set(in_head))
    unexpected = sorted(set(base) - set(state))
    shapes = [
        name
        for name, tensor in state.items()
        if name in base and tuple(base[name].shape) != tuple(tensor.shape) and name not in in_head
    ]
    if missing or unexpected or shapes:
        raise ConfigError(
            "the base weights do not fit the model: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, other shapes {shapes[:5]}"
        )
    kept = [n for n in in_head if n not in base or base[n].shape != state[n].shape]
    with torch.no_grad():
        for name, tensor in state.items():
            if name not in kept:
                tensor.copy_(base[name].to(tensor.dtype))
    return kept


def save_base(model: nn.Module, path: str | Path) -> bytes:
    """Write ``model``'s whole state (parameters and buffers) as a safetensors base file; return
    its base hash."""
    from safetensors.torch import save_file

    tensors = {name: t.detach().contiguous().clone() for name, t in model.state_dict().items()}
    save_file(tensors, str(path))
    return compute_base_hash(tensors)
