"""The scores re-check: recompute every round's contribution scores and compare with the ledger.

``fedchain verify --scores`` recomputes each round from the archived updates with the same pure
decisions the coordinator used (:mod:`fedchain.rounds.scores`) and the same scorer
(:class:`fedchain.rounds.validation.RoundScorer`: minus a coalition model's loss on the
validation split), and compares the quantised result with the scores on the ledger.

It also re-aggregates each round: the round's rule (the ``ModelVersion``'s), the run's rule
parameters and the weights the ledger gives (example counts from the commitments, stakes and
reputations as the round began) over the archived updates, added to the parent model
(:func:`compute_aggregated_model`, the coordinator's formula). The result must hash to the
``ModelVersion``'s model hash, and the updates the rule used must be exactly the ones it lists:
a model that is not the aggregation of its round's updates (a tampered model file and its
``ModelVersion``, or a ``ModelVersion`` listing no updates) fails. The comparison is exact:
aggregation is float32 arithmetic over the same updates in the same order, bit-identical on the
machine that ran it (the default run's 20 rounds all match); a machine whose float reductions
differ, or a ``screened`` round whose selection sits within float noise of its threshold, can
report a round falsely, and the message gives the largest difference so that one can tell float
noise (about 1e-7) from a change. A round whose updates are not all archived cannot be
re-aggregated or rescored, and says so; a round the federation's retention rule no longer keeps
(``Rules.update_archive_rounds``: the last K rounds, or none) and whose updates are gone is
"not archived by policy" (:attr:`ScoreCheck.not_archived`), not a problem, and is not
re-checked: with ``last K`` only the ledger head's last K rounds are re-checked, with ``none``
none are (the plain ledger checks still cover every round).

Floating point may differ across machines (thread counts, vector units and BLAS kernels change
the order of float32 reductions), so the comparison has a tolerance; rewards never differ, since
they are paid from the recorded, quantised scores and replayed bit-exactly by the ledger. The
tolerance is what limits a dishonest coordinator: any recorded score within it of the honest
one passes, and the reward split follows the recorded scores. A fixed 0.005 let a late round's
scores (0.002-0.07 in the default run) move by more than the smallest of them, enough to double
a reward. So the tolerance is relative to the round (:func:`compute_score_tolerances`)::

    |recorded - recomputed| <= max(SCORE_TOLERANCE_QUANTA / SCORE_SCALE,
                                   SCORE_TOLERANCE_RELATIVE * largest positive recomputed score)

in score units, per score, and 0 for a score recomputed as exactly 0.0. The recomputed scores
set the scale, not the recorded ones, so inflating one recorded score does not widen its own
tolerance. The scale is the largest POSITIVE score (0 when none is positive, so the floor
applies), not the largest |score|: negative scores are paid nothing, so the reward split's scale
is set by the positive ones alone, and one harmful client scoring -0.24 would otherwise widen
every score's tolerance to 24 quanta, enough to move a split of two 0.002 scores from
5000/5000 to 5060/4940. The constants come from
``experiments/score_tolerance.py`` (``experiments/results/score_tolerance.md``), which recomputed
the default run under five configurations that reorder float reductions (1 and 2 torch threads,
ATen's scalar kernels instead of AVX2, oneDNN and MKL held to SSE4.1, oneDNN off): raw scores
moved by at most 1.2e-7 score units (0.12 of a quantum) whatever the round's scale (0.0012 to
0.16: the noise is the float32 loss's last bits, not a fraction of the score), quantised scores
by at most one quantum (a rounding boundary crossed, once in 200 scores), and the exact zeros
were the same everywhere. Two quanta hold raw differences up to 17 times the largest measured;
the relative term only widens the tolerance in rounds whose largest positive score exceeds
0.02, where the measured differences are below 1.9e-6 of it (50 times margin), and there it
bounds a client's reward movement to about ``(n + 1) * SCORE_TOLERANCE_RELATIVE`` of the pool
(n clients), since the split divides by the sum of positive scores, at least the largest.

What the tolerance cannot bound: where the floor applies, a nudge of two quanta per score moves
a reward by up to ``pool * 2e-6 * (n + 1) / (sum of positive scores)``; in the default run's
round 19 (positive scores summing to 0.0004) that bound is about 560 of 10,000 units, and the
largest movement a nudge inside the tolerance achieves on that round's actual scores is 70
(``experiments/results/score_tolerance.md``). Honest float noise
of the same size would move it as much: paying a split of small, float-derived scores is that
ill-conditioned, and only the reward rule (for example, no split below a minimum sum) can bound
it.

A limit the tolerance cannot remove: GTG-Shapley's truncations compare utility differences with
thresholds, so a machine whose loss differs in the last bits can, when a comparison sits within
that noise of its threshold, truncate differently and move a score by a jump; ``verify --scores``
then reports that round (a false alarm, named by round).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedchain.aggregation.rules import AggregationResult, RuleParams
from fedchain.aggregation.weights import make_rule_params
from fedchain.config import RunConfig
from fedchain.crypto.hashing import compute_update_hash
from fedchain.crypto.identity import fingerprint
from fedchain.errors import RegistryError
from fedchain.ledger.objects import SCORE_SCALE, ModelRecord
from fedchain.ledger.verify import RoundRecord, VerifyReport
from fedchain.rounds.scores import (
    Scorer,
    compute_aggregation,
    compute_quantised_scores,
    compute_raw_scores,
)
from fedchain.runs.archive import (
    UpdateArchive,
    compute_archive_floor,
    describe_archive_policy,
    get_archive_rule,
)
from fedchain.runs.prepare import load_split
from fedchain.runs.registry import load_model

Arrays = dict[str, np.ndarray]

SCORE_TOLERANCE_QUANTA = 2
"""The tolerance's floor, in quanta (1 / SCORE_SCALE score units): a score recomputed a hair
either side of a rounding boundary quantises one quantum away (measured once in 200); two hold
raw differences up to 2e-6, 17 times the largest measured."""

SCORE_TOLERANCE_RELATIVE = 1e-4
"""The tolerance per score, as a fraction of the round's largest positive recomputed score (50
times the largest relative difference measured where it applies; see the module docstring)."""


@dataclass(frozen=True)
class ScoreCheck:
    rounds: int
    max_difference: float  # score units
    problems: tuple[str, ...]
    max_tolerance_used: float = 0.0  # the largest difference / its round's tolerance
    models_matched: int = 0  # rounds whose re-aggregated model is the ModelVersion's
    not_archived: tuple[int, ...] = ()
    """Rounds not re-checked because the federation's retention rule no longer keeps their
    updates and they are gone (``fedchain.runs.archive``): not a problem."""
    policy: str = "all rounds"  # the retention rule, described


@dataclass(frozen=True)
class RoundScores:
    """One round recomputed: the committed keys (block order), their raw recomputed scores, and
    the scores on the ledger; or ``problem`` when it could not be recomputed."""

    round: int
    keys: tuple[bytes, ...] = ()
    raw: tuple[float, ...] = ()
    recorded: Mapping[bytes, int] | None = None
    problem: str | None = None
    model_problem: str | None = None
    """Why the round's model is not the re-aggregation of its updates (None: it is, or it was
    not re-aggregated: see ``model_checked``)."""
    model_checked: bool = False
    not_archived: bool = False  # its updates are gone, as the retention rule allows


def compute_score_tolerances(recomputed: Mapping[bytes, float]) -> dict[bytes, float]:
    """Each score's tolerance, in score units, from the round's raw recomputed scores.

    ``max(SCORE_TOLERANCE_QUANTA / SCORE_SCALE, SCORE_TOLERANCE_RELATIVE * largest positive
    score)`` (the floor alone when no score is positive: a negative score, however large, never
    widens the tolerance; see the module docstring), except for a score recomputed as exactly
    0.0, whose tolerance is 0: such a score is the outcome of a decision (a truncated
    GTG-Shapley round or permutation tail, a dummy client whose update changes nothing, an
    update the rule screened out), not of float arithmetic, so every machine gets exactly 0; and
    any positive score recorded for it would be paid, the whole pool when the round's every
    score is 0.
    """
    largest = max((v for v in recomputed.values() if v > 0.0), default=0.0)
    tolerance = max(SCORE_TOLERANCE_QUANTA / SCORE_SCALE, SCORE_TOLERANCE_RELATIVE * largest)
    return {k: 0.0 if v == 0.0 else tolerance for k, v in recomputed.items()}


def describe_score_tolerance() -> str:
    return (
        f"tolerance per round: max({SCORE_TOLERANCE_QUANTA} quanta, "
        f"{SCORE_TOLERANCE_RELATIVE:g} x its largest positive score); 0 for a score recomputed as 0"
    )


def make_scorer(config: RunConfig, report: VerifyReport | None = None) -> Scorer | None:
    """The run's validation scorer (None when it scores without one), with the model the
    verified ``report``'s genesis records (none: the one ``config`` describes)."""
    if config.contribution == "none":
        return None
    # imported here to keep torch (~3 s) out of CLI start-up: cli/ledger imports this module
    from fedchain.rounds.validation import RoundScorer

    return RoundScorer(config, load_split(config)[1], _model_record(report))


