"""The plain header of an encrypted dataset file (``.fcd``): its fields, its one encoding, and the
checks a reader makes before it trusts the header's numbers.

The header is plain so that anyone can inspect a file without its key: format version, cipher and
chunk size, how the data key is wrapped (KDF and its parameters, salt), and dataset metadata (name,
number of examples, feature shape and dtype, class names, the labels present, how it was
partitioned). The label *histogram* is not in the header: it is only shown once decrypted.

Its bytes are ``b"FCD1" | u32 length (little-endian) | canonical JSON`` (sorted keys, no spaces,
UTF-8). It is not secret but it is authenticated: every chunk of the body binds SHA-256 of these
exact bytes (:mod:`fedchain.data.datafile`). Everything here is pure; the file I/O is
:mod:`fedchain.data.datafile`'s.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedchain.data.sources import ArrayDataset
from fedchain.errors import ConfigError, DatasetFileError

MAGIC = b"FCD1"
FORMAT_VERSION = 1
TAG_SIZE = 16  # AES-GCM tag after each chunk
MAX_HEADER_SIZE = 1 << 20
MAX_CHUNKS = 1 << 32  # the nonce holds a 32-bit chunk index
MAX_CHUNK_SIZE = 1 << 28  # bytes: what one chunk may make a reader hold before it is authenticated
MAX_DIMS = 32  # feature dimensions per example (numpy's own limit is 32 or 64)

# Files may carry other scrypt parameters than the ones fedchain writes (datafile.SCRYPT_N, ...);
# these bounds stop a forged header from asking for absurd memory or time.
SCRYPT_BOUNDS = {"n": (1 << 10, 1 << 22), "r": (1, 32), "p": (1, 16)}

ALLOWED_DTYPES = frozenset(
    {"uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64", "bool"}
)


@dataclass(frozen=True)
class DatasetMeta:
    """What a file says about its data in the clear (the header), without the key."""

    name: str
    num_examples: int
    x_shape: tuple[int, ...]  # per example
    x_dtype: str
    classes: tuple[str, ...]
    labels_present: tuple[int, ...]
    value_max: float | None
    partition: dict[str, Any]

    @property
    def x_nbytes(self) -> int:
        # math.prod: Python integers, so a forged shape cannot wrap around as numpy's int64 would
        return self.num_examples * math.prod(self.x_shape) * np.dtype(self.x_dtype).itemsize

    @property
    def body_size(self) -> int:
        return self.x_nbytes + self.num_examples * 8


@dataclass(frozen=True)
class DatasetHeader:
    """A parsed header, plus the exact bytes it came from (bound into every chunk)."""

    meta: DatasetMeta
    chunk_size: int
    key: dict[str, Any]
    nonce_prefix: bytes
    raw: bytes  # magic + length + JSON, exactly as in the file

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(self.raw).digest()

    @property
    def num_chunks(self) -> int:
        return max(1, -(-self.meta.body_size // self.chunk_size))

    @property
    def file_size(self) -> int:
        return len(self.raw) + self.meta.body_size + self.num_chunks * TAG_SIZE

    def to_json(self) -> dict[str, Any]:
        """The header as shown by ``fedchain data inspect`` (nothing secret in it)."""
        key = {k: v for k, v in self.key.items() if k not in ("wrapped_key", "wrap_nonce")}
        return {
            "format_version": FORMAT_VERSION,
            "cipher": "AES-256-GCM",
            "chunk_size": self.chunk_size,
            "num_chunks": self.num_chunks,
            "key": key,
            "dataset": _meta_to_json(self.meta),
        }


def compute_dataset_meta(dataset: ArrayDataset, partition: dict[str, Any]) -> DatasetMeta:
    """What a new file's header will say about ``dataset``; refuses what cannot be stored."""
    x = dataset.x
    if x.dtype.name not in ALLOWED_DTYPES:
        raise ConfigError(
            f"features of dtype {x.dtype} cannot be stored; use one of {sorted(ALLOWED_DTYPES)}"
        )
    if len(dataset) == 0:
        raise ConfigError("refusing to write an empty dataset")
    return DatasetMeta(
        name=dataset.name,
        num_examples=len(dataset),
        x_shape=tuple(int(d) for d in x.shape[1:]),
        x_dtype=x.dtype.name,
        classes=tuple(dataset.classes),
        labels_present=tuple(int(v) for v in np.unique(dataset.y)),
        value_max=dataset.value_max,
        partition=partition,
    )


def _meta_to_json(meta: DatasetMeta) -> dict[str, Any]:
    return {
        "name": meta.name,
        "num_examples": meta.num_examples,
        "x_shape": list(meta.x_shape),
        "x_dtype": meta.x_dtype,
        "y_dtype": "int64",
        "classes": list(meta.classes),
        "labels_present": list(meta.labels_present),
        "value_max": meta.value_max,
        "partition": meta.partition,
    }


