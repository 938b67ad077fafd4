"""The ledger's state as values: LedgerState and its parts, the state root, the evidence id.

Plain containers with no behaviour beyond equality (states are values; nothing is mutated), the
two hashes derived from them (:func:`compute_state_root`, :func:`compute_evidence_id`) and the
constants of the state (basis points, reputation bounds). The transition that produces states is
:mod:`fedchain.ledger.state`; consensus reads states through these types without importing it.

Speed. Block hashes by height live in :class:`BlockHashes`, shared between a state and its
successors, so an attestation's target is checked in O(1) with no per-block copy of the chain.
"""

from __future__ import annotations

import hashlib
import struct
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import ClassVar

from fedchain.ledger.codec import compute_hash
from fedchain.ledger.objects import (
    AttestationPair,
    Genesis,
    Hash32,
    HeaderPair,
    PublicKey,
    SlashingEvidence,
)

__all__ = [
    "BPS_DENOMINATOR",
    "EVIDENCE_ID_DOMAIN",
    "HARMFUL_SCORE",
    "INITIAL_REPUTATION_BPS",
    "MAX_REPUTATION_BPS",
    "BlockHashes",
    "LedgerState",
    "ParticipantState",
    "StateRootBody",
    "compute_evidence_id",
    "compute_state_root",
    "compute_state_root_of",
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
    minimum (ejection); reputation is in basis points, starting at 10_000.
    ``dp_participations``: its accepted update commitments under differential privacy (the
    privacy it has spent, as the one integer the accountant needs; 0 with DP off).
    ``app_digest``: the app bundle the holder approved to run on its data (its registration's,
    then its latest recorded :class:`~fedchain.ledger.objects.AppApproval`'s; empty for a
    simulated client); ``app_approvals``: how many approvals it has recorded (the next one's
    ``sequence`` is this plus 1);
    ``score_debt``: the negative score (quanta) its positive scores must repay before they are
    paid, and ``harm_debt`` the part of it that is harm, never forgiven
    (:func:`~fedchain.rounds.rewards.compute_score_debt`)."""

    TAG: ClassVar[int] = 40
    public_key: PublicKey
    stake: int
    reputation_bps: int
    dataset_hash: Hash32
    num_examples: int
    active: bool
    dp_participations: int = 0
    app_digest: bytes = b""
    app_approvals: int = 0
    score_debt: int = 0
    harm_debt: int = 0


@dataclass(frozen=True, slots=True)
class StateRootBody:
    """What the state root commits to: participants (sorted by key), model head and round, and
    the reward pool carried to the next round by the payout rule (base units)."""

    TAG: ClassVar[int] = 41
    participants: tuple[ParticipantState, ...]
    model_head: Hash32
    round: int
    carried_reward: int


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
      :func:`~fedchain.ledger.state.process_transaction` returns).
    - ``participants``: every registered participant, ejected ones included, sorted by key.
    - ``round_commits`` / ``round_update_hashes``: who committed, and which update hashes, in
      ``round`` (the keys a :class:`~fedchain.ledger.objects.ContributionRecord` must score).
    - ``model_head``: the current global model's hash; ``model_round``: the round that
      registered it (0 for the initial model).
    - ``scores_round``: the round of the latest contribution record (0 before any): one per
      round, and the round's rewards are paid in its block.
    - ``last_attested``: each validator's highest attested height.
    - ``evidence_seen``: ids (:func:`compute_evidence_id`) of slashing evidence already applied.
    - ``block_hashes``: block hashes by height, genesis block included.
    - ``carried_reward``: the reward pool not yet paid, carried to the next round by the payout
      rule (:mod:`fedchain.rounds.rewards`). In the state root.
    - ``model_moved``: whether the latest model version moved the model (the payout rule pays
      nothing for a round whose model did not move). Not in the state root: it is a function of
      the latest ``ModelVersion``, which the chain holds.
    - ``round_refusals``: who recorded a signed refusal in ``round`` (one each a round).
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
    scores_round: int
    model_round: int
    block_hashes: BlockHashes
    carried_reward: int = 0
    model_moved: bool = False
    round_refusals: frozenset[PublicKey] = frozenset()


# --------------------------------------------------------------------------------------------------
# Roots and ids


def compute_state_root(state: LedgerState) -> Hash32:
    """Hash of participants (key, stake, reputation, dataset hash, examples, active), sorted by
    key, plus the model head, the round and the carried reward pool."""
    return compute_state_root_of(
        state.participants.values(),
        state.model_head,
        state.round,
        carried_reward=state.carried_reward,
    )


def compute_state_root_of(
    participants: Iterable[ParticipantState],
    model_head: Hash32,
    round: int,
    *,
    carried_reward: int = 0,
) -> Hash32:
    """The state root of these parts (participants sorted by key), before a state exists."""
    return compute_hash(StateRootBody(tuple(participants), model_head, round, carried_reward))


def compute_evidence_id(evidence: SlashingEvidence) -> Hash32:
    """The identity of the *offence*, so one offence is punished once however it is presented.

    Double signing is identified by (offender, header-or-attestation, height): showing a third
    conflicting header of the same height is the same offence.
    """
    payload = evidence.evidence
    if isinstance(payload, HeaderPair):
        label, number = b"double_sign/header", payload.first.header.height
    elif isinstance(payload, AttestationPair):
        label, number = b"double_sign/attestation", payload.first.height
    else:  # the codec admits no other evidence; a hand-made object has no id
        raise TypeError(f"{type(payload).__name__} is not slashing evidence")
    digest = hashlib.sha256(EVIDENCE_ID_DOMAIN)
    digest.update(bytes((len(label),)) + label + evidence.offender + _I64.pack(number))
    return digest.digest()
