"""Attacks on stake: a coordinator that forges penalties, rewards or slashing evidence.

The attacker is a dishonest coordinator of a simulated run: it holds every client's key, so it
can sign any block the proposer draw gives it. It builds a ledger with the real
:class:`~fedchain.ledger.chain.Chain`, then appends a block it forged under the old, lenient
rules (its state root is what those rules gave). Each forgery must be refused by
:func:`~fedchain.ledger.state.process_block` (so by every client that re-executes a block) and
by ``fedchain verify`` on the stored ledger.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import MappingProxyType

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from fedchain.crypto.identity import Domain, public_key_bytes, sign
from fedchain.errors import InvalidBlock
from fedchain.ledger.builder import sign_attestation, sign_commitment, sign_header
from fedchain.ledger.chain import Chain, compute_stored_block
from fedchain.ledger.codec import compute_hash, encode
from fedchain.ledger.consensus import detect_double_sign, get_proposer
from fedchain.ledger.containers import (
    INITIAL_REPUTATION_BPS,
    LedgerState,
    ParticipantState,
    compute_state_root_of,
)
from fedchain.ledger.derived import compute_tx_root, compute_tx_root_of_encodings, signing_message
from fedchain.ledger.objects import (
    DOUBLE_SIGN,
    SCORE_SCALE,
    Block,
    BlockHeader,
    ContributionRecord,
    ModelVersion,
    Registration,
    RewardDeltas,
    SlashingEvidence,
    Transaction,
    UpdateCommitment,
)
from fedchain.ledger.state import compute_state_with_head, process_block
from fedchain.ledger.store import StoredBlock
from fedchain.ledger.synthetic import SyntheticFederation
from fedchain.ledger.verify import verify_ledger
from fedchain.rounds.rewards import compute_reward_split

PARTICIPANTS = 4
STAKE = 10_000
runner = CliRunner()


def digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


@dataclasses.dataclass
class Attacker:
    """A coordinator with a ledger of two honest rounds and every simulated key."""

    federation: SyntheticFederation
    chain: Chain
    path: Path

    @property
    def state(self) -> LedgerState:
        return self.chain.state

    def key(self, index: int) -> bytes:
        return public_key_bytes(self.federation.keys[index])

    def commits(self, indices: Sequence[int], round_: int) -> list[UpdateCommitment]:
        state = self.state
        return [
            sign_commitment(
                self.federation.keys[i],
                state.genesis_hash,
                run_id=state.genesis.run_id,
                round=round_,
                base_model_hash=state.model_head,
                update_hash=digest(f"update/{round_}/{i}"),
                num_examples=self.federation.num_examples,
            )
            for i in indices
        ]

    def forge(
        self,
        transactions: Sequence[Transaction],
        stakes: dict[bytes, int] | None = None,
        *,
        round_: int,
        model_head: bytes | None = None,
    ) -> tuple[Block, LedgerState]:
        """A block holding ``transactions`` with the state root the old rules gave (``stakes``
        changed, ejection below the minimum), signed by the drawn proposer's key."""
        state = self.state
        participants = dict(state.participants)
        for key, stake in (stakes or {}).items():
            before = participants[key]
            active = before.active and stake >= state.genesis.rules.min_stake
            participants[key] = dataclasses.replace(before, stake=stake, active=active)
        head = state.model_head if model_head is None else model_head
        post = _with_participants(state, participants, round_, head)
        header = BlockHeader(
            height=state.height + 1,
            round=round_,
            parent_hash=state.head_hash,
            tx_root=compute_tx_root(transactions),
            state_root=compute_state_root_of(post.participants.values(), head, round_),
            proposer=get_proposer(state),
            attempt=0,
        )
        proposer = self.federation.by_public[header.proposer]
        signed = sign_header(proposer, state.genesis_hash, header)
        return Block(signed, tuple(transactions)), compute_state_with_head(
            post, compute_hash(header)
        )

    def forge_joining(
        self, registration: Registration, *, round_: int
    ) -> tuple[Block, LedgerState]:
        """A block holding ``registration`` with the state root the old rule gave (the key
        added with the stake it names), signed by the drawn proposer's key."""
        state = self.state
        participants = dict(state.participants)
        participants[registration.public_key] = ParticipantState(
            registration.public_key,
            registration.stake,
            INITIAL_REPUTATION_BPS,
            registration.dataset_hash,
            registration.num_examples,
            True,
        )
        post = _with_participants(state, participants, round_, state.model_head)
        transactions = (registration,)
        header = BlockHeader(
            height=state.height + 1,
            round=round_,
            parent_hash=state.head_hash,
            tx_root=compute_tx_root(transactions),
            state_root=compute_state_root_of(post.participants.values(), state.model_head, round_),
            proposer=get_proposer(state),
            attempt=0,
        )
        signed = sign_header(self.federation.by_public[header.proposer], state.genesis_hash, header)
        return Block(signed, transactions), compute_state_with_head(post, compute_hash(header))

    def round_body(
        self, committers: Sequence[int], round_: int
    ) -> tuple[list[Transaction], bytes, list[UpdateCommitment]]:
        """Commitments by ``committers`` and the round's model version."""
        commits = self.commits(committers, round_)
        model = digest(f"model/{round_}")
        hashes = tuple(sorted(c.update_hash for c in commits))
        rule = self.state.genesis.rules.aggregation_rule
        version = ModelVersion(round_, model, self.state.model_head, hashes, rule)
        return [*commits, version], model, commits


