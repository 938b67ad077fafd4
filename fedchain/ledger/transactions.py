"""The per-kind transaction rules: each checks a transaction on a working copy, then applies it.

:class:`Working` is a private mutable copy of a :class:`~fedchain.ledger.containers.LedgerState`
for one block's transactions (frozen once per block by :mod:`fedchain.ledger.state`, which owns
the order and the error context). Each ``apply_<kind>(work, tx, encoding)`` validates its
transaction, raising :class:`InvalidTransaction` with a message saying which check failed, and
then records its effect on ``work``; :data:`APPLY` maps each transaction type to its rule.
Signatures are checked through the working copy's verifier (:mod:`fedchain.ledger.signatures`),
and a participant key enters the ledger only if :mod:`fedchain.crypto.ed25519` accepts it
(:func:`check_participant_key`, for genesis participants). A ``Registration`` after the
genesis is refused (:func:`apply_registration`): participants join in the genesis.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from fedchain.errors import InvalidTransaction
from fedchain.ledger.checks import (
    check_agreed_round,
    check_participant_key,
    check_size,
    describe_hash,
    describe_key,
    is_strictly_sorted,
)
from fedchain.ledger.codec import MAX_INT, compute_hash
from fedchain.ledger.consensus import is_active_validator
from fedchain.ledger.containers import (
    BPS_DENOMINATOR,
    HARMFUL_SCORE,
    MAX_REPUTATION_BPS,
    ParticipantState,
    compute_evidence_id,
)
from fedchain.ledger.derived import compute_dp_mechanism, compute_federation_id
from fedchain.ledger.objects import (
    ANCHOR_WITNESSES,
    DOUBLE_SIGN,
    DP_OFF,
    HASH_SIZE,
    MAX_ANCHOR_PROOF_SIZE,
    MAX_REFUSAL_DETAIL_CHARS,
    REFUSAL_CODES,
    REFUSE_EPOCHS,
    REFUSE_PRIVACY,
    REFUSE_ROUNDS,
    SLASHING_KINDS,
    AnchorReceipt,
    AppApproval,
    Attestation,
    AttestationPair,
    ContributionRecord,
    HeaderPair,
    ModelVersion,
    PublicKey,
    Refusal,
    Registration,
    Rejection,
    RewardDeltas,
    SlashingEvidence,
    UpdateCommitment,
)
from fedchain.ledger.working import (
    Working,
    check_round,
    check_signature,
    get_active,
    with_stake,
)
from fedchain.rounds.rewards import compute_round_payout, compute_score_debt, has_model_moved

__all__ = [
    "APPLY",
    "Apply",
    "check_participant_key",
    "check_rewards_paid",
    "check_size",
    "describe_hash",
    "describe_key",
    "is_strictly_sorted",
]


# --------------------------------------------------------------------------------------------------
# The rules: checks and effects


REGISTRATION_REFUSED = (
    "participants join in the genesis; a registration after it is refused (it would bring stake "
    "nobody deposited)"
)


def apply_registration(work: Working, tx: Registration, encoding: bytes) -> None:
    """Refused: a participant joins only in the signed genesis. A registration after it would
    bring any stake it names (nobody deposited it) and with it the proposer draw and finality."""
    raise InvalidTransaction(REGISTRATION_REFUSED)


def apply_update_commitment(work: Working, tx: UpdateCommitment, encoding: bytes) -> None:
    participant = get_active(work, tx.public_key)
    if tx.run_id != work.pre.genesis.run_id:
        raise InvalidTransaction(
            f"commitment is for run {tx.run_id!r}, this ledger is run {work.pre.genesis.run_id!r}"
        )
    check_round(work, tx.round, "commitment")
    check_agreed_round(work.pre.genesis.rules, tx.round, "a commitment")
    if tx.round <= work.model_round:
        raise InvalidTransaction(f"round {tx.round} is closed: its model version is registered")
    if tx.public_key in work.round_commits:
        raise InvalidTransaction(
            f"participant {describe_key(tx.public_key)} already committed an update in round "
            f"{tx.round}"
        )
    if tx.base_model_hash != work.model_head:
        raise InvalidTransaction(
            f"update was trained from model {describe_hash(tx.base_model_hash)}, but the current "
            f"global model is {describe_hash(work.model_head)}"
        )
    check_size(tx.update_hash, "update hash")
    if not 1 <= tx.num_examples <= participant.num_examples:
        raise InvalidTransaction(
            f"commitment claims {tx.num_examples} examples; participant "
            f"{describe_key(tx.public_key)} registered {participant.num_examples} (need 1..that)"
        )
    _check_privacy(work, tx, participant)
    check_signature(work, tx, tx.public_key, encoding)
    work.round_commits.add(tx.public_key)
    work.round_update_hashes.add(tx.update_hash)
    if work.pre.genesis.rules.dp_mode != DP_OFF:
        work.participants[tx.public_key] = dataclasses.replace(
            participant, dp_participations=participant.dp_participations + 1
        )


def _check_privacy(work: Working, tx: UpdateCommitment, participant: ParticipantState) -> None:
    """The commitment claims the genesis' privacy mechanism exactly, and its client has budget
    left: fewer accepted participations than ``dp_max_participations``. An integer count
    against an integer cap, so every replay decides the same (the floating-point accountant
    fixed the cap once, in the genesis)."""
    rules = work.pre.genesis.rules
    claimed = (tx.dp_noise_micro, tx.dp_sample_rate_micro, tx.dp_steps)
    required = compute_dp_mechanism(rules)
    if claimed != required:
        raise InvalidTransaction(
            "commitment claims privacy mechanism (noise multiplier, sampling rate, steps) = "
            f"{_describe_mechanism(claimed)}; the genesis rules require "
            f"{_describe_mechanism(required)}"
        )
    if rules.dp_mode != DP_OFF and participant.dp_participations >= rules.dp_max_participations:
        raise InvalidTransaction(
            f"privacy budget spent: participant {describe_key(tx.public_key)} has "
            f"{participant.dp_participations} participations, the most the genesis allows "
            f"within epsilon {rules.dp_max_epsilon_micro / 10**6:g} at delta "
            f"{rules.dp_delta_pico / 10**12:g}"
        )


def _describe_mechanism(mechanism: tuple[int, int, int]) -> str:
    noise, rate, steps = mechanism
    return f"({noise / 10**6:g}, {rate / 10**6:g}, {steps})"


def apply_model_version(work: Working, tx: ModelVersion, encoding: bytes) -> None:
    check_round(work, tx.round, "model version")
    check_agreed_round(work.pre.genesis.rules, tx.round, "a model version")
    if tx.round <= work.model_round:
        raise InvalidTransaction(
            f"a model version for round {work.model_round} is already registered; one per round"
        )
    if tx.parent_hash != work.model_head:
        raise InvalidTransaction(
            f"model version's parent {describe_hash(tx.parent_hash)} is not the current global "
            f"model {describe_hash(work.model_head)}"
        )
    check_size(tx.model_hash, "model hash")
    if not is_strictly_sorted(tx.update_hashes):
        raise InvalidTransaction("update_hashes must be sorted, each hash once")
    for update_hash in tx.update_hashes:
        if update_hash not in work.round_update_hashes:
            raise InvalidTransaction(
                f"update {describe_hash(update_hash)} was not committed and accepted in round "
                f"{tx.round}"
            )
    rule = work.pre.genesis.rules.aggregation_rule
    if tx.rule != rule:
        raise InvalidTransaction(f"aggregation rule {tx.rule!r} is not the genesis rule {rule!r}")
    work.model_moved = has_model_moved(tx.update_hashes, tx.model_hash, tx.parent_hash)
    work.model_head = tx.model_hash
    work.model_round = tx.round


def apply_contribution_record(work: Working, tx: ContributionRecord, encoding: bytes) -> None:
    """The round's scores: one record per round, after its model version, scoring exactly the
    keys that committed an accepted update in the round (none left out, none added, each once).

    Scores bind the rewards through the payout rule
    (:func:`~fedchain.rounds.rewards.compute_round_payout`): the carried pool plus the round's
    pool is available; the rule pays all, part or none of it by the scores (none when the
    round's model did not move) and carries the rest (``carried_reward``, in the state root). A
    payment it makes due must be the :class:`RewardDeltas` after this record in the same block
    (:func:`check_rewards_paid`), exactly.

    They also move each scored participant's score debt
    (:func:`~fedchain.rounds.rewards.compute_score_debt`: a positive score first repays it, and
    only what is left is payable; each round the genesis ``harm_debt_decay_bps`` of its harm,
    the part of negative scores beyond 0.01, is forgiven, and ``score_debt_decay_bps`` of the
    rest), and
    reputation: a score at or below :data:`HARMFUL_SCORE` (harm beyond measurement noise) costs
    the genesis ``reputation_penalty_bps``; a positive score restores half of that, up to the
    maximum. So repeated harmful contributions lower a client's reputation, and with it
    its weight under the ``reputation`` aggregation rule.
    """
    check_round(work, tx.round, "contribution record")
    if tx.round <= work.scores_round:
        raise InvalidTransaction(
            f"a contribution record for round {work.scores_round} is already registered; one "
            "per round"
        )
    if work.model_round != tx.round:
        raise InvalidTransaction(f"round {tx.round} has no model version yet: scores come after it")
    keys = [key for key, _ in tx.scores]
    if not is_strictly_sorted(keys):
        raise InvalidTransaction("scores must be sorted by public key, each key once")
    for key in keys:
        if key not in work.round_commits:
            raise InvalidTransaction(
                f"scores name {describe_key(key)}, who has no accepted commitment in round "
                f"{tx.round}"
            )
    if len(keys) != len(work.round_commits):
        missing = min(work.round_commits - set(keys))
        raise InvalidTransaction(
            f"scores leave out {describe_key(missing)}, who committed in round {tx.round}"
        )
    work.scores = tx.scores
    work.scores_round = tx.round
    rules = work.pre.genesis.rules
    if work.carried_reward + rules.reward_per_round > MAX_INT:
        raise InvalidTransaction("the carried reward pool would overflow")
    debts = {key: work.participants[key].score_debt for key, _ in tx.scores}
    payout = compute_round_payout(
        work.carried_reward,
        pool=rules.reward_per_round,
        scores=tx.scores,
        moved=work.model_moved,
        min_score=rules.payout_min_score,
        debts=debts,
    )
    work.carried_reward = payout.carried
    work.due = payout.rewards
    for key, score in tx.scores:
        participant = work.participants[key]
        reputation = participant.reputation_bps
        if score <= HARMFUL_SCORE:
            reputation = max(0, reputation - rules.reputation_penalty_bps)
        elif score > 0:
            reputation = min(MAX_REPUTATION_BPS, reputation + rules.reputation_penalty_bps // 2)
        debt, harm = compute_score_debt(
            participant.score_debt,
            participant.harm_debt,
            score,
            rules.score_debt_decay_bps,
            rules.harm_debt_decay_bps,
        )
        if (reputation, debt, harm) != (
            participant.reputation_bps,
            participant.score_debt,
            participant.harm_debt,
        ):
            work.participants[key] = dataclasses.replace(
                participant, reputation_bps=reputation, score_debt=debt, harm_debt=harm
            )


def apply_reward_deltas(work: Working, tx: RewardDeltas, encoding: bytes) -> None:
    """The round's rewards: right after its contribution record in the same block, only when
    the payout rule makes a payment due (:func:`~fedchain.rounds.rewards.compute_round_payout`),
    exactly that payment, once.

    No amount may be negative: a stake is lost only to :class:`SlashingEvidence`, which anyone
    can re-check, never on the coordinator's word. A pool the rule carries cannot be paid early.
    """
    rules = work.pre.genesis.rules
    check_round(work, tx.round, "reward deltas")
    for key, delta in tx.deltas:
        if delta < 0:
            raise InvalidTransaction(
                f"negative delta {delta} for {describe_key(key)}: a penalty without evidence "
                "(stake is lost only to slashing evidence)"
            )
    if work.scores is None:
        raise InvalidTransaction(
            f"rewards must follow round {tx.round}'s contribution record in the same block"
        )
    if work.rewarded:
        raise InvalidTransaction(f"round {tx.round}'s rewards are already paid; once per round")
    if not work.due:
        raise InvalidTransaction(
            f"the payout rule pays nothing in round {tx.round}: its pool is carried "
            f"({work.carried_reward} units)"
        )
    if tx.deltas != work.due:
        raise InvalidTransaction(
            "rewards are not the payment the payout rule makes due from the round's scores: "
            + _describe_difference(tx.deltas, work.due)
        )
    updated = []
    for key, delta in tx.deltas:
        participant = work.participants[key]
        stake = participant.stake + delta
        if stake > MAX_INT:
            raise InvalidTransaction(f"stake of {describe_key(key)} would overflow")
        updated.append(with_stake(participant, stake, participant.reputation_bps, rules.min_stake))
    for participant in updated:
        work.participants[participant.public_key] = participant
    work.rewarded = True


def check_rewards_paid(work: Working) -> None:
    """At the end of a block: a payment the block's contribution record made due is in it.
    Leaving it out would neither pay nor carry those units."""
    if work.due and not work.rewarded:
        raise InvalidTransaction(
            f"round {work.scores_round}'s contribution record makes {sum(a for _, a in work.due)} "
            "units of rewards due: the block must pay them (RewardDeltas after the record)"
        )


def _describe_difference(
    deltas: Sequence[tuple[PublicKey, int]], expected: Sequence[tuple[PublicKey, int]]
) -> str:
    """The first entry where ``deltas`` and the ``expected`` split differ, in words."""
    got, due = dict(deltas), dict(expected)
    for key in sorted(got.keys() | due.keys()):
        if got.get(key) != due.get(key):
            return (
                f"{describe_key(key)} is paid {got.get(key, 0)}, the split gives {due.get(key, 0)}"
            )
    return "the entries must be sorted by key, each key once, zero amounts left out"


def apply_slashing_evidence(work: Working, tx: SlashingEvidence, encoding: bytes) -> None:
    rules = work.pre.genesis.rules
    check_round(work, tx.round, "slashing evidence")
    if tx.kind not in SLASHING_KINDS:
        raise InvalidTransaction(
            f"unknown slashing kind {tx.kind!r} (known: {', '.join(sorted(SLASHING_KINDS))})"
        )
    participant = work.participants.get(tx.offender)
    if participant is None:
        raise InvalidTransaction(
            f"offender {describe_key(tx.offender)} is not a registered participant"
        )
    _check_evidence(work, tx)
    evidence_id = compute_evidence_id(tx)
    if evidence_id in work.evidence_seen:
        raise InvalidTransaction("this offence has already been punished (evidence seen before)")
    slash_bps = dict(rules.slash_bps).get(tx.kind, 0)
    stake = participant.stake - participant.stake * slash_bps // BPS_DENOMINATOR
    reputation = max(0, participant.reputation_bps - rules.reputation_penalty_bps)
    work.participants[tx.offender] = with_stake(participant, stake, reputation, rules.min_stake)
    work.evidence_seen = work.evidence_seen | {evidence_id}


def apply_rejection(work: Working, tx: Rejection, encoding: bytes) -> None:
    check_round(work, tx.round, "rejection")
    check_size(tx.public_key, "public key")
    if not tx.reason:
        raise InvalidTransaction("a rejection must give its reason")


def apply_refusal(work: Working, tx: Refusal, encoding: bytes) -> None:
    """A holder's signed refusal to train in this round, for a reason the genesis's rules can
    support: a round past ``max_rounds`` (checked: the round is past it), more local epochs than
    ``max_local_epochs`` (the limit exists; the ledger cannot see epochs), or its privacy budget
    spent (the federation is private; the holder's own count may be ahead of the ledger's). Its
    signature makes it the holder's word; one a participant a round (the same signed refusal
    recorded twice would count as two); changes nothing but the record."""
    check_round(work, tx.round, "refusal")
    if tx.public_key not in work.participants:
        raise InvalidTransaction(f"participant {describe_key(tx.public_key)} is not registered")
    if tx.public_key in work.round_refusals:
        raise InvalidTransaction(
            f"participant {describe_key(tx.public_key)} already has a refusal in round {tx.round}"
        )
    if tx.code not in REFUSAL_CODES:
        raise InvalidTransaction(
            f"unknown refusal code {tx.code!r} (known: {', '.join(sorted(REFUSAL_CODES))})"
        )
    rules = work.pre.genesis.rules
    if tx.code == REFUSE_ROUNDS and not 0 < rules.max_rounds < tx.round:
        raise InvalidTransaction(
            f"round {tx.round} is not past the contract's max_rounds ({rules.max_rounds}; 0: none)"
        )
    if tx.code == REFUSE_EPOCHS and rules.max_local_epochs == 0:
        raise InvalidTransaction("the contract sets no max_local_epochs to refuse by")
    if tx.code == REFUSE_PRIVACY and rules.dp_mode == DP_OFF:
        raise InvalidTransaction("the federation has no privacy budget to have spent")
    if len(tx.detail) > MAX_REFUSAL_DETAIL_CHARS:
        raise InvalidTransaction(
            f"refusal detail is {len(tx.detail)} characters (at most {MAX_REFUSAL_DETAIL_CHARS})"
        )
    check_signature(work, tx, tx.public_key, encoding)
    work.round_refusals.add(tx.public_key)


def apply_attestation(work: Working, tx: Attestation, encoding: bytes) -> None:
    participant = work.participants.get(tx.validator)
    if participant is None or not is_active_validator(participant, work.pre.genesis.rules):
        raise InvalidTransaction(f"attester {describe_key(tx.validator)} is not a validator")
    parent_height = work.pre.height
    if not 1 <= tx.height <= parent_height:
        raise InvalidTransaction(
            f"attestation to height {tx.height}; attestable heights are 1..{parent_height}"
        )
    if work.pre.block_hashes.get(tx.height) != tx.block_hash:
        raise InvalidTransaction(
            f"block {describe_hash(tx.block_hash)} is not this chain's block at height {tx.height}"
        )
    previous = work.last_attested.get(tx.validator, 0)
    if tx.height <= previous:
        raise InvalidTransaction(
            f"validator {describe_key(tx.validator)} already attested height {previous}; "
            "attestations must move up"
        )
    check_signature(work, tx, tx.validator, encoding)
    work.last_attested[tx.validator] = tx.height


def apply_anchor_receipt(work: Working, tx: AnchorReceipt, encoding: bytes) -> None:
    """A witness's receipt for a statement about this chain's past: its genesis, a block height
    below this block and that height's block hash. Its proof is opaque here (bounded in size):
    ``fedchain verify --anchors`` checks it with the witness, and checks that the height was
    final and the statement's model head was the global model after it (the per-height history
    those need is not in the state). Changes nothing but the record."""
    if tx.witness not in ANCHOR_WITNESSES:
        raise InvalidTransaction(
            f"unknown anchor witness {tx.witness!r} (known: {', '.join(sorted(ANCHOR_WITNESSES))})"
        )
    statement = tx.statement
    if statement.genesis_hash != work.pre.genesis_hash:
        raise InvalidTransaction(
            f"anchor receipt is for federation {describe_hash(statement.genesis_hash)}, this "
            f"ledger is {describe_hash(work.pre.genesis_hash)}"
        )
    if not 0 <= statement.height <= work.pre.height:
        raise InvalidTransaction(
            f"anchor receipt names height {statement.height}; anchorable heights are "
            f"0..{work.pre.height}"
        )
    if work.pre.block_hashes.get(statement.height) != statement.block_hash:
        raise InvalidTransaction(
            f"anchored block {describe_hash(statement.block_hash)} is not this chain's block at "
            f"height {statement.height}"
        )
    check_size(statement.model_head, "anchored model head")
    if not 1 <= len(tx.proof) <= MAX_ANCHOR_PROOF_SIZE:
        raise InvalidTransaction(
            f"anchor proof must be 1..{MAX_ANCHOR_PROOF_SIZE} bytes, got {len(tx.proof)}"
        )


def apply_app_approval(work: Working, tx: AppApproval, encoding: bytes) -> None:
    """A holder's signed approval of another app to run on its data (an upgrade): from this
    block on, the state names ``app_digest`` as the app it approved.

    Only the holder can make one (its signature, under the app-approval domain with the
    federation id, like its registration), and only the next one: ``replaces`` is the digest
    the state names now and ``sequence`` is one more than the approvals it has recorded. So a
    coordinator can neither invent an upgrade, nor move a holder back by replaying one of its
    older approvals (its sequence is spent), nor record another holder's approval for it."""
    participant = work.participants.get(tx.public_key)
    if participant is None:
        raise InvalidTransaction(f"participant {describe_key(tx.public_key)} is not registered")
    if len(tx.app_digest) != HASH_SIZE:
        raise InvalidTransaction(f"app digest must be {HASH_SIZE} bytes, got {len(tx.app_digest)}")
    if tx.sequence != participant.app_approvals + 1:
        raise InvalidTransaction(
            f"approval {tx.sequence} of {describe_key(tx.public_key)}: its next approval is "
            f"number {participant.app_approvals + 1} (an older one cannot be replayed)"
        )
    if tx.replaces != participant.app_digest:
        raise InvalidTransaction(
            f"approval replaces app {describe_hash(tx.replaces)}, but {describe_key(tx.public_key)}"
            f"'s approved app is {describe_hash(participant.app_digest)}"
        )
    genesis = work.pre.genesis
    check_signature(
        work, tx, tx.public_key, encoding, compute_federation_id(genesis.run_id, genesis.rules)
    )
    work.participants[tx.public_key] = dataclasses.replace(
        participant, app_digest=tx.app_digest, app_approvals=tx.sequence
    )


