"""Ed25519 identities and domain-separated signatures.

A participant's raw 32-byte Ed25519 public key is its ledger identity. Every signature fedchain
makes or checks covers a *signing root* rather than the message itself::

    signing_root = SHA-256( u8 len(domain) | domain | federation (32 bytes) | SHA-256(message) )

- ``domain`` is one of the closed set of :class:`Domain` tags, so a signature over an update
  commitment can never be replayed as a block header, an attestation or a registration (the
  length prefix keeps one tag from being a prefix-extension of another).
- ``federation`` is the genesis hash of the federation, so a signature made for one federation is
  worthless in another; before genesis exists it is 32 zero bytes.
- ``message`` is the object's one canonical encoding, hashed first so the root has a fixed size.

Key files, always created with mode 0600:

- with a passphrase: the OpenSSH private key format, encrypted with AES-256-CTR under a key from
  bcrypt-pbkdf with :data:`IDENTITY_KDF_ROUNDS` rounds (``ssh-keygen`` reads it). PKCS#8 is not
  used here because ``cryptography`` encrypts PKCS#8 with PBKDF2 at a fixed 2048 iterations,
  far too cheap for an attacker holding the file, and offers no way to raise it;
- without: PKCS#8 PEM, unencrypted. Like ssh, such a key that others can read is refused.

Both formats (and encrypted PKCS#8 from other tools) are read back. The public key sits next to
the private key in ``<name>.pub`` as one line of 64 hex characters.

Which keys and signatures are accepted is :mod:`fedchain.crypto.ed25519`'s one rule (libsodium's:
no small-order or non-canonical keys, R or S); a ``.pub`` file holding a key it refuses is refused.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import os
import re
import struct
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from fedchain.crypto import ed25519
from fedchain.durable import write_atomically
from fedchain.errors import ConfigError, KeyFileError, SignatureError

__all__ = [
    "FEDERATION_ID_SIZE",
    "NO_FEDERATION",
    "PUBLIC_KEY_SIZE",
    "SIGNATURE_SIZE",
    "Domain",
    "compute_signing_root",
    "fingerprint",
    "generate_identity",
    "is_identity_encrypted",
    "load_identity",
    "load_public_key",
    "public_key_bytes",
    "save_identity",
    "sign",
    "verify_signature",
]

PUBLIC_KEY_SIZE = ed25519.PUBLIC_KEY_SIZE
SIGNATURE_SIZE = ed25519.SIGNATURE_SIZE
FEDERATION_ID_SIZE = 32
NO_FEDERATION = bytes(FEDERATION_ID_SIZE)
"""The federation id used before a genesis block exists."""

_PEM_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")
_MAX_KEY_FILE_SIZE = 64 * 1024  # real key files are < 1 KiB; never read a huge file into memory
_PLAIN_PKCS8_LABEL = b"PRIVATE KEY"
_ENCRYPTED_PKCS8_LABEL = b"ENCRYPTED PRIVATE KEY"
_OPENSSH_LABEL = b"OPENSSH PRIVATE KEY"
_OPENSSH_MAGIC = b"openssh-key-v1\x00"

IDENTITY_KDF_ROUNDS = 32
"""bcrypt-pbkdf rounds for passphrase-encrypted identities: ≈ 0.28 s per unlock here (2 cores),
twice ``ssh-keygen``'s default."""


class Domain(bytes, enum.Enum):
    """The closed set of domain tags; each kind of signed object has its own."""

    UPDATE = b"fedchain/update-commitment/v1"
    BLOCK = b"fedchain/block-header/v1"
    ATTESTATION = b"fedchain/attestation/v1"
    REGISTRATION = b"fedchain/registration/v1"
    APP_APPROVAL = b"fedchain/app-approval/v1"
    REFUSAL = b"fedchain/refusal/v1"


# --------------------------------------------------------------------------------------------------
# Signing roots and signatures


def compute_signing_root(
    domain: Domain, message: bytes, federation: bytes = NO_FEDERATION
) -> bytes:
    """Return the 32-byte digest that is actually signed (layout in the module docstring)."""
    tag = _check_domain(domain)
    if not isinstance(federation, bytes) or len(federation) != FEDERATION_ID_SIZE:
        raise ConfigError(
            f"federation id must be {FEDERATION_ID_SIZE} bytes (the genesis hash), "
            f"got {_describe_bytes(federation)}"
        )
    root = hashlib.sha256()
    root.update(struct.pack("<B", len(tag)))
    root.update(tag)
    root.update(federation)
    root.update(hashlib.sha256(message).digest())
    return root.digest()


def sign(
    private_key: Ed25519PrivateKey,
    domain: Domain,
    message: bytes,
    federation: bytes = NO_FEDERATION,
) -> bytes:
    """Sign ``message`` under ``domain`` for ``federation``; returns a 64-byte signature."""
    return private_key.sign(compute_signing_root(domain, message, federation))


