"""Why a round's aggregation did what it did: reason codes, and the result told by client key.

:class:`~fedchain.aggregation.rules.AggregationResult` gives, per update, an empty reason (it
entered the model) or a code of :data:`LEFT_OUT_REASONS`; :func:`explain_aggregation` turns that
into an :class:`AggregationExplanation` by client key, which the coordinator keeps in its round
outcome, the console prints, and :func:`encode_explanation` writes into ``metrics.json``, where
the report reads it. Pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fedchain.aggregation.rules import AggregationResult
from fedchain.aggregation.screened import HARMFUL_SHARE, NEGLIGIBLE_SHARE, NORM_SCREEN
from fedchain.errors import ConfigError

__all__ = [
    "LEFT_OUT_REASONS",
    "AggregationExplanation",
    "encode_explanation",
    "explain_aggregation",
]

LEFT_OUT_REASONS = {
    "norm": "update longer than {limit} times the round's median update norm".format(
        limit=f"{NORM_SCREEN:g}"
    ),
    "harmful": f"score below -{HARMFUL_SHARE:g} x the round's mean positive score",
    "useless": f"score within {NEGLIGIBLE_SHARE:g} x the round's mean positive score of zero",
    "weight": "weight 0 (no examples, stake or reputation)",
    "krum": "not among Multi-Krum's most central updates",
    "frozen": "every step the rule tried raised the validation loss",
}
"""Why a rule left an update out, by code (the code is what ``metrics.json`` and the report
record; the text is what they show)."""


@dataclass(frozen=True)
class AggregationExplanation:
    """What a round's rule did, by client key, for the console, ``metrics.json`` and the report.

    moved: whether the model changed. averaged: the keys whose update entered the model (in
    the order the updates came). left_out: (key, reason code of :data:`LEFT_OUT_REASONS`) for
    each admitted update the rule did not use. note: the rule's own sentence (may be empty).
    """

    moved: bool
    averaged: tuple[bytes, ...]
    left_out: tuple[tuple[bytes, str], ...]
    note: str = ""


def explain_aggregation(result: AggregationResult, keys: Sequence[bytes]) -> AggregationExplanation:
    """``result`` told by client key (``keys[i]``: the key of update ``i``)."""
    if len(keys) != len(result.weights):
        raise ConfigError(f"{len(keys)} keys for {len(result.weights)} updates")
    reasons = result.reasons or tuple("" for _ in keys)
    chosen = set(result.selected)
    return AggregationExplanation(
        moved=result.moved,
        averaged=tuple(keys[i] for i in result.selected),
        left_out=tuple(
            (keys[i], reasons[i] or "weight") for i in range(len(keys)) if i not in chosen
        ),
        note=result.note,
    )


def encode_explanation(explanation: AggregationExplanation) -> dict[str, Any]:
    """The explanation as a ``metrics.json`` round row's fields: ``accepted`` (how many updates
    were averaged into the model), ``moved``, ``averaged`` (hex keys), ``left_out`` (hex key ->
    reason code) and ``note``."""
    return {
        "accepted": len(explanation.averaged),
        "moved": explanation.moved,
        "averaged": [key.hex() for key in explanation.averaged],
        "left_out": {key.hex(): reason for key, reason in explanation.left_out},
        "note": explanation.note,
    }