def _model_record(report: VerifyReport | None) -> ModelRecord | None:
    if report is None or report.state is None:
        return None
    return report.state.genesis.rules.model


def compute_aggregated_model(base: Arrays, result: AggregationResult) -> Arrays:
    """The round's new global model: ``base`` plus the aggregated update, in ``base``'s dtypes
    (the coordinator's formula, ``Coordinator._aggregate``)."""
    return {
        name: (base[name] + delta).astype(base[name].dtype, copy=False)
        for name, delta in result.arrays.items()
    }


def check_round_model(
    record: RoundRecord, base: Arrays, result: AggregationResult, run_dir: Path
) -> str | None:
    """Why ``record``'s ModelVersion is not the re-aggregation ``result`` of its round's archived
    updates over ``base`` (None when it is): another set of updates used, or another model (with
    the largest difference from the stored model file, when there is one)."""
    version, round_ = record.model_version, record.model_version.round
    used = tuple(sorted({record.commitments[i].update_hash for i in result.selected}))
    if used != tuple(version.update_hashes):
        return (
            f"round {round_}: its ModelVersion lists {len(version.update_hashes)} updates, but "
            f"the rule {version.rule!r} uses {len(used)} of the round's archived updates"
            + ("" if set(version.update_hashes) == set(used) else " (other ones)")
        )
    model = compute_aggregated_model(base, result)
    recomputed = compute_update_hash(model)
    if recomputed == version.model_hash:
        return None
    try:
        stored = load_model(run_dir, version.model_hash)
        difference = max(
            float(np.max(np.abs(stored[n].astype(np.float64) - model[n].astype(np.float64))))
            for n in model
        )
        how = f"; largest difference {difference:.3g}"
    except (RegistryError, KeyError, ValueError):
        how = ""
    return (
        f"round {round_}: its model {version.model_hash.hex()[:16]} is not the aggregation of its "
        f"updates (re-aggregated: {recomputed.hex()[:16]}{how})"
    )