def encode_header(meta: DatasetMeta, chunk_size: int, key: dict[str, Any], prefix: bytes) -> bytes:
    """The header's one encoding: magic, length, canonical JSON (the bytes every chunk binds)."""
    doc = {
        "format": "fedchain-dataset",
        "version": FORMAT_VERSION,
        "cipher": {"name": "AES-256-GCM", "chunk_size": chunk_size, "nonce_prefix": prefix.hex()},
        "key": key,
        "dataset": _meta_to_json(meta),
    }
    body = json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    return MAGIC + struct.pack("<I", len(body)) + body


def decode_header_length(path: Path, start: bytes) -> int:
    """The header's length from a file's first 8 bytes (magic and u32), refused above
    :data:`MAX_HEADER_SIZE` before anything is read from it."""
    if len(start) < 8 or start[:4] != MAGIC:
        raise DatasetFileError(path, "not a fedchain dataset file (bad magic bytes)")
    length: int
    (length,) = struct.unpack("<I", start[4:])
    if length > MAX_HEADER_SIZE:
        raise DatasetFileError(path, "the file header is malformed or was altered (header too big)")
    return length


def decode_header(path: Path, raw: bytes) -> DatasetHeader:
    """Parse and validate ``raw`` (magic, length and JSON, exactly as in the file)."""
    try:
        doc = json.loads(raw[8:].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise DatasetFileError(path, "the file header is malformed or was altered") from None
    return _parse_header(path, raw, doc)


def _parse_header(path: Path, raw: bytes, doc: Any) -> DatasetHeader:
    """Validate every header field a reader relies on; any defect is one DatasetFileError."""
    try:
        if doc["format"] != "fedchain-dataset":
            raise ValueError("not a fedchain dataset header")
        if doc["version"] != FORMAT_VERSION:
            raise ValueError(f"format version {doc['version']} is not supported")
        cipher, key, ds = doc["cipher"], doc["key"], doc["dataset"]
        if cipher["name"] != "AES-256-GCM":
            raise ValueError(f"unknown cipher {cipher['name']!r}")
        chunk_size = _positive_int(cipher["chunk_size"], "chunk_size")
        if chunk_size > MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size above {MAX_CHUNK_SIZE}")
        prefix = bytes.fromhex(cipher["nonce_prefix"])
        if len(prefix) != 7:
            raise ValueError("bad nonce prefix")
        _check_key_block(key)
        if ds["x_dtype"] not in ALLOWED_DTYPES or ds["y_dtype"] != "int64":
            raise ValueError("unsupported dtype")
        if not isinstance(ds["x_shape"], list) or len(ds["x_shape"]) > MAX_DIMS:
            raise ValueError(f"x_shape must be a list of at most {MAX_DIMS} dimensions")
        meta = DatasetMeta(
            name=str(ds["name"]),
            num_examples=_positive_int(ds["num_examples"], "num_examples"),
            x_shape=tuple(_positive_int(d, "x_shape") for d in ds["x_shape"]),
            x_dtype=ds["x_dtype"],
            classes=tuple(str(c) for c in ds["classes"]),
            labels_present=tuple(_int(v, "labels_present") for v in ds["labels_present"]),
            value_max=None if ds["value_max"] is None else float(ds["value_max"]),
            partition=dict(ds["partition"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
        raise DatasetFileError(path, f"the file header is malformed or was altered ({e})") from None
    return DatasetHeader(meta, chunk_size, key, prefix, raw)


def check_num_chunks(path: Path, header: DatasetHeader) -> None:
    """Refuse a header whose chunks would not fit the nonce's 32-bit index."""
    if header.num_chunks >= MAX_CHUNKS:
        raise DatasetFileError(
            path, "the file header is malformed or was altered (too many chunks)"
        )


def _positive_int(value: Any, what: str) -> int:
    number = _int(value, what)
    if number < 1:
        raise ValueError(f"{what} must be a positive integer")
    return number


def _int(value: Any, what: str) -> int:
    """An integer as JSON wrote it: ``4e7``, ``1.0``, ``true`` and ``"3"`` are not."""
    if type(value) is not int:
        raise ValueError(f"{what} must be an integer, got {value!r:.40}")
    return value


def _check_key_block(key: Any) -> None:
    for name in ("wrap_nonce", "wrapped_key"):
        bytes.fromhex(key[name])
    if key["kind"] == "passphrase":
        if key["kdf"] != "scrypt":
            raise ValueError(f"unknown KDF {key['kdf']!r}")
        for name, (low, high) in SCRYPT_BOUNDS.items():
            value = key[name]
            if not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"scrypt parameter {name} out of range")
        bytes.fromhex(key["salt"])
    elif key["kind"] == "keyfile":
        str(key["key_id"])
    else:
        raise ValueError(f"unknown key kind {key['kind']!r}")
