"""A data holder's own replica of the ledger: replay every block shown, re-derive what it signs.

DESIGN.md §7.2: whoever seals or attests a block has re-executed it, so that 2/3 of stake
attesting means 2/3 of stake checked it. A client therefore keeps its own copy of the ledger (a
:class:`Replica`: the encodings of every block it has replayed, genesis first, and the state after
them) and checks each view the coordinator sends against it before it signs anything:

1. **Genesis.** A client with no replica accepts only a view that starts at block 0, the
   canonical genesis block of a Genesis whose hash is the view's genesis hash (the one every
   signature binds); from then on its replica is pinned to that federation. A deployed data
   holder also pins the federation it registered for (a :class:`GenesisPin`): the genesis's run
   id and rules must give the federation id its registration signed, and its own key must be a
   genesis participant (whose registration the genesis checks is signed by that key for that
   id), so a coordinator cannot start it on another federation, nor on one without it, even on
   first contact; this is checked on every view, so a replica from another federation on its
   disk is refused too.
2. **Sealed blocks.** Every block past the replica's head is applied with the ledger's one state
   transition, :func:`fedchain.ledger.state.process_block` (hash chain, proposer draw, proposer
   signature, transactions root, every transaction's rule, state root): the replica's state is
   exactly the state ``fedchain verify`` computes for the same blocks.
3. **No rewrites.** A block at a height the replica holds must be, byte for byte, the block it
   holds or that block with an empty body (its header alone), and a view may not end below the
   replica's head: nothing the client has replayed can be rewritten or cut off, and no body is
   accepted unread. An honest coordinator never does either (it appends sealed blocks durably
   and shows them as they are, or as headers alone), so this costs an honest run nothing. The
   client recognises such re-sent blocks by their bytes (:func:`compute_held_forms`), without
   decoding them.
4. **The pending block.** Its header must equal, field for field, the header
   :func:`fedchain.ledger.builder.prepare_block` derives from the replica's head state and the
   transactions sent, at the header's own attempt and round: same height and parent (it extends
   the replica's head), transactions root (the transactions are the ones the header commits to),
   state root (they produce the state the header commits to), proposer (drawn for that attempt),
   and a round not before the head's. Every transaction is checked by the ledger's own rules on the
   way. The sealed block is that header with those transactions, so what a client signs is what it
   re-executed.

5. **Finality.** The replica also derives which of its blocks are final, with the ledger's one
   rule, :func:`fedchain.ledger.consensus.compute_finalized_height` (as ``fedchain verify`` and
   the coordinator do): it keeps, for every block it replays, the validators of that block's
   pre-state and their stakes, and after each block it moves its ``final_height`` forward from
   the state's last attested heights. A client takes its checkpoint from this, never from the
   height a coordinator claims final (:func:`fedchain.rounds.participant.check_view_replayed`).

Why replay rather than accept a state (or a state root) from the coordinator: the state root
commits to the participants, the model head and the round only, while the transition also reads
each validator's last attested height, the evidence already applied, the round's commits, update
hashes and rewards paid, the model's round and the block hashes (docs/ledger-spec.md). A state sent
by the coordinator could match the root and still differ in those parts (an emptied evidence set
lets one offence be slashed twice; emptied round commits let a key commit twice), and a client
checking against it would approve what ``verify`` refuses. Replaying from genesis with the same pure
transition leaves nothing to trust but the genesis hash, and two honest clients shown the same view
reach the same verdict, since the transition is deterministic.

Speed-up (explicit and opt-in): a caller may pass ``known``, a mapping it owns of
:class:`KnownBlock` entries by (genesis hash, block hash), each the state after a block that
passed every check above in this process (a pending block's, once it re-derived, is the state its
seal leads to), with the transactions and signed header it was checked with. A block hash fixes
the header, hence its parent and so all history before it, and its transactions root; so a block
shown with that hash and a body of that root (equal to the transactions kept: equal values encode
alike) leads to the same state, and only its proposer signature (not part of the hash) is left to
check, unless the signed header is the one already checked. Clients of one simulation process
share one such mapping, so a block is re-executed once per process rather than once per client.
Likewise ``geneses``, a mapping the caller owns of genesis states by the SHA-256 of block 0's
exact encoding, each from a block 0 that passed every check (its Genesis's rules and every
registration's signature): a first view's block 0 of those very bytes has the same state, and
any other bytes (one signature changed) miss and are checked in full. In a simulation every
client's first view checks the same genesis; with the mapping shared the process checks its
registrations once, not once per client (O(registered) instead of O(registered^2) signature
checks).

What this does not check: that the coordinator included every honest commitment (censorship is
recorded, not prevented) or that the contribution scores are what the validation data gives
(``fedchain verify --scores`` re-checks them offline). Whatever the ledger's rules accept, a
replica accepts. Pure: no disk, no clock; the caller stores the encodings (``context.state``, and a
deployed holder's disk: :mod:`fedchain.rounds.replica_files`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass

from fedchain.crypto.identity import Domain, verify_signature
from fedchain.errors import InvalidBlock, LedgerError, SignatureError
from fedchain.ledger.builder import prepare_block
from fedchain.ledger.codec import decode, encode
from fedchain.ledger.consensus import compute_finalized_height, get_validators
from fedchain.ledger.containers import LedgerState
from fedchain.ledger.derived import (
    compute_block_hash,
    compute_federation_id,
    compute_tx_root,
    signing_message,
)
from fedchain.ledger.genesis import process_genesis_block
from fedchain.ledger.objects import (
    Block,
    BlockHeader,
    BlockTransaction,
    PublicKey,
    SignedHeader,
    Transaction,
)
from fedchain.ledger.signatures import PLAIN, Verifier
from fedchain.ledger.state import process_block

__all__ = [
    "GenesisPin",
    "GenesisStates",
    "KnownBlock",
    "KnownStates",
    "Replica",
    "check_genesis_pin",
    "compute_genesis_replica",
    "compute_held_forms",
    "compute_pending_post_state",
    "extend_replica",
    "replay_replica",
]

_HEADER_FIELDS = {
    "height": "height",
    "round": "round",
    "parent_hash": "parent (it does not extend this client's head)",
    "tx_root": "tx_root (the transactions sent are not the ones the header commits to)",
    "state_root": "state_root (the transactions sent do not produce the state it commits to)",
    "proposer": "proposer (not the one drawn for its attempt)",
    "attempt": "attempt",
}


@dataclass(frozen=True)
class KnownBlock:
    """A block this process checked in full: the ``state`` after it, and what of it was checked
    besides its hash: the ``transactions`` whose root is the header's (None: not kept) and the
    ``signed_header`` whose proposer signature verified (None: a pending block, not sealed)."""

    state: LedgerState
    transactions: tuple[BlockTransaction, ...] | None = None
    signed_header: SignedHeader | None = None


KnownStates = MutableMapping[tuple[bytes, bytes], KnownBlock]
"""Fully checked blocks by (genesis hash, block hash): the optional speed-up."""

GenesisStates = MutableMapping[bytes, LedgerState]
"""Genesis states by the SHA-256 of block 0's exact encoding, each from a block 0 that passed
every check: the optional speed-up for first views (see the module docstring)."""


@dataclass(frozen=True)
class Replica:
    """A client's copy of the ledger: ``encodings`` of blocks 0..head (``encode(block)``, as the
    ledger store keeps them), ``state``, the state after the head (every part of it derived by
    replay), ``validators_by_height`` (block ``h``'s pre-state validators and stakes, for every
    replayed block past genesis), ``final_height``, the highest block they and the head's
    last attested heights make final (docstring item 5), and ``headers``, the signed headers of
    blocks 0..head (so that re-sent blocks need not be decoded)."""

    encodings: tuple[bytes, ...]
    state: LedgerState
    validators_by_height: Mapping[int, Mapping[PublicKey, int]]
    final_height: int
    headers: tuple[SignedHeader, ...]


@dataclass(frozen=True)
class GenesisPin:
    """What a deployed data holder knows of its federation before it ever sees a block: the
    federation id it registered under and its own public key."""

    federation_id: bytes
    public_key: bytes


def check_genesis_pin(state: LedgerState, pin: GenesisPin) -> None:
    """Refuse a ledger (``state``, any state of it) that is not the federation ``pin`` names:
    its genesis's run id and rules must give ``pin.federation_id``
    (:func:`~fedchain.ledger.derived.compute_federation_id`), and ``pin.public_key`` must be a
    genesis participant (the genesis checks each participant's registration signature under
    that id, so this is the holder's own signed registration). Raises :class:`InvalidBlock`."""
    genesis = state.genesis
    federation_id = compute_federation_id(genesis.run_id, genesis.rules)
    if federation_id != pin.federation_id:
        raise InvalidBlock(
            f"the ledger shown is federation {federation_id.hex()[:16]} (run id "
            f"{genesis.run_id!r:.80}), not {pin.federation_id.hex()[:16]}, the one this holder "
            f"registered for"
        )
    if all(p.public_key != pin.public_key for p in genesis.participants):
        raise InvalidBlock(
            f"this holder's key {pin.public_key.hex()[:16]} is not a participant of the ledger's "
            f"genesis: it is not the federation this holder registered for"
        )


def compute_held_forms(replica: Replica | None, since: int = 0) -> dict[bytes, Block]:
    """The replica's blocks from height ``since`` on by the bytes a coordinator may re-send
    each as: its encoding as held, and its encoding with an empty body; each maps to the block
    with an empty body (what :func:`extend_replica` compares with the block held). None:
    nothing held. A view starts at the client's checkpoint, so ``since`` is its height: older
    blocks re-sent are decoded and compared with the held ones like any other (a speed-up only:
    the forms spare the decoding, not a check)."""
    if replica is None:
        return {}
    forms: dict[bytes, Block] = {}
    for encoding, header in zip(replica.encodings[since:], replica.headers[since:], strict=True):
        bare = Block(header, ())
        forms[encoding] = forms[encode(bare)] = bare
    return forms


def compute_genesis_replica(
    block: Block, genesis_hash: bytes, *, geneses: GenesisStates | None = None
) -> Replica:
    """A new replica holding only block 0, which must be federation ``genesis_hash``'s.
    ``geneses``: see the module docstring (read and added to)."""
    if block.header.height != 0:
        raise InvalidBlock(
            f"this client holds no replica of the ledger yet: the view must start at the genesis "
            f"block, not at block {block.header.height}"
        )
    encoding = encode(block)
    state = _checked_genesis_state(encoding, block, geneses)
    if state.genesis_hash != genesis_hash:
        raise InvalidBlock(
            f"the genesis block shown is federation {state.genesis_hash.hex()[:16]}'s, not "
            f"{genesis_hash.hex()[:16]}'s"
        )
    return Replica((encoding,), state, {}, 0, (block.signed_header,))


def replay_replica(
    encodings: Sequence[bytes],
    *,
    verifier: Verifier = PLAIN,
    geneses: GenesisStates | None = None,
) -> Replica:
    """A stored replica replayed from genesis with every check (a replica read back from
    storage is re-derived, never trusted). ``geneses``: see the module docstring."""
    if not encodings:
        raise InvalidBlock("a replica holds at least the genesis block")
    genesis_block = decode(Block, encodings[0])
    state = _checked_genesis_state(encodings[0], genesis_block, geneses)
    validators: dict[int, Mapping[PublicKey, int]] = {}
    headers = [genesis_block.signed_header]
    final = 0
    for encoding in encodings[1:]:
        block = decode(Block, encoding)
        validators[block.header.height] = dict(get_validators(state))
        state = process_block(state, block, verifier=verifier)
        headers.append(block.signed_header)
        final = compute_finalized_height(validators, state.last_attested.items(), final)
    return Replica(tuple(encodings), state, validators, final, tuple(headers))


def extend_replica(
    replica: Replica | None,
    blocks: Sequence[Block],
    genesis_hash: bytes,
    *,
    verifier: Verifier = PLAIN,
    known: KnownStates | None = None,
    geneses: GenesisStates | None = None,
    pin: GenesisPin | None = None,
) -> Replica:
    """``replica`` (None: a client's first view) with the view's ``blocks`` replayed.

    Blocks the replica holds must be re-sent as held or as their header alone (docstring item
    3); later ones are applied in height order, with no gap; the view must reach at least the
    replica's head. Raises :class:`InvalidBlock` saying which block failed and why. ``known``
    and ``geneses``: see the module docstring (read and added to). ``pin``: a deployed holder's
    federation (:func:`check_genesis_pin`), checked before any block past genesis is replayed.
    """
    if not blocks:
        raise InvalidBlock("the view holds no blocks")
    if replica is None:
        replica = compute_genesis_replica(blocks[0], genesis_hash, geneses=geneses)
    if pin is not None:
        check_genesis_pin(replica.state, pin)
    state = replica.state
    if state.genesis_hash != genesis_hash:
        raise InvalidBlock(
            f"the view is of federation {genesis_hash.hex()[:16]}, this client's replica of "
            f"{state.genesis_hash.hex()[:16]}"
        )
    encodings = list(replica.encodings)
    headers = list(replica.headers)
    validators = dict(replica.validators_by_height)
    final = replica.final_height
    for block in blocks:
        height = block.header.height
        if height <= state.height:
            _check_held(block, height, encodings, headers)
            continue
        if height != state.height + 1:
            raise InvalidBlock(f"the view skips from block {state.height} to block {height}")
        validators[height] = dict(get_validators(state))
        state = _apply_block(state, block, verifier, known)
        encodings.append(encode(block))
        headers.append(block.signed_header)
        final = compute_finalized_height(validators, state.last_attested.items(), final)
    shown = blocks[-1].header.height
    if shown < state.height:
        raise InvalidBlock(
            f"the view's head is block {shown}, but this client has replayed blocks up to "
            f"{state.height}: the ledger it was shown before was cut short"
        )
    return Replica(tuple(encodings), state, validators, final, tuple(headers))


def _checked_genesis_state(
    encoding: bytes, block: Block, geneses: GenesisStates | None
) -> LedgerState:
    """:func:`process_genesis_block` of ``block`` (whose exact encoding is ``encoding``), or
    the state stored in ``geneses`` under the SHA-256 of those very bytes."""
    key = hashlib.sha256(encoding).digest()
    state = None if geneses is None else geneses.get(key)
    if state is None:
        state = process_genesis_block(block)
        if geneses is not None:
            geneses[key] = state
    return state


def _check_held(
    block: Block, height: int, encodings: Sequence[bytes], headers: Sequence[SignedHeader]
) -> None:
    """A re-sent block at a ``height`` the replica holds: its header must be the one held, and
    its body empty or, byte for byte, the one held (a body the client would not read is not
    accepted either)."""
    held = headers[height] if 0 <= height < len(headers) else None
    if held is None or block.signed_header != held:
        held_hash = "none" if held is None else compute_block_hash(held.header).hex()[:16]
        raise InvalidBlock(
            f"block {height} of the view is not the block {height} this client replayed"
            f" ({held_hash}): history it holds cannot be rewritten"
        )
    if block.transactions and encode(block) != encodings[height]:
        raise InvalidBlock(
            f"block {height} of the view carries a body other than the one this client replayed"
        )


def _apply_block(
    state: LedgerState, block: Block, verifier: Verifier, known: KnownStates | None
) -> LedgerState:
    """:func:`process_block`, or the known state after a block of this hash and body (whose
    proposer signature is then checked here, the one part the hash does not fix, unless it is
    the very signed header that was checked)."""
    header = block.header
    key = (state.genesis_hash, compute_block_hash(header))
    entry = None if known is None else known.get(key)
    if (
        entry is None
        or header.parent_hash != state.head_hash
        or not _is_known_body(entry, block.transactions, header)
    ):
        entry = KnownBlock(
            process_block(state, block, verifier=verifier), block.transactions, block.signed_header
        )
    elif entry.signed_header != block.signed_header:
        try:
            message = signing_message(block.signed_header)
            signature = block.signed_header.signature
            verify_signature(header.proposer, signature, Domain.BLOCK, message, state.genesis_hash)
        except SignatureError as exc:
            raise InvalidBlock(f"block {header.height}: {exc}") from exc
        entry = KnownBlock(entry.state, block.transactions, block.signed_header)
    if known is not None:
        known[key] = entry
    return entry.state


def _is_known_body(
    entry: KnownBlock, transactions: Sequence[BlockTransaction], header: BlockHeader
) -> bool:
    """Whether ``transactions`` are the body the known block was checked with: equal to the
    transactions kept (equal values have equal encodings), else of the header's root."""
    if entry.transactions is not None:
        return entry.transactions == tuple(transactions)
    return compute_tx_root(transactions) == header.tx_root


def compute_pending_post_state(
    state: LedgerState,
    header: BlockHeader,
    transactions: Sequence[Transaction],
    *,
    verifier: Verifier = PLAIN,
    known: KnownStates | None = None,
) -> LedgerState:
    """The state after the pending block (as its seal will leave it), once ``header`` is exactly
    what ``transactions`` re-derive to from ``state`` (the replica's head). Raises
    :class:`InvalidBlock` naming the header fields that differ, or the transaction the ledger's
    rules refuse. ``known``: see the module docstring (read and added to)."""
    key = (state.genesis_hash, compute_block_hash(header))
    entry = None if known is None else known.get(key)
    if (
        entry is not None
        and header.parent_hash == state.head_hash
        and _is_known_body(entry, transactions, header)
    ):
        return entry.state
    post = _re_derive(state, header, transactions, verifier)
    if known is not None:
        known[key] = KnownBlock(post, tuple(transactions))
    return post


def _re_derive(
    state: LedgerState, header: BlockHeader, transactions: Sequence[Transaction], verifier: Verifier
) -> LedgerState:
    where = f"pending block {header.height}"
    if header.round < state.round:
        raise InvalidBlock(f"{where}: round {header.round} is before the head's {state.round}")
    try:
        expected, post = prepare_block(
            state, transactions, header.attempt, round=header.round, verifier=verifier
        )
    except LedgerError as exc:
        raise InvalidBlock(f"{where}: {exc}") from exc
    differ = [
        why
        for name, why in _HEADER_FIELDS.items()
        if getattr(expected, name) != getattr(header, name)
    ]
    if differ:
        raise InvalidBlock(
            f"{where} does not re-derive from its transactions and this client's replica: "
            f"its {'; '.join(differ)}"
        )
    return post


if [f.name for f in dataclasses.fields(BlockHeader)] != list(_HEADER_FIELDS):  # pragma: no cover
    raise TypeError("replica._HEADER_FIELDS must name every BlockHeader field")
