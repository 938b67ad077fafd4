"""Canonical update hash: SHA-256 over a fixed byte encoding of named tensors.

The update hash is what a client signs and what the ledger records, so it must be the same on
every machine for the same tensors, whatever carried them (Flower messages, safetensors files,
torch ``state_dict``s, numpy arrays). It therefore never looks at Flower's wire format; it hashes
this encoding, all integers little-endian::

    b"FCUPD\\x01"                       magic + format version (6 bytes)
    u32 number of tensors
    per tensor, sorted by the UTF-8 bytes of its name:
      u32 len(name)  | name (UTF-8)
      u8  len(dtype) | dtype name (ASCII)
      u8  ndim       | ndim x u64 dims
      u64 nbytes     | raw little-endian C-order element bytes

Dtype names are the canonical numpy names ``float32 float64 float16 int64 int32 int16 int8 uint8
bool``, plus ``bfloat16`` for torch bfloat16 tensors (hashed as their raw 2-byte patterns); any
other dtype is refused rather than silently converted, because a conversion would let two
different updates share a hash. Bool elements are one byte each (0 or 1), as numpy stores them.

Name, dtype and shape are all covered, so the same bytes under another name, dtype or shape hash
differently. Sorting by name makes the hash independent of mapping order.

Speed (DESIGN.md section 6: at least 90 % of raw ``hashlib.sha256`` on the same bytes): tensor data
is handed to ``hashlib`` as a ``memoryview`` of the tensor's own memory, never copied. A copy is
made only where the canonical bytes do not exist in memory yet: a non-C-contiguous tensor
(e.g. a transposed view), a big-endian array, or a torch tensor not on the CPU. Such copies are
made one tensor at a time, while that tensor is hashed.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from collections.abc import Iterator, Mapping
from typing import Any, Protocol, TypeAlias

import numpy as np
import numpy.typing as npt

from fedchain.errors import ConfigError

__all__ = [
    "CANONICAL_DTYPES",
    "UPDATE_HASH_MAGIC",
    "Tensor",
    "compute_update_hash",
    "iter_canonical_chunks",
    "tensor_bytes_view",
]

UPDATE_HASH_MAGIC = b"FCUPD\x01"
"""Magic and format version that open the canonical encoding."""

CANONICAL_DTYPES = frozenset(
    {
        "float32",
        "float64",
        "float16",
        "bfloat16",
        "int64",
        "int32",
        "int16",
        "int8",
        "uint8",
        "bool",
    }
)
"""The closed set of dtype names an update may use."""

_U32_MAX = 2**32 - 1

# numpy dtype (kind, itemsize) -> canonical name. Looked up rather than read from ``dtype.name``,
# which numpy computes in Python (about 3 us, a third of the per-tensor cost).
_NUMPY_DTYPE_NAMES = {
    ("f", 8): "float64",
    ("f", 4): "float32",
    ("f", 2): "float16",
    ("i", 8): "int64",
    ("i", 4): "int32",
    ("i", 2): "int16",
    ("i", 1): "int8",
    ("u", 1): "uint8",
    ("b", 1): "bool",
}

# Byte-order flags whose bytes already are little-endian ("|": single-byte types).
_LITTLE_ENDIAN_BYTEORDERS = frozenset({"<", "|", "="} if sys.byteorder == "little" else {"<", "|"})


class TorchTensorLike(Protocol):
    """What this module needs from a ``torch.Tensor`` (torch is imported only when one is seen)."""

    def detach(self) -> Any: ...


Tensor: TypeAlias = "npt.NDArray[Any] | np.generic | TorchTensorLike"
"""A numpy array (or scalar) or a torch tensor."""


def compute_update_hash(tensors: Mapping[str, Tensor]) -> bytes:
    """Return the 32-byte SHA-256 digest of the canonical encoding of ``tensors``.

    Raises :class:`~fedchain.errors.ConfigError` for a name that is not a non-empty string or a
    dtype outside :data:`CANONICAL_DTYPES`.
    """
    digest = hashlib.sha256()
    for chunk in iter_canonical_chunks(tensors):
        digest.update(chunk)
    return digest.digest()


def iter_canonical_chunks(tensors: Mapping[str, Tensor]) -> Iterator[bytes | memoryview]:
    """Return the canonical encoding of ``tensors`` as a stream of chunks.

    Concatenated, the chunks are exactly the bytes :func:`compute_update_hash` digests (see the
    module docstring for the layout). Names are checked before the first chunk is produced;
    tensors are converted lazily, one at a time, so any temporary copies (see
    :func:`tensor_bytes_view`) are made as each tensor is reached, never for all of them at once.
    """
    entries = _sorted_named_entries(tensors)
    return _generate_chunks(entries)


def tensor_bytes_view(tensor: Tensor) -> tuple[str, tuple[int, ...], memoryview]:
    """Return ``(dtype name, shape, flat byte view)`` of a tensor in canonical form.

    The view is a 1-D unsigned-byte ``memoryview`` holding the elements in C order, little-endian.
    It aliases the tensor's own memory when that already is C-contiguous and little-endian (the
    usual case: no copy). Otherwise (a transposed or strided view, a big-endian array, a torch
    tensor on a GPU) one canonical copy is made and the view keeps it alive.
    """
    if isinstance(tensor, np.ndarray | np.generic):
        return _numpy_bytes_view(np.asarray(tensor))
    if _is_torch_tensor(tensor):
        return _torch_bytes_view(tensor)
    raise ConfigError(
        f"cannot hash a {type(tensor).__module__}.{type(tensor).__qualname__}: "
        "tensors must be numpy arrays or torch tensors"
    )


def _sorted_named_entries(tensors: Mapping[str, Tensor]) -> list[tuple[bytes, Tensor]]:
    """Check every name and sort by its UTF-8 bytes (the canonical order)."""
    if len(tensors) > _U32_MAX:
        raise ConfigError(f"too many tensors to hash: {len(tensors)}")
    entries = [(_encode_name(name), tensor) for name, tensor in tensors.items()]
    entries.sort(key=lambda entry: entry[0])
    return entries


def _encode_name(name: object) -> bytes:
    if not isinstance(name, str):
        raise ConfigError(f"tensor names must be strings, got {type(name).__name__}: {name!r}")
    if not name:
        raise ConfigError("tensor names must not be empty")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigError(f"tensor name {name!r} is not valid Unicode: {exc.reason}") from exc
    if len(encoded) > _U32_MAX:
        raise ConfigError(f"tensor name of {len(encoded)} bytes is too long")
    return encoded


def _generate_chunks(entries: list[tuple[bytes, Tensor]]) -> Iterator[bytes | memoryview]:
    yield UPDATE_HASH_MAGIC + struct.pack("<I", len(entries))
    for name, tensor in entries:
        dtype_name, shape, data = tensor_bytes_view(tensor)
        yield _encode_tensor_header(name, dtype_name, shape, data.nbytes)
        yield data


def _encode_tensor_header(
    name: bytes, dtype_name: str, shape: tuple[int, ...], nbytes: int
) -> bytes:
    """Everything of one tensor's record that precedes its element bytes, as one chunk."""
    dtype = dtype_name.encode("ascii")
    return b"".join(
        (
            struct.pack("<I", len(name)),
            name,
            struct.pack("<B", len(dtype)),
            dtype,
            struct.pack(f"<B{len(shape)}Q", len(shape), *shape),
            struct.pack("<Q", nbytes),
        )
    )


