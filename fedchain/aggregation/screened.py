"""The ``screened`` rule: average the updates that help; step only when it does not hurt.

Pure and deterministic: the coordinator and ``fedchain verify --scores`` call
:func:`aggregate_screened` (through :func:`fedchain.aggregation.round.aggregate_round`) with the
round's scorer and step tester and reach the same model. The steps: a norm screen, a
contribution screen from the scorer's scores (:func:`compute_score_verdicts`), up to four
candidate steps (:func:`compute_candidate_steps`) and the choice between them
(:func:`choose_step`: the tolerance and, with per-example losses, the paired test
:func:`raises_loss`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeAlias

import numpy as np

from fedchain.aggregation.kernels import (
    AnyArray,
    FloatArray,
    flat,
    single_blas_thread,
    weighted_average,
)
from fedchain.aggregation.rules import AggregationResult, check_updates
from fedchain.aggregation.weights import check_weight_vector
from fedchain.errors import ConfigError

__all__ = [
    "HARMFUL_SHARE",
    "NEGLIGIBLE_SHARE",
    "NORM_SCREEN",
    "STEP_STANDARD_ERRORS",
    "STEP_TOLERANCE",
    "StepTester",
    "UpdateScorer",
    "aggregate_screened",
    "choose_step",
    "compute_candidate_steps",
    "compute_score_verdicts",
    "raises_loss",
]

NORM_SCREEN = 3.0
"""``screened`` leaves out updates longer than this many times the round's median update norm."""

HARMFUL_SHARE = 0.25
"""``screened`` leaves out updates scoring below ``-HARMFUL_SHARE`` times the round's mean
positive score: clearly harmful. Honest updates of skewed (non-IID) data score a little below
zero now and then; leaving those out too made accuracy swing by points from round to round."""

NEGLIGIBLE_SHARE = 0.05
"""... and updates whose score is within ``NEGLIGIBLE_SHARE`` of that mean of zero: a free
rider's zero update (score exactly 0) or noise; averaging them only shortens the step."""

STEP_STANDARD_ERRORS = 2.0
"""``screened``'s paired step test (with a :data:`StepTester`): a step is worse than another
(or than no step) when the mean of the paired per-example validation-loss differences (the
step's loss minus the other's, one per validation example) exceeds this many standard errors
of those differences (sample standard deviation, ``ddof=1``, over the square root of the
number of examples): about a one-sided 2.3 % test. The same examples judge every step, so the
pairing cancels what the examples share, and the test scales with the split and the training
stage: a rise that is small but on most examples is harm, a mean rise that is a few examples'
swing is not. It comes on top of :data:`STEP_TOLERANCE`, never instead: a mean rise above the
tolerance is harm however noisy, so an update that spreads its per-example effect wide (noise
on the validation examples) cannot widen the standard error to tie a worse step with the best
(the attacker test in ``tests/test_aggregation.py``). Measured (seeds 0-2, digits, 10 rounds;
``experiments/robustness.py``, worst mean drop at IID 30 / 40 %, Dirichlet 0.5 30 / 40 %
attackers): tolerance alone 1.1 / 1.4 / 2.1 / 2.7 points, the paired test alone 0.6 / 0.6 /
1.7 / 3.1, both (this rule) 0.6 / 0.6 / 1.6 / 2.6; attackers' largest reward share 0.22, 0.21
and 0.21 %. Clean (``experiments/clean_learning.py``, 20 / 50 rounds) both paired variants
froze none of 420 seed-rounds and ended -0.37 / +0.00 / +0.18 / -0.09 points against FedAvg
(IID 20 / 50, Dirichlet 20 / 50), the tolerance alone -0.37 / +0.00 / +0.18 / +0.09: one image
in one seed."""

STEP_TOLERANCE = 0.02
"""``screened`` calls a step worse than another (or than no step) when its mean validation
loss is above the other's by more than this (scorer units: nats of validation loss), and with
per-example losses also when the paired test finds a rise (:data:`STEP_STANDARD_ERRORS`).
Below it, a mean rise is harm only when the paired test says it is consistent; above it,
always. A few hundred validation examples cannot resolve smaller mean differences late in
training: on the default clean federation (digits, 144 validation examples, ``mc-shapley``;
seed 0, IID) the all-updates step (FedAvg's) raised the validation loss by 0.001-0.018 nats in
37 of rounds 13-50 (validation accuracy within 3 examples), while FedAvg's test accuracy still
rose (mean of seeds 0-2: 95.5 % at round 13, 97.4 % at round 50): a few misclassified
validation examples growing more confident outweigh the many correct ones. With no tolerance
(and no paired test) the rule froze the model in 80 of 150 such seed-rounds (IID, 50 rounds),
and a frozen model gets much the same updates again (``experiments/clean_learning.py``). A
scorer that measures no per-example losses (no :data:`StepTester`: the scalar scorers of tests
and other tools) gets this test alone."""

