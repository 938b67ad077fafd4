"""Registration files: a participant's signed stake deposit, dataset commitment and names.

Registration happens before the ledger exists. A data holder signs a
:class:`~fedchain.ledger.objects.GenesisParticipant` (their Ed25519 identity, stake deposit,
dataset commitment, whose example count is read from the decrypted, authenticated file, their
participant name, SuperNode key, and the digest of the app it agrees to run on its data with
the fedchain version it runs: :mod:`fedchain.deploy.app`) under the registration domain with
the federation id the coordinator gave them
(:func:`~fedchain.ledger.derived.compute_federation_id`: the hash of the federation's name and
rules, fixed by ``fedchain federation init``). The coordinator checks the
signature and the id when it adds the participant; the genesis then holds the signed
registration as it is, so ``fedchain verify`` re-checks it from the run directory alone, and a
registration made for one federation is refused by any other.

This module also owns what a registration file and ``federation.toml`` share: a participant's
TOML table, the name and SuperNode key checks, and the bounded TOML reader.
"""

from __future__ import annotations

import re
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedchain.crypto import identity
from fedchain.data import datafile, keys
from fedchain.errors import ConfigError, SignatureError
from fedchain.ledger.builder import sign_genesis_participant
from fedchain.ledger.codec import MAX_INT
from fedchain.ledger.objects import HASH_SIZE, GenesisParticipant, Hash32
from fedchain.ledger.signatures import is_signed_by

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "MAX_REGISTERED_EXAMPLES",
    "MAX_TOML_SIZE",
    "REGISTRATION_FORMAT",
    "ParticipantEntry",
    "check_int",
    "check_name",
    "check_supernode_key",
    "compute_supernode_key_bytes",
    "create_registration",
    "decode_registration_file",
    "encode_registration_file",
    "entry_from_toml",
    "entry_to_toml",
    "parse_federation_id",
    "read_toml",
    "verify_registration",
]

