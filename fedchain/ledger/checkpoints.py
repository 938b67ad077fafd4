"""A data holder's saved checkpoint: the file format, and whether a ledger extends it.

A data holder keeps the last final block it saw (a
:class:`~fedchain.ledger.lightclient.Checkpoint`) on its own disk, with the federation it belongs
to, so that history it has seen cannot be shortened or rewritten silently: ``fedchain verify
RUN_DIR --checkpoint FILE`` fails on a ledger that does not extend it. The file is one small JSON
object with exactly these keys::

    {"format": "fedchain-checkpoint/1", "genesis-hash": "<64 hex>", "height": <int>,
     "block-hash": "<64 hex>"}

``genesis-hash`` is the genesis hash (the hash of the Genesis transaction, which every signed
message binds; not the federation id a registration signs), ``block-hash`` the hash of the
header at ``height``; hex is lowercase. Readers refuse anything else (other keys, duplicate keys,
upper case, a float or boolean height, a file over :data:`MAX_CHECKPOINT_FILE_BYTES`).

The format and the checks are pure (:func:`encode_checkpoint`, :func:`decode_checkpoint`,
:func:`check_advance`, :func:`check_extends`); :func:`save_checkpoint` and
:func:`load_checkpoint` are the thin file edge. A checkpoint never moves backwards or to another
federation (:func:`check_advance`); that it moves *forward along the same chain* is what
:func:`fedchain.ledger.lightclient.check_head` checks before a client saves.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedchain.durable import write_atomically
from fedchain.errors import ConfigError, InvalidBlock
from fedchain.ledger.lightclient import Checkpoint
from fedchain.ledger.objects import HASH_SIZE

__all__ = [
    "CHECKPOINT_FORMAT",
    "MAX_CHECKPOINT_FILE_BYTES",
    "check_advance",
    "check_extends",
    "decode_checkpoint",
    "encode_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "fedchain-checkpoint/1"
MAX_CHECKPOINT_FILE_BYTES = 1024
"""A real checkpoint file is ≈ 200 bytes; a reader never takes more than this into memory."""
MAX_HEIGHT = 2**63 - 1  # the ledger store's integer column

_KEYS = ("format", "genesis-hash", "height", "block-hash")
_HEX_HASH = re.compile(rf"[0-9a-f]{{{2 * HASH_SIZE}}}")


# -- the format (pure) -------------------------------------------------------------------------


def encode_checkpoint(genesis_hash: bytes, checkpoint: Checkpoint) -> bytes:
    """The file's bytes: the JSON object of the module docstring, one key a line."""
    _check_hash("genesis hash", genesis_hash)
    _check_hash("block hash", checkpoint.block_hash)
    if isinstance(checkpoint.height, bool) or not 0 <= checkpoint.height <= MAX_HEIGHT:
        raise ConfigError(f"checkpoint height must be an integer ≥ 0, got {checkpoint.height!r}")
    doc = {
        "format": CHECKPOINT_FORMAT,
        "genesis-hash": genesis_hash.hex(),
        "height": checkpoint.height,
        "block-hash": checkpoint.block_hash.hex(),
    }
    return (json.dumps(doc, indent=1) + "\n").encode("ascii")


def decode_checkpoint(data: bytes) -> tuple[bytes, Checkpoint]:
    """Parse a checkpoint file's bytes: ``(genesis hash, checkpoint)``.

    Raises :class:`~fedchain.errors.ConfigError` saying what is wrong (without the file name:
    :func:`load_checkpoint` adds it).
    """
    if len(data) > MAX_CHECKPOINT_FILE_BYTES:
        raise ConfigError(f"is larger than {MAX_CHECKPOINT_FILE_BYTES} bytes")
    try:
        doc = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_refuse_duplicate_keys,
            parse_constant=_refuse_constant,
        )
    except (UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"is not JSON ({e})") from None
    if not isinstance(doc, dict):
        raise ConfigError("is not a JSON object")
    if sorted(doc) != sorted(_KEYS):
        raise ConfigError(
            f"must have exactly the keys {', '.join(_KEYS)}; has {', '.join(map(repr, doc))}"
        )
    if doc["format"] != CHECKPOINT_FORMAT:
        raise ConfigError(f"format is {doc['format']!r}, expected {CHECKPOINT_FORMAT!r}")
    height = doc["height"]
    if type(height) is not int or not 0 <= height <= MAX_HEIGHT:
        raise ConfigError(f"height must be an integer ≥ 0, got {height!r}")
    genesis_hash = _parse_hex("genesis-hash", doc["genesis-hash"])
    block_hash = _parse_hex("block-hash", doc["block-hash"])
    return genesis_hash, Checkpoint(height, block_hash)