# --------------------------------------------------------------------------------------------------
# Evidence checks


def _check_evidence(work: Working, tx: SlashingEvidence) -> None:
    """Double-sign evidence: two different votes of the offender at one height of this chain's
    past, in canonical order (so one offence has one encoding), both signatures valid here."""
    payload = tx.evidence
    if tx.kind != DOUBLE_SIGN or not isinstance(payload, HeaderPair | AttestationPair):
        raise InvalidTransaction(f"a {type(payload).__name__} is not {DOUBLE_SIGN} evidence")
    if isinstance(payload, HeaderPair):
        first, second = payload.first.header, payload.second.header
        signers, heights = (first.proposer, second.proposer), (first.height, second.height)
        ordered = compute_hash(first) < compute_hash(second)
        distinct = compute_hash(first) != compute_hash(second)
        order = "headers by block hash"
    else:
        signers = (payload.first.validator, payload.second.validator)
        heights = (payload.first.height, payload.second.height)
        ordered = payload.first.block_hash < payload.second.block_hash
        distinct = payload.first.block_hash != payload.second.block_hash
        order = "attestations by block_hash"
    if signers != (tx.offender, tx.offender):
        raise InvalidTransaction("both signed objects must be signed by the offender")
    if heights[0] != heights[1]:
        raise InvalidTransaction(f"the two votes are for different heights {heights}")
    if not 1 <= heights[0] <= work.pre.height:
        raise InvalidTransaction(
            f"the votes are for height {heights[0]}; evidence covers this chain's past, "
            f"heights 1..{work.pre.height}"
        )
    if not distinct:
        raise InvalidTransaction("the two votes are for the same block: no offence")
    if not ordered:
        raise InvalidTransaction(f"the pair must be in canonical order ({order}, ascending)")
    check_signature(work, payload.first, tx.offender)
    check_signature(work, payload.second, tx.offender)


# --------------------------------------------------------------------------------------------------
# The table


Apply = Callable[[Working, Any, bytes], None]
"""``apply(work, tx, encode(tx))``: check ``tx`` against ``work`` and change ``work``."""

APPLY: dict[type, Apply] = {
    Registration: apply_registration,
    UpdateCommitment: apply_update_commitment,
    ModelVersion: apply_model_version,
    ContributionRecord: apply_contribution_record,
    RewardDeltas: apply_reward_deltas,
    SlashingEvidence: apply_slashing_evidence,
    Rejection: apply_rejection,
    Attestation: apply_attestation,
    AnchorReceipt: apply_anchor_receipt,
    AppApproval: apply_app_approval,
    Refusal: apply_refusal,
}