REGISTRATION_FORMAT = "fedchain-registration/v3"
_OLD_FORMATS = {
    "fedchain-registration/v1": "signed for no federation",
    "fedchain-registration/v2": "it approves no app",
}
MAX_TOML_SIZE = 4 << 20  # bytes: a federation of thousands of participants is well under this
MAX_REGISTERED_EXAMPLES = 1 << 40
"""A sanity bound on a registration's example count: a file holding more (each example carries
at least its 8-byte label) would be over 8 TiB. The count itself cannot be checked by the
coordinator, who never sees the data; it bounds the client's aggregation weight."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class ParticipantEntry:
    """One registered data holder: the signed registration, as the genesis will hold it, and
    the id of the federation it was signed for.

    ``supernode_key`` is the text of the SuperNode's authentication public key (OpenSSH format,
    a NIST EC curve, as ``flwr supernode register`` takes it), empty if none was given.
    """

    participant: GenesisParticipant
    federation_id: Hash32

    @property
    def registration(self) -> GenesisParticipant:
        return self.participant

    @property
    def public_key(self) -> bytes:
        return self.participant.public_key

    @property
    def name(self) -> str:
        return self.participant.name

    @property
    def supernode_key(self) -> str:
        return self.participant.supernode_key


# --------------------------------------------------------------------------------------------------
# Registration files (made by a data holder)


def create_registration(
    key: Ed25519PrivateKey,
    data_path: Path,
    *,
    federation_id: Hash32,
    unlock: keys.Unlock,
    stake: int,
    name: str,
    supernode_key: str = "",
    app_digest: bytes | None = None,
) -> ParticipantEntry:
    """Sign a registration for the dataset at ``data_path``, for the federation
    ``federation_id`` (which the coordinator gives out: ``fedchain federation init`` prints it).

    The commitment is the hash of the encrypted file and its example count, and the count is
    taken from the file as authenticated by its key (``unlock``; every chunk is decrypted, one
    at a time): the plain header alone can be edited by anyone, and a signed count is what
    bounds the weight the ledger gives this participant's updates.

    ``app_digest`` is the app the holder approves; by default the one its own fedchain submits
    (:func:`fedchain.deploy.app.app_digest`), with this fedchain's version.
    """
    from fedchain.deploy import app

    if app_digest is None:
        app_digest = app.app_digest()
    if len(app_digest) != HASH_SIZE:
        raise ConfigError(f"an app digest is {HASH_SIZE} bytes, got {len(app_digest)}")
    check_name(name)
    if not 1 <= stake <= MAX_INT:
        raise ConfigError(f"stake must be between 1 and {MAX_INT}, got {stake}")
    supernode_key = check_supernode_key(supernode_key)
    commitment = datafile.compute_verified_commitment(Path(data_path), unlock)
    if len(federation_id) != HASH_SIZE:
        raise ConfigError(f"a federation id is {HASH_SIZE} bytes, got {len(federation_id)}")
    participant = sign_genesis_participant(
        key,
        federation_id,
        stake=stake,
        dataset_hash=commitment.file_hash,
        num_examples=commitment.num_examples,
        name=name,
        supernode_key=supernode_key,
        app_digest=app_digest,
        fedchain_version=app.fedchain_version(),
    )
    return ParticipantEntry(participant, federation_id)


def verify_registration(entry: ParticipantEntry) -> None:
    """Raise :class:`SignatureError` unless the registration is signed by its own key for the
    federation it names (whether that is the right federation is the caller's check)."""
    if not is_signed_by(entry.participant, entry.public_key, entry.federation_id):
        raise SignatureError(
            f"the signature does not verify for identity {identity.fingerprint(entry.public_key)} "
            f"and federation {entry.federation_id.hex()[:16]}…"
        )


def parse_federation_id(text: str, where: str = "federation id") -> Hash32:
    """A federation id from its hex text (64 hex digits), else :class:`ConfigError`."""
    try:
        value = bytes.fromhex(text.strip())
    except ValueError:
        value = b""
    if len(value) != HASH_SIZE:
        raise ConfigError(
            f"{where}: {text!r} is not a federation id ({2 * HASH_SIZE} hex digits, as "
            "`fedchain federation init` prints it)"
        )
    return value


def entry_to_toml(entry: ParticipantEntry) -> dict[str, Any]:
    """A participant's TOML table, as a registration file and ``federation.toml`` hold it."""
    reg = entry.participant
    table: dict[str, Any] = {
        "name": entry.name,
        "federation-id": entry.federation_id.hex(),
        "public-key": reg.public_key.hex(),
        "stake": reg.stake,
        "dataset-hash": reg.dataset_hash.hex(),
        "num-examples": reg.num_examples,
        "app-digest": reg.app_digest.hex(),
        "fedchain-version": reg.fedchain_version,
        "signature": reg.signature.hex(),
    }
    if entry.supernode_key:
        table["supernode-key"] = entry.supernode_key
    return table


def entry_from_toml(table: Any, where: str) -> ParticipantEntry:
    """The inverse of :func:`entry_to_toml`; :class:`ConfigError` naming ``where`` if malformed."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: a participant must be a table")
    try:
        name = str(table["name"])
        participant = GenesisParticipant(
            public_key=_hex(table["public-key"], "public-key", where),
            stake=check_int(table["stake"], "stake", where),
            dataset_hash=_hex(table["dataset-hash"], "dataset-hash", where),
            num_examples=check_int(table["num-examples"], "num-examples", where),
            name=name,
            supernode_key=str(table.get("supernode-key", "")),
            app_digest=_hex(table["app-digest"], "app-digest", where),
            fedchain_version=str(table["fedchain-version"]),
            signature=_hex(table["signature"], "signature", where),
        )
        federation_id = parse_federation_id(str(table["federation-id"]), f"{where}: federation-id")
    except KeyError as e:
        raise ConfigError(f"{where}: missing {e.args[0]!r}") from None
    check_name(name)
    return ParticipantEntry(participant, federation_id)


def encode_registration_file(entry: ParticipantEntry) -> str:
    import tomli_w

    doc = {"format": REGISTRATION_FORMAT, "participant": entry_to_toml(entry)}
    comment = (
        "# A fedchain registration: give this file to the federation's coordinator\n"
        "# (`fedchain federation add FED_DIR THIS_FILE`). It holds no secret.\n"
    )
    return comment + tomli_w.dumps(doc)


def decode_registration_file(path: Path) -> ParticipantEntry:
    doc = read_toml(Path(path))
    old = _OLD_FORMATS.get(str(doc.get("format")))
    if old is not None:
        raise ConfigError(
            f"{path}: an old registration ({old}); sign a new one with "
            "`fedchain register --federation-id ID` (the id `fedchain federation init` printed)"
        )
    if doc.get("format") != REGISTRATION_FORMAT:
        raise ConfigError(f"{path}: not a fedchain registration file ({REGISTRATION_FORMAT})")
    return entry_from_toml(doc.get("participant"), str(path))


# --------------------------------------------------------------------------------------------------
# Small checks (shared with federation.toml)


def read_toml(path: Path) -> dict[str, Any]:
    """A small TOML file: a FIFO or device (which would block or never end) and anything over
    :data:`MAX_TOML_SIZE` are refused, not read."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise ConfigError(f"{path}: not a regular file")
        with path.open("rb") as f:
            raw = f.read(MAX_TOML_SIZE + 1)
        if len(raw) > MAX_TOML_SIZE:
            raise ConfigError(f"{path}: too big for a fedchain TOML file (over {MAX_TOML_SIZE})")
        return tomllib.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError) as e:
        raise ConfigError(f"{path}: not a readable TOML file ({e})") from None