def make_tensor_order(
    config: RunConfig, scorer: Scorer | None, record: ModelRecord | None = None
) -> tuple[str, ...]:
    """The run's model tensors in the model's order (the genesis record's ``trainable``): the
    order of the initial model, hence of every model a coordinator that never restarted holds
    and of the updates its clients send. The aggregation kernels pack small tensors in that
    order, and a model file keeps none, so re-aggregating bit for bit needs it
    (:mod:`fedchain.aggregation.kernels`, "known wart")."""
    if record is not None and record.trainable:
        return record.trainable
    # imported here to keep torch (~3 s) out of CLI start-up: cli/ledger imports this module
    from fedchain.learning.architectures import trainable_names

    net = getattr(scorer, "net", None)
    if net is None:
        from fedchain.learning.record import model_for_run

        validation = load_split(config)[1]
        shape, classes = tuple(validation.x.shape[1:]), len(validation.classes)
        net = model_for_run(config, record, shape, classes)
    return trainable_names(net)


def _in_order(
    base: Arrays, updates: list[Arrays], order: tuple[str, ...]
) -> tuple[Arrays, list[Arrays]]:
    """``base`` and ``updates`` with their tensors in ``order`` (as loaded when the names are
    other than ``order``'s: the hash comparison then fails on its own)."""
    if set(order) != set(base) or any(set(u) != set(order) for u in updates):
        return base, updates
    return {n: base[n] for n in order}, [{n: u[n] for n in order} for u in updates]


def _aggregate(
    record: RoundRecord,
    params: RuleParams,
    base: Arrays,
    updates: list[Arrays],
    scorer: Scorer | None,
) -> AggregationResult:
    """The round's aggregation with its rule and the weights the ledger gives."""
    keys = [c.public_key for c in record.commitments]
    return compute_aggregation(
        record.model_version.rule,
        params,
        base,
        updates,
        examples=[c.num_examples for c in record.commitments],
        stakes=[record.participants[k].stake for k in keys],
        reputations=[record.participants[k].reputation_bps for k in keys],
        scorer=scorer,
        round_=record.model_version.round,
    )


