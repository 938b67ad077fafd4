"""Tests for fedchain.ledger.state: every transaction kind, blocks, genesis (pre → op → post)."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedchain.crypto import ed25519
from fedchain.crypto.identity import Domain, public_key_bytes, sign
from fedchain.errors import InvalidBlock, InvalidTransaction
from fedchain.ledger.builder import (
    build_block,
    make_genesis,
    make_rules,
    prepare_block,
    sign_attestation,
    sign_commitment,
    sign_genesis_participant,
    sign_header,
)
from fedchain.ledger.chain import Chain
from fedchain.ledger.codec import compute_hash, decode, encode
from fedchain.ledger.consensus import (
    detect_double_sign,
    get_proposer,
    get_validators,
)
from fedchain.ledger.containers import (
    INITIAL_REPUTATION_BPS,
    LedgerState,
    ParticipantState,
    compute_evidence_id,
    compute_state_root,
)
from fedchain.ledger.derived import (
    compute_block_hash,
    compute_federation_id,
    compute_tx_root,
    signing_message,
)
from fedchain.ledger.genesis import (
    compute_genesis_block,
    compute_genesis_state,
    process_genesis_block,
)
from fedchain.ledger.objects import (
    DOUBLE_SIGN,
    AppApproval,
    Attestation,
    AttestationPair,
    Block,
    BlockHeader,
    ContributionRecord,
    Genesis,
    GenesisParticipant,
    HeaderPair,
    ModelVersion,
    Registration,
    Rejection,
    RewardDeltas,
    SignedHeader,
    SlashingEvidence,
    Transaction,
)
from fedchain.ledger.state import (
    process_attestation,
    process_block,
    process_contribution_record,
    process_model_version,
    process_registration,
    process_rejection,
    process_reward_deltas,
    process_slashing_evidence,
    process_transaction,
    process_transactions,
    process_update_commitment,
)
from fedchain.ledger.verify import verify_ledger

RUN_ID = "state-test"
KEYS = {i: Ed25519PrivateKey.from_private_bytes(bytes([i]) * 32) for i in range(1, 7)}
PUB = {i: public_key_bytes(key) for i, key in KEYS.items()}
KEY_BY_PUBLIC = {public: KEYS[i] for i, public in PUB.items()}
STAKES = {1: 100, 2: 200, 3: 300, 4: 400}
REGISTERED_EXAMPLES = 100
RULES = make_rules(  # every field given: the known answers below must not follow the defaults
    min_stake=100,
    reward_per_round=1_000,
    slash_bps={DOUBLE_SIGN: 5_000},
    aggregation_rule="fedavg",
    aggregation_params={},
    contribution_method="leave_one_out",
    weight_cap_bps=10_000,
    reputation_penalty_bps=1_500,
)
OTHER_FEDERATION = hashlib.sha256(b"another federation").digest()

# Known answers (Ed25519 signatures are deterministic, so whole blocks are).
KNOWN_GENESIS_BLOCK_HASH = "09704d9fb8f696dab1337ecfadfce38770ff739e03421acc93a261516b9a8833"
KNOWN_BLOCK_1_HASH = "ab6fed05e87eead1461bc003060491c0a270c9840e881741a06331eb9617b740"


def digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


MODEL_0 = digest("model-0")
MODEL_1 = digest("model-1")
MODEL_2 = digest("model-2")


def update_hash(i: int, round: int) -> bytes:
    return digest(f"update-{i}-{round}")


def by_key(pairs: Iterable[tuple[bytes, int]]) -> tuple[tuple[bytes, int], ...]:
    return tuple(sorted(pairs))


def replace_participants(state: LedgerState, *changed: ParticipantState) -> LedgerState:
    participants = dict(state.participants)
    participants.update((p.public_key, p) for p in changed)
    return dataclasses.replace(
        state, participants=MappingProxyType(dict(sorted(participants.items())))
    )


def participant(state: LedgerState, i: int) -> ParticipantState:
    return state.participants[PUB[i]]


def ejected(state: LedgerState, *indices: int) -> LedgerState:
    """``state`` with these participants ejected (as slashing below the minimum would)."""
    return replace_participants(
        state, *(dataclasses.replace(participant(state, i), active=False) for i in indices)
    )


@pytest.fixture(scope="module")
def genesis() -> Genesis:
    federation_id = compute_federation_id(RUN_ID, RULES)
    participants = [
        sign_genesis_participant(
            KEYS[i],
            federation_id,
            stake=stake,
            dataset_hash=digest(f"dataset-{i}"),
            num_examples=REGISTERED_EXAMPLES,
        )
        for i, stake in STAKES.items()
    ]
    return make_genesis(RUN_ID, participants, initial_model_hash=MODEL_0, rules=RULES)


@pytest.fixture(scope="module")
def pre(genesis: Genesis) -> LedgerState:
    return compute_genesis_state(genesis)


def commit(state: LedgerState, i: int, round: int = 1, **overrides: Any) -> Any:
    fields: dict[str, Any] = {
        "run_id": RUN_ID,
        "round": round,
        "base_model_hash": state.model_head,
        "update_hash": update_hash(i, round),
        "num_examples": 50,
    }
    fields.update(overrides)
    genesis_hash = fields.pop("genesis_hash", state.genesis_hash)
    return sign_commitment(KEYS[i], genesis_hash, **fields)


def attest(state: LedgerState, i: int, height: int, block_hash: bytes | None = None) -> Attestation:
    target = state.block_hashes.get(height) if block_hash is None else block_hash
    assert target is not None
    return sign_attestation(KEYS[i], state.genesis_hash, height=height, block_hash=target)


def propose(
    state: LedgerState, transactions: Sequence[Transaction] = (), round: int | None = None
) -> tuple[Block, LedgerState]:
    return build_block(state, transactions, KEY_BY_PUBLIC[get_proposer(state)], round=round)


def signed_header(i: int, state: LedgerState, **changes: Any) -> SignedHeader:
    header = BlockHeader(
        height=state.height + 1,
        round=state.round,
        parent_hash=state.head_hash,
        tx_root=compute_tx_root(()),
        state_root=compute_state_root(state),
        proposer=PUB[i],
        attempt=0,
    )
    return sign_header(KEYS[i], state.genesis_hash, dataclasses.replace(header, **changes))


# --------------------------------------------------------------------------------------------------
# Genesis


def test_genesis_state(genesis: Genesis, pre: LedgerState) -> None:
    assert pre.genesis_hash == compute_hash(genesis)
    assert (pre.height, pre.round, pre.model_head, pre.model_round) == (0, 0, MODEL_0, 0)
    assert list(pre.participants) == sorted(PUB[i] for i in STAKES)
    for i, stake in STAKES.items():
        assert participant(pre, i) == ParticipantState(
            PUB[i], stake, INITIAL_REPUTATION_BPS, digest(f"dataset-{i}"), 100, True
        )
    assert pre.round_commits == frozenset() and pre.evidence_seen == frozenset()
    assert dict(pre.last_attested) == {}
    assert pre.head_hash == compute_block_hash(compute_genesis_block(genesis))
    assert list(pre.block_hashes) == [pre.head_hash]


def test_genesis_block(genesis: Genesis, pre: LedgerState) -> None:
    block = compute_genesis_block(genesis)
    header = block.header
    assert (header.height, header.round, header.attempt) == (0, 0, 0)
    assert header.parent_hash == bytes(32) and header.proposer == bytes(32)
    assert block.signed_header.signature == b""
    assert block.transactions == (genesis,)
    assert header.state_root == compute_state_root(pre)
    assert compute_block_hash(block) != pre.genesis_hash
    assert compute_block_hash(block).hex() == KNOWN_GENESIS_BLOCK_HASH
    assert process_genesis_block(decode(Block, encode(block))) == pre


def test_invalid_genesis_block_altered(genesis: Genesis) -> None:
    block = compute_genesis_block(genesis)
    with pytest.raises(InvalidBlock, match="not the canonical genesis block"):
        process_genesis_block(
            dataclasses.replace(block, signed_header=SignedHeader(block.header, b"x"))
        )
    with pytest.raises(InvalidBlock, match="exactly one transaction"):
        process_genesis_block(dataclasses.replace(block, transactions=(genesis, genesis)))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"run_id": ""}, "run_id"),
        ({"participants": ()}, "at least one participant"),
        ({"initial_model_hash": b"short"}, "initial_model_hash"),
        ({"rules": dataclasses.replace(RULES, min_stake=0)}, "min_stake"),
        ({"rules": dataclasses.replace(RULES, reward_per_round=-1)}, "reward_per_round"),
        ({"rules": dataclasses.replace(RULES, slash_bps=(("theft", 10),))}, "unknown slashing"),
        ({"rules": dataclasses.replace(RULES, slash_bps=(("double_sign", 10_001),))}, "outside"),
        (
            {"rules": dataclasses.replace(RULES, slash_bps=(("double_sign", 1),) * 2)},
            "sorted by kind",
        ),
        (
            {"rules": dataclasses.replace(RULES, slash_bps=(("bad_commitment", 1_000),))},
            "unknown slashing kind 'bad_commitment'",
        ),
        (
            {"rules": dataclasses.replace(RULES, aggregation_params=(("b", "1"), ("a", "2")))},
            "sorted by name",
        ),
        ({"rules": dataclasses.replace(RULES, weight_cap_bps=0)}, "weight_cap_bps"),
        ({"rules": dataclasses.replace(RULES, reputation_penalty_bps=-1)}, "reputation_penalty"),
        ({"rules": dataclasses.replace(RULES, update_archive_rounds=-2)}, "update_archive_rounds"),
        (  # harm forgiven faster than noise: the nudge bound's h <= d would not hold
            {
                "rules": dataclasses.replace(
                    RULES, score_debt_decay_bps=1_000, harm_debt_decay_bps=2_000
                )
            },
            "harm_debt_decay_bps",
        ),
        ({"rules": dataclasses.replace(RULES, harm_debt_decay_bps=-1)}, "harm_debt_decay_bps"),
    ],
)
def test_invalid_genesis(genesis: Genesis, change: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidBlock, match=message):
        compute_genesis_state(dataclasses.replace(genesis, **change))


def test_invalid_genesis_participants(genesis: Genesis) -> None:
    entries = genesis.participants
    with pytest.raises(InvalidBlock, match="sorted by public key"):
        compute_genesis_state(dataclasses.replace(genesis, participants=entries[::-1]))
    with pytest.raises(InvalidBlock, match="sorted by public key"):
        compute_genesis_state(dataclasses.replace(genesis, participants=entries[:1] * 2))
    low = dataclasses.replace(entries[0], stake=RULES.min_stake - 1)
    with pytest.raises(InvalidBlock, match="below min_stake"):
        compute_genesis_state(dataclasses.replace(genesis, participants=(low, *entries[1:])))
    short = dataclasses.replace(entries[0], dataset_hash=b"x")
    with pytest.raises(InvalidBlock, match="dataset hash"):
        compute_genesis_state(dataclasses.replace(genesis, participants=(short, *entries[1:])))


# --------------------------------------------------------------------------------------------------
# Registration: participants join in the genesis; a Registration after it is refused whatever it
# holds (the attack, a minted validator, is in tests/test_stake_rules.py)


def test_invalid_registration_after_genesis(pre: LedgerState) -> None:
    unsigned = Registration(PUB[5], 150, digest("dataset-5"), 80, b"")
    signature = sign(KEYS[5], Domain.REGISTRATION, signing_message(unsigned), pre.genesis_hash)
    tx = dataclasses.replace(unsigned, signature=signature)
    with pytest.raises(InvalidTransaction, match="participants join in the genesis"):
        process_registration(pre, tx, 0)
    with pytest.raises(InvalidBlock, match=r"transaction 0 \(Registration\): participants join"):
        process_block(pre, Block(_header_over(pre, (tx,)), (tx,)))


def _header_over(state: LedgerState, transactions: tuple[Transaction, ...]) -> SignedHeader:
    """The drawn proposer's signed header over ``transactions`` (its state root unchecked here)."""
    proposer = next(i for i, key in PUB.items() if key == get_proposer(state))
    return signed_header(proposer, state, tx_root=compute_tx_root(transactions))


