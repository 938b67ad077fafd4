"""fedchain.rounds.coordinator: the shell applies what the pure protocol decides, on a real chain.

Pre -> op -> post: a synthetic federation of three at genesis (a real ledger file, a real model),
replies made by the participant's own duties (:mod:`fedchain.rounds.participant`), then a round:
what the pending block holds, and what the ledger holds once its proposer seals it. Admission and
scores themselves are test_admission's and test_scores'; here they must flow into the ledger.
Negative cases are named ``test_invalid_*``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedchain.aggregation.rules import RuleParams
from fedchain.crypto.hashing import compute_update_hash
from fedchain.crypto.identity import public_key_bytes
from fedchain.errors import FedchainError
from fedchain.ledger.builder import sign_header
from fedchain.ledger.chain import Chain
from fedchain.ledger.objects import (
    ContributionRecord,
    ModelVersion,
    Rejection,
    RewardDeltas,
    SlashingEvidence,
    UpdateCommitment,
)
from fedchain.ledger.synthetic import SyntheticFederation
from fedchain.rounds.admission import MISMATCH_REASON, ClientReply
from fedchain.rounds.coordinator import Coordinator
from fedchain.rounds.messages import Duties, decode_ledger_view
from fedchain.rounds.participant import check_view, compute_duties, sign_update_commitment
from fedchain.runs.registry import load_model

RUN_ID = "coordinator"
MODEL = {"w": np.zeros((2, 3), dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}
NODE = 100  # client i is node NODE + i
CLIENTS = 3


def update(i: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(i)
    return {k: rng.normal(size=v.shape).astype(np.float32) for k, v in MODEL.items()}


@pytest.fixture(scope="module")
def federation() -> SyntheticFederation:
    return SyntheticFederation(
        CLIENTS, initial_model_hash=compute_update_hash(MODEL), run_id=RUN_ID
    )


def open_coordinator(run_dir: Path, federation: SyntheticFederation) -> Coordinator:
    run_dir.mkdir(parents=True, exist_ok=True)
    chain = Chain.create(run_dir / "ledger.db", federation.genesis)
    return Coordinator(run_dir, chain, MODEL, rule="fedavg", params=RuleParams())


@pytest.fixture
def coordinator(tmp_path: Path, federation: SyntheticFederation) -> Iterator[Coordinator]:
    coordinator = open_coordinator(tmp_path, federation)
    yield coordinator
    coordinator.chain.close()


def reply(
    coordinator: Coordinator,
    federation: SyntheticFederation,
    i: int,
    round_: int,
    *,
    committed: dict[str, np.ndarray] | None = None,
) -> ClientReply:
    """Client ``i``'s honest train reply to the view the coordinator sends it (its commitment is
    to ``committed`` when given: a client that commits to something else than it sends)."""
    view = decode_ledger_view(coordinator.ledger_view(NODE + i))
    key = federation.keys[i]
    duties = compute_duties(key, public_key_bytes(key), view, check_view(None, view))
    return reply_with(coordinator, key, i, round_, duties, committed=committed)


def reply_with(
    coordinator: Coordinator,
    key: Ed25519PrivateKey,
    i: int,
    round_: int,
    duties: Duties,
    *,
    committed: dict[str, np.ndarray] | None = None,
) -> ClientReply:
    """Client ``i``'s train reply with ``duties``: its update and a signed commitment to it (or to
    ``committed``) on the view the coordinator sends it."""
    view = decode_ledger_view(coordinator.ledger_view(NODE + i))
    commitment = sign_update_commitment(
        key,
        view,
        round_=round_,
        base_model_hash=coordinator.model_hash,
        update=update(i) if committed is None else committed,
        num_examples=50,
    )
    return ClientReply(
        NODE + i,
        update=update(i),
        num_examples=50,
        commitment=commitment,
        attestation=duties.attestation,
        seal=duties.seal,
        checkpoint=duties.checkpoint,
    )


def replies(coordinator: Coordinator, federation: SyntheticFederation, round_: int) -> list:  # type: ignore[type-arg]
    return [reply(coordinator, federation, i, round_) for i in range(CLIENTS)]


def test_accepted_updates_become_a_pending_block_with_model_scores_and_rewards(
    coordinator: Coordinator, federation: SyntheticFederation
) -> None:
    pre = coordinator.state
    outcome = coordinator.run_round(1, replies(coordinator, federation, 1))
    assert outcome.accepted == CLIENTS and outcome.rejected == []
    assert coordinator.state is pre  # nothing is on the ledger before the block is sealed
    pending = coordinator.pending
    assert pending is not None and (pending.header.height, pending.header.round) == (1, 1)
    kinds = [type(tx) for tx in pending.transactions]
    assert kinds == [UpdateCommitment] * CLIENTS + [ModelVersion, ContributionRecord, RewardDeltas]
    mean = {k: sum(update(i)[k] for i in range(CLIENTS)) / CLIENTS for k in MODEL}
    for name, expected in mean.items():  # fedavg over equal example counts
        np.testing.assert_allclose(coordinator.model[name], expected, rtol=1e-6)
    (version,) = [tx for tx in pending.transactions if isinstance(tx, ModelVersion)]
    assert version.parent_hash == pre.model_head and version.model_hash == coordinator.model_hash
    assert compute_update_hash(load_model(coordinator.run_dir, version.model_hash)) == (
        version.model_hash
    )
    (deltas,) = [tx for tx in pending.transactions if isinstance(tx, RewardDeltas)]
    assert sum(amount for _, amount in deltas.deltas) == pre.genesis.rules.reward_per_round
    assert outcome.scores == dict(pending.transactions[CLIENTS + 1].scores)  # type: ignore[union-attr]


def test_the_proposers_seal_appends_the_block_and_pays_the_round(
    coordinator: Coordinator, federation: SyntheticFederation
) -> None:
    coordinator.run_round(1, replies(coordinator, federation, 1))
    pending = coordinator.pending
    assert pending is not None
    round_2 = replies(coordinator, federation, 2)  # the proposer's reply carries the seal
    assert sum(bool(r.seal) for r in round_2) == 1
    assert coordinator.seal_from(round_2)
    post = coordinator.state
    assert coordinator.pending is None and post.height == 1 and post.round == 1
    assert post.model_head == coordinator.model_hash
    (deltas,) = [tx for tx in pending.transactions if isinstance(tx, RewardDeltas)]
    start = federation.genesis.participants[0].stake
    assert {k: post.participants[k].stake - start for k, _ in deltas.deltas} == dict(deltas.deltas)
    assert len(coordinator.headers) == 2  # what the next views show: genesis and block 1


def test_reply_order_does_not_change_the_model_or_the_block(
    tmp_path: Path, federation: SyntheticFederation
) -> None:
    outcomes = []
    for name, order in (("a", 1), ("b", -1)):
        coordinator = open_coordinator(tmp_path / name, federation)
        try:
            coordinator.run_round(1, replies(coordinator, federation, 1)[::order])
            assert coordinator.pending is not None
            outcomes.append((coordinator.model_hash, coordinator.pending.header))
        finally:
            coordinator.chain.close()
    assert outcomes[0] == outcomes[1]


def test_a_commitment_to_another_update_is_rejected_unpaid_and_keeps_its_stake(
    coordinator: Coordinator, federation: SyntheticFederation
) -> None:
    """The mismatch is the coordinator's observation alone: a rejection on record, the update
    unused, no stake or reputation lost (no slashing evidence exists for it)."""
    sent = replies(coordinator, federation, 1)
    sent[2] = reply(coordinator, federation, 2, 1, committed=update(7))
    outcome = coordinator.run_round(1, sent)
    cheat = public_key_bytes(federation.keys[2])
    assert outcome.accepted == 2 and [d.public_key for d in outcome.rejected] == [cheat]
    pending = coordinator.pending
    assert pending is not None
    assert not any(isinstance(tx, SlashingEvidence) for tx in pending.transactions)
    (rejection,) = [tx for tx in pending.transactions if isinstance(tx, Rejection)]
    assert (rejection.public_key, rejection.reason) == (cheat, MISMATCH_REASON)
    (deltas,) = [tx for tx in pending.transactions if isinstance(tx, RewardDeltas)]
    assert cheat not in dict(deltas.deltas) and cheat not in outcome.scores
    before, after = coordinator.state.participants[cheat], pending.post_state.participants[cheat]
    assert after == before


def test_a_round_with_no_accepted_update_registers_no_model(
    coordinator: Coordinator, federation: SyntheticFederation
) -> None:
    pre_hash = coordinator.model_hash
    outcome = coordinator.run_round(1, [ClientReply(NODE, error="client error")])
    assert outcome.accepted == 0 and coordinator.model_hash == pre_hash
    assert coordinator.pending is not None and coordinator.pending.transactions == ()


def test_a_reattempt_asks_the_next_draw_for_the_same_block(
    coordinator: Coordinator, federation: SyntheticFederation
) -> None:
    coordinator.run_round(1, replies(coordinator, federation, 1))
    first = coordinator.pending
    assert first is not None
    header = coordinator.reattempt(1)
    assert header.attempt == 1 and header.height == first.header.height
    assert header.tx_root == first.header.tx_root and coordinator.pending.header == header  # type: ignore[union-attr]


def test_invalid_a_new_round_while_the_block_waits_for_its_seal(
    coordinator: Coordinator, federation: SyntheticFederation
) -> None:
    coordinator.run_round(1, replies(coordinator, federation, 1))
    with pytest.raises(FedchainError, match="still waiting for its seal"):
        coordinator.run_round(2, replies(coordinator, federation, 2))


def test_invalid_a_seal_from_another_key_appends_nothing(
    coordinator: Coordinator, federation: SyntheticFederation
) -> None:
    coordinator.run_round(1, replies(coordinator, federation, 1))
    pending = coordinator.pending
    assert pending is not None
    genesis_hash = coordinator.state.genesis_hash
    others = [k for k in federation.keys if public_key_bytes(k) != pending.header.proposer]
    forged = sign_header(others[0], genesis_hash, pending.header).signature
    assert not coordinator.seal_from([ClientReply(NODE, seal=forged)])
    assert coordinator.pending is pending and coordinator.state.height == 0


def test_invalid_a_model_that_is_not_the_ledgers(
    tmp_path: Path, federation: SyntheticFederation
) -> None:
    with Chain.create(tmp_path / "ledger.db", federation.genesis) as chain:
        other = {k: v + np.float32(1) for k, v in MODEL.items()}
        with pytest.raises(FedchainError, match="not the ledger's current model"):
            Coordinator(tmp_path, chain, other, rule="fedavg", params=RuleParams())