def check_advance(
    saved_genesis: bytes, saved: Checkpoint, genesis_hash: bytes, checkpoint: Checkpoint
) -> str | None:
    """Why ``checkpoint`` may not replace ``saved``, or None if it may.

    Never to another federation, never to a lower height, never to another block at the same
    height (two blocks final at one height is a fork). A higher height is allowed here: that it
    extends ``saved`` is checked against the headers, by
    :func:`~fedchain.ledger.lightclient.check_head`, before a client saves.
    """
    if genesis_hash != saved_genesis:
        return (
            f"the saved checkpoint belongs to another federation "
            f"(genesis {saved_genesis.hex()[:16]}, not {genesis_hash.hex()[:16]})"
        )
    if checkpoint.height < saved.height:
        return (
            f"would move the saved checkpoint backwards, from height {saved.height} "
            f"to {checkpoint.height}"
        )
    if checkpoint.height == saved.height and checkpoint.block_hash != saved.block_hash:
        return (
            f"another block at the saved checkpoint's height {saved.height} "
            f"({checkpoint.block_hash.hex()[:16]}, saved {saved.block_hash.hex()[:16]})"
        )
    return None


def check_extends(
    genesis_hash: bytes,
    checkpoint: Checkpoint,
    block_hash_at: Callable[[int], bytes | None],
    *,
    ledger_genesis_hash: bytes,
) -> str | None:
    """The reason a ledger does not extend a saved checkpoint, or None if it does.

    ``genesis_hash`` and ``checkpoint`` are the saved file's; ``block_hash_at(height)`` is the
    ledger's block hash at ``height`` (None past its head) and ``ledger_genesis_hash`` its
    genesis hash (the genesis *transaction's* hash, which no block hash reveals, hence a
    separate argument). A ledger extends the checkpoint when it belongs to the same federation
    and holds the checkpoint's block at the checkpoint's height.
    """
    if ledger_genesis_hash != genesis_hash:
        return (
            f"the ledger is another federation's (genesis {ledger_genesis_hash.hex()[:16]}, "
            f"checkpoint's {genesis_hash.hex()[:16]})"
        )
    found = block_hash_at(checkpoint.height)
    if found is None:
        return (
            f"the ledger has no block at height {checkpoint.height}: it is shorter than the "
            f"checkpoint (its blocks from there on were deleted, or never shown)"
        )
    if found != checkpoint.block_hash:
        return (
            f"the ledger has another block at height {checkpoint.height} "
            f"({found.hex()[:16]}, checkpoint {checkpoint.block_hash.hex()[:16]}): "
            f"history the data holder saw as final was rewritten"
        )
    return None


# -- the file edge -------------------------------------------------------------------------------


def load_checkpoint(path: Path) -> tuple[bytes, Checkpoint]:
    """Read a checkpoint file: ``(genesis hash, checkpoint)``.

    Raises :class:`~fedchain.errors.ConfigError` naming the file if it is missing, unreadable
    or not exactly the format of the module docstring.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_CHECKPOINT_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such checkpoint file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read checkpoint file: {e.strerror or e}") from None
    try:
        return decode_checkpoint(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: not a fedchain checkpoint file: it {e}") from None


def save_checkpoint(path: Path, genesis_hash: bytes, checkpoint: Checkpoint) -> None:
    """Save ``checkpoint`` of federation ``genesis_hash`` at ``path``, atomically.

    If ``path`` already holds a checkpoint, the new one must be allowed by
    :func:`check_advance` (else :class:`~fedchain.errors.InvalidBlock`, and the file is left as
    it was); saving the same checkpoint again is a no-op. A damaged existing file is refused
    (:class:`~fedchain.errors.ConfigError`) rather than replaced: it is the holder's evidence.
    One writer per file (the data holder's client).
    """
    path = Path(path)
    data = encode_checkpoint(genesis_hash, checkpoint)
    if path.exists():
        saved_genesis, saved = load_checkpoint(path)
        reason = check_advance(saved_genesis, saved, genesis_hash, checkpoint)
        if reason is not None:
            raise InvalidBlock(f"{path}: refusing to save checkpoint: {reason}")
        if saved == checkpoint:
            return
    try:
        write_atomically(path, data)
    except OSError as e:
        raise ConfigError(f"{path}: cannot write checkpoint file: {e.strerror or e}") from None


# -- helpers ---------------------------------------------------------------------------------------


def _check_hash(what: str, value: object) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise ConfigError(f"checkpoint {what} must be {HASH_SIZE} bytes, got {value!r}")


def _parse_hex(key: str, value: object) -> bytes:
    if not isinstance(value, str) or not _HEX_HASH.fullmatch(value):
        raise ConfigError(f"{key} must be {2 * HASH_SIZE} lowercase hex digits, got {value!r}")
    return bytes.fromhex(value)


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    duplicated = sorted({key for key in keys if keys.count(key) > 1})
    if duplicated:
        raise ValueError(f"duplicate key {duplicated[0]!r}")
    return dict(pairs)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")