# --------------------------------------------------------------------------------------------------
# Update commitments


def test_update_commitment(pre: LedgerState) -> None:
    post = process_update_commitment(pre, commit(pre, 1), 1)
    assert post == dataclasses.replace(
        pre,
        round=1,
        round_commits=frozenset({PUB[1]}),
        round_update_hashes=frozenset({update_hash(1, 1)}),
    )


def test_update_commitment_registered_example_count_is_allowed(pre: LedgerState) -> None:
    post = process_update_commitment(pre, commit(pre, 2, num_examples=REGISTERED_EXAMPLES), 1)
    assert post.round_commits == {PUB[2]}


def test_invalid_update_commitment_bad_signature(pre: LedgerState) -> None:
    tx = dataclasses.replace(commit(pre, 1), update_hash=digest("something else"))
    with pytest.raises(InvalidTransaction, match="bad signature"):
        process_update_commitment(pre, tx, 1)


def test_invalid_update_commitment_signed_by_someone_else(pre: LedgerState) -> None:
    tx = dataclasses.replace(commit(pre, 1), public_key=PUB[2])
    with pytest.raises(InvalidTransaction, match="bad signature"):
        process_update_commitment(pre, tx, 1)


def test_invalid_update_commitment_wrong_federation(pre: LedgerState) -> None:
    with pytest.raises(InvalidTransaction, match="bad signature"):
        process_update_commitment(pre, commit(pre, 1, genesis_hash=OTHER_FEDERATION), 1)


def test_invalid_update_commitment_wrong_run(pre: LedgerState) -> None:
    with pytest.raises(InvalidTransaction, match="run 'other-run'"):
        process_update_commitment(pre, commit(pre, 1, run_id="other-run"), 1)


def test_invalid_update_commitment_wrong_round(pre: LedgerState) -> None:
    with pytest.raises(InvalidTransaction, match="round 2, but the block is round 1"):
        process_update_commitment(pre, commit(pre, 1, round=2), 1)


def test_invalid_update_commitment_replayed_in_same_round(pre: LedgerState) -> None:
    tx = commit(pre, 1)
    post = process_update_commitment(pre, tx, 1)
    with pytest.raises(InvalidTransaction, match="already committed an update in round 1"):
        process_update_commitment(post, tx, 1)
    with pytest.raises(InvalidTransaction, match="already committed"):
        process_update_commitment(post, commit(pre, 1, update_hash=digest("second")), 1)


def test_invalid_update_commitment_replayed_from_earlier_round(pre: LedgerState) -> None:
    tx = commit(pre, 1)
    _, post = propose(pre, [tx], round=1)
    with pytest.raises(InvalidTransaction, match="round 1, but the block is round 2"):
        process_update_commitment(post, tx, 2)


def test_invalid_update_commitment_wrong_base_model(pre: LedgerState) -> None:
    with pytest.raises(InvalidTransaction, match="trained from model"):
        process_update_commitment(pre, commit(pre, 1, base_model_hash=MODEL_1), 1)


def test_invalid_update_commitment_inflated_example_count(pre: LedgerState) -> None:
    with pytest.raises(InvalidTransaction, match="claims 101 examples"):
        process_update_commitment(pre, commit(pre, 1, num_examples=REGISTERED_EXAMPLES + 1), 1)
    with pytest.raises(InvalidTransaction, match="claims 0 examples"):
        process_update_commitment(pre, commit(pre, 1, num_examples=0), 1)


def test_invalid_update_commitment_unknown_participant(pre: LedgerState) -> None:
    with pytest.raises(InvalidTransaction, match="is not registered"):
        process_update_commitment(pre, commit(pre, 5), 1)


def test_invalid_update_commitment_inactive_participant(pre: LedgerState) -> None:
    state = ejected(pre, 1)
    with pytest.raises(InvalidTransaction, match="has been ejected"):
        process_update_commitment(state, commit(state, 1), 1)