def _with_participants(
    state: LedgerState, participants: dict[bytes, ParticipantState], round_: int, head: bytes
) -> LedgerState:
    return dataclasses.replace(
        state,
        round=round_,
        model_head=head,
        participants=MappingProxyType(dict(sorted(participants.items()))),
    )


@pytest.fixture
def attacker(tmp_path: Path) -> Iterator[Attacker]:
    federation = SyntheticFederation(PARTICIPANTS, seed=12, stake=STAKE)
    path = tmp_path / "ledger.db"
    with Chain.create(path, federation.genesis) as chain:
        for _ in range(2):
            chain.append(*federation.make_round(chain.state))
        yield Attacker(federation, chain, path)


def assert_refused(attacker: Attacker, block: Block, post: LedgerState, reason: str) -> None:
    """Refused when processed; and once stored (as the attacker would), by ``verify``."""
    height = block.header.height
    with pytest.raises(InvalidBlock, match=reason):
        process_block(attacker.state, block)
    attacker.chain.append(block, post)  # the attacker's shortcut: its own state, unchecked
    attacker.chain.close()
    report = verify_ledger(attacker.path)
    assert not report.ok and report.failure is not None
    assert report.failure.height == height
    assert re.search(reason, report.failure.reason)


# --------------------------------------------------------------------------------------------------
# A minted validator: a Registration after the genesis


def test_invalid_registration_after_genesis_is_refused(attacker: Attacker) -> None:
    """The review's attack: a fresh key's self-signed ``Registration`` with a "deposit" of 2^62
    would hold nearly all validator stake, propose every block and finalise alone. Participants
    join in the signed genesis only: the transition refuses any registration after it."""
    sybil = Ed25519PrivateKey.from_private_bytes(digest("sybil"))
    unsigned = Registration(public_key_bytes(sybil), 2**62, digest("no data"), 10**9, b"")
    genesis_hash = attacker.state.genesis_hash
    signature = sign(sybil, Domain.REGISTRATION, signing_message(unsigned), genesis_hash)
    registration = dataclasses.replace(unsigned, signature=signature)
    block, post = attacker.forge_joining(registration, round_=attacker.state.round)
    assert post.participants[registration.public_key].stake == 2**62  # what the old rule gave
    assert_refused(attacker, block, post, "participants join in the genesis; a registration")