def verify_signature(
    public_key: bytes,
    signature: bytes,
    domain: Domain,
    message: bytes,
    federation: bytes = NO_FEDERATION,
) -> None:
    """Check a signature; return nothing, raise :class:`SignatureError` if it does not verify.

    The acceptance rule is :mod:`fedchain.crypto.ed25519`'s. Malformed keys and signatures (wrong
    type or length, small-order or non-canonical) are signature failures too, each with its
    reason, so callers handling untrusted input need to catch one error only.
    """
    if not isinstance(public_key, bytes) or len(public_key) != PUBLIC_KEY_SIZE:
        raise SignatureError(
            f"public key must be {PUBLIC_KEY_SIZE} bytes, got {_describe_bytes(public_key)}"
        )
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_SIZE:
        raise SignatureError(
            f"signature must be {SIGNATURE_SIZE} bytes, got {_describe_bytes(signature)}"
        )
    root = compute_signing_root(domain, message, federation)
    if ed25519.verify(public_key, signature, root):
        return
    reason = ed25519.explain_refusal(public_key, signature)
    raise SignatureError(
        f"signature does not verify for key {fingerprint(public_key)} "
        f"under domain {_check_domain(domain).decode()}" + ("" if reason is None else f": {reason}")
    )


def _check_domain(domain: Domain) -> bytes:
    """Map to a :class:`Domain` member (also accepts its exact bytes); refuse anything else."""
    try:
        return Domain(domain).value
    except (ValueError, TypeError):
        raise ConfigError(f"unknown signature domain {domain!r}") from None


def _describe_bytes(value: object) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return f"{len(value)} bytes"
    return type(value).__name__


# --------------------------------------------------------------------------------------------------
# Keys


def generate_identity() -> Ed25519PrivateKey:
    """Create a new random identity key (randomness from the OS, via ``cryptography``)."""
    return Ed25519PrivateKey.generate()


def derive_simulated_identity(seed: int, index: int) -> Ed25519PrivateKey:
    """The identity of simulated client ``index`` of a run with ``seed``: derived, not random.

    For simulations only, so that the same seed gives the same keys, the same key order on the
    ledger and the same contribution-score samples: a simulated run reproduces exactly. Anyone
    who knows the seed knows these keys, so they must never hold real stake.
    """
    material = hashlib.sha256(f"fedchain simulated identity {seed} {index}".encode()).digest()
    return Ed25519PrivateKey.from_private_bytes(material)


def public_key_bytes(private_key: Ed25519PrivateKey) -> bytes:
    """The raw 32-byte public key: the participant's identity on the ledger."""
    return private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def fingerprint(public_key: bytes) -> str:
    """A short id for display: the first 16 hex characters of SHA-256(public key).

    64 bits tell keys apart in logs and reports; they are not meant to resist a deliberate
    collision, so the ledger always uses the full key.
    """
    if not isinstance(public_key, bytes) or len(public_key) != PUBLIC_KEY_SIZE:
        raise ConfigError(
            f"public key must be {PUBLIC_KEY_SIZE} bytes, got {_describe_bytes(public_key)}"
        )
    return hashlib.sha256(public_key).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# Key files


def save_identity(
    private_key: Ed25519PrivateKey, path: Path, passphrase: bytes | None
) -> tuple[Path, Path]:
    """Write the private key to ``path`` and the public key to ``path.with_suffix(".pub")``.

    Neither file is ever overwritten (:class:`KeyFileError` if one exists). Each is written to a
    temporary name in the same directory, flushed to disk, then hard-linked into place, which
    fails instead of clobbering a file that appeared meanwhile; a failure therefore never leaves
    half a key under the final name. The private key file has mode 0600 from its creation on.
    Returns ``(private_path, public_path)``.
    """
    path = Path(path)
    public_path = path.with_suffix(".pub")
    if public_path == path:
        raise ConfigError(f"{path}: the private key file must not end in .pub")
    if passphrase is not None and not passphrase:
        raise ConfigError("the passphrase must not be empty (give None for no encryption)")
    for target in (path, public_path):
        if os.path.lexists(target):
            raise KeyFileError(f"{target}: already exists; refusing to overwrite a key file")
    encryption: serialization.KeySerializationEncryption
    if passphrase is None:
        pem_format, encryption = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    else:
        pem_format = serialization.PrivateFormat.OpenSSH
        encryption = (
            pem_format.encryption_builder().kdf_rounds(IDENTITY_KDF_ROUNDS).build(passphrase)
        )
    pem = private_key.private_bytes(serialization.Encoding.PEM, pem_format, encryption)
    _write_new_file(path, pem, mode=0o600)
    try:
        _write_new_file(public_path, public_key_bytes(private_key).hex().encode() + b"\n", 0o644)
    except BaseException:
        path.unlink(missing_ok=True)  # we created it just above: do not leave a lone half
        raise
    return path, public_path