def test_invalid_update_commitment_after_model_version(pre: LedgerState) -> None:
    state = process_update_commitment(pre, commit(pre, 1), 1)
    state = process_model_version(
        state, ModelVersion(1, MODEL_1, MODEL_0, (update_hash(1, 1),), "fedavg"), 1
    )
    with pytest.raises(InvalidTransaction, match="round 1 is closed"):
        process_update_commitment(state, commit(state, 2), 1)


def test_invalid_update_commitment_block_round_going_back(pre: LedgerState) -> None:
    state = process_update_commitment(pre, commit(pre, 1, round=2), 2)
    with pytest.raises(InvalidTransaction, match="before the head's round 2"):
        process_update_commitment(state, commit(state, 2), 1)


def test_invalid_update_commitment_malformed(pre: LedgerState) -> None:
    tx = dataclasses.replace(commit(pre, 1), num_examples=2**63)
    with pytest.raises(InvalidTransaction, match="malformed"):
        process_update_commitment(pre, tx, 1)


# --------------------------------------------------------------------------------------------------
# Model versions


@pytest.fixture(scope="module")
def committed(pre: LedgerState) -> LedgerState:
    """Round 1 with commitments from participants 1 and 2."""
    return process_transactions(pre, [commit(pre, 1), commit(pre, 2)], 1)


def model_version(**changes: Any) -> ModelVersion:
    hashes = tuple(sorted((update_hash(1, 1), update_hash(2, 1))))
    return dataclasses.replace(ModelVersion(1, MODEL_1, MODEL_0, hashes, "fedavg"), **changes)


def test_model_version(committed: LedgerState) -> None:
    post = process_model_version(committed, model_version(), 1)
    assert post == dataclasses.replace(
        committed, model_head=MODEL_1, model_round=1, model_moved=True
    )


def test_model_version_of_a_subset(committed: LedgerState) -> None:
    post = process_model_version(committed, model_version(update_hashes=(update_hash(2, 1),)), 1)
    assert post.model_head == MODEL_1


def test_invalid_model_version_wrong_parent(committed: LedgerState) -> None:
    with pytest.raises(InvalidTransaction, match="parent"):
        process_model_version(committed, model_version(parent_hash=digest("x")), 1)


def test_invalid_model_version_uncommitted_update(committed: LedgerState) -> None:
    hashes = tuple(sorted((update_hash(1, 1), update_hash(3, 1))))
    with pytest.raises(InvalidTransaction, match="was not committed"):
        process_model_version(committed, model_version(update_hashes=hashes), 1)


def test_invalid_model_version_unsorted_or_duplicate(committed: LedgerState) -> None:
    hashes = model_version().update_hashes
    with pytest.raises(InvalidTransaction, match="sorted"):
        process_model_version(committed, model_version(update_hashes=hashes[::-1]), 1)
    with pytest.raises(InvalidTransaction, match="sorted"):
        process_model_version(committed, model_version(update_hashes=hashes[:1] * 2), 1)


def test_invalid_model_version_wrong_rule(committed: LedgerState) -> None:
    with pytest.raises(InvalidTransaction, match="not the genesis rule 'fedavg'"):
        process_model_version(committed, model_version(rule="median"), 1)


def test_invalid_model_version_twice_in_a_round(committed: LedgerState) -> None:
    post = process_model_version(committed, model_version(), 1)
    again = model_version(model_hash=digest("model-1b"), parent_hash=MODEL_1)
    with pytest.raises(InvalidTransaction, match="already registered"):
        process_model_version(post, again, 1)


def test_invalid_model_version_wrong_round(committed: LedgerState) -> None:
    with pytest.raises(InvalidTransaction, match="round 2, but the block is round 1"):
        process_model_version(committed, model_version(round=2), 1)


# --------------------------------------------------------------------------------------------------
# Contribution records


@pytest.fixture(scope="module")
def modelled(committed: LedgerState) -> LedgerState:
    """Round 1 with commitments from participants 1 and 2 and its model version."""
    return process_model_version(committed, model_version(), 1)


def test_contribution_record(modelled: LedgerState) -> None:
    """Pre: full reputations. Op: scores +0.75 / -0.25. Post: only the harmed reputation moves."""
    scores = by_key([(PUB[1], 750_000), (PUB[2], -250_000)])
    post = process_contribution_record(modelled, ContributionRecord(1, scores), 1)
    penalty = modelled.genesis.rules.reputation_penalty_bps
    assert participant(post, 2).reputation_bps == participant(modelled, 2).reputation_bps - penalty
    assert participant(post, 1) == participant(modelled, 1)  # already at the maximum
    rest = dataclasses.replace(post, participants=modelled.participants)
    assert rest == dataclasses.replace(modelled, scores_round=1)


@pytest.mark.parametrize(
    ("scores", "message"),
    [
        (lambda: tuple(reversed(by_key([(PUB[1], 1), (PUB[2], 2)]))), "sorted"),
        (lambda: ((PUB[1], 1), (PUB[1], 2)), "sorted"),
        (lambda: by_key([(PUB[1], 1), (PUB[2], 1), (PUB[5], 1)]), "no accepted commitment"),
        (lambda: by_key([(PUB[1], 1), (PUB[2], 1), (PUB[3], 1)]), "no accepted commitment"),
        (lambda: ((PUB[1], 1),), "leave out"),
        (lambda: (), "leave out"),
    ],
    ids=["unsorted", "duplicate", "unregistered", "non-committer", "committer-left-out", "empty"],
)
def test_invalid_contribution_record(modelled: LedgerState, scores: Any, message: str) -> None:
    with pytest.raises(InvalidTransaction, match=message):
        process_contribution_record(modelled, ContributionRecord(1, scores()), 1)


def test_invalid_contribution_record_before_the_model_version(committed: LedgerState) -> None:
    scores = by_key([(PUB[1], 1), (PUB[2], 1)])
    with pytest.raises(InvalidTransaction, match="no model version yet"):
        process_contribution_record(committed, ContributionRecord(1, scores), 1)


def test_invalid_contribution_record_twice_in_a_round(modelled: LedgerState) -> None:
    record = ContributionRecord(1, by_key([(PUB[1], 1), (PUB[2], 1)]))
    with pytest.raises(InvalidTransaction, match="already registered; one per round"):
        process_transactions(modelled, (record, record), 1)
    scored = process_contribution_record(modelled, record, 1)  # a later block of round 1
    with pytest.raises(InvalidTransaction, match="already registered; one per round"):
        process_contribution_record(scored, record, 1)


def test_invalid_contribution_record_wrong_round(modelled: LedgerState) -> None:
    with pytest.raises(InvalidTransaction, match="round"):
        process_contribution_record(modelled, ContributionRecord(0, ((PUB[1], 1),)), 1)


def test_harmful_scores_lower_reputation_and_helpful_ones_restore_it(
    modelled: LedgerState,
) -> None:
    """Pre: full reputation. Op: a harmful score, then a helpful one the next round.
    Post: -penalty, then +penalty/2; the harm (the part below -10 000) stays owed under rules
    that forgive every noise debt but no harm."""
    modelled = with_debt_rules(modelled, 10_000, 0)
    penalty = modelled.genesis.rules.reputation_penalty_bps
    harmful = by_key([(PUB[1], -50_000), (PUB[2], -9_999)])  # PUB[2] is within measurement noise
    after = process_transactions(modelled, (ContributionRecord(1, harmful),), 1)
    assert participant(after, 1).reputation_bps == 10_000 - penalty
    assert participant(after, 2).reputation_bps == 10_000
    assert (participant(after, 1).score_debt, participant(after, 1).harm_debt) == (40_000, 40_000)
    assert (participant(after, 2).score_debt, participant(after, 2).harm_debt) == (0, 0)
    round_2 = [
        commit(after, 1, round=2),
        ModelVersion(2, MODEL_2, MODEL_1, (update_hash(1, 2),), "fedavg"),
        ContributionRecord(2, ((PUB[1], 7),)),
    ]
    helpful = process_transactions(after, round_2, 2)
    assert participant(helpful, 1).reputation_bps == 10_000 - penalty + penalty // 2
    assert (participant(helpful, 1).score_debt, participant(helpful, 1).harm_debt) == (
        39_993,
        39_993,
    )
    with pytest.raises(InvalidTransaction, match="pays nothing in round 2"):  # +7 repays harm
        process_transactions(after, [*round_2, RewardDeltas(2, ((PUB[1], 2_000),))], 2)


