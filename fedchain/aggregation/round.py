"""A round's aggregation from the ledger values of its accepted clients: weights, then the rule.

The one entry point the coordinator and ``fedchain verify`` share, so both get the same weights
and the same model (:func:`aggregate_round`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fedchain.aggregation.kernels import AnyArray
from fedchain.aggregation.rules import LINEAR_RULES, SCREENED_RULES, AggregationResult, aggregate
from fedchain.aggregation.screened import StepTester, UpdateScorer, aggregate_screened
from fedchain.aggregation.weights import RuleParams, compute_weights
from fedchain.errors import ConfigError

__all__ = ["aggregate_round"]


def aggregate_round(
    rule: str,
    params: RuleParams | None,
    updates: Sequence[Mapping[str, AnyArray]],
    *,
    examples: Sequence[int],
    stakes: Sequence[int],
    reputations: Sequence[int],
    scorer: UpdateScorer | None = None,
    step_tester: StepTester | None = None,
) -> AggregationResult:
    """A round's aggregation from the ledger values of its accepted clients (in their order).

    Linear rules weigh by their own formula; robust rules estimate with examples x stake^beta
    weights; ``screened`` weighs like ``reputation`` and needs ``scorer`` (the round's
    contribution scores) and, for its paired step test, ``step_tester`` (else it falls back to
    the tolerance alone; see :func:`~fedchain.aggregation.screened.aggregate_screened`). The
    coordinator calls this, and so does anyone re-checking a round from its archived updates,
    so both get the same weights and the same model.
    """
    if rule in SCREENED_RULES:
        if scorer is None:
            raise ConfigError(
                f"rule {rule!r} needs contribution scores: choose a contribution method"
            )
        weights = compute_weights(
            "reputation", examples=examples, stakes=stakes, reputations=reputations, params=params
        )
        return aggregate_screened(updates, weights, scorer, step_tester=step_tester)
    weight_rule = rule if rule in LINEAR_RULES else "examples-stake"
    weights = compute_weights(
        weight_rule, examples=examples, stakes=stakes, reputations=reputations, params=params
    )
    return aggregate(updates, weights, rule=rule, params=params)
