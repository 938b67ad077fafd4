"""fedchain.rounds.scores: where a round's scores come from, and how the ledger records them;
and fedchain.rounds.recheck: how ``verify --scores`` holds the ledger to them.

Pre -> op -> post: a round's accepted updates and aggregation, then the scores. The same
functions serve the coordinator and ``verify --scores``, so these cases fix both. The recheck
cases play a coordinator that nudges a score inside the old fixed tolerance, and one that nudges
inside the new one (accepted, and bounded by the payout rule).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import fedchain.rounds.coordinator as coordinator_module
from fedchain.aggregation.rules import RuleParams
from fedchain.cli import app
from fedchain.errors import ConfigError
from fedchain.ledger.objects import SCORE_SCALE
from fedchain.ledger.verify import verify_ledger
from fedchain.rounds.recheck import (
    SCORE_TOLERANCE_QUANTA,
    SCORE_TOLERANCE_RELATIVE,
    compute_score_tolerances,
    recheck_scores,
)
from fedchain.rounds.rewards import Payout, compute_nudge_bound
from fedchain.rounds.scores import (
    bind_scorer,
    bind_step_tester,
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
    # the round is scored once, inside the rule, not again for the record; the rule then
    # measures each step it considers as one update of weight 1
    assert [count for _, count, _, _ in scorer.calls][:1] == [3]
    assert all(count == 1 for _, count, _, _ in scorer.calls[1:])
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


# -- the scores re-check (fedchain.rounds.recheck) -------------------------------------------------


def test_the_tolerance_is_relative_to_the_rounds_largest_recomputed_score() -> None:
    a, b = b"\x01" * 32, b"\x02" * 32
    assert compute_score_tolerances({a: 0.07, b: 0.002}) == {
        a: pytest.approx(SCORE_TOLERANCE_RELATIVE * 0.07),
        b: pytest.approx(SCORE_TOLERANCE_RELATIVE * 0.07),
    }
    floor = SCORE_TOLERANCE_QUANTA / SCORE_SCALE
    assert compute_score_tolerances({a: 1e-5, b: -2e-5}) == {a: floor, b: floor}
    # a negative score never sets the scale (it used to count as |score|, so -0.07 gave the
    # tolerance of +0.07): the relative term follows the largest positive score, here 0.05
    assert compute_score_tolerances({a: -0.07, b: 0.05}) == {
        a: pytest.approx(SCORE_TOLERANCE_RELATIVE * 0.05),
        b: pytest.approx(SCORE_TOLERANCE_RELATIVE * 0.05),
    }
    assert compute_score_tolerances({a: -0.07, b: 0.01}) == {a: floor, b: floor}
    assert compute_score_tolerances({a: -0.07, b: -0.01}) == {a: floor, b: floor}


def test_a_large_negative_score_does_not_widen_the_tolerance_for_the_positive_ones() -> None:
    """The attack the |score| scale allowed: a harmful client recomputed at -0.24 widened every
    score's tolerance to 24 quanta, so a coordinator could record two honest 0.002 scores as
    0.002024 / 0.001976 and move their 5000/5000 split to 5060/4940. Played against the real
    quantisation and tolerance, compared as ``recheck_scores`` compares: that nudge now fails,
    and so does one just past the floor."""
    harmful, a, b = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
    recomputed = {harmful: -0.24, a: 0.002, b: 0.002}
    tolerances = compute_score_tolerances(recomputed)
    floor = SCORE_TOLERANCE_QUANTA / SCORE_SCALE
    assert tolerances == {harmful: floor, a: floor, b: floor}
    for step in (24, SCORE_TOLERANCE_QUANTA + 1):  # quanta: the old tolerance, just past the new
        expected = dict(compute_quantised_scores(list(recomputed), list(recomputed.values())))
        assert expected == {harmful: -240_000, a: 2000, b: 2000}
        recorded = {harmful: -240_000, a: 2000 + step, b: 2000 - step}
        failed = [
            k for k in expected if abs(expected[k] - recorded[k]) / SCORE_SCALE > tolerances[k]
        ]
        assert failed == [a, b], step
    # the old rule (largest |score|) would have let the 24-quanta nudge through
    assert 24 / SCORE_SCALE <= SCORE_TOLERANCE_RELATIVE * 0.24


def test_a_score_recomputed_as_exactly_zero_has_no_tolerance() -> None:
    """A truncated round scores everyone exactly 0 on every machine and pays nothing; one quantum
    recorded for anyone would hand them the whole pool."""
    a, b = b"\x01" * 32, b"\x02" * 32
    assert compute_score_tolerances({a: 0.0, b: 0.0}) == {a: 0.0, b: 0.0}
    assert compute_score_tolerances({a: 0.0, b: 0.05})[a] == 0.0
    assert compute_score_tolerances({}) == {}


SCORED = {"clients": 4, "rounds": 2}  # the default rule (screened) and scores (GTG-Shapley)


def test_the_honest_run_rechecks_with_room(inprocess_federation, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fed = inprocess_federation(tmp_path, **SCORED).run()
    report = verify_ledger(fed.setup.run_dir)
    check = recheck_scores(fed.setup.run_dir, report, fed.setup.config)
    assert check.rounds == 2 and check.problems == ()
    assert check.max_tolerance_used <= 0.5  # half the tolerance unused, at least


def test_invalid_score_nudged_inside_the_old_tolerance(
    inprocess_federation,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A dishonest coordinator records, in the last round, the smallest positive score raised by
    just more than the new tolerance (and far less than the old fixed 0.005), and pays rewards
    from it: a valid ledger whose rewards follow the nudged score. ``verify --scores`` refuses
    it, naming the round; the old rule would not have."""
    nudged: dict[str, int] = {}
    calls = []

    def nudge(keys, raw):  # type: ignore[no-untyped-def]
        honest = compute_quantised_scores(keys, raw)
        calls.append(len(calls) + 1)  # the coordinator scores each round once
        if len(calls) != SCORED["rounds"]:
            return honest
        victim = min((s, k) for k, s in honest if s > 0)[1]
        tolerance = compute_score_tolerances(dict(zip(keys, map(float, raw), strict=True)))[victim]
        step = math.floor(tolerance * SCORE_SCALE) + 3  # quanta: just past the tolerance
        nudged["step"] = step
        return tuple((k, s + step if k == victim else s) for k, s in honest)

    monkeypatch.setattr(coordinator_module, "compute_quantised_scores", nudge)
    fed = inprocess_federation(tmp_path, **SCORED).run()
    monkeypatch.undo()
    report = verify_ledger(fed.setup.run_dir)
    assert report.ok, report.failure  # the ledger itself is consistent
    step = nudged["step"]
    assert 0 < step / SCORE_SCALE < 0.005
    check = recheck_scores(fed.setup.run_dir, report, fed.setup.config)
    assert len(check.problems) == 1 and check.problems[0].startswith("round 2: ")
    assert check.max_difference == pytest.approx(step / SCORE_SCALE)
    assert check.max_difference < 0.005  # the old fixed tolerance let it through
    result = CliRunner().invoke(app, ["verify", str(fed.setup.run_dir), "--scores"])
    assert result.exit_code == 1 and "FAILED scores: round 2: " in result.output


