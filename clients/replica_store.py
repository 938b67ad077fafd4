"""Where a client keeps its replica of the ledger, its checkpoint and what it signed, and the
memos that spare the clients of one process re-checking what another checked.

The replica and the checkpoint live in ``context.state`` (the SuperNode keeps it between
messages); a deployed data holder also keeps them, and the heights it signed, on its own disk
(:mod:`fedchain.rounds.replica_files`, the folder its node config names), disk first, so that a
restarted SuperNode resumes from what it had checked and a coordinator cannot rewind it.

Four explicit speed-ups, shared by the clients of one process (a simulation's): the states after
the blocks checked here, by (genesis hash, block hash) (:data:`REPLAYED`, passed as
``known``: a block hash fixes all history before it, so a stored replica is not replayed from
genesis again, nor is the finality it derives (:data:`FINALITY`), and a block is re-executed
once per process, not once per client;
:mod:`fedchain.rounds.replica` says why that is sound), the genesis states checked here, by the
SHA-256 of block 0's exact bytes (:data:`GENESES`, passed as ``geneses``: a genesis's
registrations are checked once per process, not once per client), the blocks and pending
transactions decoded here, by their exact bytes (:data:`DECODED`: a view's bytes are decoded
once per process), and one caching signature verifier (:data:`VERIFIER`, no threads: it
remembers only triples that verified).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

from flwr.app import ConfigRecord, Context

from fedchain.ledger.codec import compute_hash, decode
from fedchain.ledger.containers import LedgerState
from fedchain.ledger.derived import compute_block_hash
from fedchain.ledger.lightclient import Checkpoint
from fedchain.ledger.objects import Block, SignedHeader, Transaction
from fedchain.ledger.signatures import CachingVerifier
from fedchain.rounds import messages as m
from fedchain.rounds import replica_files
from fedchain.rounds.participant import CheckedView, check_view_replayed
from fedchain.rounds.replica import (
    GenesisPin,
    KnownBlock,
    Replica,
    compute_held_forms,
    replay_replica,
)

MAX_REPLAYED = 16
REPLAYED: OrderedDict[tuple[bytes, bytes], KnownBlock] = OrderedDict()
"""Blocks this process checked and the states after them, by (genesis hash, block hash); the
newest MAX_REPLAYED (:data:`fedchain.rounds.replica.KnownStates`)."""
MAX_DECODED = 256
DECODED: OrderedDict[bytes, Block | Transaction] = OrderedDict()
"""Blocks and pending transactions this process decoded from views, by their exact bytes; the
newest MAX_DECODED (``decoded`` of :func:`fedchain.rounds.messages.decode_ledger_view`)."""
MAX_GENESES = 4
GENESES: OrderedDict[bytes, LedgerState] = OrderedDict()
"""Genesis states this process checked, by the SHA-256 of block 0's exact bytes; the newest
MAX_GENESES (:data:`fedchain.rounds.replica.GenesisStates`)."""
FINALITY: OrderedDict[
    tuple[bytes, bytes],
    tuple[Mapping[int, Mapping[bytes, int]], int, tuple[SignedHeader, ...]],
] = OrderedDict()
"""What a replica derives beside its state, by the same key as :data:`REPLAYED`: its validators
by height, final height and headers (:class:`fedchain.rounds.replica.Replica`); a stored replica
is taken from the memo only when both are there, and both are fixed by the head's hash as the
state is."""
VERIFIER = CachingVerifier(threads=1)
"""Remembers only exact (key, signature, message) triples that verified: a hit accepts nothing
new (:mod:`fedchain.ledger.signatures`)."""


def check_view(
    context: Context, config: ConfigRecord, replica_dir: Path | None, pin: GenesisPin | None
) -> tuple[m.LedgerView, CheckedView]:
    """The message's ledger view, checked against the client's stored replica and checkpoint
    (:func:`fedchain.rounds.participant.check_view_replayed`, with this process's memos);
    nothing is saved. Raises :class:`~fedchain.errors.LedgerError` saying which check failed."""
    replica, saved = load_replica(context, replica_dir)
    since = 0 if saved is None else saved.height  # a view starts at the checkpoint
    view = m.decode_ledger_view(config, compute_held_forms(replica, since), DECODED)
    checked = check_view_replayed(
        replica, saved, view, verifier=VERIFIER, known=REPLAYED, geneses=GENESES, pin=pin
    )
    return view, checked


def forget_all() -> None:
    """Empty every memo (a test's new process)."""
    for memo in (REPLAYED, FINALITY, GENESES, DECODED):
        memo.clear()


def load_signed(context: Context, replica_dir: Path | None) -> m.SignedHeights | None:
    """What the client last signed: from ``context.state``, else (a restarted SuperNode) from
    its disk, else nothing."""
    if m.SIGNED in context.state:
        return m.decode_signed(context.state[m.SIGNED])
    if replica_dir is not None:
        return replica_files.load_signed(replica_dir)
    return None


def save_signed(context: Context, signed: m.SignedHeights, replica_dir: Path | None) -> None:
    """Disk first (durably), then ``context.state``: before any signature leaves the client."""
    if m.SIGNED in context.state and m.decode_signed(context.state[m.SIGNED]) == signed:
        return
    if replica_dir is not None:
        replica_files.save_signed(replica_dir, signed)
    context.state[m.SIGNED] = ConfigRecord(m.encode_signed(signed))


def load_replica(
    context: Context, replica_dir: Path | None
) -> tuple[Replica | None, Checkpoint | None]:
    """The client's replica and checkpoint: from ``context.state``, else (a restarted
    SuperNode) from its disk, else none (a first view)."""
    state = context.state
    saved = m.decode_checkpoint(state[m.DUTIES]) if m.DUTIES in state else None
    if m.REPLICA in state:
        return _replayed(m.decode_replica(state[m.REPLICA])), saved
    if replica_dir is not None and (stored := replica_files.load_replica(replica_dir)):
        return _replayed(stored.encodings), stored.checkpoint
    return None, saved


def _replayed(encodings: tuple[bytes, ...]) -> Replica:
    """The replica of ``encodings``: its state from this process's memo, else replayed."""
    checked = GENESES.get(hashlib.sha256(encodings[0]).digest())  # these very bytes: no decode
    genesis_hash = (
        checked.genesis_hash
        if checked is not None
        else compute_hash(decode(Block, encodings[0]).transactions[0])
    )
    head = DECODED.get(encodings[-1])
    if not isinstance(head, Block):
        head = decode(Block, encodings[-1])
    key = (genesis_hash, compute_block_hash(head))
    known = REPLAYED.get(key)
    finality = FINALITY.get(key)
    if known is None or finality is None:
        replica = replay_replica(encodings, verifier=VERIFIER, geneses=GENESES)
        remember(replica)
        return replica
    return Replica(encodings, known.state, *finality)


def remember(replica: Replica) -> None:
    state = replica.state
    key = (state.genesis_hash, state.head_hash)
    if key not in REPLAYED:  # an entry there is this block's, with what was checked of it
        REPLAYED[key] = KnownBlock(state)
    FINALITY[key] = (replica.validators_by_height, replica.final_height, replica.headers)
    for memo in (REPLAYED, FINALITY):
        memo.move_to_end(key)
    forget_oldest()


def forget_oldest() -> None:
    """Both memos keep their newest MAX_REPLAYED entries, the genesis memo MAX_GENESES, the
    decoded objects MAX_DECODED."""
    for memo in (REPLAYED, FINALITY):
        while len(memo) > MAX_REPLAYED:
            memo.popitem(last=False)
    while len(DECODED) > MAX_DECODED:
        DECODED.popitem(last=False)
    while len(GENESES) > MAX_GENESES:
        GENESES.popitem(last=False)


def save_replica(context: Context, checked: CheckedView, replica_dir: Path | None) -> None:
    """Disk first (a deployed holder's), then ``context.state``, before anything is signed."""
    if replica_dir is not None:
        replica_files.save_replica(replica_dir, checked.replica, checked.checkpoint)
    context.state[m.REPLICA] = ConfigRecord(m.encode_replica(checked.replica.encodings))
    context.state[m.DUTIES] = ConfigRecord(m.encode_checkpoint(checked.checkpoint))
    remember(checked.replica)