# --------------------------------------------------------------------------------------------------
# Forged penalties and rewards


def test_invalid_forged_penalty_is_refused_by_the_state_transition_and_verify(
    attacker: Attacker,
) -> None:
    """The audit's attack: one negative delta, no evidence, the victim's whole stake."""
    victim = attacker.key(1)
    before = attacker.state.participants[victim].stake
    penalty = RewardDeltas(attacker.state.round, ((victim, -before),))
    block, post = attacker.forge([penalty], {victim: 0}, round_=attacker.state.round)
    assert_refused(attacker, block, post, "penalty without evidence")


def test_invalid_forged_penalty_fails_fedchain_verify(attacker: Attacker) -> None:
    from fedchain.cli import app  # the CLI entry point, as a user runs it

    victim = attacker.key(2)
    penalty = RewardDeltas(attacker.state.round, ((victim, -1),))
    stakes = {victim: attacker.state.participants[victim].stake - 1}
    attacker.chain.append(*attacker.forge([penalty], stakes, round_=attacker.state.round))
    attacker.chain.close()
    result = runner.invoke(app, ["verify", str(attacker.path)], env={"COLUMNS": "200"})
    assert result.exit_code == 1, result.output
    assert "FAILED" in result.output and "penalty without evidence" in result.output


def test_invalid_rewards_without_a_contribution_record(attacker: Attacker) -> None:
    """A round that pays the whole pool to one committer, with no scores to split by."""
    round_ = attacker.state.round + 1
    body, model, _ = attacker.round_body([0, 1, 2], round_)
    pool = attacker.state.genesis.rules.reward_per_round
    favourite = attacker.key(0)
    rewards = RewardDeltas(round_, ((favourite, pool),))
    stakes = {favourite: attacker.state.participants[favourite].stake + pool}
    block, post = attacker.forge([*body, rewards], stakes, round_=round_, model_head=model)
    assert_refused(attacker, block, post, "must follow round 3's contribution record")


def test_invalid_rewards_that_differ_from_the_split_by_one_unit(attacker: Attacker) -> None:
    round_ = attacker.state.round + 1
    body, model, commits = attacker.round_body([0, 1, 2], round_)
    scores = tuple(sorted((c.public_key, SCORE_SCALE) for c in commits))
    split = dict(compute_reward_split(attacker.state.genesis.rules.reward_per_round, scores))
    low, high = sorted(split)[:2]
    split[low], split[high] = split[low] - 1, split[high] + 1  # same total, one unit moved
    rewards = RewardDeltas(round_, tuple(sorted(split.items())))
    stakes = {k: attacker.state.participants[k].stake + v for k, v in split.items()}
    txs = [*body, ContributionRecord(round_, scores), rewards]
    block, post = attacker.forge(txs, stakes, round_=round_, model_head=model)
    assert_refused(attacker, block, post, "rewards are not the payment the payout rule makes due")


def test_invalid_scores_naming_a_non_committer(attacker: Attacker) -> None:
    """Client 3 did not commit this round; the coordinator scores it anyway (a friend's key),
    and pays it by the split of those scores."""
    round_ = attacker.state.round + 1
    body, model, commits = attacker.round_body([0, 1, 2], round_)
    friend = attacker.key(3)
    scores = tuple(sorted([*((c.public_key, 1) for c in commits), (friend, 97)]))
    split = compute_reward_split(attacker.state.genesis.rules.reward_per_round, scores)
    stakes = {k: attacker.state.participants[k].stake + v for k, v in split}
    txs = [*body, ContributionRecord(round_, scores), RewardDeltas(round_, split)]
    block, post = attacker.forge(txs, stakes, round_=round_, model_head=model)
    assert_refused(attacker, block, post, "who has no accepted commitment in round 3")


# --------------------------------------------------------------------------------------------------
# Invented slashing evidence