def test_a_score_nudged_inside_the_tolerance_passes_and_moves_at_most_the_stated_fraction(
    inprocess_federation,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The other side of the tolerance (issue 12's last gap): a coordinator records, in the last
    round, the smallest positive score raised by all the tolerance allows and every other score
    lowered by all it allows, and pays the payout rule's rewards from them. ``verify`` and
    ``verify --scores`` both pass (it is inside the tolerance); what it moved is within the
    bound of spec §9.5 against what the honest scores would have paid from the same state."""
    honest_scores: dict[str, tuple[tuple[bytes, int], ...]] = {}
    calls: list[int] = []

    def nudge(keys, raw):  # type: ignore[no-untyped-def]
        honest = compute_quantised_scores(keys, raw)
        calls.append(len(calls) + 1)
        if len(calls) != SCORED["rounds"]:
            return honest
        honest_scores["last"] = honest
        tolerance = compute_score_tolerances(dict(zip(keys, map(float, raw), strict=True)))
        room = {k: math.floor(tolerance[k] * SCORE_SCALE + 1e-9) for k in keys}
        target = min(((s, k) for k, s in honest if s > 0), default=(0, keys[0]))[1]
        return tuple((k, s + room[k] if k == target else s - room[k]) for k, s in honest)

    payouts: list[tuple[Payout, Payout, int]] = []
    real_payout = coordinator_module.compute_round_payout

    def both(carried, *, pool, scores, moved, min_score, debts):  # type: ignore[no-untyped-def]
        # only the last round is nudged: the debts it starts from are the honest ones
        paid = real_payout(
            carried, pool=pool, scores=scores, moved=moved, min_score=min_score, debts=debts
        )
        if "last" in honest_scores:
            fair = real_payout(
                carried,
                pool=pool,
                scores=honest_scores["last"],
                moved=moved,
                min_score=min_score,
                debts=debts,
            )
            payouts.append((fair, paid, min_score))
        return paid

    monkeypatch.setattr(coordinator_module, "compute_quantised_scores", nudge)
    monkeypatch.setattr(coordinator_module, "compute_round_payout", both)
    fed = inprocess_federation(tmp_path, **SCORED).run()
    monkeypatch.undo()
    report = verify_ledger(fed.setup.run_dir)
    assert report.ok, report.failure
    check = recheck_scores(fed.setup.run_dir, report, fed.setup.config)
    assert check.problems == () and check.max_difference > 0  # nudged, and accepted
    ((fair, paid, min_score),) = payouts
    assert min_score == round(fed.setup.config.payout_min_score * SCORE_SCALE) > 0
    n = SCORED["clients"]
    a, b = dict(fair.rewards), dict(paid.rewards)
    moved = sum(abs(a.get(k, 0) - b.get(k, 0)) for k in a.keys() | b.keys())
    assert moved <= 2 * compute_nudge_bound(n, min_score) * fair.available + 4 * n
    assert (
        abs(paid.carried - fair.carried)
        <= 2 * compute_nudge_bound(n, min_score) * fair.available + 4 * n
    )


class PairedScorer(RecordingScorer):
    """A scorer that also measures per-example loss differences (as RoundScorer does)."""

    def __init__(self, scores: list[float], differences: list[float]) -> None:
        super().__init__(scores)
        self.differences = differences
        self.bases: list[dict[str, np.ndarray]] = []

    def step_tester(self, base):  # type: ignore[no-untyped-def]
        self.bases.append(base)
        return lambda step: np.array(self.differences)


def test_screened_takes_the_scorers_step_tester_where_it_has_one() -> None:
    rise = [0.001, 0.002, 0.001, 0.0015]  # a small rise on every example: harm
    paired = PairedScorer([0.5, 0.25, 0.125], rise)
    assert bind_step_tester(paired, BASE) is not None and paired.bases == [BASE]
    result = aggregate("screened", paired)
    assert not result.moved and "standard errors" in result.note
    assert [count for _, count, _, _ in paired.calls] == [3]  # no scalar step gains measured
    plain = RecordingScorer([0.5, 0.25, 0.125])  # no per-example losses: the scalar test
    assert bind_step_tester(plain, BASE) is None and bind_step_tester(None, BASE) is None
    assert aggregate("screened", plain).moved
    assert aggregate("fedavg", paired).moved and len(paired.bases) == 2  # only screened binds
