"""fedchain.rounds.scores: where a round's scores come from, and how the ledger records them.

Pre -> op -> post: a round's accepted updates and aggregation, then the scores. The same
functions serve the coordinator and ``verify --scores``, so these cases fix both.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedchain.aggregation.rules import RuleParams
from fedchain.errors import ConfigError
from fedchain.ledger.objects import SCORE_SCALE
from fedchain.rounds.scores import (
    bind_scorer,
    compute_aggregation,
    compute_quantised_scores,
    compute_raw_scores,
)

BASE = {"w": np.zeros(3, dtype=np.float32)}
UPDATES = [
    {"w": np.array([1.0, 0.0, 0.0], dtype=np.float32)},
    {"w": np.array([0.0, 1.0, 0.0], dtype=np.float32)},
    {"w": np.array([0.0, 0.0, 1.0], dtype=np.float32)},
]
LEDGER = {"examples": [10, 20, 30], "stakes": [1, 1, 1], "reputations": [10_000] * 3}


class RecordingScorer:
    """A scorer that returns fixed scores and records every call."""

    def __init__(self, scores: list[float]) -> None:
        self.scores = scores
        self.calls: list[tuple[dict[str, np.ndarray], int, list[float], int]] = []

    def __call__(self, base, updates, weights, round_):  # type: ignore[no-untyped-def]
        self.calls.append((base, len(updates), list(weights), round_))
        return np.array(self.scores[: len(updates)])


def aggregate(rule: str, scorer: RecordingScorer | None, round_: int = 3):  # type: ignore[no-untyped-def]
    return compute_aggregation(
        rule, RuleParams(), BASE, UPDATES, **LEDGER, scorer=scorer, round_=round_
    )


def test_weights_are_the_scores_when_no_scorer_is_configured() -> None:
    result = aggregate("fedavg", None)
    raw = compute_raw_scores(result, BASE, UPDATES, None, 3)
    assert raw.tolist() == [float(w) for w in result.weights]
    assert raw.tolist() == pytest.approx([10 / 60, 20 / 60, 30 / 60])


def test_the_scorer_scores_a_rule_that_does_not() -> None:
    scorer = RecordingScorer([0.5, 0.25, 0.125])
    result = aggregate("fedavg", scorer)
    assert scorer.calls == []  # a linear rule needs no scores to aggregate
    raw = compute_raw_scores(result, BASE, UPDATES, scorer, 3)
    assert raw.tolist() == [0.5, 0.25, 0.125]
    ((base, count, weights, round_),) = scorer.calls
    assert base is BASE and count == 3 and round_ == 3
    assert weights == [float(w) for w in result.weights]


def test_the_rules_own_scores_win_and_the_scorer_runs_once() -> None:
    scorer = RecordingScorer([0.5, 0.25, 0.125])
    result = aggregate("screened", scorer)
    assert result.contributions is not None
    raw = compute_raw_scores(result, BASE, UPDATES, scorer, 3)
    assert len(scorer.calls) == 1  # inside the rule, not again for the record
    assert raw is result.contributions


def test_bind_scorer_passes_the_rounds_base_and_round() -> None:
    scorer = RecordingScorer([1.0, 2.0])
    bound = bind_scorer(scorer, BASE, 7)
    assert bound(UPDATES[:2], np.array([0.25, 0.75])).tolist() == [1.0, 2.0]
    assert scorer.calls == [(BASE, 2, [0.25, 0.75], 7)]


def test_quantised_scores_are_integers_sorted_by_key() -> None:
    keys = [b"\x02" * 32, b"\x01" * 32, b"\x03" * 32]
    scores = compute_quantised_scores(keys, [0.5, -0.25, 1e-7])
    assert scores == (
        (b"\x01" * 32, -SCORE_SCALE // 4),
        (b"\x02" * 32, SCORE_SCALE // 2),
        (b"\x03" * 32, 0),  # 0.1 of a unit rounds to 0
    )


def test_invalid_non_finite_score_is_refused() -> None:
    with pytest.raises(ConfigError, match="finite"):
        compute_quantised_scores([b"\x01" * 32], [float("nan")])


def test_invalid_score_count_is_refused() -> None:
    with pytest.raises(ValueError):
        compute_quantised_scores([b"\x01" * 32, b"\x02" * 32], [0.5])