def iter_round_scores(
    run_dir: Path, report: VerifyReport, config: RunConfig, scorer: Scorer | None
) -> Iterator[RoundScores]:
    """Recompute each round of a verified ``report`` from the archived updates, in order: its
    aggregation (compared with its ModelVersion: ``model_problem``) and its scores."""
    params = make_rule_params(config)
    order = make_tensor_order(config, scorer, _model_record(report))
    archive = UpdateArchive(run_dir)
    floor = compute_archive_floor(get_archive_rule(report), report.rounds)
    for record in report.round_records:
        round_ = record.model_version.round
        keys = [c.public_key for c in record.commitments]
        hashes = [c.update_hash for c in record.commitments]
        if round_ < floor and not all(archive.where(h) for h in hashes):
            yield RoundScores(round_, not_archived=True)
            continue
        try:
            loaded = load_model(run_dir, record.model_version.parent_hash)
            loaded_updates = archive.load_many(hashes)
        except RegistryError as e:
            yield RoundScores(
                round_,
                problem=f"round {round_}: not all its updates (or its base model) are archived, "
                f"so neither its model nor its scores can be re-checked: {e}",
            )
            continue
        base, updates = _in_order(loaded, loaded_updates, order)
        result = _aggregate(record, params, base, updates, scorer)
        model_problem = check_round_model(record, base, result, run_dir)
        if model_problem is not None:
            # a coordinator that resumed from the parent's model file aggregated in its order
            in_file = _in_order(loaded, loaded_updates, tuple(loaded))
            resumed = _aggregate(record, params, *in_file, scorer)
            if check_round_model(record, in_file[0], resumed, run_dir) is None:
                model_problem = None
        if record.contribution is None:
            yield RoundScores(
                round_,
                problem=f"round {round_}: no contribution record",
                model_problem=model_problem,
                model_checked=True,
            )
            continue
        raw = compute_raw_scores(result, base, updates, scorer, round_)
        raw_floats = tuple(float(x) for x in np.asarray(raw, dtype=np.float64).ravel())
        yield RoundScores(
            round_,
            tuple(keys),
            raw_floats,
            dict(record.contribution.scores),
            None,
            model_problem,
            True,
        )


def recheck_scores(run_dir: Path, report: VerifyReport, config: RunConfig) -> ScoreCheck:
    """Recompute every round's contribution scores from the archived updates and compare them
    with the scores on the ledger, each within its :func:`compute_score_tolerances`.
    Needs a verified ``report`` of the run's ledger."""
    problems: list[str] = []
    worst = used = 0.0
    matched = 0
    not_archived: list[int] = []
    for scores in iter_round_scores(run_dir, report, config, make_scorer(config, report)):
        if scores.not_archived:
            not_archived.append(scores.round)
            continue
        if scores.model_problem is not None:
            problems.append(scores.model_problem)
        elif scores.model_checked:
            matched += 1
        if scores.problem is not None or scores.recorded is None:
            problems.append(scores.problem or f"round {scores.round}: nothing recorded")
            continue
        expected = dict(compute_quantised_scores(scores.keys, scores.raw))
        recorded = scores.recorded
        if set(expected) != set(recorded):
            problems.append(
                f"round {scores.round}: scores recorded for other clients than committed"
            )
            continue
        tolerances = compute_score_tolerances(dict(zip(scores.keys, scores.raw, strict=True)))
        for key in sorted(expected, key=lambda k: abs(expected[k] - recorded[k]), reverse=True):
            difference = abs(expected[key] - recorded[key]) / SCORE_SCALE
            tolerance = tolerances[key]
            worst = max(worst, difference)
            if difference > tolerance:
                problems.append(
                    f"round {scores.round}: the score recorded for {fingerprint(key)} differs "
                    f"from its recomputed value by {difference:.3g} (tolerance {tolerance:.3g})"
                )
                break  # one problem a round
            if tolerance:
                used = max(used, difference / tolerance)
    return ScoreCheck(
        len(report.round_records) - len(not_archived),
        worst,
        tuple(problems),
        used,
        matched,
        tuple(not_archived),
        describe_archive_policy(get_archive_rule(report)),
    )