# --------------------------------------------------------------------------------------------------
# Reward deltas: exactly the split of the round's scores, in the block of its record


SCORES_3_TO_1 = ContributionRecord(1, by_key([(PUB[1], 3), (PUB[2], 1)]))


def rewards(*pairs: tuple[int, int], round: int = 1) -> RewardDeltas:
    return RewardDeltas(round, by_key((PUB[i], amount) for i, amount in pairs))


def test_reward_deltas(modelled: LedgerState) -> None:
    """Pre: round 1 modelled. Op: scores 3:1, then their split of 1000. Post: stakes +750/+250."""
    post = process_transactions(modelled, (SCORES_3_TO_1, rewards((1, 750), (2, 250))), 1)
    scored = process_contribution_record(modelled, SCORES_3_TO_1, 1)
    expected = replace_participants(
        scored,
        dataclasses.replace(participant(scored, 1), stake=100 + 750),
        dataclasses.replace(participant(scored, 2), stake=200 + 250),
    )
    assert post == expected


def test_reward_deltas_empty_split(modelled: LedgerState) -> None:
    """No positive score: nothing is paid (no RewardDeltas, not even an empty one), the pool is
    carried."""
    record = ContributionRecord(1, by_key([(PUB[1], 0), (PUB[2], -5)]))
    post = process_transactions(modelled, (record,), 1)
    assert post == process_contribution_record(modelled, record, 1)
    assert post.carried_reward == modelled.genesis.rules.reward_per_round
    for deltas in (RewardDeltas(1, ()), rewards((1, 1))):
        with pytest.raises(
            InvalidTransaction, match="pays nothing in round 1: its pool is carried"
        ):
            process_transactions(modelled, (record, deltas), 1)


def test_reward_deltas_due_must_be_in_the_block(modelled: LedgerState) -> None:
    """A record that makes rewards due without them in its block: the block is refused (the
    units would be neither paid nor carried)."""
    with pytest.raises(InvalidTransaction, match="makes 1000 units of rewards due"):
        process_transactions(modelled, (SCORES_3_TO_1,), 1)


@pytest.mark.parametrize(
    "version",
    [
        lambda: model_version(update_hashes=()),  # lists no updates, a new model hash
        lambda: model_version(model_hash=MODEL_0),  # lists updates, leaves the model as it was
    ],
    ids=["no updates listed", "model unchanged"],
)
def test_invalid_rewards_for_a_model_version_that_did_not_move_the_model(
    committed: LedgerState, version: Callable[[], ModelVersion]
) -> None:
    """Issue 12's last gap: a coordinator registers a ModelVersion that moved nothing (no update
    listed, or the parent's model) and pays the pool by its scores. Refused: such a round pays
    nothing, its pool is carried to the next round (in the state root)."""
    still = process_model_version(committed, version(), 1)
    assert not still.model_moved
    with pytest.raises(InvalidTransaction, match="pays nothing in round 1: its pool is carried"):
        process_transactions(still, (SCORES_3_TO_1, rewards((1, 750), (2, 250))), 1)
    post = process_transactions(still, (SCORES_3_TO_1,), 1)
    assert post.carried_reward == RULES.reward_per_round
    assert compute_state_root(post) != compute_state_root(
        dataclasses.replace(post, carried_reward=0)
    )
    assert {participant(post, i).stake for i in (1, 2)} == {
        participant(still, i).stake for i in (1, 2)
    }


def test_reward_deltas_do_not_revive_ejected(modelled: LedgerState) -> None:
    state = ejected(modelled, 1)  # e.g. slashed after it committed
    post = process_transactions(state, (SCORES_3_TO_1, rewards((1, 750), (2, 250))), 1)
    assert participant(post, 1).stake == 850 and not participant(post, 1).active


@pytest.mark.parametrize(
    ("deltas", "message"),
    [
        (lambda: rewards((1, 751), (2, 250)), "is paid 751, the split gives 750"),
        (lambda: rewards((1, 750), (2, 249)), "is paid 249, the split gives 250"),
        (lambda: rewards((1, 750), (2, 250), (3, 1)), "is paid 1, the split gives 0"),
        (lambda: rewards((1, 1_000)), "is paid 0, the split gives 250"),
        (lambda: RewardDeltas(1, tuple(reversed(rewards((1, 750), (2, 250)).deltas))), "sorted"),
        (lambda: rewards((1, 750), (2, 250), (3, -100)), "penalty without evidence"),
    ],
    ids=["one-unit-more", "one-unit-less", "unscored-key", "all-to-one", "unsorted", "penalty"],
)
def test_invalid_reward_deltas_not_the_split(
    modelled: LedgerState, deltas: Any, message: str
) -> None:
    with pytest.raises(InvalidTransaction, match=message):
        process_transactions(modelled, (SCORES_3_TO_1, deltas()), 1)


def with_score_debt(state: LedgerState, debt: int, decay_bps: int) -> LedgerState:
    """``state`` under rules that keep score debt (``decay_bps`` forgiven a round), with
    participant 2 owing ``debt`` quanta from earlier harmful scores."""
    return replace_participants(
        with_debt_rules(state, decay_bps, decay_bps),
        dataclasses.replace(participant(state, 2), score_debt=debt),
    )


def with_debt_rules(state: LedgerState, decay_bps: int, harm_decay_bps: int) -> LedgerState:
    rules = dataclasses.replace(
        state.genesis.rules, score_debt_decay_bps=decay_bps, harm_debt_decay_bps=harm_decay_bps
    )
    return dataclasses.replace(state, genesis=dataclasses.replace(state.genesis, rules=rules))


def test_score_debt_is_repaid_before_a_score_is_paid(modelled: LedgerState) -> None:
    """Pre: participant 2 owes 2 quanta (no forgiveness). Op: scores +3 / +3, then the split
    of the payable scores 3 : 1. Post: stakes +750 / +250, the debt repaid (0)."""
    pre = with_score_debt(modelled, 2, 0)
    record = ContributionRecord(1, by_key([(PUB[1], 3), (PUB[2], 3)]))
    post = process_transactions(pre, (record, rewards((1, 750), (2, 250))), 1)
    assert participant(post, 1).stake == participant(pre, 1).stake + 750
    assert participant(post, 2).stake == participant(pre, 2).stake + 250
    assert participant(post, 2).score_debt == 0


def test_invalid_reward_deltas_ignoring_score_debt(modelled: LedgerState) -> None:
    """The attack the debt stops: a coordinator pays a client with a debt for its lucky
    positive score as if it owed nothing (the split of the raw scores 1 : 1). Refused; and a
    client whose positive score does not cover its debt is due nothing."""
    pre = with_score_debt(modelled, 2, 0)
    record = ContributionRecord(1, by_key([(PUB[1], 3), (PUB[2], 3)]))
    with pytest.raises(InvalidTransaction, match=r"is paid 500, the split gives (250|750)"):
        process_transactions(pre, (record, rewards((1, 500), (2, 500))), 1)
    deep = with_score_debt(modelled, 40, 0)
    with pytest.raises(InvalidTransaction, match="is paid 1, the split gives 0"):
        process_transactions(deep, (record, rewards((1, 999), (2, 1))), 1)
    post = process_transactions(deep, (record, rewards((1, 1_000))), 1)
    assert participant(post, 2).score_debt == 37


def test_negative_scores_add_to_the_debt_and_the_decay_forgives_it(
    modelled: LedgerState,
) -> None:
    """Pre: participant 2 owes 6 quanta, half forgiven a round. Op: scores +3 / -4.
    Post: its debt is (6 + 4) // 2 = 5; participant 1's stays 0."""
    pre = with_score_debt(modelled, 6, 5_000)
    record = ContributionRecord(1, by_key([(PUB[1], 3), (PUB[2], -4)]))
    post = process_transactions(pre, (record, rewards((1, 1_000))), 1)
    assert participant(post, 2).score_debt == 5
    assert participant(post, 1).score_debt == 0


