"""Each participant in the report: its name, its stake, rewards and scores by round, its events.

Events are rejected updates, slashing (with the evidence anyone can re-check) and ejections below
the minimum stake, in ledger order. Everything is read from the replay of the blocks that verified
(:func:`~fedchain.ledger.verify.iter_replay`): the states the protocol computed, never a
re-implementation of its rules.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from itertools import pairwise
from typing import Any

from fedchain.crypto.identity import fingerprint
from fedchain.ledger.containers import (
    BPS_DENOMINATOR,
    LedgerState,
    ParticipantState,
)
from fedchain.ledger.derived import compute_block_hash
from fedchain.ledger.objects import (
    SCORE_SCALE,
    AppApproval,
    Block,
    ContributionRecord,
    Genesis,
    HeaderPair,
    PublicKey,
    Refusal,
    Registration,
    Rejection,
    RewardDeltas,
    SlashingEvidence,
    UpdateCommitment,
)
from fedchain.ledger.verify import ReplayStep
from fedchain.report.inputs import ReportInputs
from fedchain.text import compute_printable

__all__ = ["HASH_PREFIX_CHARS", "compute_events", "compute_participants"]

HASH_PREFIX_CHARS = 16  # hex characters of a hash shown in a sentence or a table


def _state_at(steps: Sequence[ReplayStep], round_: int) -> LedgerState | None:
    """The state at the end of ``round_``: after the last replayed block of a round <= it.

    None past the last replayed round, where the ledger says nothing (or nothing verified).
    """
    if not steps or round_ > steps[-1].block.header.round:
        return None
    found = steps[0].post
    for step in steps:
        if step.block.header.round > round_:
            break
        found = step.post
    return found


def _participant_order(
    keys: Iterable[PublicKey], client_indices: Mapping[PublicKey, int]
) -> list[PublicKey]:
    """Simulated clients by index, then everyone else by fingerprint (deterministic)."""
    return sorted(keys, key=lambda k: (client_indices.get(k, math.inf), fingerprint(k)))


def _who(key: PublicKey, inputs: ReportInputs) -> dict[str, Any]:
    """How the report names a participant: a simulated client by its index, a deployed
    federation's participant by its registered name
    (:func:`~fedchain.report.inputs.read_registered_names`), anyone else by the fingerprint of
    its key (always given too)."""
    index = inputs.client_indices.get(key)
    registered = inputs.registered_names.get(key)
    fp = fingerprint(key) if len(key) == 32 else key.hex()
    name = registered or fp
    if index is not None:
        name = f"client {index}"
    return {"fingerprint": fp, "client": index, "registered_name": registered, "name": name}


def compute_participants(
    inputs: ReportInputs,
    steps: Sequence[ReplayStep],
    genesis: Genesis,
    timeline: Sequence[int],
    events: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """Every participant of the last replayed state, simulated clients first: totals (with its
    score debt at the end: the negative score its positive scores must repay before they are
    paid), and stake, cumulative rewards and contribution at each ``timeline`` round (None
    where the participant had not joined, or the ledger says nothing of that round)."""
    indices = inputs.client_indices
    final = steps[-1].post
    initial = {p.public_key: p.stake for p in genesis.participants}
    joined = dict.fromkeys(initial, 0)
    rewards: dict[PublicKey, dict[int, int]] = defaultdict(dict)
    scores: dict[PublicKey, dict[int, int]] = defaultdict(dict)  # quantised, summed per round
    counts: dict[str, dict[PublicKey, int]] = defaultdict(lambda: defaultdict(int))
    for block in (s.block for s in steps[1:]):
        round_ = block.header.round
        for tx in block.transactions:
            if isinstance(tx, Registration):
                initial.setdefault(tx.public_key, tx.stake)
                joined.setdefault(tx.public_key, round_)
            elif isinstance(tx, RewardDeltas):
                for key, delta in tx.deltas:  # the ledger refuses negative deltas
                    rewards[key][round_] = rewards[key].get(round_, 0) + max(delta, 0)
            elif isinstance(tx, ContributionRecord):
                for key, score in tx.scores:
                    scores[key][round_] = scores[key].get(round_, 0) + score
            elif isinstance(tx, UpdateCommitment):
                counts["updates"][tx.public_key] += 1
            elif isinstance(tx, Rejection):
                counts["rejections"][tx.public_key] += 1
            elif isinstance(tx, SlashingEvidence):
                counts["slashings"][tx.offender] += 1
    slashed: dict[str, int] = defaultdict(int)
    for event in events:
        slashed[event["public_key"]] += event["stake_lost"]
    states = [_state_at(steps, r) for r in timeline]
    result = []
    for key in _participant_order(final.participants, indices):
        now = final.participants[key]
        stake_series: list[int | None] = []
        for r, state in zip(timeline, states, strict=True):
            p = None if state is None or r < joined.get(key, 0) else state.participants.get(key)
            stake_series.append(None if p is None else p.stake)
        cumulative: list[int | None] = []
        running = 0
        for r, stake in zip(timeline, stake_series, strict=True):
            running += rewards[key].get(r, 0)
            cumulative.append(None if stake is None else running)
        contribution = [_unquantise(scores[key].get(r)) for r in timeline]
        result.append(
            {
                "public_key": key.hex(),
                **_who(key, inputs),
                "num_examples": now.num_examples,
                "joined_round": joined.get(key, 0),
                "initial_stake": initial.get(key, now.stake),
                "stake": now.stake,
                "stake_change": now.stake - initial.get(key, now.stake),
                "rewards": sum(rewards[key].values()),
                "slashed": slashed[key.hex()],
                "updates": counts["updates"][key],
                "rejections": counts["rejections"][key],
                "slashings": counts["slashings"][key],
                "contribution": _unquantise(sum(scores[key].values()) if scores[key] else None),
                "reputation_bps": now.reputation_bps,
                "reputation": now.reputation_bps / BPS_DENOMINATOR,
                "score_debt_quanta": now.score_debt,
                "score_debt": now.score_debt / SCORE_SCALE,
                "harm_debt_quanta": now.harm_debt,
                "harm_debt": now.harm_debt / SCORE_SCALE,
                "active": now.active,
                "stake_by_round": stake_series,
                "rewards_by_round": cumulative,
                "contribution_by_round": contribution,
            }
        )
    return result


def _unquantise(score: int | None) -> float | None:
    return None if score is None else score / SCORE_SCALE


def _stake_lost(pre: ParticipantState | None, post: ParticipantState | None, block: Block) -> int:
    """Stake a participant lost in ``block`` beyond its explicit reward deltas: slashing."""
    if pre is None or post is None:
        return 0
    explicit = sum(
        delta
        for tx in block.transactions
        if isinstance(tx, RewardDeltas)
        for key, delta in tx.deltas
        if key == pre.public_key
    )
    return max(0, max(0, pre.stake + explicit) - post.stake)


def _describe_evidence(tx: SlashingEvidence) -> tuple[str, dict[str, Any]]:
    """A sentence saying what the offence was, and the evidence's checkable details (hex)."""
    evidence = tx.evidence
    if isinstance(evidence, HeaderPair):
        first, second = evidence.first.header, evidence.second.header
        return (
            f"signed two different block headers at height {first.height}",
            {
                "height": first.height,
                "first_block_hash": compute_block_hash(first).hex(),
                "second_block_hash": compute_block_hash(second).hex(),
            },
        )
    return (  # an AttestationPair: the codec admits no other evidence
        f"attested to two different blocks at height {evidence.first.height}",
        {
            "height": evidence.first.height,
            "first_block_hash": evidence.first.block_hash.hex(),
            "second_block_hash": evidence.second.block_hash.hex(),
        },
    )


