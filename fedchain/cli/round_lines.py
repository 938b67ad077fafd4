"""A simulated round's console lines: accuracy, what the aggregation rule did and why, what the
ledger refused, and what the payout rule did with the pool (``fedchain simulate``)."""

from __future__ import annotations

from fedchain.aggregation.explain import LEFT_OUT_REASONS
from fedchain.ledger.objects import SCORE_SCALE
from fedchain.rounds.admission import brief_reason
from fedchain.rounds.coordinator import RoundOutcome

__all__ = ["format_round"]


def format_round(
    round_: int, rounds: int, outcome: RoundOutcome | None, accuracy: float, seconds: float
) -> str:
    """A round's console lines: accuracy, whether the model moved, how many updates were
    accepted (averaged into the model), left out by the aggregation rule and refused by the
    ledger's admission; then one line per update left out or refused, saying why, the rule's
    own sentence and the payout rule's decision on the pool (paid, paid in part or carried, and
    why)."""
    line = f"round {round_:>3}/{rounds}  acc {accuracy:6.2%}  {seconds:5.1f} s"
    if outcome is None:
        return line
    explained = outcome.aggregation
    nodes = {d.public_key: d.node_id for d in outcome.decisions if d.public_key is not None}
    if explained is None:  # nothing admitted: the rule did not run
        line += f"  model unchanged  accepted 0  left out 0  refused {len(outcome.rejected)}"
    else:
        moved = "model moved" if explained.moved else "model unchanged"
        line += (
            f"  {moved}  accepted {len(explained.averaged)}  left out {len(explained.left_out)}"
            f"  refused {len(outcome.rejected)}"
        )
    line += f"  head {outcome.head_height}  final {outcome.final_height}"
    by_reason: dict[str, list[str]] = {}
    for key, code in explained.left_out if explained is not None else ():
        score = outcome.scores.get(key)
        scored = "" if score is None else f" {score / SCORE_SCALE:+.4g}"
        by_reason.setdefault(code, []).append(f"node {nodes.get(key, '?')}{scored}")
    for code, who in by_reason.items():  # one line per reason: its meaning, then who and score
        line += f"\n      left out, {code} ({LEFT_OUT_REASONS.get(code, code)}): {', '.join(who)}"
    for decision in outcome.rejected:  # in full on the ledger and in log.txt
        line += f"\n      refused node {decision.node_id}: {brief_reason(decision.reason)}"
    if explained is not None and explained.note:
        line += f"\n      rule: {explained.note}"
    if outcome.payout is not None:
        p = outcome.payout
        line += (
            f"\n      pool: {p.decision}, {p.paid:,} of {p.available:,} units paid, "
            f"{p.carried:,} carried ({p.reason})"
        )
        if p.repaying:  # who was not paid (in full) for a positive score, and why
            owing = ", ".join(f"node {nodes.get(key, '?')}" for key in p.repaying)
            line += (
                f"\n      score debt: {owing} scored above 0 but first repaid the negative "
                "scores of earlier rounds"
            )
    return line
