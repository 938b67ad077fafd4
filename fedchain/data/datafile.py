"""Encrypted dataset files (``.fcd``): writing, reading and streaming the encrypted body, one file
per data holder, decrypted only in memory.

Byte layout (integers little-endian)::

    b"FCD1"                      magic
    u32 header length
    header                       canonical JSON (sorted keys, no spaces), UTF-8
    chunk 0 .. chunk k-1         AES-256-GCM ciphertext + 16-byte tag each

The header is plain so that anyone can inspect a file without its key; its fields, encoding and
checks are :mod:`fedchain.data.header`'s. This module does the file I/O and the cryptography.

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
import os
import secrets
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fedchain.data.header import (
    MAX_CHUNK_SIZE,
    TAG_SIZE,
    DatasetHeader,
    check_num_chunks,
    compute_dataset_meta,
    decode_header,
    decode_header_length,
    encode_header,
)
from fedchain.data.keys import (
    KEY_SIZE,
    DataKey,
    Passphrase,
    RandomBytes,
    Unlock,
    derive_passphrase_key,
)
from fedchain.data.sources import ArrayDataset
from fedchain.durable import write_atomically
from fedchain.errors import ConfigError, DatasetFileError, WrongKeyError

DEFAULT_CHUNK_SIZE = 1 << 20  # plaintext bytes per chunk

# scrypt cost of a new file: n=2^15, r=8 uses 32 MiB and ≈ 60 ms here (the bounds a reader accepts
# are header.SCRYPT_BOUNDS).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 15, 8, 1

KEY_WRAP_AD = b"fedchain/fcd/key-wrap/v1"

# --------------------------------------------------------------------------------------------------
# Reading the header


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
    length = decode_header_length(path, start)
    body = f.read(length)
    if len(body) != length:
        raise DatasetFileError(path, "the file is truncated (inside the header)")
    header = decode_header(path, start + body)
    check_file_size(path, header, os.fstat(f.fileno()).st_size)
    check_num_chunks(path, header)
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
    meta = compute_dataset_meta(dataset, partition or {})
    data_key = random_bytes(KEY_SIZE)
    key_block = _wrap_key(data_key, unlock, random_bytes)
    raw = encode_header(meta, chunk_size, key_block, random_bytes(7))
    header = decode_header(path, raw)
    check_num_chunks(path, header)
    x = np.ascontiguousarray(dataset.x, dtype=dataset.x.dtype.newbyteorder("<"))
    y = np.ascontiguousarray(dataset.y, dtype="<i8")
    aead = AESGCM(data_key)

    def write_file(f: BinaryIO) -> None:
        f.write(raw)
        chunks = _iter_body([x.data.cast("B"), y.data.cast("B")], chunk_size)
        for index, chunk in enumerate(chunks):
            nonce, ad = _chunk_nonce_and_ad(header, index)
            f.write(aead.encrypt(nonce, chunk, ad))

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, write_file, mode=0o600)  # 0600: data at rest is the holder's alone
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
