"""The ledger's state and its transition: genesis, transactions, blocks.

Every ``process_*`` function validates its input against the state, raises
:class:`InvalidTransaction` or :class:`InvalidBlock` with a message saying which check failed,
and otherwise returns a new :class:`LedgerState` (states are values; nothing is mutated).

Rounds. A block carries a round number that never decreases. Transactions that carry a round
must carry their block's round. Per-round bookkeeping (who committed, which update hashes,
rewards paid) restarts when a block opens a higher round; several blocks may share a round.

Speed. :func:`process_block` applies its transactions to one private mutable working copy and
freezes it once per block; per transaction it copies nothing that grows with the chain. Block
hashes by height live in :class:`BlockHashes`, shared between a state and its successors, so an
attestation's target is checked in O(1).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import os
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedchain.crypto.identity import (
    PUBLIC_KEY_SIZE,
    SIGNATURE_SIZE,
    Domain,
    compute_signing_root,
    fingerprint,
    verify_signature,
)
from fedchain.errors import InvalidBlock, InvalidTransaction, LedgerError, SignatureError
from fedchain.ledger.codec import MAX_INT, compute_hash, encode
from fedchain.ledger.consensus import (
    MAX_PROPOSER_ATTEMPT,
    compute_proposer,
    get_validators,
    is_active_validator,
)
from fedchain.ledger.objects import (
    BAD_COMMITMENT,
    DOUBLE_SIGN,
    EMPTY_HASH,
    HASH_SIZE,
    SIGNING_DOMAINS,
    SLASHING_KINDS,
    Attestation,
    AttestationPair,
    Block,
    BlockHeader,
    BlockTransaction,
    CommitmentMismatch,
    ContributionRecord,
    Genesis,
    Hash32,
    HeaderPair,
    ModelVersion,
    PublicKey,
    Registration,
    Rejection,
    RewardDeltas,
    SignedHeader,
    SignedObject,
    SlashingEvidence,
    Transaction,
    UpdateCommitment,
    compute_tx_root,
    compute_tx_root_of_encodings,
    signing_message,
)
from fedchain.rounds.rewards import compute_reward_split

__all__ = [
    "BPS_DENOMINATOR",
    "EVIDENCE_ID_DOMAIN",
    "INITIAL_REPUTATION_BPS",
    "BlockHashes",
    "LedgerState",
    "ParticipantState",
    "StateRootBody",
    "compute_evidence_id",
    "compute_genesis_block",
    "compute_genesis_state",
    "compute_state_root",
    "compute_state_with_head",
    "process_attestation",
    "process_block",
    "process_contribution_record",
    "process_genesis_block",
    "process_model_version",
    "process_registration",
    "process_rejection",
    "process_reward_deltas",
    "process_slashing_evidence",
    "process_transaction",
    "process_transactions",
    "process_update_commitment",
]

BPS_DENOMINATOR = 10_000
"""Basis points in a whole."""
INITIAL_REPUTATION_BPS = 10_000
"""Every participant starts with full reputation."""
MAX_REPUTATION_BPS = 10_000
HARMFUL_SCORE = -10_000
"""A recorded score at or below this (-0.01 at SCORE_SCALE: 0.01 of validation loss) counts as
harmful. Honest clients near convergence score small negatives from noise; a client with 80 %
label noise scores about -0.24 a round (experiments/results/contribution_quality.md)."""
EVIDENCE_ID_DOMAIN = b"fedchain/evidence-id/v1"

_I64 = struct.Struct("<q")


# --------------------------------------------------------------------------------------------------
# State containers


@dataclass(frozen=True, slots=True)
class ParticipantState:
    """A registered participant. ``active`` turns False for good when its stake falls below the
    minimum (ejection); reputation is in basis points, starting at 10_000."""

    TAG: ClassVar[int] = 40
    public_key: PublicKey
    stake: int
    reputation_bps: int
    dataset_hash: Hash32
    num_examples: int
    active: bool


@dataclass(frozen=True, slots=True)
class StateRootBody:
    """What the state root commits to: participants (sorted by key), model head and round."""

    TAG: ClassVar[int] = 41
    participants: tuple[ParticipantState, ...]
    model_head: Hash32
    round: int


class BlockHashes:
    """Block hashes by height (0 = the genesis block), as seen by one state.

    Successive states share one append-only list; each instance sees only its first ``len``
    entries. Extending an instance that is not the newest view of its list (a fork: two blocks
    processed on one state) copies its prefix first, so no instance ever sees another's
    extension. Lookups are O(1); extension is amortised O(1), with no per-block copy of the
    chain.
    """

    __slots__ = ("_hashes", "_length", "_lock")
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, hashes: Iterable[Hash32] = ()) -> None:
        self._hashes = list(hashes)
        self._length = len(self._hashes)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[Hash32]:
        return iter(self._hashes[: self._length])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BlockHashes):
            return NotImplemented
        return self._length == other._length and all(
            a == b
            for a, b in zip(
                self._hashes[: self._length], other._hashes[: other._length], strict=True
            )
        )

    def __repr__(self) -> str:
        return f"BlockHashes(<{self._length} hashes>)"

    def get(self, height: int) -> Hash32 | None:
        """The hash of the block at ``height``, or None if this chain has no such block."""
        return self._hashes[height] if 0 <= height < self._length else None

    def appended(self, block_hash: Hash32) -> BlockHashes:
        """A view with ``block_hash`` as the next height."""
        with self._lock:
            if len(self._hashes) == self._length:
                self._hashes.append(block_hash)
                view = BlockHashes.__new__(BlockHashes)
                view._hashes, view._length, view._lock = self._hashes, self._length + 1, self._lock
                return view
        return BlockHashes([*self._hashes[: self._length], block_hash])


@dataclass(frozen=True, slots=True)
class LedgerState:
    """The ledger after block ``height`` (whose hash is ``head_hash``).

    - ``round``: the round of the latest block (or of the block being built, for the state
      :func:`process_transaction` returns).
    - ``participants``: every registered participant, ejected ones included, sorted by key.
    - ``round_commits`` / ``round_update_hashes``: who committed, and which update hashes, in
      ``round``; ``round_rewards_paid``: positive reward deltas paid in ``round``.
    - ``model_head``: the current global model's hash; ``model_round``: the round that
      registered it (0 for the initial model).
    - ``last_attested``: each validator's highest attested height.
    - ``evidence_seen``: ids (:func:`compute_evidence_id`) of slashing evidence already applied.
    - ``block_hashes``: block hashes by height, genesis block included.
    """

    genesis_hash: Hash32
    genesis: Genesis
    height: int
    round: int
    head_hash: Hash32
    model_head: Hash32
    participants: Mapping[PublicKey, ParticipantState]
    round_commits: frozenset[PublicKey]
    last_attested: Mapping[PublicKey, int]
    evidence_seen: frozenset[Hash32]
    round_update_hashes: frozenset[Hash32]
    round_rewards_paid: int
    model_round: int
    block_hashes: BlockHashes


# --------------------------------------------------------------------------------------------------
# Roots and ids


def compute_state_root(state: LedgerState) -> Hash32:
    """Hash of participants (key, stake, reputation, dataset hash, examples, active), sorted by
    key, plus the model head and the round."""
    return _state_root(state.participants.values(), state.model_head, state.round)


def _state_root(participants: Iterable[ParticipantState], model_head: Hash32, round: int) -> Hash32:
    return compute_hash(StateRootBody(tuple(participants), model_head, round))


def compute_evidence_id(evidence: SlashingEvidence) -> Hash32:
    """The identity of the *offence*, so one offence is punished once however it is presented.

    Double signing is identified by (offender, header-or-attestation, height), a bad commitment
    by (offender, commitment round): swapping the pair, or showing a third conflicting header of
    the same height, is the same offence.
    """
    payload = evidence.evidence
    if isinstance(payload, HeaderPair):
        label, number = b"double_sign/header", payload.first.header.height
    elif isinstance(payload, AttestationPair):
        label, number = b"double_sign/attestation", payload.first.height
    else:
        label, number = b"bad_commitment", payload.commitment.round
    digest = hashlib.sha256(EVIDENCE_ID_DOMAIN)
    digest.update(bytes((len(label),)) + label + evidence.offender + _I64.pack(number))
    return digest.digest()


# --------------------------------------------------------------------------------------------------
# Genesis


def compute_genesis_state(genesis: Genesis) -> LedgerState:
    """The state after block 0. Raises :class:`InvalidBlock` if the genesis is malformed."""
    _check_genesis(genesis)
    participants = {
        entry.public_key: ParticipantState(
            entry.public_key,
            entry.stake,
            INITIAL_REPUTATION_BPS,
            entry.dataset_hash,
            entry.num_examples,
            True,
        )
        for entry in genesis.participants
    }
    block_hash = compute_hash(_genesis_header(genesis, participants.values()))
    return LedgerState(
        genesis_hash=compute_hash(genesis),
        genesis=genesis,
        height=0,
        round=0,
        head_hash=block_hash,
        model_head=genesis.initial_model_hash,
        participants=MappingProxyType(participants),
        round_commits=frozenset(),
        last_attested=MappingProxyType({}),
        evidence_seen=frozenset(),
        round_update_hashes=frozenset(),
        round_rewards_paid=0,
        model_round=0,
        block_hashes=BlockHashes([block_hash]),
    )


def compute_genesis_block(genesis: Genesis) -> Block:
    """Block 0: the genesis as its one transaction, zero parent and proposer, no signature."""
    state = compute_genesis_state(genesis)
    header = _genesis_header(genesis, state.participants.values())
    return Block(SignedHeader(header, b""), (genesis,))


def process_genesis_block(block: Block) -> LedgerState:
    """Check a stored block 0 (it must be exactly :func:`compute_genesis_block` of its genesis)
    and return the genesis state."""
    if len(block.transactions) != 1 or not isinstance(block.transactions[0], Genesis):
        raise InvalidBlock("block 0 must hold exactly one transaction, the Genesis")
    genesis = block.transactions[0]
    if block != compute_genesis_block(genesis):
        raise InvalidBlock(
            "block 0 is not the canonical genesis block of its Genesis "
            "(height, round, parent, roots, proposer, attempt or signature differ)"
        )
    return compute_genesis_state(genesis)


def _genesis_header(genesis: Genesis, participants: Iterable[ParticipantState]) -> BlockHeader:
    return BlockHeader(
        height=0,
        round=0,
        parent_hash=EMPTY_HASH,
        tx_root=compute_tx_root((genesis,)),
        state_root=_state_root(participants, genesis.initial_model_hash, 0),
        proposer=EMPTY_HASH,
        attempt=0,
    )


def _check_genesis(genesis: Genesis) -> None:
    def fail(reason: str) -> InvalidBlock:
        return InvalidBlock(f"genesis: {reason}")

    if not isinstance(genesis, Genesis):
        raise fail(f"expected a Genesis, got {type(genesis).__name__}")
    try:
        encode(genesis)
    except LedgerError as exc:
        raise fail(str(exc)) from exc
    rules = genesis.rules
    if not genesis.run_id:
        raise fail("run_id must not be empty")
    if rules.min_stake < 1:
        raise fail(f"min_stake must be at least 1 base unit, got {rules.min_stake}")
    if rules.reward_per_round < 0:
        raise fail(f"reward_per_round must not be negative, got {rules.reward_per_round}")
    kinds = [kind for kind, _ in rules.slash_bps]
    if not _is_strictly_sorted(kinds):
        raise fail("slash_bps must be sorted by kind, each kind once")
    for kind, bps in rules.slash_bps:
        if kind not in SLASHING_KINDS:
            raise fail(f"unknown slashing kind {kind!r} (known: {sorted(SLASHING_KINDS)})")
        if not 0 <= bps <= BPS_DENOMINATOR:
            raise fail(f"slash_bps[{kind!r}] = {bps} is outside 0..{BPS_DENOMINATOR}")
    if not _is_strictly_sorted([name for name, _ in rules.aggregation_params]):
        raise fail("aggregation_params must be sorted by name, each name once")
    if not 1 <= rules.weight_cap_bps <= BPS_DENOMINATOR:
        raise fail(f"weight_cap_bps = {rules.weight_cap_bps} is outside 1..{BPS_DENOMINATOR}")
    if not 0 <= rules.reputation_penalty_bps <= BPS_DENOMINATOR:
        raise fail(
            f"reputation_penalty_bps = {rules.reputation_penalty_bps} is outside "
            f"0..{BPS_DENOMINATOR}"
        )
    if len(genesis.initial_model_hash) != HASH_SIZE:
        raise fail(f"initial_model_hash must be {HASH_SIZE} bytes")
    if not genesis.participants:
        raise fail("needs at least one participant: someone must propose block 1")
    if not _is_strictly_sorted([entry.public_key for entry in genesis.participants]):
        raise fail("participants must be sorted by public key, each key once")
    for entry in genesis.participants:
        try:
            _check_size(entry.public_key, "public key")
            _check_size(entry.dataset_hash, "dataset hash")
        except InvalidTransaction as exc:
            raise fail(str(exc)) from None
        if entry.stake < rules.min_stake:
            raise fail(
                f"participant {_short(entry.public_key)} has stake {entry.stake}, below "
                f"min_stake {rules.min_stake}"
            )
        if entry.num_examples < 0:
            raise fail(f"participant {_short(entry.public_key)} has a negative example count")


# --------------------------------------------------------------------------------------------------
# Blocks


def process_block(state: LedgerState, block: Block) -> LedgerState:
    """Validate ``block`` as the child of ``state``'s head and return the state after it.

    Checks, in order: height, parent, round, proposer (drawn by :func:`compute_proposer` from
    the parent hash and the pre-state's validators at the header's attempt) and its signature,
    the transactions root, every transaction, and the state root.
    """
    if not isinstance(block, Block):
        raise InvalidBlock(f"expected a Block, got {type(block).__name__}")
    header = block.signed_header.header
    height = state.height + 1
    if header.height != height:
        raise InvalidBlock(f"block has height {header.height}, expected {height}")
    where = f"block {height}"
    if header.parent_hash != state.head_hash:
        raise InvalidBlock(
            f"{where}: parent {_hex(header.parent_hash)} is not the head {_hex(state.head_hash)}"
        )
    if type(header.round) is not int or header.round < state.round:
        raise InvalidBlock(f"{where}: round {header.round} is before the head's {state.round}")
    _check_proposer(state, header, where)
    try:
        encoded_header = signing_message(block.signed_header)
        verify_signature(
            header.proposer,
            block.signed_header.signature,
            Domain.BLOCK,
            encoded_header,
            state.genesis_hash,
        )
        encodings = [encode(tx) for tx in block.transactions]
    except (SignatureError, LedgerError) as exc:
        raise InvalidBlock(f"{where}: {exc}") from exc
    if compute_tx_root_of_encodings(encodings) != header.tx_root:
        raise InvalidBlock(f"{where}: tx_root does not match the transactions")
    try:
        post = _apply_all(state, block.transactions, header.round, encodings)
    except InvalidTransaction as exc:
        raise InvalidBlock(f"{where}: {exc}") from exc
    if compute_state_root(post) != header.state_root:
        raise InvalidBlock(f"{where}: state_root does not match the state after its transactions")
    return compute_state_with_head(post, compute_hash(header))


def compute_state_with_head(state: LedgerState, block_hash: Hash32) -> LedgerState:
    """``state`` (after a block's transactions) with ``block_hash`` appended as the new head."""
    return dataclasses.replace(
        state,
        height=state.height + 1,
        head_hash=block_hash,
        block_hashes=state.block_hashes.appended(block_hash),
    )


def _check_proposer(state: LedgerState, header: BlockHeader, where: str) -> None:
    if type(header.attempt) is not int or not 0 <= header.attempt <= MAX_PROPOSER_ATTEMPT:
        raise InvalidBlock(f"{where}: attempt {header.attempt} is outside 0..2**32-1")
    validators = get_validators(state)
    if not validators:
        raise InvalidBlock(f"{where}: there are no validators left; the chain cannot grow")
    expected = compute_proposer(state.head_hash, validators, header.attempt)
    if header.proposer != expected:
        raise InvalidBlock(
            f"{where}: proposer {_short(header.proposer)} was not drawn for attempt "
            f"{header.attempt}; {_short(expected)} was"
        )


# --------------------------------------------------------------------------------------------------
# Transactions: public entry points


def process_transactions(
    state: LedgerState, transactions: Sequence[Transaction], block_round: int
) -> LedgerState:
    """Apply a block body's transactions, in order, for a block of ``block_round``.

    Height and head are unchanged (:func:`compute_state_with_head` advances them). Raises
    :class:`InvalidTransaction` naming the first failing transaction.
    """
    return _apply_all(state, transactions, block_round, None)


def process_transaction(state: LedgerState, tx: Transaction, block_round: int) -> LedgerState:
    """Apply one transaction for a block of ``block_round`` (dispatches on its type)."""
    apply = _APPLY.get(type(tx))
    if apply is None:
        raise InvalidTransaction(f"{type(tx).__name__} is not a ledger transaction")
    return _apply_one(state, tx, block_round, apply)


def process_registration(state: LedgerState, tx: Registration, block_round: int) -> LedgerState:
    return _apply_one(state, tx, block_round, _apply_registration, Registration)


def process_update_commitment(
    state: LedgerState, tx: UpdateCommitment, block_round: int
) -> LedgerState:
    return _apply_one(state, tx, block_round, _apply_update_commitment, UpdateCommitment)


def process_model_version(state: LedgerState, tx: ModelVersion, block_round: int) -> LedgerState:
    return _apply_one(state, tx, block_round, _apply_model_version, ModelVersion)


def process_contribution_record(
    state: LedgerState, tx: ContributionRecord, block_round: int
) -> LedgerState:
    return _apply_one(state, tx, block_round, _apply_contribution_record, ContributionRecord)


def process_reward_deltas(state: LedgerState, tx: RewardDeltas, block_round: int) -> LedgerState:
    return _apply_one(state, tx, block_round, _apply_reward_deltas, RewardDeltas)


def process_slashing_evidence(
    state: LedgerState, tx: SlashingEvidence, block_round: int
) -> LedgerState:
    return _apply_one(state, tx, block_round, _apply_slashing_evidence, SlashingEvidence)


def process_rejection(state: LedgerState, tx: Rejection, block_round: int) -> LedgerState:
    return _apply_one(state, tx, block_round, _apply_rejection, Rejection)


def process_attestation(state: LedgerState, tx: Attestation, block_round: int) -> LedgerState:
    return _apply_one(state, tx, block_round, _apply_attestation, Attestation)


# --------------------------------------------------------------------------------------------------
# The working copy


class _Working:
    """A private mutable copy of a state, for applying one block's transactions."""

    __slots__ = (
        "evidence_seen",
        "last_attested",
        "model_head",
        "model_round",
        "new_keys",
        "participants",
        "pre",
        "preverified",
        "round",
        "round_commits",
        "round_rewards_paid",
        "round_update_hashes",
        "scores",
    )

    def __init__(self, state: LedgerState, block_round: int) -> None:
        if type(block_round) is not int or block_round < state.round:
            raise InvalidTransaction(
                f"block round {block_round} is before the head's round {state.round}"
            )
        self.pre = state
        self.round = block_round
        self.preverified: frozenset[int] = frozenset()  # ids of txs whose signature verified
        self.scores: tuple[tuple[PublicKey, int], ...] | None = None  # this block's record
        self.participants = dict(state.participants)
        self.new_keys = False
        self.last_attested = dict(state.last_attested)
        self.evidence_seen = state.evidence_seen  # copied on write: rarely changes
        self.model_head = state.model_head
        self.model_round = state.model_round
        if block_round == state.round:
            self.round_commits = set(state.round_commits)
            self.round_update_hashes = set(state.round_update_hashes)
            self.round_rewards_paid = state.round_rewards_paid
        else:
            self.round_commits, self.round_update_hashes, self.round_rewards_paid = set(), set(), 0

    def freeze(self) -> LedgerState:
        participants = self.participants
        if self.new_keys:
            participants = dict(sorted(participants.items()))
        return dataclasses.replace(
            self.pre,
            round=self.round,
            model_head=self.model_head,
            participants=MappingProxyType(participants),
            round_commits=frozenset(self.round_commits),
            last_attested=MappingProxyType(dict(sorted(self.last_attested.items()))),
            evidence_seen=self.evidence_seen,
            round_update_hashes=frozenset(self.round_update_hashes),
            round_rewards_paid=self.round_rewards_paid,
            model_round=self.model_round,
        )


def _apply_all(
    state: LedgerState,
    transactions: Sequence[BlockTransaction],
    block_round: int,
    encodings: Sequence[bytes] | None,
) -> LedgerState:
    """Apply ``transactions`` to one working copy (``encodings``: theirs, if already made)."""
    work = _Working(state, block_round)
    work.preverified = _preverify_signatures(state.genesis_hash, transactions, encodings)
    for index, tx in enumerate(transactions):
        apply = _APPLY.get(type(tx))
        try:
            if apply is None:
                if isinstance(tx, Genesis):
                    raise InvalidTransaction("a Genesis may only appear in block 0")
                raise InvalidTransaction(f"{type(tx).__name__} is not a ledger transaction")
            apply(work, tx, _encode_tx(tx) if encodings is None else encodings[index])
        except InvalidTransaction as exc:
            raise InvalidTransaction(f"transaction {index} ({type(tx).__name__}): {exc}") from exc
    return work.freeze()


def _apply_one(
    state: LedgerState,
    tx: Any,
    block_round: int,
    apply: _Apply,
    expected: type | None = None,
) -> LedgerState:
    if expected is not None and not isinstance(tx, expected):
        raise InvalidTransaction(f"expected a {expected.__name__}, got {type(tx).__name__}")
    encoding = _encode_tx(tx)
    work = _Working(state, block_round)
    apply(work, tx, encoding)
    return work.freeze()


def _encode_tx(tx: object) -> bytes:
    try:
        return encode(tx)
    except LedgerError as exc:
        raise InvalidTransaction(f"malformed: {exc}") from exc


# --------------------------------------------------------------------------------------------------
# Transactions: the checks and effects


def _apply_registration(work: _Working, tx: Registration, encoding: bytes) -> None:
    rules = work.pre.genesis.rules
    _check_size(tx.public_key, "public key")
    if tx.public_key in work.participants:
        raise InvalidTransaction(f"participant {_short(tx.public_key)} is already registered")
    if tx.stake < rules.min_stake:
        raise InvalidTransaction(f"stake {tx.stake} is below min_stake {rules.min_stake}")
    _check_size(tx.dataset_hash, "dataset hash")
    if tx.num_examples < 0:
        raise InvalidTransaction(f"num_examples must not be negative, got {tx.num_examples}")
    _check_signature(work, tx, tx.public_key, encoding)
    work.participants[tx.public_key] = ParticipantState(
        tx.public_key, tx.stake, INITIAL_REPUTATION_BPS, tx.dataset_hash, tx.num_examples, True
    )
    work.new_keys = True


def _apply_update_commitment(work: _Working, tx: UpdateCommitment, encoding: bytes) -> None:
    participant = _get_active(work, tx.public_key)
    if tx.run_id != work.pre.genesis.run_id:
        raise InvalidTransaction(
            f"commitment is for run {tx.run_id!r}, this ledger is run {work.pre.genesis.run_id!r}"
        )
    _check_round(work, tx.round, "commitment")
    if tx.round <= work.model_round:
        raise InvalidTransaction(f"round {tx.round} is closed: its model version is registered")
    if tx.public_key in work.round_commits:
        raise InvalidTransaction(
            f"participant {_short(tx.public_key)} already committed an update in round {tx.round}"
        )
    if tx.base_model_hash != work.model_head:
        raise InvalidTransaction(
            f"update was trained from model {_hex(tx.base_model_hash)}, but the current global "
            f"model is {_hex(work.model_head)}"
        )
    _check_size(tx.update_hash, "update hash")
    if not 1 <= tx.num_examples <= participant.num_examples:
        raise InvalidTransaction(
            f"commitment claims {tx.num_examples} examples; participant "
            f"{_short(tx.public_key)} registered {participant.num_examples} (need 1..that)"
        )
    _check_signature(work, tx, tx.public_key, encoding)
    work.round_commits.add(tx.public_key)
    work.round_update_hashes.add(tx.update_hash)


def _apply_model_version(work: _Working, tx: ModelVersion, encoding: bytes) -> None:
    _check_round(work, tx.round, "model version")
    if tx.round <= work.model_round:
        raise InvalidTransaction(
            f"a model version for round {work.model_round} is already registered; one per round"
        )
    if tx.parent_hash != work.model_head:
        raise InvalidTransaction(
            f"model version's parent {_hex(tx.parent_hash)} is not the current global model "
            f"{_hex(work.model_head)}"
        )
    _check_size(tx.model_hash, "model hash")
    if not _is_strictly_sorted(tx.update_hashes):
        raise InvalidTransaction("update_hashes must be sorted, each hash once")
    for update_hash in tx.update_hashes:
        if update_hash not in work.round_update_hashes:
            raise InvalidTransaction(
                f"update {_hex(update_hash)} was not committed and accepted in round {tx.round}"
            )
    rule = work.pre.genesis.rules.aggregation_rule
    if tx.rule != rule:
        raise InvalidTransaction(f"aggregation rule {tx.rule!r} is not the genesis rule {rule!r}")
    work.model_head = tx.model_hash
    work.model_round = tx.round


def _apply_contribution_record(work: _Working, tx: ContributionRecord, encoding: bytes) -> None:
    """Scores bind the reward split: the :class:`RewardDeltas` after this record in the same
    block must pay exactly :func:`~fedchain.rounds.rewards.compute_reward_split` of its positive
    scores.

    They also move reputation: a score at or below :data:`HARMFUL_SCORE` (harm beyond measurement
    noise) costs the genesis ``reputation_penalty_bps``; a positive score restores half of that,
    up to the maximum. So repeated harmful contributions lower a client's reputation, and with it
    its weight under the ``reputation`` aggregation rule.
    """
    _check_round(work, tx.round, "contribution record")
    _check_keyed_entries(work, tx.scores, "scores")
    if work.scores is not None:
        raise InvalidTransaction("a block holds at most one contribution record")
    work.scores = tx.scores
    rules = work.pre.genesis.rules
    for key, score in tx.scores:
        participant = work.participants[key]
        reputation = participant.reputation_bps
        if score <= HARMFUL_SCORE:
            reputation = max(0, reputation - rules.reputation_penalty_bps)
        elif score > 0:
            reputation = min(MAX_REPUTATION_BPS, reputation + rules.reputation_penalty_bps // 2)
        if reputation != participant.reputation_bps:
            work.participants[key] = dataclasses.replace(participant, reputation_bps=reputation)


def _apply_reward_deltas(work: _Working, tx: RewardDeltas, encoding: bytes) -> None:
    rules = work.pre.genesis.rules
    _check_round(work, tx.round, "reward deltas")
    _check_keyed_entries(work, tx.deltas, "deltas")
    paid = sum(delta for _, delta in tx.deltas if delta > 0)
    if work.scores is not None:
        expected = compute_reward_split(rules.reward_per_round, work.scores)
        if tuple((key, delta) for key, delta in tx.deltas if delta > 0) != expected:
            raise InvalidTransaction(
                "rewards do not match the split of this block's contribution scores"
            )
    if work.round_rewards_paid + paid > rules.reward_per_round:
        raise InvalidTransaction(
            f"rewards of {paid} (plus {work.round_rewards_paid} already paid in round "
            f"{tx.round}) exceed the pool of {rules.reward_per_round} per round"
        )
    updated = []
    for key, delta in tx.deltas:
        participant = work.participants[key]
        stake = max(0, participant.stake + delta)  # a penalty takes at most the whole stake
        if stake > MAX_INT:
            raise InvalidTransaction(f"stake of {_short(key)} would overflow")
        updated.append(_with_stake(participant, stake, participant.reputation_bps, rules.min_stake))
    for participant in updated:
        work.participants[participant.public_key] = participant
    work.round_rewards_paid += paid


def _apply_slashing_evidence(work: _Working, tx: SlashingEvidence, encoding: bytes) -> None:
    rules = work.pre.genesis.rules
    _check_round(work, tx.round, "slashing evidence")
    if tx.kind not in SLASHING_KINDS:
        raise InvalidTransaction(f"unknown slashing kind {tx.kind!r}")
    participant = work.participants.get(tx.offender)
    if participant is None:
        raise InvalidTransaction(f"offender {_short(tx.offender)} is not a registered participant")
    _check_evidence(work, tx)
    evidence_id = compute_evidence_id(tx)
    if evidence_id in work.evidence_seen:
        raise InvalidTransaction("this offence has already been punished (evidence seen before)")
    slash_bps = dict(rules.slash_bps).get(tx.kind, 0)
    stake = participant.stake - participant.stake * slash_bps // BPS_DENOMINATOR
    reputation = max(0, participant.reputation_bps - rules.reputation_penalty_bps)
    work.participants[tx.offender] = _with_stake(participant, stake, reputation, rules.min_stake)
    work.evidence_seen = work.evidence_seen | {evidence_id}


def _apply_rejection(work: _Working, tx: Rejection, encoding: bytes) -> None:
    _check_round(work, tx.round, "rejection")
    _check_size(tx.public_key, "public key")
    if not tx.reason:
        raise InvalidTransaction("a rejection must give its reason")


def _apply_attestation(work: _Working, tx: Attestation, encoding: bytes) -> None:
    participant = work.participants.get(tx.validator)
    if participant is None or not is_active_validator(participant, work.pre.genesis.rules):
        raise InvalidTransaction(f"attester {_short(tx.validator)} is not a validator")
    parent_height = work.pre.height
    if not 1 <= tx.height <= parent_height:
        raise InvalidTransaction(
            f"attestation to height {tx.height}; attestable heights are 1..{parent_height}"
        )
    if work.pre.block_hashes.get(tx.height) != tx.block_hash:
        raise InvalidTransaction(
            f"block {_hex(tx.block_hash)} is not this chain's block at height {tx.height}"
        )
    previous = work.last_attested.get(tx.validator, 0)
    if tx.height <= previous:
        raise InvalidTransaction(
            f"validator {_short(tx.validator)} already attested height {previous}; "
            "attestations must move up"
        )
    _check_signature(work, tx, tx.validator, encoding)
    work.last_attested[tx.validator] = tx.height


# --------------------------------------------------------------------------------------------------
# Evidence checks


def _check_evidence(work: _Working, tx: SlashingEvidence) -> None:
    payload = tx.evidence
    if isinstance(payload, CommitmentMismatch):
        if tx.kind != BAD_COMMITMENT:
            raise InvalidTransaction(f"a CommitmentMismatch is {BAD_COMMITMENT} evidence")
        commitment = payload.commitment
        if commitment.public_key != tx.offender:
            raise InvalidTransaction("the commitment was not made by the offender")
        if commitment.run_id != work.pre.genesis.run_id:
            raise InvalidTransaction(f"the commitment is for another run ({commitment.run_id!r})")
        _check_size(payload.observed_update_hash, "observed update hash")
        if payload.observed_update_hash == commitment.update_hash:
            raise InvalidTransaction("the observed update hash matches the commitment: no offence")
        _check_signature(work, commitment, tx.offender)
        return
    if tx.kind != DOUBLE_SIGN:
        raise InvalidTransaction(f"a {type(payload).__name__} is {DOUBLE_SIGN} evidence")
    if isinstance(payload, HeaderPair):
        first, second = payload.first.header, payload.second.header
        signers, heights = (first.proposer, second.proposer), (first.height, second.height)
        distinct = compute_hash(first) != compute_hash(second)
    else:
        signers = (payload.first.validator, payload.second.validator)
        heights = (payload.first.height, payload.second.height)
        distinct = payload.first.block_hash != payload.second.block_hash
    if signers != (tx.offender, tx.offender):
        raise InvalidTransaction("both signed objects must be signed by the offender")
    if heights[0] != heights[1]:
        raise InvalidTransaction(f"the two votes are for different heights {heights}")
    if not distinct:
        raise InvalidTransaction("the two votes are for the same block: no offence")
    _check_signature(work, payload.first, tx.offender)
    _check_signature(work, payload.second, tx.offender)


# --------------------------------------------------------------------------------------------------
# Small helpers


_Apply = Callable[[_Working, Any, bytes], None]
"""``apply(work, tx, encode(tx))``: check ``tx`` against ``work`` and change ``work``."""

_APPLY: dict[type, _Apply] = {
    Registration: _apply_registration,
    UpdateCommitment: _apply_update_commitment,
    ModelVersion: _apply_model_version,
    ContributionRecord: _apply_contribution_record,
    RewardDeltas: _apply_reward_deltas,
    SlashingEvidence: _apply_slashing_evidence,
    Rejection: _apply_rejection,
    Attestation: _apply_attestation,
}


def _check_signature(
    work: _Working, obj: SignedObject, public_key: PublicKey, encoding: bytes | None = None
) -> None:
    """Verify ``obj``'s signature by ``public_key`` in this federation (``encoding``: encode(obj)).

    The same check as :func:`fedchain.crypto.identity.verify_signature`, with parsed keys cached:
    the ledger verifies every validator's signatures block after block.
    """
    what = type(obj).__name__
    if len(public_key) != PUBLIC_KEY_SIZE or len(obj.signature) != SIGNATURE_SIZE:
        raise InvalidTransaction(
            f"bad signature on the {what}: key and signature must be {PUBLIC_KEY_SIZE} and "
            f"{SIGNATURE_SIZE} bytes, got {len(public_key)} and {len(obj.signature)}"
        )
    if id(obj) in work.preverified:
        return
    domain = SIGNING_DOMAINS[type(obj)]
    root = compute_signing_root(domain, signing_message(obj, encoding), work.pre.genesis_hash)
    if not _verify_cached(public_key, obj.signature, root):
        raise InvalidTransaction(
            f"bad signature on the {what}: it does not verify for key {_short(public_key)} "
            f"in this federation"
        )


# --------------------------------------------------------------------------------------------------
# Signatures of a whole block, checked up front on several threads

_SIGNERS: dict[type, str] = {
    Registration: "public_key",
    UpdateCommitment: "public_key",
    Attestation: "validator",
}
_signature_threads = max(1, min(4, os.cpu_count() or 1))
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def configure_signature_threads(threads: int) -> None:
    """Set how many threads check a block's signatures (default: cores, at most 4).

    ``cryptography`` releases the GIL while it verifies Ed25519, so a block's independent
    signatures check in parallel. Results do not depend on the setting: each transaction's
    signature is still accepted or refused exactly as :func:`_check_signature` would.
    """
    global _signature_threads, _pool
    if type(threads) is not int or threads < 1:
        raise ValueError("threads must be a positive integer")
    with _pool_lock:
        _signature_threads = threads
        if _pool is not None:
            _pool.shutdown(wait=False)
            _pool = None


def _preverify_signatures(
    genesis_hash: Hash32,
    transactions: Sequence[BlockTransaction],
    encodings: Sequence[bytes] | None,
) -> frozenset[int]:
    """Ids of the signed transactions whose signature verifies (the rest are checked, and
    refused with their message, in order, by the transaction's own processing)."""
    jobs: list[tuple[int, bytes, bytes, bytes]] = []
    for index, tx in enumerate(transactions):
        field = _SIGNERS.get(type(tx))
        if field is None:
            continue
        key, signature = getattr(tx, field), tx.signature  # type: ignore[union-attr]
        if len(key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
            continue
        encoding = None if encodings is None else encodings[index]
        message = signing_message(tx, encoding)  # type: ignore[arg-type]
        root = compute_signing_root(SIGNING_DOMAINS[type(tx)], message, genesis_hash)
        jobs.append((id(tx), key, signature, root))
    threads = _signature_threads
    if threads == 1 or len(jobs) < 32:
        return frozenset(_verify_jobs(jobs))
    chunks = [jobs[i::threads] for i in range(threads)]
    return frozenset(itertools.chain.from_iterable(_get_pool().map(_verify_jobs, chunks)))


def _verify_jobs(jobs: Sequence[tuple[int, bytes, bytes, bytes]]) -> list[int]:
    return [tx_id for tx_id, key, signature, root in jobs if _verify_cached(key, signature, root)]


# (key, signature, signing root) triples that verified: a coordinator checks each commitment when
# it admits it and again when it builds the block, so repeats cost a dict lookup. Only exact
# triples that verified are remembered, so a hit can never accept anything new.
_VERIFIED: dict[tuple[bytes, bytes, bytes], None] = {}
_VERIFIED_MAX = 1 << 15


def _verify_cached(key: bytes, signature: bytes, root: bytes) -> bool:
    triple = (key, signature, root)
    if triple in _VERIFIED:
        return True
    try:
        _load_public_key(key).verify(signature, root)
    except (InvalidSignature, ValueError):
        return False
    if len(_VERIFIED) >= _VERIFIED_MAX:
        _VERIFIED.clear()
    _VERIFIED[triple] = None
    return True


def is_signed_by(obj: SignedObject, public_key: PublicKey, genesis_hash: Hash32) -> bool:
    """Whether ``obj`` carries a valid signature by ``public_key`` in this federation."""
    if len(public_key) != PUBLIC_KEY_SIZE or len(obj.signature) != SIGNATURE_SIZE:
        return False
    root = compute_signing_root(SIGNING_DOMAINS[type(obj)], signing_message(obj), genesis_hash)
    return _verify_cached(public_key, obj.signature, root)


def _get_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(_signature_threads, thread_name_prefix="fedchain-sig")
        return _pool


@functools.lru_cache(maxsize=4096)
def _load_public_key(public_key: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(public_key)


def _check_round(work: _Working, round: int, what: str) -> None:
    if round != work.round:
        raise InvalidTransaction(
            f"{what} is for round {round}, but the block is round {work.round}"
        )


def _check_size(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise InvalidTransaction(f"{what} must be {HASH_SIZE} bytes, got {len(value)}")


def _get_active(work: _Working, key: PublicKey) -> ParticipantState:
    participant = work.participants.get(key)
    if participant is None:
        raise InvalidTransaction(f"participant {_short(key)} is not registered")
    if not participant.active:
        raise InvalidTransaction(f"participant {_short(key)} has been ejected")
    return participant


def _check_keyed_entries(
    work: _Working, entries: Sequence[tuple[PublicKey, int]], what: str
) -> None:
    keys = [key for key, _ in entries]
    if not _is_strictly_sorted(keys):
        raise InvalidTransaction(f"{what} must be sorted by public key, each key once")
    for key in keys:
        if key not in work.participants:
            raise InvalidTransaction(f"{what} name {_short(key)}, who is not registered")


def _with_stake(
    participant: ParticipantState, stake: int, reputation_bps: int, min_stake: int
) -> ParticipantState:
    """The participant with a new stake and reputation, ejected if below ``min_stake``."""
    return dataclasses.replace(
        participant,
        stake=stake,
        reputation_bps=reputation_bps,
        active=participant.active and stake >= min_stake,
    )


def _is_strictly_sorted(items: Sequence[Any]) -> bool:
    return all(a < b for a, b in itertools.pairwise(items))


def _short(key: bytes) -> str:
    """A display id for a key: its :func:`~fedchain.crypto.identity.fingerprint`, as the CLI
    shows."""
    return fingerprint(key) if len(key) == HASH_SIZE else f"<{len(key)}-byte key>"


def _hex(value: bytes) -> str:
    return value[:8].hex() + "…" if len(value) == HASH_SIZE else f"<{len(value)} bytes>"
