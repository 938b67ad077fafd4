"""Helpers that make valid ledger objects: genesis, signed transactions, signed blocks.

Used by tests, benchmarks and the Flower server. Everything signed here binds the federation's
genesis hash (``genesis_hash``), so the objects are only valid in that federation; a genesis
participant's registration, made before the genesis exists, binds the federation id instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedchain.crypto.identity import Domain, public_key_bytes, sign, verify_signature
from fedchain.errors import InvalidBlock, LedgerError, SignatureError
from fedchain.ledger.codec import compute_hash
from fedchain.ledger.consensus import compute_proposer, get_validators
from fedchain.ledger.containers import LedgerState, compute_state_root
from fedchain.ledger.derived import compute_tx_root, signing_message
from fedchain.ledger.objects import (
    ARCHIVE_ALL_ROUNDS,
    DOUBLE_SIGN,
    Attestation,
    Block,
    BlockHeader,
    Genesis,
    GenesisParticipant,
    Hash32,
    ModelRecord,
    Refusal,
    Rules,
    SignedHeader,
    Transaction,
    UpdateCommitment,
)
from fedchain.ledger.signatures import PLAIN, Verifier
from fedchain.ledger.state import compute_state_with_head, process_transactions

__all__ = [
    "build_block",
    "make_genesis",
    "make_rules",
    "prepare_block",
    "seal_block",
    "sign_attestation",
    "sign_commitment",
    "sign_genesis_participant",
    "sign_header",
    "sign_refusal",
]


def make_rules(
    *,
    min_stake: int = 100,
    reward_per_round: int = 1_000,
    slash_bps: Mapping[str, int] | None = None,
    aggregation_rule: str = "fedavg",
    aggregation_params: Mapping[str, str] | None = None,
    contribution_method: str = "leave-one-out",
    weight_cap_bps: int = 10_000,
    reputation_penalty_bps: int = 1_000,
    payout_min_score: int = 0,
    score_debt_decay_bps: int = 10_000,
    harm_debt_decay_bps: int | None = None,
    contribution_budget: int = 0,
    contribution_min_evaluations: int = 0,
    update_archive_rounds: int = ARCHIVE_ALL_ROUNDS,
    dp: Mapping[str, int | str] | None = None,
    model: ModelRecord | None = None,
    max_rounds: int = 0,
    max_local_epochs: int = 0,
    model_access: Iterable[bytes] = (),
) -> Rules:
    """:class:`Rules` with mappings turned into sorted tuples.

    The defaults are small round numbers for tests, not recommendations: a real federation
    picks its own (base units for stakes and rewards, basis points for fractions). ``dp``:
    the differential privacy fields (``dp_mode``, ``dp_noise_micro``, ...; none: DP off), e.g.
    :func:`fedchain.privacy.accountant.compute_dp_rules`. ``model``: the model record (none:
    the empty record, which says nothing about the model). ``max_rounds``, ``max_local_epochs``:
    the rules of data use (0: no limit); ``model_access``: the keys besides the participants
    who may be given the models (sorted and made unique here). ``harm_debt_decay_bps``: none
    forgives harm as fast as the rest of a score debt (``score_debt_decay_bps``).
    """
    if slash_bps is None:
        slash_bps = {DOUBLE_SIGN: 5_000}
    return Rules(
        min_stake=min_stake,
        reward_per_round=reward_per_round,
        slash_bps=tuple(sorted(slash_bps.items())),
        aggregation_rule=aggregation_rule,
        aggregation_params=tuple(sorted((aggregation_params or {}).items())),
        contribution_method=contribution_method,
        weight_cap_bps=weight_cap_bps,
        reputation_penalty_bps=reputation_penalty_bps,
        payout_min_score=payout_min_score,
        score_debt_decay_bps=score_debt_decay_bps,
        harm_debt_decay_bps=(
            score_debt_decay_bps if harm_debt_decay_bps is None else harm_debt_decay_bps
        ),
        contribution_budget=contribution_budget,
        contribution_min_evaluations=contribution_min_evaluations,
        update_archive_rounds=update_archive_rounds,
        **(dp or {}),  # type: ignore[arg-type]
        model=model or ModelRecord(),
        max_rounds=max_rounds,
        max_local_epochs=max_local_epochs,
        model_access=tuple(sorted(set(model_access))),
    )


def make_genesis(
    run_id: str,
    participants: Iterable[GenesisParticipant],
    *,
    initial_model_hash: Hash32,
    rules: Rules | None = None,
) -> Genesis:
    """A :class:`Genesis` with its participants sorted by public key (rules: :func:`make_rules`)."""
    return Genesis(
        run_id=run_id,
        rules=rules if rules is not None else make_rules(),
        initial_model_hash=initial_model_hash,
        participants=tuple(sorted(participants, key=lambda entry: entry.public_key)),
    )


def sign_genesis_participant(
    private_key: Ed25519PrivateKey,
    federation_id: Hash32,
    *,
    stake: int,
    dataset_hash: Hash32,
    num_examples: int,
    name: str = "",
    supernode_key: str = "",
    app_digest: bytes = b"",
    fedchain_version: str = "",
) -> GenesisParticipant:
    """A registration for the genesis of the federation ``federation_id``
    (:func:`~fedchain.ledger.derived.compute_federation_id`), signed by ``private_key``;
    ``app_digest`` is the app the holder approves (empty: none, a simulation)."""
    fields = (
        public_key_bytes(private_key),
        stake,
        dataset_hash,
        num_examples,
        name,
        supernode_key,
        app_digest,
        fedchain_version,
    )
    unsigned = GenesisParticipant(*fields, b"")
    signature = sign(private_key, Domain.REGISTRATION, signing_message(unsigned), federation_id)
    return GenesisParticipant(*fields, signature)


def sign_commitment(
    private_key: Ed25519PrivateKey,
    genesis_hash: Hash32,
    *,
    run_id: str,
    round: int,
    base_model_hash: Hash32,
    update_hash: Hash32,
    num_examples: int,
    dp_mechanism: tuple[int, int, int] = (0, 0, 0),
) -> UpdateCommitment:
    """``dp_mechanism``: the privacy mechanism applied to the update
    (:func:`~fedchain.ledger.derived.compute_dp_mechanism` of the rules; none by default)."""
    public_key = public_key_bytes(private_key)
    fields = (run_id, round, base_model_hash, update_hash, num_examples, public_key, *dp_mechanism)
    unsigned = UpdateCommitment(*fields, b"")
    signature = sign(private_key, Domain.UPDATE, signing_message(unsigned), genesis_hash)
    return UpdateCommitment(*fields, signature)


def sign_refusal(
    private_key: Ed25519PrivateKey, genesis_hash: Hash32, *, round: int, code: str, detail: str
) -> Refusal:
    """A holder's refusal to train in ``round`` (``code``: one of
    :data:`~fedchain.ledger.objects.REFUSAL_CODES`), signed for the federation ``genesis_hash``."""
    unsigned = Refusal(public_key_bytes(private_key), round, code, detail, b"")
    signature = sign(private_key, Domain.REFUSAL, signing_message(unsigned), genesis_hash)
    return dataclasses.replace(unsigned, signature=signature)


def sign_attestation(
    private_key: Ed25519PrivateKey, genesis_hash: Hash32, *, height: int, block_hash: Hash32
) -> Attestation:
    unsigned = Attestation(public_key_bytes(private_key), height, block_hash, b"")
    signature = sign(private_key, Domain.ATTESTATION, signing_message(unsigned), genesis_hash)
    return Attestation(unsigned.validator, height, block_hash, signature)


def sign_header(
    private_key: Ed25519PrivateKey, genesis_hash: Hash32, header: BlockHeader
) -> SignedHeader:
    message = signing_message(SignedHeader(header, b""))
    return SignedHeader(header, sign(private_key, Domain.BLOCK, message, genesis_hash))


def prepare_block(
    state: LedgerState,
    transactions: Sequence[Transaction],
    attempt: int = 0,
    *,
    round: int | None = None,
    verifier: Verifier = PLAIN,
) -> tuple[BlockHeader, LedgerState]:
    """The next block's unsigned header, and the state after it (once sealed).

    The proposer drawn for ``attempt`` must sign the header (:func:`seal_block`). ``round``
    defaults to the head's round. Raises :class:`InvalidTransaction` if a transaction does not
    apply. ``verifier`` checks the transactions' signatures (:mod:`fedchain.ledger.signatures`).
    """
    block_round = state.round if round is None else round
    try:
        proposer = compute_proposer(state.head_hash, get_validators(state), attempt)
    except LedgerError as exc:
        raise InvalidBlock(f"block {state.height + 1}: {exc}") from exc
    transactions = tuple(transactions)
    post = process_transactions(state, transactions, block_round, verifier=verifier)
    header = BlockHeader(
        height=state.height + 1,
        round=block_round,
        parent_hash=state.head_hash,
        tx_root=compute_tx_root(transactions),
        state_root=compute_state_root(post),
        proposer=proposer,
        attempt=attempt,
    )
    return header, compute_state_with_head(post, compute_hash(header))


def seal_block(
    header: BlockHeader, signature: bytes, transactions: Sequence[Transaction], genesis_hash: Hash32
) -> Block:
    """The block, once its proposer's signature over ``header`` checks out."""
    signed = SignedHeader(header, signature)
    try:
        verify_signature(
            header.proposer, signature, Domain.BLOCK, signing_message(signed), genesis_hash
        )
    except SignatureError as exc:
        raise InvalidBlock(f"block {header.height}: bad proposer signature: {exc}") from exc
    return Block(signed, tuple(transactions))


def build_block(
    state: LedgerState,
    transactions: Sequence[Transaction],
    proposer_key: Ed25519PrivateKey,
    attempt: int = 0,
    *,
    round: int | None = None,
    verifier: Verifier = PLAIN,
) -> tuple[Block, LedgerState]:
    """Build, sign and apply the next block; returns it with the state after it.

    ``round`` defaults to the head's round. Raises :class:`InvalidTransaction` if a
    transaction does not apply, :class:`InvalidBlock` if ``proposer_key`` was not drawn for
    ``attempt`` (see :func:`~fedchain.ledger.consensus.get_proposer`).
    """
    header, post = prepare_block(state, transactions, attempt, round=round, verifier=verifier)
    if public_key_bytes(proposer_key) != header.proposer:
        raise InvalidBlock(
            f"block {state.height + 1}: this key was not drawn to propose at attempt {attempt}"
        )
    signed = sign_header(proposer_key, state.genesis_hash, header)
    return Block(signed, tuple(transactions)), post
