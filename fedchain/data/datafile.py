"""Encrypted dataset files (``.fcd``): one file per data holder, decrypted only in memory.

Byte layout (integers little-endian)::

    b"FCD1"                      magic
    u32 header length
    header                       canonical JSON (sorted keys, no spaces), UTF-8
    chunk 0 .. chunk k-1         AES-256-GCM ciphertext + 16-byte tag each

The header is plain so that anyone can inspect a file without its key: format version, cipher and
chunk size, how the data key is wrapped (KDF and its parameters, salt), and dataset metadata (name,
number of examples, feature shape and dtype, class names, the labels present, how it was
partitioned). The label *histogram* is not in the header: it is only shown once decrypted.

Security properties and how they are obtained:

* A random 256-bit data key encrypts the body; it is stored wrapped (AES-256-GCM) by a
  key-encryption key derived from a passphrase (scrypt) or read from a key file. A wrong key fails
  to unwrap.
* The header is authenticated: every chunk's associated data starts with SHA-256 of the exact header
  bytes, so a changed byte anywhere in the header makes chunk 0 fail.
* Chunk ``i`` is encrypted under nonce ``prefix(7) | u32be(i) | u8(last)`` with associated data
  ``sha256(header) | u64(i) | u8(last)``: reordering, dropping or duplicating chunks, truncating the
  file at a chunk boundary and appending bytes are all detected (the STREAM construction of
  Hoang, Reyhanitabar, Rogaway and Vizár, 2015).
* Decryption fills a private buffer; arrays are built only after every chunk verified, and the
  buffer is wiped on failure, so a caller never sees partially decrypted data.
* Nothing is allocated from the header's numbers before they are checked: the header's sizes must
  match the file's length exactly (the chunked ciphertext's length determines the plaintext's),
  and chunk 0, whose associated data binds the header, is decrypted before the body buffer is
  allocated. A forged header claiming billions of examples is one error, not gigabytes of memory.

The plaintext body is ``x`` (C order, little-endian, the header's dtype) followed by ``y`` (int64).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import stat
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fedchain.data.keys import (
    KEY_SIZE,
    DataKey,
    Passphrase,
    RandomBytes,
    Unlock,
    derive_passphrase_key,
)
from fedchain.data.sources import ArrayDataset
from fedchain.errors import ConfigError, DatasetFileError, WrongKeyError

MAGIC = b"FCD1"
FORMAT_VERSION = 1
DEFAULT_CHUNK_SIZE = 1 << 20  # plaintext bytes per chunk
TAG_SIZE = 16
MAX_HEADER_SIZE = 1 << 20
MAX_CHUNKS = 1 << 32  # the nonce holds a 32-bit chunk index
MAX_CHUNK_SIZE = 1 << 28  # bytes: what one chunk may make a reader hold before it is authenticated
MAX_DIMS = 32  # feature dimensions per example (numpy's own limit is 32 or 64)

# scrypt cost: n=2^15, r=8 uses 32 MiB and ≈ 60 ms here. Files may carry other parameters; these
# bounds stop a forged header from asking for absurd memory or time.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 15, 8, 1
SCRYPT_BOUNDS = {"n": (1 << 10, 1 << 22), "r": (1, 32), "p": (1, 16)}

KEY_WRAP_AD = b"fedchain/fcd/key-wrap/v1"
ALLOWED_DTYPES = frozenset(
    {"uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64", "bool"}
)

# --------------------------------------------------------------------------------------------------
# Header


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


def _encode_header(meta: DatasetMeta, chunk_size: int, key: dict[str, Any], prefix: bytes) -> bytes:
    doc = {
        "format": "fedchain-dataset",
        "version": FORMAT_VERSION,
        "cipher": {"name": "AES-256-GCM", "chunk_size": chunk_size, "nonce_prefix": prefix.hex()},
        "key": key,
        "dataset": _meta_to_json(meta),
    }
    body = json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    return MAGIC + struct.pack("<I", len(body)) + body


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


def _check_num_chunks(path: Path, header: DatasetHeader) -> None:
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


def read_header(path: Path) -> DatasetHeader:
    """Read and validate the plain header of a dataset file; needs no key.

    The header's sizes are checked against the file's length (:func:`check_file_size`), so what a
    returned header says about sizes is what the file holds; the rest of it is authenticated
    only by decrypting (:func:`load_dataset`, :func:`compute_verified_commitment`).
    """
    with _open_for_reading(path) as f:
        return _read_header_from(path, f)


def check_file_size(path: Path, header: DatasetHeader, actual: int | None = None) -> None:
    """Refuse a file whose length is not the one its header's sizes give (no key needed).

    This catches truncation and appended bytes, and, before anything is allocated from them, a
    header whose example count or shape was altered: the sizes are exact Python integers, so
    absurd claims (``4e7`` examples in a 4 kB file, shapes whose product overflows int64) fail
    here. ``actual`` is the file's length when the caller already has it (from the open file).
    """
    if actual is None:
        actual = Path(path).stat().st_size
    expected = header.file_size
    if actual == expected:
        return
    meta = header.meta
    claim = (
        f"the header describes {meta.num_examples:,} examples of {meta.x_shape} {meta.x_dtype} "
        f"({expected:,} bytes) but the file has {actual:,} bytes"
    )
    if actual < expected:
        raise DatasetFileError(path, f"the file is truncated, or its header was altered: {claim}")
    raise DatasetFileError(
        path,
        "the file has unexpected bytes after its last chunk, or its header was altered: " + claim,
    )


def _open_for_reading(path: Path) -> BinaryIO:
    """Open a regular file (a FIFO or device would block or never end)."""
    try:
        if not stat.S_ISREG(Path(path).stat().st_mode):
            raise DatasetFileError(path, "not a regular file")
        return open(path, "rb")
    except FileNotFoundError:
        raise DatasetFileError(path, "file not found") from None
    except OSError as e:
        raise DatasetFileError(path, f"cannot open ({e.strerror})") from None


def _read_header_from(path: Path, f: BinaryIO) -> DatasetHeader:
    start = f.read(8)
    if len(start) < 8 or start[:4] != MAGIC:
        raise DatasetFileError(path, "not a fedchain dataset file (bad magic bytes)")
    (length,) = struct.unpack("<I", start[4:])
    if length > MAX_HEADER_SIZE:
        raise DatasetFileError(path, "the file header is malformed or was altered (header too big)")
    body = f.read(length)
    if len(body) != length:
        raise DatasetFileError(path, "the file is truncated (inside the header)")
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise DatasetFileError(path, "the file header is malformed or was altered") from None
    header = _parse_header(path, start + body, doc)
    check_file_size(path, header, os.fstat(f.fileno()).st_size)
    _check_num_chunks(path, header)
    return header


# --------------------------------------------------------------------------------------------------
# Writing


def _wrap_key(data_key: bytes, unlock: Unlock, random_bytes: RandomBytes) -> dict[str, Any]:
    nonce = random_bytes(12)
    if isinstance(unlock, Passphrase):
        block: dict[str, Any] = {
            "kind": "passphrase",
            "kdf": "scrypt",
            "n": SCRYPT_N,
            "r": SCRYPT_R,
            "p": SCRYPT_P,
            "salt": random_bytes(16).hex(),
        }
        kek = derive_passphrase_key(unlock, block)
    else:
        block = {"kind": "keyfile", "key_id": unlock.key_id}
        kek = unlock.secret
    block["wrap_nonce"] = nonce.hex()
    block["wrapped_key"] = AESGCM(kek).encrypt(nonce, data_key, KEY_WRAP_AD).hex()
    return block


def _chunk_nonce_and_ad(header: DatasetHeader, index: int) -> tuple[bytes, bytes]:
    last = 1 if index == header.num_chunks - 1 else 0
    nonce = header.nonce_prefix + struct.pack(">IB", index, last)
    ad = header.digest + struct.pack("<QB", index, last)
    return nonce, ad


def _iter_body(views: list[memoryview], chunk_size: int) -> Iterator[bytes]:
    """Yield the concatenation of ``views`` in chunks, joining pieces only across boundaries."""
    pending: list[memoryview] = []
    size = 0
    for view in views:
        offset = 0
        while offset < len(view):
            take = min(chunk_size - size, len(view) - offset)
            pending.append(view[offset : offset + take])
            size += take
            offset += take
            if size == chunk_size:
                yield b"".join(pending)
                pending, size = [], 0
    if size:
        yield b"".join(pending)


def _meta_for(dataset: ArrayDataset, partition: dict[str, Any]) -> DatasetMeta:
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


def write_dataset(
    path: Path,
    dataset: ArrayDataset,
    unlock: Unlock,
    *,
    partition: dict[str, Any] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    overwrite: bool = False,
    random_bytes: RandomBytes = secrets.token_bytes,
) -> DatasetHeader:
    """Encrypt ``dataset`` into ``path`` atomically (a temporary file renamed into place).

    An existing file is kept unless ``overwrite``; if anything fails, no partial file is left.
    ``random_bytes`` exists so tests can pin the randomness (salt, nonces, data key).
    """
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ConfigError(f"chunk size must be between 1 and {MAX_CHUNK_SIZE} bytes")
    path = Path(path)
    if path.exists() and not overwrite:
        raise ConfigError(f"{path}: already exists; use --force to overwrite")
    meta = _meta_for(dataset, partition or {})
    data_key = random_bytes(KEY_SIZE)
    key_block = _wrap_key(data_key, unlock, random_bytes)
    raw = _encode_header(meta, chunk_size, key_block, random_bytes(7))
    header = _parse_header(path, raw, json.loads(raw[8:]))
    _check_num_chunks(path, header)
    x = np.ascontiguousarray(dataset.x, dtype=dataset.x.dtype.newbyteorder("<"))
    y = np.ascontiguousarray(dataset.y, dtype="<i8")
    aead = AESGCM(data_key)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            chunks = _iter_body([x.data.cast("B"), y.data.cast("B")], chunk_size)
            for index, chunk in enumerate(chunks):
                nonce, ad = _chunk_nonce_and_ad(header, index)
                f.write(aead.encrypt(nonce, chunk, ad))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return header


# --------------------------------------------------------------------------------------------------
# Reading


def _unwrap_key(path: Path, header: DatasetHeader, unlock: Unlock) -> bytes:
    key = header.key
    if key["kind"] == "passphrase":
        if not isinstance(unlock, Passphrase):
            raise WrongKeyError(
                path, "is encrypted with a passphrase, not a key file: leave the key file out"
            )
        kek = derive_passphrase_key(unlock, key)
        failure = "wrong passphrase (or the file's key header was altered)"
    else:
        if not isinstance(unlock, DataKey):
            raise WrongKeyError(
                path,
                f"is encrypted with a key file, not a passphrase: give its key file "
                f"(key id {key['key_id']})",
            )
        if unlock.key_id != key["key_id"]:
            raise WrongKeyError(
                path,
                f"wrong key file: the file needs key id {key['key_id']}, "
                f"this key file has id {unlock.key_id}",
            )
        kek = unlock.secret
        failure = "the file's key header was altered (the key file's id matches)"
    try:
        data_key = AESGCM(kek).decrypt(
            bytes.fromhex(key["wrap_nonce"]), bytes.fromhex(key["wrapped_key"]), KEY_WRAP_AD
        )
    except InvalidTag:
        raise WrongKeyError(path, failure) from None
    if len(data_key) != KEY_SIZE:
        raise DatasetFileError(path, "the file's key header was altered")
    return data_key


def _iter_chunks(
    path: Path, f: BinaryIO, header: DatasetHeader, aead: AESGCM
) -> Iterator[tuple[bytes, bytes]]:
    """Yield each chunk as ``(sealed, plain)`` once it verified, in order; raise on the first
    chunk that does not (or on bytes after the last). Holds one chunk at a time."""
    remaining = header.meta.body_size
    for index in range(header.num_chunks):
        plain_size = min(header.chunk_size, remaining)
        sealed = f.read(plain_size + TAG_SIZE)
        if len(sealed) != plain_size + TAG_SIZE:
            raise DatasetFileError(
                path,
                f"the file is truncated (chunk {index} of {header.num_chunks} is incomplete)",
            )
        nonce, ad = _chunk_nonce_and_ad(header, index)
        try:
            plain = aead.decrypt(nonce, sealed, ad)
        except InvalidTag:
            raise DatasetFileError(
                path,
                f"chunk {index} failed authentication: the file (header or data) was altered, "
                "or its chunks were reordered",
            ) from None
        remaining -= plain_size
        yield sealed, plain
    if f.read(1):
        raise DatasetFileError(path, "the file has unexpected bytes after its last chunk")


def _decrypt_body(path: Path, f: BinaryIO, header: DatasetHeader, aead: AESGCM) -> bytearray:
    """The whole plaintext body. The buffer is allocated only after chunk 0 verified, which
    authenticates the header whose sizes it is allocated from."""
    chunks = _iter_chunks(path, f, header, aead)
    _, first = next(chunks)
    body = bytearray(header.meta.body_size)
    try:
        body[: len(first)] = first
        offset = len(first)
        for _, plain in chunks:
            body[offset : offset + len(plain)] = plain
            offset += len(plain)
    except BaseException:
        # wipe in place (no second buffer): no partially decrypted data outlives a failure
        np.frombuffer(body, dtype=np.uint8)[:] = 0
        raise
    return body


def load_dataset(path: Path, unlock: Unlock) -> ArrayDataset:
    """Decrypt a dataset file into memory; every chunk is verified before any array is returned."""
    path = Path(path)
    with _open_for_reading(path) as f:
        header = _read_header_from(path, f)
        data_key = _unwrap_key(path, header, unlock)
        body = _decrypt_body(path, f, header, AESGCM(data_key))
    meta = header.meta
    x_dtype = np.dtype(meta.x_dtype).newbyteorder("<")
    x = np.frombuffer(body, dtype=x_dtype, count=meta.x_nbytes // x_dtype.itemsize)
    y = np.frombuffer(body, dtype="<i8", offset=meta.x_nbytes)
    return ArrayDataset(
        name=meta.name,
        x=x.reshape((meta.num_examples, *meta.x_shape)),
        y=y.astype(np.int64, copy=False),
        classes=meta.classes,
        value_max=meta.value_max,
    )


# --------------------------------------------------------------------------------------------------
# Commitment


@dataclass(frozen=True)
class DatasetCommitment:
    """What a client registers on the ledger: hash of the encrypted file and its example count."""

    file_hash: bytes
    num_examples: int


def compute_dataset_commitment(path: Path) -> DatasetCommitment:
    """Hash the encrypted file as stored (no key needed). The example count is the header's
    *claim*: checked against the file's length, not authenticated. What a participant signs
    comes from :func:`compute_verified_commitment` instead."""
    with _open_for_reading(path) as f:
        header = _read_header_from(path, f)
        digest = hashlib.sha256(header.raw)
        while block := f.read(1 << 20):
            digest.update(block)
    return DatasetCommitment(digest.digest(), header.meta.num_examples)


def compute_verified_commitment(path: Path, unlock: Unlock) -> DatasetCommitment:
    """The commitment of a file that decrypts with ``unlock``: every chunk is authenticated
    (so the header's example count is too) while the same bytes are hashed, in one pass over
    the file and one chunk of memory. Raises like :func:`load_dataset`."""
    path = Path(path)
    with _open_for_reading(path) as f:
        header = _read_header_from(path, f)
        aead = AESGCM(_unwrap_key(path, header, unlock))
        digest = hashlib.sha256(header.raw)
        for sealed, _ in _iter_chunks(path, f, header, aead):
            digest.update(sealed)
    return DatasetCommitment(digest.digest(), header.meta.num_examples)
