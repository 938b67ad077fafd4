"""The scores re-check: recompute every round's contribution scores and compare with the ledger.

``fedchain verify --scores`` recomputes each round from the archived updates with the same pure
decisions the coordinator used (:mod:`fedchain.rounds.scores`) and the same scorer
(:class:`fedchain.rounds.validation.RoundScorer`: minus a coalition model's loss on the
validation split), and compares the quantised result with the scores on the ledger, within
:data:`SCORE_TOLERANCE`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedchain.aggregation.weights import make_rule_params
from fedchain.config import RunConfig
from fedchain.errors import RegistryError
from fedchain.ledger.objects import SCORE_SCALE
from fedchain.ledger.verify import VerifyReport
from fedchain.rounds.scores import compute_aggregation, compute_quantised_scores, compute_raw_scores
from fedchain.runs.prepare import load_split
from fedchain.runs.registry import load_model, load_update

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
    scorer = None
    if config.contribution != "none":
        # imported here to keep torch (~3 s) out of CLI start-up: cli/ledger imports this module
        from fedchain.rounds.validation import RoundScorer

        scorer = RoundScorer(config, load_split(config)[1])
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
