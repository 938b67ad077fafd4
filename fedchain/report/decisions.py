"""What each round decided, for the report: did the model move, whom the rule left out and why,
and what became of the round's reward pool.

Pure, like :mod:`fedchain.report.build` (which calls it per round). The ledger is the truth for
what it holds: which admitted updates entered the model (an :class:`UpdateCommitment` whose
update hash the round's :class:`ModelVersion` lists), whether the model changed (its hash against
its parent's), the scores and the rewards paid. Why the rule left an update out is not on the
ledger: it comes from the coordinator's ``metrics.json`` (``left_out``, with reason codes of
:data:`fedchain.aggregation.explain.LEFT_OUT_REASONS`, and the rule's ``note``), and is shown as
"not recorded" for a run made before it was written there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fedchain.aggregation.explain import LEFT_OUT_REASONS
from fedchain.ledger.objects import (
    SCORE_SCALE,
    ContributionRecord,
    ModelVersion,
    RewardDeltas,
    UpdateCommitment,
)
from fedchain.report.inputs import RoundMetrics

__all__ = ["NOT_RECORDED", "compute_pool_decision", "compute_round_decision"]

NOT_RECORDED = "not recorded"
"""The reason shown for an update left out in a run whose ``metrics.json`` does not say why."""


def compute_round_decision(
    txs: Sequence[object],
    metrics: RoundMetrics | None,
    who: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """One round's decisions from its transactions (all of its blocks) and metrics row.

    ``who``: hex key -> the participant's ``name`` and ``fingerprint`` (the report's naming).
    Returns ``admitted`` (updates the ledger admitted), ``accepted`` (of those, averaged into the
    model), ``left_out`` (admitted but left out by the rule), ``model_moved``,
    ``left_out_updates`` (one entry per update left out: who, reason code, why, score),
    ``rule_note`` and ``pool`` (:func:`compute_pool_decision`).
    """
    commitments = [tx for tx in txs if isinstance(tx, UpdateCommitment)]
    models = [tx for tx in txs if isinstance(tx, ModelVersion)]
    used = {h for tx in models for h in tx.update_hashes}
    averaged = [c for c in commitments if c.update_hash in used]
    out = [c for c in commitments if c.update_hash not in used]
    scores = {
        key.hex(): score
        for tx in txs
        if isinstance(tx, ContributionRecord)
        for key, score in tx.scores
    }
    reasons = dict(metrics.left_out) if metrics is not None and metrics.left_out else {}
    left_out = []
    for c in out:
        key = c.public_key.hex()
        code = reasons.get(key)
        score = scores.get(key)
        left_out.append(
            {
                "public_key": key,
                "name": who.get(key, {}).get("name", key[:16]),
                "fingerprint": who.get(key, {}).get("fingerprint", key[:16]),
                "reason": code or NOT_RECORDED,
                "why": LEFT_OUT_REASONS.get(code or "", NOT_RECORDED),
                "score": None if score is None else score / SCORE_SCALE,
            }
        )
    # no model version: nothing was admitted, the model stayed
    moved = bool(models) and models[-1].model_hash != models[-1].parent_hash
    return {
        "admitted": len(commitments),
        "accepted": len(averaged),
        "left_out": len(out),
        "model_moved": moved,
        "left_out_updates": left_out,
        "rule_note": None if metrics is None else metrics.note,
        "pool": compute_pool_decision(txs),
    }


def compute_pool_decision(txs: Sequence[object]) -> dict[str, Any]:
    """What became of the round's reward pool, read from its :class:`RewardDeltas`.

    ``decision``: ``"paid"`` when the round's blocks hold reward deltas, else ``"not paid"``;
    ``paid``: the units paid; ``reason``: None for now.

    The place for the payout rule's word: a rule that carries a round's pool to a later round
    or withholds it records that on the ledger; this function is where ``decision`` becomes
    ``"carried"`` or ``"withheld"`` and ``reason`` says why (to be wired when that rule exists).
    """
    deltas = [d for tx in txs if isinstance(tx, RewardDeltas) for _, d in tx.deltas]
    paid = sum(d for d in deltas if d > 0)
    return {
        "decision": "paid" if deltas else "not paid",
        "paid": paid,
        "reason": None,
    }
