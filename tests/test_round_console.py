"""``fedchain simulate``'s round lines: whether the model moved, accepted / left out / refused
counted apart, and why each update was left out or refused."""

from __future__ import annotations

from fedchain.aggregation.explain import AggregationExplanation
from fedchain.cli.round_lines import format_round
from fedchain.rounds.admission import Decision
from fedchain.rounds.coordinator import RoundOutcome
from fedchain.rounds.rewards import compute_round_payout

KEYS = [bytes([i]) * 32 for i in range(5)]


def outcome(explanation: AggregationExplanation | None) -> RoundOutcome:
    decisions = [Decision(10 + i, KEYS[i], True) for i in range(4)]
    decisions.append(Decision(14, KEYS[4], False, "bad signature on the update"))
    return RoundOutcome(
        round=7,
        decisions=decisions,
        head_height=7,
        final_height=6,
        scores={KEYS[0]: 120_000, KEYS[1]: 80_000, KEYS[2]: -60_000, KEYS[3]: 0},
        aggregation=explanation,
    )


def test_round_line_says_what_the_rule_did_and_why() -> None:
    explained = AggregationExplanation(
        moved=True,
        averaged=(KEYS[0], KEYS[1]),
        left_out=((KEYS[2], "harmful"), (KEYS[3], "useless")),
        note="averaged the helpful updates (validation-loss gain of each step: helpful +0.01)",
    )
    text = format_round(7, 20, outcome(explained), 0.9528, 3.25)
    lines = text.split("\n")
    assert lines[0] == (
        "round   7/20  acc 95.28%    3.2 s  model moved  accepted 2  left out 2  refused 1"
        "  head 7  final 6"
    )
    assert lines[1] == (
        "      left out, harmful (score below -0.25 x the round's mean positive score): "
        "node 12 -0.06"
    )
    assert lines[2] == (
        "      left out, useless (score within 0.05 x the round's mean positive score of zero): "
        "node 13 +0"
    )
    assert lines[3] == "      refused node 14: bad signature on the update"
    assert lines[4] == f"      rule: {explained.note}"


def test_round_line_of_a_frozen_round_says_the_model_stayed() -> None:
    explained = AggregationExplanation(
        moved=False,
        averaged=(),
        left_out=tuple((k, "frozen") for k in KEYS[:4]),
        note="model unchanged: every step raised the validation loss (gain of each step: all -0.1)",
    )
    text = format_round(7, 20, outcome(explained), 0.95, 1.0)
    assert "model unchanged  accepted 0  left out 4  refused 1" in text.split("\n")[0]
    (frozen,) = [line for line in text.split("\n") if line.startswith("      left out, frozen")]
    assert frozen.endswith("node 10 +0.12, node 11 +0.08, node 12 -0.06, node 13 +0")
    assert "raised the validation loss" in frozen


def test_round_line_without_the_ledger_or_with_nothing_admitted() -> None:
    assert format_round(3, 5, None, 0.5, 2.0) == "round   3/5  acc 50.00%    2.0 s"
    text = format_round(3, 5, outcome(None), 0.5, 2.0)
    assert "model unchanged  accepted 0  left out 0  refused 1" in text


def test_round_line_says_who_repaid_score_debt_instead_of_being_paid() -> None:
    explained = AggregationExplanation(moved=True, averaged=tuple(KEYS[:4]), left_out=(), note="")
    result = outcome(explained)
    result.payout = compute_round_payout(
        0,
        pool=10_000,
        scores=result.scores.items(),
        moved=True,
        min_score=10_000,
        debts={KEYS[1]: 100_000},  # node 11's +0.08 repays part of its debt
    )
    lines = format_round(7, 20, result, 0.95, 1.0).split("\n")
    assert "80000 quanta of positive scores repaid the score debt of 1 client" in lines[-2]
    assert lines[-1] == (
        "      score debt: node 11 scored above 0 but first repaid the negative scores of "
        "earlier rounds"
    )
