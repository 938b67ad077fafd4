"""Contribution scores of a round, measured on the coordinator's validation split.

The pure methods live in :mod:`fedchain.rounds.contribution`; this module supplies their utility:
minus a coalition model's loss on the validation split, evaluated with torch. Loss, not accuracy:
accuracy on a few hundred examples moves in steps, and GTG-Shapley tracks exact Shapley far
better on the smooth loss. Coalitions are not renormalised (each member moves the model by its
real share), so a free rider's zero update is an exact dummy and scores 0
(experiments/results/contribution_quality.md: Pearson 0.9987 at 8.1 % of exact's evaluations).
The coordinator uses it to score each round, and ``fedchain verify --scores`` uses the same
function on the archived updates to re-check the scores on the ledger.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedchain.aggregation.weights import make_rule_params
from fedchain.config import CONTRIBUTION_NEEDS_VALIDATION, RunConfig
from fedchain.data.sources import ArrayDataset
from fedchain.errors import RegistryError
from fedchain.ledger.objects import SCORE_SCALE
from fedchain.ledger.verify import VerifyReport
from fedchain.rounds.contribution import compute_scores, make_coalition_utility
from fedchain.rounds.scores import compute_aggregation, compute_quantised_scores, compute_raw_scores
from fedchain.runs.prepare import load_split
from fedchain.runs.registry import load_model, load_update

Arrays = dict[str, np.ndarray]


class RoundScorer:
    """``scorer(base, updates, weights, round) -> raw scores`` for one configured method.

    Its methods import torch (learning.architectures, learning.training: ~3 s) when called, not
    at the top: fedchain/cli/ledger.py imports this module for every ``ledger`` command.
    """

    def __init__(self, config: RunConfig, validation: ArrayDataset) -> None:
        from fedchain.learning.architectures import build_model

        self.method, self.seed = config.contribution, config.seed
        self.validation = validation
        shape, classes = tuple(validation.x.shape[1:]), len(validation.classes)
        self.net = build_model(config.model, shape, classes, seed=0)
        self.evaluations = 0

    def _utility(self, arrays: dict[str, np.ndarray]) -> float:
        from fedchain.learning.architectures import load_numpy_state
        from fedchain.learning.training import evaluate

        load_numpy_state(self.net, arrays)
        self.evaluations += 1
        return -evaluate(self.net, self.validation).loss

    def __call__(
        self, base: Arrays, updates: list[Arrays], weights: Sequence[float], round_: int
    ) -> np.ndarray:
        from fedchain.learning.training import derive_seed

        utility = None
        if self.method in CONTRIBUTION_NEEDS_VALIDATION:
            utility = make_coalition_utility(
                base, updates, weights, self._utility, renormalise=False
            )
        return compute_scores(
            self.method,
            n=len(updates),
            utility=utility,
            updates=updates,
            weights=weights,
            seed=derive_seed(self.seed, round_),
        )


SCORE_TOLERANCE = 0.005
"""Largest difference, in score units (validation loss), between a recomputed and a recorded
score: floating point may differ across machines; rewards never do — they are paid from the
recorded, quantised scores and replayed bit-exactly by the ledger."""


@dataclass(frozen=True)
class ScoreCheck:
    rounds: int
    max_difference: float  # score units
    problems: tuple[str, ...]


def recheck_scores(
    run_dir: Path, report: VerifyReport, config: RunConfig, tolerance: float = SCORE_TOLERANCE
) -> ScoreCheck:
    """Recompute every round's contribution scores from the archived updates and compare them
    with the scores on the ledger. Needs a verified ``report`` of the run's ledger."""
    scorer = None if config.contribution == "none" else RoundScorer(config, load_split(config)[1])
    params = make_rule_params(config)
    problems: list[str] = []
    worst = 0.0
    for record in report.round_records:
        round_ = record.model_version.round
        if record.contribution is None:
            problems.append(f"round {round_}: no contribution record")
            continue
        keys = [c.public_key for c in record.commitments]
        try:
            base = load_model(run_dir, record.model_version.parent_hash)
            updates = [load_update(run_dir, c.update_hash) for c in record.commitments]
        except RegistryError as e:
            problems.append(f"round {round_}: {e}")
            continue
        result = compute_aggregation(
            record.model_version.rule,
            params,
            base,
            updates,
            examples=[c.num_examples for c in record.commitments],
            stakes=[record.participants[k].stake for k in keys],
            reputations=[record.participants[k].reputation_bps for k in keys],
            scorer=scorer,
            round_=round_,
        )
        raw = compute_raw_scores(result, base, updates, scorer, round_)
        expected = dict(compute_quantised_scores(keys, raw))
        recorded = dict(record.contribution.scores)
        if set(expected) != set(recorded):
            problems.append(f"round {round_}: scores recorded for other clients than committed")
            continue
        difference = max(abs(expected[k] - recorded[k]) for k in keys) / SCORE_SCALE
        worst = max(worst, difference)
        if difference > tolerance:
            problems.append(
                f"round {round_}: recomputed scores differ by {difference:.4g} "
                f"(tolerance {tolerance})"
            )
    return ScoreCheck(len(report.round_records), worst, tuple(problems))