def check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"name {name!r}: use 1-64 letters, digits, '.', '_' or '-' (starting with a letter "
            "or digit)"
        )


def check_supernode_key(text: str) -> str:
    """The SuperNode public key as one OpenSSH line, checked to be a NIST-curve EC key.

    Leading and trailing whitespace is dropped; what is left must be one line of printable ASCII
    (no newline, tab or other control character) whose type and base64 fields are exactly the
    key's canonical OpenSSH form, then at most a comment. OpenSSL's parser alone accepts a line
    with a second line, a NUL or extra base64 padding after the key; those would reach the
    coordinator's key file and Flower, so they are refused here.
    """
    if not text:
        return ""
    line = text.strip()
    if not line.isascii() or not line.isprintable():
        raise ConfigError(
            "the SuperNode public key must be one line of printable text (it holds a newline, "
            "tab or other control character)"
        )
    try:
        key = serialization.load_ssh_public_key(line.encode())
    except (ValueError, TypeError, UnicodeEncodeError, UnsupportedAlgorithm):
        raise ConfigError(
            "the SuperNode public key is not an OpenSSH public key (one line, as "
            "`fedchain keygen --supernode` writes to NAME.pub)"
        ) from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ConfigError("the SuperNode public key must be an EC key (Flower uses NIST P-384)")
    canonical = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    if line.split(" ", 2)[:2] != canonical.decode().split(" "):
        raise ConfigError(
            "the SuperNode public key has extra characters in its key fields (only a comment, "
            "after one space, may follow the key)"
        )
    return line


def compute_supernode_key_bytes(text: str) -> bytes:
    """The SuperNode key itself (its DER SubjectPublicKeyInfo), for comparing two keys: the same
    key with another comment or spacing is the same key. ``b""`` for no key."""
    line = check_supernode_key(text)
    if not line:
        return b""
    key = serialization.load_ssh_public_key(line.encode())
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def check_int(value: Any, what: str, where: str) -> int:
    """``value`` itself if it is an int (not a bool, float or string), else :class:`ConfigError`."""
    if type(value) is not int:
        raise ConfigError(f"{where}: {what} must be an integer, got {value!r}")
    return value


def _hex(value: Any, what: str, where: str) -> bytes:
    try:
        return bytes.fromhex(str(value))
    except ValueError:
        raise ConfigError(f"{where}: {what} is not hex") from None