def compute_events(
    inputs: ReportInputs, steps: Sequence[ReplayStep], genesis: Genesis
) -> list[dict[str, Any]]:
    """Rejected updates, holders' signed refusals, slashing (with its evidence), ejections and
    holders' app approvals, in ledger order.

    A slashing's ``stake_lost`` is what its block took from the offender beyond the block's
    explicit reward deltas (several offences of one key in one block: on the first).
    """
    events: list[dict[str, Any]] = []

    def add(block: Block, kind: str, key: PublicKey, reason: str, **more: Any) -> None:
        where = {"round": block.header.round, "height": block.header.height, "kind": kind}
        empty = {"slashing_kind": None, "evidence_kind": None, "evidence": None, "stake_lost": 0}
        who = {"public_key": key.hex(), **_who(key, inputs)}
        events.append({**where, **who, "reason": reason, **empty, **more})

    for prev, step in pairwise(steps):
        pre, block, post = prev.post, step.block, step.post
        charged: set[PublicKey] = set()
        for tx in block.transactions:
            if isinstance(tx, Rejection):
                add(block, "rejected", tx.public_key, tx.reason)
            elif isinstance(tx, Refusal):
                reason = f"refused to train ({tx.code}), signed by the holder: {tx.detail}"
                add(block, "holder-refused", tx.public_key, compute_printable(reason, 240))
            elif isinstance(tx, AppApproval):
                reason = (
                    f"approved app {tx.app_digest.hex()[:16]}… in place of "
                    f"{tx.replaces.hex()[:16]}… (its approval {tx.sequence}, fedchain "
                    f"{compute_printable(tx.fedchain_version, 40)})"
                )
                add(block, "app-approved", tx.public_key, reason)
            elif isinstance(tx, SlashingEvidence):
                reason, details = _describe_evidence(tx)
                key = tx.offender
                lost = 0
                if key not in charged:
                    charged.add(key)
                    lost = _stake_lost(pre.participants.get(key), post.participants.get(key), block)
                add(
                    block,
                    "slashed",
                    key,
                    reason,
                    slashing_kind=tx.kind,
                    evidence_kind=type(tx.evidence).__name__,
                    evidence=details,
                    stake_lost=lost,
                )
        for key, after in post.participants.items():
            before = pre.participants.get(key)
            if before is not None and before.active and not after.active:
                reason = (
                    f"stake {after.stake:,} fell below the minimum stake "
                    f"{genesis.rules.min_stake:,}"
                )
                add(block, "ejected", key, reason)
    return events
