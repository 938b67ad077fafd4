"""Data keys: a random data key in a 0600 key file, or one derived from a passphrase.

Either unlocks an encrypted dataset file (:mod:`fedchain.data.datafile`): a key file's key, or the
key scrypt derives from a passphrase, wraps the file's own random data key.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from fedchain.durable import write_atomically
from fedchain.errors import ConfigError, KeyFileError

KEY_SIZE = 32
KEY_ID_DOMAIN = b"fedchain/fcd/key-id/v1"

RandomBytes = Callable[[int], bytes]


@dataclass(frozen=True)
class Passphrase:
    """A passphrase that unlocks a dataset file through scrypt. Never printed."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not self.secret:
            raise ConfigError("the passphrase is empty")


@dataclass(frozen=True)
class DataKey:
    """A 256-bit key read from a key file; its id (not secret) tells key files apart."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) != KEY_SIZE:
            raise ConfigError(f"a data key is {KEY_SIZE} bytes, got {len(self.secret)}")

    @property
    def key_id(self) -> str:
        return hashlib.sha256(KEY_ID_DOMAIN + self.secret).hexdigest()[:16]


Unlock = Passphrase | DataKey


def create_key_file(path: Path, random_bytes: RandomBytes = secrets.token_bytes) -> DataKey:
    """Write a new random data key as one hex line, mode 0600; never overwrite an existing file."""
    key = DataKey(random_bytes(KEY_SIZE))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_atomically(path, (key.secret.hex() + "\n").encode(), mode=0o600, overwrite=False)
    except FileExistsError:
        raise KeyFileError(f"{path}: already exists; refusing to overwrite a key") from None
    return key


def load_key_file(path: Path) -> DataKey:
    """Read a data key file; refuse one that group or others can read (as ssh does)."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: key file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(f"{path}: cannot read key file ({e})") from None
    if mode & 0o077:
        raise KeyFileError(
            f"{path}: key file is readable by others (mode {mode & 0o777:o}); run chmod 600 on it"
        )
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        secret = b""
    if len(secret) != KEY_SIZE:
        raise KeyFileError(
            f"{path}: not a fedchain data key file (expected {2 * KEY_SIZE} hex digits)"
        )
    return DataKey(secret)


def derive_passphrase_key(passphrase: Passphrase, params: dict[str, Any]) -> bytes:
    """The key scrypt derives from ``passphrase`` with a file's ``salt``, ``n``, ``r`` and ``p``."""
    salt = bytes.fromhex(params["salt"])
    kdf = Scrypt(salt=salt, length=KEY_SIZE, n=params["n"], r=params["r"], p=params["p"])
    return kdf.derive(passphrase.secret)