def test_invalid_reward_deltas_without_the_rounds_record(modelled: LedgerState) -> None:
    """Rewards with no contribution record in their block: in a block without one, before the
    record, or in a later block of the scored round."""
    split = rewards((1, 750), (2, 250))
    with pytest.raises(InvalidTransaction, match="must follow round 1's contribution record"):
        process_reward_deltas(modelled, split, 1)
    with pytest.raises(InvalidTransaction, match=r"transaction 0 .*must follow"):
        process_transactions(modelled, (split, SCORES_3_TO_1), 1)
    scored = process_contribution_record(modelled, SCORES_3_TO_1, 1)
    with pytest.raises(InvalidTransaction, match="must follow"):
        process_reward_deltas(scored, split, 1)


def test_invalid_reward_deltas_twice(modelled: LedgerState) -> None:
    split = rewards((1, 750), (2, 250))
    with pytest.raises(InvalidTransaction, match="already paid; once per round"):
        process_transactions(modelled, (SCORES_3_TO_1, split, split), 1)


def test_invalid_reward_deltas_negative_even_without_scores(pre: LedgerState) -> None:
    """The forged penalty of the audit: one negative entry, no evidence. Refused whatever else
    the block holds."""
    with pytest.raises(InvalidTransaction, match=r"negative delta -1 .*penalty without evidence"):
        process_reward_deltas(pre, RewardDeltas(0, ((PUB[1], -1),)), 0)


def test_invalid_reward_deltas_wrong_round(modelled: LedgerState) -> None:
    with pytest.raises(InvalidTransaction, match="round"):
        process_transactions(modelled, (SCORES_3_TO_1, rewards((1, 750), (2, 250), round=0)), 1)


# --------------------------------------------------------------------------------------------------
# Slashing evidence


@pytest.fixture(scope="module")
def chain(pre: LedgerState) -> list[LedgerState]:
    """Genesis and two empty blocks (round 0)."""
    states = [pre]
    for _ in range(2):
        states.append(propose(states[-1])[1])
    return states


def header_double_sign(
    state: LedgerState, i: int, height: int | None = None, round: int | None = None
) -> SlashingEvidence:
    """Two headers by ``i`` at ``height`` (default: the head's) of this chain's past."""
    height = state.height if height is None else height
    first = signed_header(i, state, height=height)
    second = signed_header(i, state, height=height, state_root=digest("another root"))
    evidence = detect_double_sign(first, second, state.round if round is None else round)
    assert evidence is not None
    return evidence


def attestation_double_sign(state: LedgerState, i: int, height: int = 1) -> SlashingEvidence:
    first = attest(state, i, height)
    second = attest(state, i, height, block_hash=digest("a fork"))
    evidence = detect_double_sign(second, first, state.round)
    assert evidence is not None
    return evidence


def slashed(p: ParticipantState, stake: int, reputation: int, active: bool = True) -> Any:
    return dataclasses.replace(p, stake=stake, reputation_bps=reputation, active=active)


def test_slashing_double_signed_headers(chain: list[LedgerState]) -> None:
    state = chain[-1]
    evidence = header_double_sign(state, 4)
    assert isinstance(evidence.evidence, HeaderPair)
    post = process_slashing_evidence(state, evidence, 0)
    expected = replace_participants(state, slashed(participant(state, 4), 200, 8_500))
    assert post == dataclasses.replace(
        expected, evidence_seen=frozenset({compute_evidence_id(evidence)})
    )


def test_slashing_double_signed_attestations(chain: list[LedgerState]) -> None:
    state = chain[-1]
    evidence = attestation_double_sign(state, 3)
    assert isinstance(evidence.evidence, AttestationPair)
    post = process_slashing_evidence(state, evidence, 0)
    expected = replace_participants(state, slashed(participant(state, 3), 150, 8_500))
    assert post == dataclasses.replace(
        expected, evidence_seen=frozenset({compute_evidence_id(evidence)})
    )


def test_slashing_below_min_stake_ejects(chain: list[LedgerState]) -> None:
    state = chain[-1]
    post = process_slashing_evidence(state, header_double_sign(state, 1), 0)
    assert participant(post, 1) == slashed(participant(state, 1), 50, 8_500, active=False)
    assert PUB[1] not in dict(get_validators(post))
    with pytest.raises(InvalidTransaction, match="not a validator"):
        process_attestation(post, attest(post, 1, 1), 0)
    with pytest.raises(InvalidTransaction, match="ejected"):
        process_update_commitment(post, commit(post, 1), 1)


def test_slashing_reputation_floors_at_zero(pre: LedgerState) -> None:
    """Eight distinct offences (headers and attestations at heights 1..4) by one key."""
    state = pre
    for _ in range(4):
        state = propose(state)[1]
    for height in range(1, 5):
        state = process_slashing_evidence(state, header_double_sign(state, 4, height), 0)
        state = process_slashing_evidence(state, attestation_double_sign(state, 4, height), 0)
    assert participant(state, 4).reputation_bps == 0
    assert len(state.evidence_seen) == 8


def test_invalid_slashing_evidence_seen_twice(chain: list[LedgerState]) -> None:
    state = chain[-1]
    evidence = header_double_sign(state, 4)
    post = process_slashing_evidence(state, evidence, 0)
    with pytest.raises(InvalidTransaction, match="already been punished"):
        process_slashing_evidence(post, evidence, 0)
    assert isinstance(evidence.evidence, HeaderPair)
    pair = evidence.evidence
    third = signed_header(4, state, height=state.height, state_root=digest("a third root"))
    other_pair = detect_double_sign(pair.first, third, 0)
    assert other_pair is not None and other_pair != evidence
    with pytest.raises(InvalidTransaction, match="already been punished"):
        process_slashing_evidence(post, other_pair, 0)


def test_invalid_slashing_evidence_seen_twice_in_one_block(chain: list[LedgerState]) -> None:
    state = chain[-1]
    evidence = attestation_double_sign(state, 2)
    with pytest.raises(InvalidTransaction, match=r"transaction 1 .*already been punished"):
        process_transactions(state, [evidence, evidence], 0)


def test_invalid_slashing_pair_out_of_canonical_order(chain: list[LedgerState]) -> None:
    """One offence has one encoding: the pair swapped is refused, not counted again."""
    state = chain[-1]
    for evidence, order in (
        (header_double_sign(state, 4), "headers by block hash"),
        (attestation_double_sign(state, 4), "attestations by block_hash"),
    ):
        pair = evidence.evidence
        swapped = dataclasses.replace(
            evidence,
            evidence=type(pair)(pair.second, pair.first),  # type: ignore[arg-type]
        )
        with pytest.raises(InvalidTransaction, match=f"canonical order \\({order}"):
            process_slashing_evidence(state, swapped, 0)


@pytest.mark.parametrize("offset", [1, 5])
def test_invalid_slashing_votes_beyond_this_chain(chain: list[LedgerState], offset: int) -> None:
    """Invented evidence: headers for heights this chain has not reached (a coordinator could
    have a key sign them later, or claim it did)."""
    state = chain[-1]
    evidence = header_double_sign(state, 4, height=state.height + offset)
    with pytest.raises(InvalidTransaction, match=r"this chain's past, heights 1\.\.2"):
        process_slashing_evidence(state, evidence, 0)


def test_invalid_slashing_votes_for_block_0(chain: list[LedgerState]) -> None:
    state = chain[-1]
    first = sign_attestation(KEYS[4], state.genesis_hash, height=0, block_hash=digest("a"))
    second = sign_attestation(KEYS[4], state.genesis_hash, height=0, block_hash=digest("b"))
    evidence = detect_double_sign(first, second, 0)
    assert evidence is not None
    with pytest.raises(InvalidTransaction, match=r"heights 1\.\.2"):
        process_slashing_evidence(state, evidence, 0)


def test_invalid_slashing_same_header_twice(chain: list[LedgerState]) -> None:
    state = chain[-1]
    header = signed_header(4, state, height=state.height)
    assert detect_double_sign(header, header, 0) is None
    evidence = SlashingEvidence(DOUBLE_SIGN, PUB[4], 0, HeaderPair(header, header))
    with pytest.raises(InvalidTransaction, match="same block: no offence"):
        process_slashing_evidence(state, evidence, 0)


