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
    Rules,
    UpdateCommitment,
)
from fedchain.report.inputs import RoundMetrics
from fedchain.rounds.rewards import compute_round_payout, has_model_moved

__all__ = ["NOT_RECORDED", "compute_pool_decision", "compute_round_decision"]

NOT_RECORDED = "not recorded"
"""The reason shown for an update left out in a run whose ``metrics.json`` does not say why."""


def compute_round_decision(
    txs: Sequence[object],
    metrics: RoundMetrics | None,
    who: Mapping[str, Mapping[str, Any]],
    *,
    carried: int | None = None,
    rules: Rules | None = None,
    debts: Mapping[bytes, int] | None = None,
) -> dict[str, Any]:
    """One round's decisions from its transactions (all of its blocks) and metrics row.

    ``who``: hex key -> the participant's ``name`` and ``fingerprint`` (the report's naming).
    Returns ``admitted`` (updates the ledger admitted), ``accepted`` (of those, averaged into the
    model), ``left_out`` (admitted but left out by the rule), ``model_moved``,
    ``left_out_updates`` (one entry per update left out: who, reason code, why, score),
    ``rule_note`` and ``pool`` (:func:`compute_pool_decision`, from the pool ``carried`` into
    the round, the participants' score ``debts`` as it began and the genesis ``rules``).
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
    pool = compute_pool_decision(txs, carried=carried, rules=rules, debts=debts)
    if "repaying_debt" in pool:  # named as the report names participants
        pool["repaying_debt"] = [
            {"public_key": key, "name": who.get(key, {}).get("name", key[:16])}
            for key in pool["repaying_debt"]
        ]
    return {
        "admitted": len(commitments),
        "accepted": len(averaged),
        "left_out": len(out),
        "model_moved": moved,
        "left_out_updates": left_out,
        "rule_note": None if metrics is None else metrics.note,
        "pool": pool,
    }


def compute_pool_decision(
    txs: Sequence[object],
    *,
    carried: int | None = None,
    rules: Rules | None = None,
    debts: Mapping[bytes, int] | None = None,
) -> dict[str, Any]:
    """What became of the round's reward pool: the ledger's payout rule
    (:func:`~fedchain.rounds.rewards.compute_round_payout`) re-run on the round's model version
    and scores, from the pool ``carried`` into the round (the state before its record's block).

    ``decision``: ``"paid"`` (all available units), ``"paid in part"`` or ``"carried"`` (the
    round has a contribution record), ``"no record"`` (nothing scored: the pool is not touched);
    ``paid``: the units the round's :class:`RewardDeltas` pay (the ledger's word, which the
    replay held to the rule); ``available`` and ``carried`` (to the next round) in units;
    ``reason``: why, in words; ``withheld_score``: the positive score (validation-loss units)
    that repaid score debt instead of being paid (``debts``: each participant's score debt as
    the round began, quanta; missing: 0), and ``repaying_debt`` the hex keys whose positive
    score it was. Without ``rules`` (or ``carried``) only ``paid`` is known and
    ``decision`` is ``"paid"`` or ``"not paid"``.
    """
    deltas = [d for tx in txs if isinstance(tx, RewardDeltas) for _, d in tx.deltas]
    paid = sum(d for d in deltas if d > 0)
    records = [tx for tx in txs if isinstance(tx, ContributionRecord)]
    models = [tx for tx in txs if isinstance(tx, ModelVersion)]
    if rules is None or carried is None:
        return {"decision": "paid" if deltas else "not paid", "paid": paid, "reason": None}
    if not records or not models:
        return {
            "decision": "no record",
            "paid": paid,
            "available": carried,
            "carried": carried,
            "reason": "no contribution record this round: the pool is not touched",
        }
    version = models[-1]
    payout = compute_round_payout(
        carried,
        pool=rules.reward_per_round,
        scores=records[-1].scores,
        moved=has_model_moved(version.update_hashes, version.model_hash, version.parent_hash),
        min_score=rules.payout_min_score,
        debts=debts,
    )
    return {
        "decision": payout.decision,
        "paid": paid,
        "available": payout.available,
        "carried": payout.carried,
        "reason": payout.reason,
        "withheld_score": payout.withheld / SCORE_SCALE,
        "repaying_debt": [key.hex() for key in payout.repaying],
    }