def test_invalid_bad_commitment_slashing_is_an_unknown_kind(attacker: Attacker) -> None:
    """Bad-commitment slashing is gone, whatever evidence the kind is attached to (here a real
    double sign, so that only the kind is wrong)."""
    state = attacker.state
    victim = attacker.federation.keys[1]
    votes = [
        sign_attestation(victim, state.genesis_hash, height=1, block_hash=digest(str(i)))
        for i in range(2)
    ]
    evidence = detect_double_sign(votes[0], votes[1], state.round)
    assert evidence is not None
    invented = dataclasses.replace(evidence, kind="bad_commitment")
    key = public_key_bytes(victim)
    stakes = {key: state.participants[key].stake // 2}
    block, post = attacker.forge([invented], stakes, round_=state.round)
    assert_refused(attacker, block, post, "unknown slashing kind 'bad_commitment'")


def test_invalid_retired_bad_commitment_evidence_bytes(attacker: Attacker) -> None:
    """The old encoding (tag 22: a commitment and the coordinator's "observed" hash), stored
    as the attacker would store it: the block does not even decode."""
    state = attacker.state
    commitment = attacker.commits([1], state.round + 1)[0]
    old = (
        bytes([SlashingEvidence.TAG])
        + _field(b"bad_commitment")
        + _field(commitment.public_key)
        + struct.pack("<q", state.round)
        + bytes([22])
        + encode(commitment)
        + _field(digest("observed"))
    )
    header = BlockHeader(
        height=state.height + 1,
        round=state.round,
        parent_hash=state.head_hash,
        tx_root=compute_tx_root_of_encodings([old]),
        state_root=compute_state_root_of(state.participants.values(), state.model_head, 2),
        proposer=get_proposer(state),
        attempt=0,
    )
    signed = sign_header(attacker.federation.by_public[header.proposer], state.genesis_hash, header)
    data = bytes([Block.TAG]) + encode(signed) + struct.pack("<I", 1) + old
    row = dataclasses.replace(compute_stored_block(Block(signed, ())), data=data)
    assert isinstance(row, StoredBlock)
    attacker.chain.store.append(row)
    attacker.chain.close()
    report = verify_ledger(attacker.path)
    assert not report.ok and report.failure is not None
    assert report.failure.height == header.height


def test_invalid_double_sign_evidence_not_signed_by_the_offender(attacker: Attacker) -> None:
    """The coordinator pins a double sign on client 1 with a second vote it signed itself."""
    state = attacker.state
    victim, forger = attacker.federation.keys[1], attacker.federation.keys[0]
    block_1 = state.block_hashes.get(1)
    assert block_1 is not None
    real = sign_attestation(victim, state.genesis_hash, height=1, block_hash=block_1)
    fake = sign_attestation(forger, state.genesis_hash, height=1, block_hash=digest("fork"))
    fake = dataclasses.replace(fake, validator=public_key_bytes(victim))
    evidence = detect_double_sign(real, fake, state.round)
    assert evidence is not None and evidence.kind == DOUBLE_SIGN
    key = public_key_bytes(victim)
    block, post = attacker.forge([evidence], {key: 0}, round_=state.round)
    assert_refused(attacker, block, post, "bad signature")


def test_invalid_double_sign_evidence_for_a_height_not_yet_reached(attacker: Attacker) -> None:
    """Votes "for" a future height (a key's holder may sign those later in good faith: a
    pending header is not yet a block) are no evidence of anything on this chain."""
    state = attacker.state
    victim = attacker.federation.keys[1]
    future = state.height + 1
    votes = [
        sign_attestation(victim, state.genesis_hash, height=future, block_hash=digest(i))
        for i in ("a", "b")
    ]
    evidence = detect_double_sign(votes[0], votes[1], state.round)
    assert evidence is not None
    key = public_key_bytes(victim)
    block, post = attacker.forge([evidence], {key: 0}, round_=state.round)
    assert_refused(attacker, block, post, "this chain's past")


def _field(data: bytes) -> bytes:
    return struct.pack("<I", len(data)) + data