def test_invalid_slashing_different_heights(chain: list[LedgerState]) -> None:
    state = chain[-1]
    first, second = signed_header(4, state, height=1), signed_header(4, state, height=2)
    evidence = SlashingEvidence(DOUBLE_SIGN, PUB[4], 0, HeaderPair(first, second))
    with pytest.raises(InvalidTransaction, match="different heights"):
        process_slashing_evidence(state, evidence, 0)


def test_invalid_slashing_forged_signature(chain: list[LedgerState]) -> None:
    state = chain[-1]
    evidence = header_double_sign(state, 4)
    assert isinstance(evidence.evidence, HeaderPair)
    forged = dataclasses.replace(evidence.evidence.second, signature=bytes(64))
    bogus = dataclasses.replace(evidence, evidence=HeaderPair(evidence.evidence.first, forged))
    with pytest.raises(InvalidTransaction, match="bad signature"):
        process_slashing_evidence(state, bogus, 0)


def test_invalid_slashing_headers_signed_by_someone_else(chain: list[LedgerState]) -> None:
    state = chain[-1]
    evidence = dataclasses.replace(header_double_sign(state, 4), offender=PUB[3])
    with pytest.raises(InvalidTransaction, match="signed by the offender"):
        process_slashing_evidence(state, evidence, 0)
    # A third party re-signs nothing: a header claiming proposer 3 but signed by 4.
    pair = header_double_sign(state, 4).evidence
    assert isinstance(pair, HeaderPair)
    claims_3 = [
        SignedHeader(dataclasses.replace(h.header, proposer=PUB[3]), h.signature)
        for h in (pair.first, pair.second)
    ]
    bogus = detect_double_sign(claims_3[0], claims_3[1], 0)
    assert bogus is not None
    with pytest.raises(InvalidTransaction, match="bad signature"):
        process_slashing_evidence(state, bogus, 0)


def test_invalid_slashing_unknown_kind(chain: list[LedgerState]) -> None:
    """Bad-commitment slashing is gone: the kind is unknown whatever evidence it carries."""
    state = chain[-1]
    for kind in ("bad_commitment", "theft"):
        evidence = dataclasses.replace(header_double_sign(state, 4), kind=kind)
        with pytest.raises(InvalidTransaction, match=f"unknown slashing kind '{kind}'"):
            process_slashing_evidence(state, evidence, 0)


def test_invalid_slashing_unregistered_offender(chain: list[LedgerState]) -> None:
    state = chain[-1]
    with pytest.raises(InvalidTransaction, match="not a registered participant"):
        process_slashing_evidence(state, header_double_sign(state, 5), 0)


def test_invalid_slashing_wrong_round(chain: list[LedgerState]) -> None:
    state = chain[-1]
    with pytest.raises(InvalidTransaction, match="round"):
        process_slashing_evidence(state, header_double_sign(state, 4, round=3), 0)


# --------------------------------------------------------------------------------------------------
# Rejections


def test_rejection(pre: LedgerState) -> None:
    post = process_rejection(pre, Rejection(1, PUB[5], "bad signature on update"), 1)
    assert post == dataclasses.replace(pre, round=1)


def test_invalid_rejection(pre: LedgerState) -> None:
    with pytest.raises(InvalidTransaction, match="reason"):
        process_rejection(pre, Rejection(1, PUB[5], ""), 1)
    with pytest.raises(InvalidTransaction, match="round"):
        process_rejection(pre, Rejection(2, PUB[5], "late"), 1)
    with pytest.raises(InvalidTransaction, match="32 bytes"):
        process_rejection(pre, Rejection(1, b"short", "bad key"), 1)


# --------------------------------------------------------------------------------------------------
# App approvals: a holder's signed upgrade


APP_V1, APP_V2, APP_V3 = digest("app-v1"), digest("app-v2"), digest("app-v3")


@pytest.fixture(scope="module")
def holders() -> LedgerState:
    return make_holders_state()


def make_holders_state() -> LedgerState:
    """A federation whose holders registered app v1."""
    federation_id = compute_federation_id(RUN_ID, RULES)
    participants = [
        sign_genesis_participant(
            KEYS[i],
            federation_id,
            stake=stake,
            dataset_hash=digest(f"dataset-{i}"),
            num_examples=REGISTERED_EXAMPLES,
            app_digest=APP_V1,
        )
        for i, stake in STAKES.items()
    ]
    genesis = make_genesis(RUN_ID, participants, initial_model_hash=MODEL_0, rules=RULES)
    return compute_genesis_state(genesis)


def approve(
    signer: int, app: bytes, replaces: bytes, sequence: int, *, holder: int | None = None,
    federation: bytes | None = None,
) -> AppApproval:  # fmt: skip
    """``signer``'s approval (naming ``holder``'s key, its own by default)."""
    fields = (PUB[signer if holder is None else holder], app, replaces, sequence, "0.2.0")
    unsigned = AppApproval(*fields, b"")
    if federation is None:
        federation = compute_federation_id(RUN_ID, RULES)
    return AppApproval(
        *fields, sign(KEYS[signer], Domain.APP_APPROVAL, signing_message(unsigned), federation)
    )


def test_app_approval_makes_the_new_app_the_holders(holders: LedgerState) -> None:
    assert participant(holders, 1).app_digest == APP_V1
    post = process_transaction(holders, approve(1, APP_V2, APP_V1, 1), 1)
    assert (participant(post, 1).app_digest, participant(post, 1).app_approvals) == (APP_V2, 1)
    assert participant(post, 2) == participant(holders, 2)
    assert compute_state_root(post) != compute_state_root(dataclasses.replace(holders, round=1))
    back = process_transaction(post, approve(1, APP_V1, APP_V2, 2), 1)  # going back is allowed
    assert (participant(back, 1).app_digest, participant(back, 1).app_approvals) == (APP_V1, 2)


def test_app_approval_in_a_block_replays(holders: LedgerState) -> None:
    block, post = propose(holders, [approve(2, APP_V2, APP_V1, 1)], round=1)
    assert process_block(holders, decode(Block, encode(block))) == post
    assert participant(post, 2).app_digest == APP_V2


def test_invalid_app_approval_forged(holders: LedgerState) -> None:
    """A coordinator edits a holder's approval to another app, or makes one up."""
    genuine = approve(1, APP_V2, APP_V1, 1)
    for forged in (
        dataclasses.replace(genuine, app_digest=APP_V3),
        dataclasses.replace(genuine, signature=bytes(64)),
        dataclasses.replace(genuine, signature=genuine.signature[:-1] + b"\x00"),
    ):
        with pytest.raises(InvalidTransaction, match="bad signature on the AppApproval"):
            process_transaction(holders, forged, 1)


def test_invalid_app_approval_of_another_participant(holders: LedgerState) -> None:
    """Holder 2's signature cannot approve an app for holder 1, and an outsider has no app."""
    with pytest.raises(InvalidTransaction, match="bad signature"):
        process_transaction(holders, approve(2, APP_V2, APP_V1, 1, holder=1), 1)
    with pytest.raises(InvalidTransaction, match="not registered"):
        process_transaction(holders, approve(5, APP_V2, APP_V1, 1), 1)


def test_invalid_app_approval_replayed(holders: LedgerState) -> None:
    """An old approval cannot be replayed: not twice, and not after the holder went back to the
    app it replaced (it would follow by digest; its sequence number is spent)."""
    first = approve(1, APP_V2, APP_V1, 1)
    upgraded = process_transaction(holders, first, 1)
    with pytest.raises(InvalidTransaction, match="next approval is number 2"):
        process_transaction(upgraded, first, 1)
    back = process_transaction(upgraded, approve(1, APP_V1, APP_V2, 2), 1)
    with pytest.raises(InvalidTransaction, match="cannot be replayed"):
        process_transaction(back, first, 2)
    with pytest.raises(InvalidTransaction, match="cannot be replayed"):
        process_transactions(holders, [first, first], 1)