UpdateScorer: TypeAlias = Callable[[Sequence[Mapping[str, Any]], Any], Any]
"""``(updates, weights) -> one raw contribution score per update`` (higher is better; float64)."""

StepTester: TypeAlias = Callable[[Mapping[str, Any]], Any]
"""``step -> its per-example validation-loss differences``: the loss of each validation example
under the round's model plus ``step`` minus its loss under the round's model (float64, one per
example, the same examples in the same order on every call of a round)."""


def aggregate_screened(
    updates: Sequence[Mapping[str, AnyArray]],
    weights: Sequence[float] | FloatArray,
    scorer: UpdateScorer,
    *,
    step_tester: StepTester | None = None,
    norm_screen: float = NORM_SCREEN,
    step_tolerance: float = STEP_TOLERANCE,
    standard_errors: float = STEP_STANDARD_ERRORS,
) -> AggregationResult:
    """Average the updates that help, and take a step only when it measurably does not hurt.

    1. Norm screen: updates longer (L2, all tensors) than ``norm_screen`` times the median norm
       of the round's positive-weight updates are left out (``"norm"``). A boosted or noise
       update cannot hide its length, and the median is the honest majority's as long as it is
       one.
    2. Contribution screen: ``scorer`` scores the remaining updates with their weights
       (renormalised over them). Updates scoring clearly below zero are left out as harmful,
       those scoring about zero (a free rider's zero update, noise) as useless
       (:data:`HARMFUL_SHARE`, :data:`NEGLIGIBLE_SHARE`, measured against the round's mean
       positive score; with no positive score, harmful means below zero and useless exactly 0).
       So neither kind moves the model, whatever their number or stake.
    3. The step: up to four candidates (:func:`compute_candidate_steps`), each the weighted
       average of its updates (weights renormalised): the *helpful* updates alone, those not
       harmful (helpful and useless), those not useless (helpful and harmful), and all that
       passed the norm screen. ``step_tester`` measures each candidate's per-example
       validation-loss differences (after minus before, one per validation example); the
       step's gain is minus their mean. A step is *worse* than another, or than no step, when
       its mean loss is above the other's by more than ``step_tolerance``
       (:data:`STEP_TOLERANCE`), or when the paired test finds a rise: the mean of the paired
       per-example differences exceeds ``standard_errors`` (:data:`STEP_STANDARD_ERRORS`)
       standard errors of them (:func:`raises_loss`). The reference is the largest-gain step
       if its gain is positive, else no step; the steps worse than neither no step nor the
       reference tie, and the rule takes the one averaging the most updates that are not
       useless (less noise), then the one with fewer useless updates (:func:`choose_step`).
       So a harmful-scored update enters the model only when the step with it is not worse
       than the best step without it, and a useless one (a free rider's zero update) only when
       the step with it is measurably better than every step without it. The model stays only
       if every candidate is worse than no step (evidence that no step helps this round), and
       then the screened updates are left out as ``"frozen"`` (or ``"harmful"``). A small,
       noisy rise (the validation split's noise) does not freeze the model: the rule never
       stops learning for lack of evidence, only on evidence of harm; a small rise on most
       examples is such evidence, and so is a large mean rise however noisy. (It used to
       freeze on any rise: 80 of 150 seed-rounds of a clean 50-round run with ``mc-shapley``
       scores, while FedAvg's step kept raising test accuracy; before that, whenever the
       helpful updates carried less than a third of the weight.)

       Without ``step_tester`` (a scorer that measures no per-example losses: scalar scorers
       in tests and tools) the rule falls back to the tolerance alone, measuring each step's
       gain with ``scorer`` as one update of weight 1 (with a validation-loss scorer, the
       validation loss before minus after).

    Unlike median or Krum this needs no honest majority among the updates, only a validation
    set the attackers cannot choose. The scores are returned (``contributions``) so the round
    is scored once; clients the norm screen left out score 0. ``reasons`` says why each left-out
    update was left out and ``note`` which step the rule took and the gains it measured.
    """
    n = len(updates)
    if n == 0:
        raise ConfigError("cannot aggregate an empty list of updates")
    if not (math.isfinite(step_tolerance) and step_tolerance >= 0):
        raise ConfigError(f"step_tolerance must be finite and >= 0, not {step_tolerance}")
    if not (math.isfinite(standard_errors) and standard_errors >= 0):
        raise ConfigError(f"standard_errors must be finite and >= 0, not {standard_errors}")
    w = check_weight_vector(weights, n)
    arrays = check_updates(updates)
    active = [i for i in range(n) if w[i] > 0]
    with single_blas_thread():  # numpy's dot on two threads: 250-500 ms for 30 updates here
        norms = {i: _update_norm(arrays[i]) for i in active}
    limit = norm_screen * float(np.median([norms[i] for i in active]))
    screened = [i for i in active if norms[i] <= limit]
    if not screened:  # every update has the median's norm only when it is 0: nothing to add
        screened = active
    sw = np.zeros_like(w)
    sw[screened] = w[screened] / math.fsum(float(w[i]) for i in screened)
    measured = np.asarray(
        scorer([arrays[i] for i in screened], sw[screened]), dtype=np.float64
    ).reshape(-1)
    if measured.shape != (len(screened),):
        raise ConfigError(f"the scorer returned {measured.shape[0]} scores for {len(screened)}")
    contributions = np.zeros(n, dtype=np.float64)
    contributions[screened] = measured
    verdicts = compute_score_verdicts(screened, contributions)
    reasons = ["weight" if w[i] <= 0 else "norm" for i in range(n)]
    for i in screened:
        reasons[i] = verdicts[i]
    candidates = compute_candidate_steps(screened, verdicts)
    steps, gains = [], []
    differences: list[FloatArray] = []
    with single_blas_thread():
        for _, members in candidates:
            used = np.zeros_like(w)
            used[members] = w[members] / math.fsum(float(w[i]) for i in members)
            step = weighted_average(arrays, used, members)
            steps.append((members, used, step))
            if step_tester is None:
                gains.append(_step_gain(scorer, step))
            else:
                differences.append(_step_differences(step_tester, step, differences))
                gains.append(-_mean(differences[-1]))
    measured_text = ", ".join(
        f"{name} {g:+.4g}" for (name, _), g in zip(candidates, gains, strict=True)
    )
    paired = differences if step_tester is not None else None
    best = choose_step(gains, paired, candidates, verdicts, step_tolerance, standard_errors)
    raised = f"by more than {step_tolerance:g}"
    if paired is not None:
        raised += f" or {standard_errors:g} standard errors of its per-example change"
    top = max(gains, default=None)
    if best is None:
        if top is None:
            note = "model unchanged: every update that passed the norm screen was harmful"
        else:
            note = (
                f"model unchanged: every step raised the validation loss {raised} "
                f"(gain of each step: {measured_text})"
            )
        for i in screened:
            if top is not None and reasons[i] in ("", "useless"):
                reasons[i] = "frozen"
        zeros = {name: np.zeros_like(a) for name, a in arrays[0].items()}
        return AggregationResult(
            arrays=zeros,
            selected=(),
            weights=np.zeros_like(w),
            contributions=contributions,
            reasons=tuple(reasons),
            note=note,
        )
    members, used, step = steps[best]
    for i in members:  # useless or harmful updates enter when a larger candidate won
        reasons[i] = ""
    name = candidates[best][0]
    which = "all the" if name == "all" else f"the {name}"  # not "the all updates"
    note = f"averaged {which} updates (validation-loss gain of each step: {measured_text})"
    return AggregationResult(
        arrays=step,
        selected=tuple(members),
        weights=used,
        contributions=contributions,
        reasons=tuple(reasons),
        note=note,
    )


