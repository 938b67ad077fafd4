"""The ledger's state transition: a block, or a block body's transactions, applied to a state.

Every ``process_*`` function validates its input against the state, raises
:class:`InvalidTransaction` or :class:`InvalidBlock` with a message saying which check failed,
and otherwise returns a new :class:`~fedchain.ledger.containers.LedgerState` (states are values;
nothing is mutated). The rule of each transaction kind is in :mod:`fedchain.ledger.transactions`,
block 0 in :mod:`fedchain.ledger.genesis`.

Rounds. A block carries a round number that never decreases. Transactions that carry a round
must carry their block's round. Per-round bookkeeping (who committed, which update hashes,
rewards paid) restarts when a block opens a higher round; several blocks may share a round.

Signatures. Every function takes ``verifier=`` (:mod:`fedchain.ledger.signatures`): the plain
serial :data:`~fedchain.ledger.signatures.PLAIN` by default, or a caller's
:class:`~fedchain.ledger.signatures.CachingVerifier`. The result never depends on the choice.

Speed. :func:`process_block` applies its transactions to one private mutable working copy and
freezes it once per block; per transaction it copies nothing that grows with the chain.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from fedchain.crypto.identity import Domain, verify_signature
from fedchain.errors import InvalidBlock, InvalidTransaction, LedgerError, SignatureError
from fedchain.ledger.checks import describe_hash, describe_key
from fedchain.ledger.codec import compute_hash, encode
from fedchain.ledger.consensus import MAX_PROPOSER_ATTEMPT, compute_proposer, get_validators
from fedchain.ledger.containers import BPS_DENOMINATOR as BPS_DENOMINATOR
from fedchain.ledger.containers import LedgerState as LedgerState
from fedchain.ledger.containers import ParticipantState as ParticipantState
from fedchain.ledger.containers import compute_state_root
from fedchain.ledger.derived import compute_tx_root_of_encodings, signing_message
from fedchain.ledger.objects import (
    Attestation,
    Block,
    BlockHeader,
    BlockTransaction,
    ContributionRecord,
    Genesis,
    Hash32,
    ModelVersion,
    Registration,
    Rejection,
    RewardDeltas,
    SlashingEvidence,
    Transaction,
    UpdateCommitment,
)
from fedchain.ledger.signatures import PLAIN, Verifier, compute_preverified
from fedchain.ledger.transactions import (
    APPLY,
    Apply,
    apply_attestation,
    apply_contribution_record,
    apply_model_version,
    apply_registration,
    apply_rejection,
    apply_reward_deltas,
    apply_slashing_evidence,
    apply_update_commitment,
    check_rewards_paid,
)
from fedchain.ledger.working import Working

# Re-exported (the `X as X` imports) until fedchain/report/participants.py (BPS_DENOMINATOR,
# LedgerState, ParticipantState), fedchain/rounds/coordinator.py and tests/test_admission.py
# (LedgerState) import them from fedchain.ledger.containers.

__all__ = [
    "compute_state_with_head",
    "process_attestation",
    "process_block",
    "process_contribution_record",
    "process_model_version",
    "process_registration",
    "process_rejection",
    "process_reward_deltas",
    "process_slashing_evidence",
    "process_transaction",
    "process_transactions",
    "process_update_commitment",
]


# --------------------------------------------------------------------------------------------------
# Blocks


def process_block(state: LedgerState, block: Block, *, verifier: Verifier = PLAIN) -> LedgerState:
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
            f"{where}: parent {describe_hash(header.parent_hash)} is not the head "
            f"{describe_hash(state.head_hash)}"
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
        post = _apply_all(state, block.transactions, header.round, encodings, verifier)
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
            f"{where}: proposer {describe_key(header.proposer)} was not drawn for attempt "
            f"{header.attempt}; {describe_key(expected)} was"
        )


# --------------------------------------------------------------------------------------------------
# Transactions: public entry points


def process_transactions(
    state: LedgerState,
    transactions: Sequence[Transaction],
    block_round: int,
    *,
    verifier: Verifier = PLAIN,
) -> LedgerState:
    """Apply a block body's transactions, in order, for a block of ``block_round``.

    Height and head are unchanged (:func:`compute_state_with_head` advances them). Raises
    :class:`InvalidTransaction` naming the first failing transaction.
    """
    return _apply_all(state, transactions, block_round, None, verifier)


def process_transaction(
    state: LedgerState, tx: Transaction, block_round: int, *, verifier: Verifier = PLAIN
) -> LedgerState:
    """Apply one transaction for a block of ``block_round`` (dispatches on its type)."""
    apply = APPLY.get(type(tx))
    if apply is None:
        raise InvalidTransaction(f"{type(tx).__name__} is not a ledger transaction")
    return _apply_one(state, tx, block_round, verifier, apply)


def process_registration(
    state: LedgerState, tx: Registration, block_round: int, *, verifier: Verifier = PLAIN
) -> LedgerState:
    return _apply_one(state, tx, block_round, verifier, apply_registration, Registration)


def process_update_commitment(
    state: LedgerState, tx: UpdateCommitment, block_round: int, *, verifier: Verifier = PLAIN
) -> LedgerState:
    return _apply_one(state, tx, block_round, verifier, apply_update_commitment, UpdateCommitment)


def process_model_version(
    state: LedgerState, tx: ModelVersion, block_round: int, *, verifier: Verifier = PLAIN
) -> LedgerState:
    return _apply_one(state, tx, block_round, verifier, apply_model_version, ModelVersion)


def process_contribution_record(
    state: LedgerState, tx: ContributionRecord, block_round: int, *, verifier: Verifier = PLAIN
) -> LedgerState:
    return _apply_one(
        state, tx, block_round, verifier, apply_contribution_record, ContributionRecord
    )


def process_reward_deltas(
    state: LedgerState, tx: RewardDeltas, block_round: int, *, verifier: Verifier = PLAIN
) -> LedgerState:
    return _apply_one(state, tx, block_round, verifier, apply_reward_deltas, RewardDeltas)


def process_slashing_evidence(
    state: LedgerState, tx: SlashingEvidence, block_round: int, *, verifier: Verifier = PLAIN
) -> LedgerState:
    return _apply_one(state, tx, block_round, verifier, apply_slashing_evidence, SlashingEvidence)


def process_rejection(
    state: LedgerState, tx: Rejection, block_round: int, *, verifier: Verifier = PLAIN
) -> LedgerState:
    return _apply_one(state, tx, block_round, verifier, apply_rejection, Rejection)


def process_attestation(
    state: LedgerState, tx: Attestation, block_round: int, *, verifier: Verifier = PLAIN
) -> LedgerState:
    return _apply_one(state, tx, block_round, verifier, apply_attestation, Attestation)


def _apply_all(
    state: LedgerState,
    transactions: Sequence[BlockTransaction],
    block_round: int,
    encodings: Sequence[bytes] | None,
    verifier: Verifier,
) -> LedgerState:
    """Apply ``transactions`` to one working copy (``encodings``: theirs, if already made)."""
    work = Working(state, block_round, verifier)
    work.preverified = compute_preverified(verifier, state.genesis_hash, transactions, encodings)
    for index, tx in enumerate(transactions):
        apply = APPLY.get(type(tx))
        try:
            if apply is None:
                if isinstance(tx, Genesis):
                    raise InvalidTransaction("a Genesis may only appear in block 0")
                raise InvalidTransaction(f"{type(tx).__name__} is not a ledger transaction")
            apply(work, tx, _encode_tx(tx) if encodings is None else encodings[index])
        except InvalidTransaction as exc:
            raise InvalidTransaction(f"transaction {index} ({type(tx).__name__}): {exc}") from exc
    check_rewards_paid(work)
    return work.freeze()


def _apply_one(
    state: LedgerState,
    tx: Any,
    block_round: int,
    verifier: Verifier,
    apply: Apply,
    expected: type | None = None,
) -> LedgerState:
    if expected is not None and not isinstance(tx, expected):
        raise InvalidTransaction(f"expected a {expected.__name__}, got {type(tx).__name__}")
    encoding = _encode_tx(tx)
    work = Working(state, block_round, verifier)
    apply(work, tx, encoding)
    return work.freeze()


def _encode_tx(tx: object) -> bytes:
    try:
        return encode(tx)
    except LedgerError as exc:
        raise InvalidTransaction(f"malformed: {exc}") from exc