@pytest.mark.parametrize(
    ("approval", "message"),
    [
        (approve(1, APP_V3, APP_V2, 1), "replaces app"),
        (approve(1, APP_V2, APP_V1, 2), "next approval is number 1"),
        (approve(1, b"short", APP_V1, 1), "32 bytes"),
        (approve(1, APP_V2, APP_V1, 1, federation=OTHER_FEDERATION), "bad signature"),
    ],
    ids=["replaces-another-app", "skips-a-number", "short-digest", "another-federation"],
)
def test_invalid_app_approval(holders: LedgerState, approval: AppApproval, message: str) -> None:
    with pytest.raises(InvalidTransaction, match=message):
        process_transaction(holders, approval, 1)


def test_invalid_app_approval_signed_under_the_genesis_hash(holders: LedgerState) -> None:
    """An approval signs the federation id, like the registration it amends."""
    approval = approve(1, APP_V2, APP_V1, 1, federation=holders.genesis_hash)
    with pytest.raises(InvalidTransaction, match="bad signature"):
        process_transaction(holders, approval, 1)


# --------------------------------------------------------------------------------------------------
# Attestations


def test_attestation(chain: list[LedgerState]) -> None:
    state = chain[-1]
    post = process_attestation(state, attest(state, 1, 1), 0)
    assert post == dataclasses.replace(state, last_attested=MappingProxyType({PUB[1]: 1}))
    post = process_attestation(post, attest(state, 1, 2), 0)
    assert dict(post.last_attested) == {PUB[1]: 2}


def test_invalid_attestation_unknown_block(chain: list[LedgerState]) -> None:
    state = chain[-1]
    with pytest.raises(InvalidTransaction, match="not this chain's block at height 1"):
        process_attestation(state, attest(state, 1, 1, block_hash=chain[2].head_hash), 0)


@pytest.mark.parametrize("height", [0, 3, -1])
def test_invalid_attestation_height_out_of_range(chain: list[LedgerState], height: int) -> None:
    state = chain[-1]
    tx = attest(state, 1, height, block_hash=digest("anything"))
    with pytest.raises(InvalidTransaction, match=r"attestable heights are 1\.\.2"):
        process_attestation(state, tx, 0)


def test_invalid_attestation_not_increasing(chain: list[LedgerState]) -> None:
    state = chain[-1]
    post = process_attestation(state, attest(state, 1, 2), 0)
    for height in (1, 2):
        with pytest.raises(InvalidTransaction, match="already attested height 2"):
            process_attestation(post, attest(state, 1, height), 0)


def test_invalid_attestation_by_non_validator(chain: list[LedgerState]) -> None:
    state = chain[-1]
    with pytest.raises(InvalidTransaction, match="not a validator"):
        process_attestation(state, attest(state, 5, 1), 0)


def test_invalid_attestation_bad_signature(chain: list[LedgerState]) -> None:
    state = chain[-1]
    tx = dataclasses.replace(attest(state, 1, 1), validator=PUB[2])
    with pytest.raises(InvalidTransaction, match="bad signature"):
        process_attestation(state, tx, 0)
    wrong_federation = sign_attestation(
        KEYS[1], OTHER_FEDERATION, height=1, block_hash=chain[1].head_hash
    )
    with pytest.raises(InvalidTransaction, match="bad signature"):
        process_attestation(state, wrong_federation, 0)


# --------------------------------------------------------------------------------------------------
# Dispatch


def test_process_transaction_dispatches(pre: LedgerState) -> None:
    tx = commit(pre, 1)
    assert process_transaction(pre, tx, 1) == process_update_commitment(pre, tx, 1)


def test_invalid_transaction_type(pre: LedgerState, genesis: Genesis) -> None:
    with pytest.raises(InvalidTransaction, match="not a ledger transaction"):
        process_transaction(pre, genesis, 0)  # type: ignore[arg-type]
    with pytest.raises(InvalidTransaction, match="expected a Registration"):
        process_registration(pre, commit(pre, 1), 1)
    with pytest.raises(InvalidTransaction, match="Genesis may only appear in block 0"):
        process_transactions(pre, [genesis], 0)  # type: ignore[list-item]


# --------------------------------------------------------------------------------------------------
# Blocks


@pytest.fixture(scope="module")
def pre_with_5(genesis: Genesis) -> LedgerState:
    """The genesis with a fifth participant (stake 150, 80 examples)."""
    federation_id = compute_federation_id(RUN_ID, RULES)
    fifth = sign_genesis_participant(
        KEYS[5], federation_id, stake=150, dataset_hash=digest("dataset-5"), num_examples=80
    )
    entries = sorted((*genesis.participants, fifth), key=lambda entry: entry.public_key)
    return compute_genesis_state(dataclasses.replace(genesis, participants=tuple(entries)))


@pytest.fixture(scope="module")
def history(pre_with_5: LedgerState) -> tuple[list[Block], list[LedgerState]]:
    """Four blocks from a genesis of five: an empty one; round 1 commitments and a rejection;
    round 1 model, scores, rewards; round 2 commitments. Each later block carries attestations
    to its parent."""
    pre = pre_with_5
    blocks: list[Block] = []
    states = [pre]

    def add(transactions: list[Transaction], round: int) -> None:
        block, state = propose(states[-1], transactions, round=round)
        blocks.append(block)
        states.append(state)

    add([], 0)
    s = states[-1]
    mismatch = Rejection(
        1, PUB[3], "the hash of the update that arrived differs from its commitment"
    )
    add([commit(s, i) for i in (1, 2, 5)] + [mismatch] + [attest(s, i, 1) for i in (1, 2, 3, 4)], 1)
    s = states[-1]
    hashes = tuple(sorted(update_hash(i, 1) for i in (1, 2, 5)))
    add(
        [
            ModelVersion(1, MODEL_1, MODEL_0, hashes, "fedavg"),
            ContributionRecord(1, by_key([(PUB[1], 500_000), (PUB[2], 300_000), (PUB[5], 0)])),
            RewardDeltas(1, by_key([(PUB[1], 625), (PUB[2], 375)])),
            *[attest(s, i, 2) for i in (1, 2, 4, 5)],
        ],
        1,
    )
    s = states[-1]
    add([commit(s, i, round=2) for i in (1, 2)] + [attest(s, i, 3) for i in (1, 2, 4)], 2)
    return blocks, states


def test_valid_chain(history: tuple[list[Block], list[LedgerState]]) -> None:
    blocks, states = history
    state = states[0]
    for block, expected in zip(blocks, states[1:], strict=True):
        state = process_block(state, decode(Block, encode(block)))
        assert state == expected
        assert state.head_hash == compute_block_hash(block)
    assert (state.height, state.round, state.model_head, state.model_round) == (4, 2, MODEL_1, 1)
    assert {i: participant(state, i).stake for i in (1, 2, 3, 4, 5)} == {
        1: 725,
        2: 575,
        3: 300,
        4: 400,
        5: 150,
    }
    assert all(p.active for p in state.participants.values())
    assert dict(state.last_attested) == {PUB[1]: 3, PUB[2]: 3, PUB[3]: 1, PUB[4]: 3, PUB[5]: 2}
    assert state.round_commits == {PUB[1], PUB[2]}
    assert list(state.block_hashes) == [s.head_hash for s in states]
    assert compute_block_hash(blocks[0]).hex() == KNOWN_BLOCK_1_HASH


def test_block_at_a_later_attempt(pre: LedgerState) -> None:
    attempt = next(a for a in range(1, 50) if get_proposer(pre, a) != get_proposer(pre, 0))
    block, expected = build_block(pre, [], KEY_BY_PUBLIC[get_proposer(pre, attempt)], attempt)
    assert process_block(pre, block) == expected


def test_blocks_on_one_state_do_not_share_hashes(pre: LedgerState) -> None:
    first_block, first = propose(pre)
    second_block, second = propose(pre, round=1)
    assert first.block_hashes.get(1) == compute_block_hash(first_block)
    assert second.block_hashes.get(1) == compute_block_hash(second_block)
    _, third = propose(first)
    assert second.block_hashes.get(1) == compute_block_hash(second_block)
    assert third.block_hashes.get(1) == compute_block_hash(first_block)
    assert len(pre.block_hashes) == 1 and pre.block_hashes.get(1) is None