def compute_candidate_steps(
    screened: Sequence[int], verdicts: Mapping[int, str]
) -> list[tuple[str, list[int]]]:
    """The steps ``screened`` measures: (name, members): the helpful updates, those not harmful
    (helpful and useless), those not useless (helpful and harmful), then every update that
    passed the norm screen. Empty and repeated member lists are dropped."""
    helpful = [i for i in screened if verdicts[i] == ""]
    harmless = [i for i in screened if verdicts[i] in ("", "useless")]
    useful = [i for i in screened if verdicts[i] in ("", "harmful")]
    out: list[tuple[str, list[int]]] = []
    every = list(screened)
    steps = [("helpful", helpful), ("not harmful", harmless)]
    steps += [("not useless", useful)] if useful != every else []
    for name, members in (*steps, ("all", every)):
        if members and all(members != m for _, m in out):
            out.append((name, members))
    return out


def compute_score_verdicts(screened: Sequence[int], contributions: FloatArray) -> dict[int, str]:
    """Each screened client's verdict from its score: ``""`` (helpful), ``"harmful"`` or
    ``"useless"``, measured against the round's mean positive score ``m``: harmful when
    ``score <= -HARMFUL_SHARE * m``, useless when ``|score| <= NEGLIGIBLE_SHARE * m``. With no
    positive score (``m = 0``): harmful below zero, useless at exactly zero."""
    positive = [float(contributions[i]) for i in screened if contributions[i] > 0]
    m = math.fsum(positive) / len(positive) if positive else 0.0
    verdicts = {}
    for i in screened:
        score = float(contributions[i])
        if score < 0 and score <= -HARMFUL_SHARE * m:
            verdicts[i] = "harmful"
        elif abs(score) <= NEGLIGIBLE_SHARE * m:
            verdicts[i] = "useless"
        else:
            verdicts[i] = ""
    return verdicts


