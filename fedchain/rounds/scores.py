"""A round's contribution scores: the rule's, else the scorer's, else the aggregation weights.

One decision, written once: the coordinator calls these functions to score a round it
aggregates, and ``fedchain verify --scores`` (:mod:`fedchain.rounds.recheck`) calls the same
functions on the archived updates to re-check the scores on the ledger. Pure: no file, no
ledger, no clock; the scorer (a validation-loss utility, say) is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from fedchain.aggregation.round import aggregate_round
from fedchain.aggregation.rules import SCREENED_RULES, AggregationResult, RuleParams
from fedchain.aggregation.screened import StepTester, UpdateScorer
from fedchain.rounds.contribution import quantise_scores

Arrays = dict[str, np.ndarray]
Scorer = Callable[[Arrays, list[Arrays], list[float], int], np.ndarray]
"""(base model, accepted updates, their aggregation weights, round) -> one raw score each."""


@runtime_checkable
class StepTesting(Protocol):
    """A :data:`Scorer` that also measures a step's per-example validation-loss differences
    (:class:`fedchain.rounds.validation.RoundScorer`), for ``screened``'s paired step test."""

    def __call__(
        self, base: Arrays, updates: list[Arrays], weights: list[float], round_: int
    ) -> np.ndarray: ...

    def step_tester(self, base: Arrays) -> StepTester: ...


def bind_step_tester(scorer: Scorer | None, base: Arrays) -> StepTester | None:
    """``scorer``'s step tester for a round over ``base``, or None for a scorer without one
    (``screened`` then falls back to its scalar step tolerance)."""
    return scorer.step_tester(base) if isinstance(scorer, StepTesting) else None


def bind_scorer(scorer: Scorer, base: Arrays, round_: int) -> UpdateScorer:
    """``scorer`` for one round's base model, as a rule that scores to aggregate calls it."""

    def score(updates: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]) -> np.ndarray:
        return scorer(base, [dict(u) for u in updates], [float(w) for w in weights], round_)

    return score


def compute_aggregation(
    rule: str,
    params: RuleParams,
    base: Arrays,
    updates: list[Arrays],
    *,
    examples: Sequence[int],
    stakes: Sequence[int],
    reputations: Sequence[int],
    scorer: Scorer | None,
    round_: int,
) -> AggregationResult:
    """The round's aggregation of ``updates`` (accepted, in commitment order) over ``base``;
    a rule that scores the round to aggregate it (``screened``) gets ``scorer`` bound to it,
    and its step tester where it has one (:func:`bind_step_tester`)."""
    return aggregate_round(
        rule,
        params,
        updates,
        examples=examples,
        stakes=stakes,
        reputations=reputations,
        scorer=None if scorer is None else bind_scorer(scorer, base, round_),
        step_tester=bind_step_tester(scorer, base) if rule in SCREENED_RULES else None,
    )


def compute_raw_scores(
    result: AggregationResult,
    base: Arrays,
    updates: list[Arrays],
    scorer: Scorer | None,
    round_: int,
) -> np.ndarray:
    """One raw score per update: the rule's own (it scored the round to aggregate it), else
    the scorer's, else (no scorer configured) the aggregation weights."""
    if result.contributions is not None:
        return result.contributions
    weights = [float(w) for w in result.weights]
    if scorer is None:
        return np.array(weights)
    return scorer(base, updates, weights, round_)


def compute_quantised_scores(
    keys: Sequence[bytes], raw: Sequence[float] | np.ndarray
) -> tuple[tuple[bytes, int], ...]:
    """``raw`` as the ledger records it: (key, integer score) pairs, sorted by key. These
    decide the round's reward split, which the ledger holds to them."""
    return tuple(sorted(zip(keys, quantise_scores(raw), strict=True)))