def resigned(state: LedgerState, block: Block, signer: int | None = None, **changes: Any) -> Block:
    header = dataclasses.replace(block.header, **changes)
    key = KEY_BY_PUBLIC[header.proposer] if signer is None else KEYS[signer]
    return Block(sign_header(key, state.genesis_hash, header), block.transactions)


@pytest.fixture(scope="module")
def block_1(pre: LedgerState) -> Block:
    return propose(pre, [commit(pre, 1)], round=1)[0]


def test_invalid_block_height(pre: LedgerState, block_1: Block) -> None:
    with pytest.raises(InvalidBlock, match="height 2, expected 1"):
        process_block(pre, resigned(pre, block_1, height=2))
    state = process_block(pre, block_1)
    with pytest.raises(InvalidBlock, match="height 1, expected 2"):
        process_block(state, block_1)


def test_invalid_block_parent(pre: LedgerState, block_1: Block) -> None:
    with pytest.raises(InvalidBlock, match="is not the head"):
        process_block(pre, resigned(pre, block_1, parent_hash=digest("elsewhere")))


def test_invalid_block_round_going_back(history: tuple[list[Block], list[LedgerState]]) -> None:
    blocks, states = history
    with pytest.raises(InvalidBlock, match="round 0 is before the head's 1"):
        process_block(states[3], resigned(states[3], blocks[3], round=0))


def test_invalid_block_proposer_wrong_person(pre: LedgerState, block_1: Block) -> None:
    impostor = next(i for i in STAKES if PUB[i] != block_1.header.proposer)
    block = resigned(pre, block_1, signer=impostor, proposer=PUB[impostor])
    with pytest.raises(InvalidBlock, match="was not drawn for attempt 0"):
        process_block(pre, block)


def test_invalid_block_proposer_wrong_attempt(pre: LedgerState, block_1: Block) -> None:
    proposer = block_1.header.proposer
    attempt = next(a for a in range(1, 50) if get_proposer(pre, a) != proposer)
    with pytest.raises(InvalidBlock, match=f"was not drawn for attempt {attempt}"):
        process_block(pre, resigned(pre, block_1, attempt=attempt))
    with pytest.raises(InvalidBlock, match="attempt -1 is outside"):
        process_block(pre, resigned(pre, block_1, attempt=-1))


def test_invalid_block_proposer_signature(pre: LedgerState, block_1: Block) -> None:
    other = next(i for i in STAKES if PUB[i] != block_1.header.proposer)
    with pytest.raises(InvalidBlock, match="signature does not verify"):
        process_block(pre, resigned(pre, block_1, signer=other))
    unsigned = Block(SignedHeader(block_1.header, b""), block_1.transactions)
    with pytest.raises(InvalidBlock, match="signature must be 64 bytes"):
        process_block(pre, unsigned)


def test_invalid_block_tx_root(pre: LedgerState, block_1: Block) -> None:
    with pytest.raises(InvalidBlock, match="tx_root does not match"):
        process_block(pre, dataclasses.replace(block_1, transactions=()))


def test_invalid_block_state_root(pre: LedgerState, block_1: Block) -> None:
    with pytest.raises(InvalidBlock, match="state_root does not match"):
        process_block(pre, resigned(pre, block_1, state_root=compute_state_root(pre)))


def test_invalid_block_with_invalid_transaction(pre: LedgerState, block_1: Block) -> None:
    transactions = (commit(pre, 1, num_examples=REGISTERED_EXAMPLES + 1),)
    block = resigned(pre, block_1, round=1, tx_root=compute_tx_root(transactions))
    block = dataclasses.replace(block, transactions=transactions)
    with pytest.raises(
        InvalidBlock, match=r"block 1: transaction 0 \(UpdateCommitment\): commitment claims 101"
    ):
        process_block(pre, block)


def test_invalid_block_carrying_genesis(pre: LedgerState, genesis: Genesis, block_1: Block) -> None:
    block = resigned(pre, block_1, tx_root=compute_tx_root((genesis,)))
    block = dataclasses.replace(block, transactions=(genesis,))
    with pytest.raises(InvalidBlock, match="Genesis may only appear in block 0"):
        process_block(pre, block)


def test_invalid_block_not_a_block(pre: LedgerState, block_1: Block) -> None:
    with pytest.raises(InvalidBlock, match="expected a Block"):
        process_block(pre, block_1.signed_header)  # type: ignore[arg-type]


def test_invalid_build_block_wrong_proposer(pre: LedgerState) -> None:
    chosen = get_proposer(pre)
    other = next(i for i in STAKES if PUB[i] != chosen)
    with pytest.raises(InvalidBlock, match="not drawn to propose"):
        build_block(pre, [], KEYS[other])


def test_invalid_block_no_validators_left(chain: list[LedgerState]) -> None:
    state = chain[-1]
    post = ejected(state, *STAKES)
    assert get_validators(post) == []
    with pytest.raises(InvalidBlock, match="no validators left"):
        process_block(post, propose(state)[0])


# --------------------------------------------------------------------------------------------------
# Attack: a small-order identity. The identity point's "universal" signature (R = identity, S = 0)
# verifies every message under OpenSSL's rule, so whoever registers it lets anyone sign as it.

IDENTITY_POINT = bytes([1]) + bytes(31)
UNIVERSAL_SIGNATURE = IDENTITY_POINT + bytes(32)
NON_CANONICAL_KEY = b"\xff" * 32


@pytest.mark.parametrize(
    ("key", "reason"),
    [(IDENTITY_POINT, "small-order point"), (NON_CANONICAL_KEY, "non-canonical")],
)
def test_invalid_genesis_participant_key(genesis: Genesis, key: bytes, reason: str) -> None:
    entries = [*genesis.participants, dataclasses.replace(genesis.participants[0], public_key=key)]
    entries.sort(key=lambda entry: entry.public_key)
    with pytest.raises(InvalidBlock, match=f"genesis: participant key .* is refused: .*{reason}"):
        compute_genesis_state(dataclasses.replace(genesis, participants=tuple(entries)))


def _lenient(key: object, *_: object) -> None:
    return None


def test_invalid_ledger_built_under_the_lenient_rule_fails_verify(
    genesis: Genesis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A coordinator on OpenSSL's rule puts the identity point in the genesis (its registration
    "signed" with the universal signature), then anyone attests (and proposes, if drawn) as it
    with that one signature. ``verify`` refuses the genesis (block 0)."""
    path = tmp_path / "ledger.db"
    entry = GenesisParticipant(
        IDENTITY_POINT, 400, digest("attacker"), 80, "", "", b"", "", UNIVERSAL_SIGNATURE
    )
    entries = sorted((*genesis.participants, entry), key=lambda e: e.public_key)
    bad_genesis = dataclasses.replace(genesis, participants=tuple(entries))
    with monkeypatch.context() as lenient:
        lenient.setattr(ed25519, "check_public_key", _lenient)
        lenient.setattr(ed25519, "check_signature", _lenient)
        with Chain.create(path, bad_genesis) as chain:
            assert IDENTITY_POINT in chain.state.participants  # the old rule took it
            state = chain.append(*_propose_as_anyone(chain.state, []))
            attestation = Attestation(IDENTITY_POINT, 1, state.head_hash, UNIVERSAL_SIGNATURE)
            chain.append(*_propose_as_anyone(state, [attestation]))
        assert verify_ledger(path).ok
    report = verify_ledger(path)
    assert report.failure is not None
    assert report.failure.height == 0
    assert "small-order point" in report.failure.reason
    assert "participant key" in report.failure.reason


def _propose_as_anyone(
    state: LedgerState, transactions: Sequence[Transaction]
) -> tuple[Block, LedgerState]:
    header, post = prepare_block(state, transactions)
    if header.proposer == IDENTITY_POINT:
        return Block(SignedHeader(header, UNIVERSAL_SIGNATURE), tuple(transactions)), post
    return propose(state, transactions)
