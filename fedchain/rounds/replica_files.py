"""A deployed data holder's replica of the ledger on its own disk: its ledger file and checkpoint.

The folder is the one the SuperNode's node config names (``replica-dir``; ``fedchain join`` puts
it beside the dataset: :func:`fedchain.runs.layout.holder_ledger_dir`). It holds the blocks the
holder replayed, in the ledger store's own format (``ledger.db``: ``fedchain verify`` reads it
as it reads a coordinator's), the last final block it saw (``checkpoint.json``, the format of
:mod:`fedchain.ledger.checkpoints`, which ``fedchain verify RUN_DIR --checkpoint`` takes), and
what it last attested and sealed (``signed.json``: :class:`fedchain.rounds.messages.SignedHeights`),
written before the signatures leave the client, so that a restarted holder never signs a second
block at a height it already signed.

The client writes both before it signs anything, so a SuperNode that restarts (and so starts with
an empty ``context.state``) resumes from exactly what it had checked: its blocks are read back
and replayed from genesis (:func:`fedchain.rounds.replica.replay_replica`: never trusted as they
are), and a coordinator that shows it a rewritten or shortened history is refused as before. I/O
only: every decision is :mod:`fedchain.rounds.replica`'s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fedchain.durable import write_atomically
from fedchain.errors import ConfigError, DecodeError, InvalidBlock
from fedchain.ledger.chain import compute_stored_block
from fedchain.ledger.checkpoints import load_checkpoint, save_checkpoint
from fedchain.ledger.codec import decode
from fedchain.ledger.lightclient import Checkpoint
from fedchain.ledger.objects import Block
from fedchain.ledger.store import LedgerStore
from fedchain.rounds.messages import SignedHeights, decode_signed, encode_signed
from fedchain.rounds.replica import Replica
from fedchain.runs.layout import HOLDER_CHECKPOINT_FILENAME, LEDGER_FILENAME


@dataclass(frozen=True)
class StoredReplica:
    """What a holder's folder holds: its blocks' encodings (genesis first) and its checkpoint."""

    encodings: tuple[bytes, ...]
    checkpoint: Checkpoint | None


def load_replica(folder: Path) -> StoredReplica | None:
    """The replica saved in ``folder``, or None if it holds none yet."""
    ledger = Path(folder) / LEDGER_FILENAME
    if not ledger.exists():
        return None
    with LedgerStore.open(ledger, readonly=True) as store:
        genesis_hash = store.genesis_hash
        encodings = tuple(stored.data for stored in store.iter_blocks())
    path = Path(folder) / HOLDER_CHECKPOINT_FILENAME
    if not path.exists():
        return StoredReplica(encodings, None)
    saved_genesis, checkpoint = load_checkpoint(path)
    if saved_genesis != genesis_hash:
        raise InvalidBlock(f"{path}: the checkpoint is of another federation than {ledger}")
    return StoredReplica(encodings, checkpoint)


def save_replica(folder: Path, replica: Replica, checkpoint: Checkpoint) -> None:
    """Append the blocks of ``replica`` that ``folder`` lacks, then save ``checkpoint``.

    The stored blocks must be a prefix of the replica (raises InvalidBlock if not: the two never
    diverge, since the replica is read from or built on the stored blocks); the checkpoint never
    moves backwards (:func:`fedchain.ledger.checkpoints.save_checkpoint`).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ledger = folder / LEDGER_FILENAME
    state = replica.state
    if ledger.exists():
        store = LedgerStore.open(ledger)
    else:
        genesis = compute_stored_block(decode(Block, replica.encodings[0]))
        store = LedgerStore.create(ledger, state.genesis_hash, genesis)
    with store:
        head = store.head()
        if store.genesis_hash != state.genesis_hash or (
            state.block_hashes.get(head.height) != head.block_hash
        ):
            raise InvalidBlock(f"{ledger}: holds another chain than this client's replica")
        new = replica.encodings[head.height + 1 :]
        store.append_many([compute_stored_block(decode(Block, e)) for e in new])
    save_checkpoint(folder / HOLDER_CHECKPOINT_FILENAME, state.genesis_hash, checkpoint)


SIGNED_FILENAME = "signed.json"
"""The holder's record of what it last signed, in its replica folder."""


def load_signed(folder: Path) -> SignedHeights | None:
    """What the holder of ``folder`` last signed, or None if it has signed nothing there. A
    damaged file is refused (ConfigError): signing on without it could double-sign."""
    path = Path(folder) / SIGNED_FILENAME
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        record = {k: bytes.fromhex(v) if k.endswith("hash") else v for k, v in raw.items()}
        return decode_signed(record)
    except (OSError, ValueError, AttributeError, DecodeError) as e:
        raise ConfigError(f"{path}: unreadable record of signed heights: {e}") from None


def save_signed(folder: Path, signed: SignedHeights) -> None:
    """Save ``signed`` in ``folder`` atomically and durably (fsynced) before a signature leaves."""
    record = encode_signed(signed)
    data = {k: v.hex() if isinstance(v, bytes) else v for k, v in record.items()}
    path = Path(folder) / SIGNED_FILENAME
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps(data, sort_keys=True).encode() + b"\n")
    except OSError as e:
        raise ConfigError(
            f"{path}: cannot write record of signed heights: {e.strerror or e}"
        ) from None