def load_identity(path: Path, passphrase: bytes | None) -> Ed25519PrivateKey:
    """Read an Ed25519 private key written by :func:`save_identity` (or any PKCS#8/OpenSSH PEM).

    Every failure is a :class:`KeyFileError` naming the file: missing or unreadable, not a PEM
    private key, encrypted but no passphrase given, a passphrase given for an unencrypted key,
    wrong passphrase, not an Ed25519 key, or unencrypted yet readable by group or others.
    """
    path = Path(path)
    data, mode = _read_key_file(path)
    encrypted = _is_encrypted(path, data)
    if encrypted and passphrase is None:
        raise KeyFileError(f"{path}: is encrypted: give its passphrase")
    if not encrypted:
        if passphrase is not None:
            raise KeyFileError(
                f"{path}: is not encrypted, but a passphrase was given; "
                "leave the passphrase out or save the key again with one"
            )
        _check_private_permissions(path, mode)
    key = _parse_private_key(path, data, passphrase)
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def is_identity_encrypted(path: Path) -> bool:
    """Whether the private key file at ``path`` needs a passphrase (:class:`KeyFileError` if it
    is no key file)."""
    path = Path(path)
    return _is_encrypted(path, _read_key_file(path)[0])


def load_public_key(path: Path) -> bytes:
    """Read a ``.pub`` file: one line of 64 hex characters; returns the raw 32-byte key.

    A key that :mod:`fedchain.crypto.ed25519` refuses (small order, non-canonical) is refused
    here already: no registration can be made for it.
    """
    path = Path(path)
    text = _read_key_file(path)[0].strip()
    if len(text) != 2 * PUBLIC_KEY_SIZE or re.fullmatch(rb"[0-9a-fA-F]+", text) is None:
        raise KeyFileError(
            f"{path}: is not a public key file (expected one line of "
            f"{2 * PUBLIC_KEY_SIZE} hex characters)"
        )
    key = bytes.fromhex(text.decode("ascii"))
    reason = ed25519.check_public_key(key)
    if reason is not None:
        raise KeyFileError(f"{path}: refused as an identity: {reason}")
    return key


def _write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to a new file at ``path`` (exact ``mode``) without ever clobbering one."""
    try:
        write_atomically(path, data, mode=mode, overwrite=False)
    except FileExistsError:
        raise KeyFileError(f"{path}: already exists; refusing to overwrite a key file") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot create: {exc.strerror or exc}") from exc


def _read_key_file(path: Path) -> tuple[bytes, int]:
    """Return the file's content and permission bits, both from one open file (no race)."""
    try:
        with path.open("rb") as handle:
            return handle.read(_MAX_KEY_FILE_SIZE), os.fstat(handle.fileno()).st_mode & 0o777
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such key file") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _is_encrypted(path: Path, data: bytes) -> bool:
    """Tell encrypted from plain keys by PEM label (and OpenSSH cipher name); refuse the rest."""
    match = _PEM_LABEL.search(data)
    label = match.group(1) if match else None
    if label == _ENCRYPTED_PKCS8_LABEL:
        return True
    if label == _PLAIN_PKCS8_LABEL:
        return False
    if label == _OPENSSH_LABEL:
        return _openssh_cipher(path, data) != b"none"
    found = f" (found a {label.decode()} block)" if label else ""
    raise KeyFileError(f"{path}: is not a PKCS#8 or OpenSSH PEM private key{found}")


def _openssh_cipher(path: Path, data: bytes) -> bytes:
    """The cipher name an OpenSSH private key declares (``none`` when unencrypted)."""
    try:
        body = b"".join(data.split(b"-----")[2].split())
        blob = base64.b64decode(body, validate=True)
    except (IndexError, binascii.Error):
        blob = b""
    start = len(_OPENSSH_MAGIC)
    if not blob.startswith(_OPENSSH_MAGIC) or len(blob) < start + 4:
        raise KeyFileError(f"{path}: is damaged or not a private key cryptography can read")
    (length,) = struct.unpack(">I", blob[start : start + 4])
    return blob[start + 4 : start + 4 + length]


def _check_private_permissions(path: Path, mode: int) -> None:
    """Refuse an unencrypted key that group or others can read, as ssh does."""
    if os.name != "posix":
        return  # Windows reports no meaningful group/other bits
    if mode & 0o077:
        raise KeyFileError(
            f"{path}: unencrypted private key is accessible by others (mode {mode:04o}); "
            f"run: chmod 600 {path}"
        )


def _parse_private_key(path: Path, data: bytes, passphrase: bytes | None) -> PrivateKeyTypes:
    load = (
        serialization.load_ssh_private_key
        if _PEM_LABEL.search(data) and _OPENSSH_LABEL in data
        else serialization.load_pem_private_key
    )
    try:
        return load(data, passphrase)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        if passphrase is not None:
            reason = "cannot decrypt: wrong passphrase (or the file is damaged)"
        else:
            reason = "is damaged or not a private key cryptography can read"
        raise KeyFileError(f"{path}: {reason}") from exc