def _numpy_bytes_view(
    array: npt.NDArray[Any], dtype_name: str | None = None
) -> tuple[str, tuple[int, ...], memoryview]:
    """Canonical bytes of a numpy array; ``dtype_name`` overrides the name (torch bfloat16)."""
    dtype = array.dtype
    name = _NUMPY_DTYPE_NAMES.get((dtype.kind, dtype.itemsize))
    if name is None:
        raise _unsupported_dtype(dtype.name)
    if array.ndim > 255:
        raise ConfigError(f"cannot hash a tensor of {array.ndim} dimensions (at most 255)")
    if not (array.flags.c_contiguous and dtype.byteorder in _LITTLE_ENDIAN_BYTEORDERS):
        array = np.asarray(array, dtype=dtype.newbyteorder("<"), order="C")  # the one copy
    flat_bytes = array.reshape(-1).view(np.uint8)  # a view: reshape of a C-contiguous array
    return dtype_name or name, array.shape, flat_bytes.data


def _is_torch_tensor(obj: object) -> bool:
    """Duck-typed check, so that hashing numpy updates never imports torch."""
    module = type(obj).__module__
    return (module == "torch" or module.startswith("torch.")) and hasattr(obj, "detach")


def _torch_bytes_view(tensor: TorchTensorLike) -> tuple[str, tuple[int, ...], memoryview]:
    import torch

    t = tensor.detach()
    if t.layout != torch.strided:
        raise ConfigError(f"cannot hash a {t.layout} torch tensor: convert it to dense first")
    name = str(t.dtype).removeprefix("torch.")
    if name not in CANONICAL_DTYPES:
        raise _unsupported_dtype(str(t.dtype))
    # .cpu() and .contiguous() return the tensor itself when nothing needs to change, and
    # .numpy() of a contiguous CPU tensor shares its memory.
    t = t.cpu().contiguous()
    if name == "bfloat16":
        # numpy has no bfloat16: hash the raw 2-byte patterns. An int16 view (not uint8) lets
        # _numpy_bytes_view byte-swap them correctly on a big-endian host.
        return _numpy_bytes_view(t.view(torch.int16).numpy(), dtype_name=name)
    return _numpy_bytes_view(t.numpy())


def _unsupported_dtype(name: str) -> ConfigError:
    allowed = ", ".join(sorted(CANONICAL_DTYPES))
    return ConfigError(f"cannot hash dtype {name!r}: tensors must have one of {allowed}")