def choose_step(
    gains: Sequence[float],
    differences: Sequence[FloatArray] | None,
    candidates: Sequence[tuple[str, list[int]]],
    verdicts: Mapping[int, str],
    tolerance: float = STEP_TOLERANCE,
    k: float = STEP_STANDARD_ERRORS,
) -> int | None:
    """``screened``'s step (an index into ``candidates``), or None to freeze the model.

    A step is *worse* than the reference (another step, or no step) when its mean validation
    loss is above the reference's by more than ``tolerance``, or, with per-example
    ``differences``, when the paired test finds a rise (:func:`raises_loss` of the two steps'
    per-example differences, against no step of the step's own). The reference is the
    largest-gain step if its gain is positive, else no step; the tie is every step worse than
    neither no step nor the reference, and goes to the step averaging the most updates that
    are not useless, then to the earlier one. None (freeze) when every step is worse than no
    step. Without ``differences`` this is the scalar rule: the tie is every gain at least
    ``max(largest, 0) - tolerance``.
    """
    if not gains:
        return None
    top = max(range(len(gains)), key=lambda j: (gains[j], -j))
    reference = top if gains[top] > 0 else None

    def worse(j: int, than: int | None) -> bool:
        rise = (0.0 if than is None else gains[than]) - gains[j]
        if rise > tolerance:
            return True
        if differences is None:
            return False
        d = differences[j] if than is None else differences[j] - differences[than]
        return raises_loss(d, k)

    tied = [
        j
        for j in range(len(gains))
        if not worse(j, None) and (reference is None or not worse(j, reference))
    ]
    if not tied:
        return None
    return max(tied, key=lambda j: (_count_measured(candidates[j][1], verdicts), -j))


def raises_loss(differences: FloatArray, k: float = STEP_STANDARD_ERRORS) -> bool:
    """The paired test: whether per-example loss differences (after minus before) rise by more
    than ``k`` standard errors, ``mean(d) > k * std(d, ddof=1) / sqrt(len(d))``. A rise on
    every example, however small, is one (its standard error is about 0); a mean rise from a
    few examples' large swings is not."""
    m = len(differences)
    mean = _mean(differences)
    spread = math.sqrt(math.fsum(((differences - mean) ** 2).tolist()) / (m - 1))
    return mean > k * spread / math.sqrt(m)


def _mean(values: FloatArray) -> float:
    return math.fsum(values.tolist()) / len(values)


def _step_differences(
    tester: StepTester, step: Mapping[str, AnyArray], earlier: Sequence[FloatArray]
) -> FloatArray:
    """``tester``'s per-example differences for ``step``, checked: finite, at least 2 (a
    standard error needs them), as many as for the round's earlier steps."""
    d = np.asarray(tester(step), dtype=np.float64).reshape(-1)
    if d.shape[0] < 2:
        raise ConfigError(f"the step tester returned {d.shape[0]} differences: it needs >= 2")
    if earlier and d.shape != earlier[0].shape:
        raise ConfigError(
            f"the step tester returned {d.shape[0]} differences, {earlier[0].shape[0]} before"
        )
    if not np.all(np.isfinite(d)):
        raise ConfigError("the step tester returned a difference that is not finite")
    return d


def _count_measured(members: Sequence[int], verdicts: Mapping[int, str]) -> int:
    """How many of ``members`` moved the model measurably (helpful or harmful, not useless)."""
    return sum(verdicts[i] != "useless" for i in members)


def _step_gain(scorer: UpdateScorer, step: Mapping[str, AnyArray]) -> float:
    """The gain of applying ``step`` as the scorer measures it: the score of one update of
    weight 1 (with a validation-loss scorer, the validation loss before minus after)."""
    score = np.asarray(scorer([step], np.ones(1, dtype=np.float64)), dtype=np.float64).reshape(-1)
    if score.shape != (1,):
        raise ConfigError(f"the scorer returned {score.shape[0]} scores for 1 step")
    return float(score[0])


def _update_norm(update: Mapping[str, AnyArray]) -> float:
    """L2 norm of all tensors of one update together, accumulated in float64."""
    total = 0.0
    for array in update.values():
        values = flat(array).astype(np.float64, copy=False)
        total += float(np.dot(values, values))
    return math.sqrt(total)
