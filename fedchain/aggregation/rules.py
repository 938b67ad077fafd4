"""The named aggregation rules: weighted average, median, trimmed mean, Multi-Krum, screened.

Two pure steps, both deterministic and free of I/O:

1. :func:`~fedchain.aggregation.weights.compute_weights` turns the clients' ledger values into one
   float64 weight per client (:mod:`fedchain.aggregation.weights`: the formulas per rule).
2. :func:`aggregate` combines the clients' updates (named tensors) with those weights under one
   of :data:`RULES` and returns an :class:`AggregationResult`: the new tensors plus which clients
   entered the estimate, so the caller can record who was excluded. :func:`aggregate_round` does
   both for a round; ``screened`` goes through :func:`aggregate_screened`. Every result says which
updates it left out and why (:attr:`AggregationResult.reasons`, codes in
:data:`fedchain.aggregation.explain.LEFT_OUT_REASONS`); :mod:`fedchain.aggregation.explain`
tells it by client key for the console, ``metrics.json`` and the report.

The arithmetic (BLAS axpy sums, blocking and packing, precision, order statistics, Krum's Gram
matrix) is in :mod:`fedchain.aggregation.kernels`, whose docstring says what is bit-identical.

Updates with weight 0 are ignored by every rule: they are not read, they do not enter Multi-Krum
distances, and they are never listed in :attr:`AggregationResult.selected`.

The robust rules:

* median: the weighted median per coordinate: the smallest value whose cumulative weight (values
  sorted ascending) reaches one half; where the cumulative weight hits exactly one half, the mean
  of that value and the next (so equal weights give the ordinary median, ``np.median``).
* trimmed-mean: per coordinate, values sorted, weight mass ``trim`` removed from each tail
  (fractionally where a client straddles the cut), the rest averaged with their weights. With
  equal weights and ``trim * n`` an integer this is ``scipy.stats.trim_mean``.
* multi-krum: scores from squared Euclidean distances between the flattened updates (all tensors,
  in float64); a client's score is the sum of its ``n - f - 2`` smallest distances to the others;
  the ``m`` lowest scores are selected (ties by client index) and averaged with their weights,
  renormalised. Weights do not enter the scores, only which updates are candidates (weight > 0).

Median and trimmed mean cut weight at exact integer boundaries (weights quantised to units of
``2**-40``, see the kernels).

The robust rules are not memory-speed: they sort ``n`` values per coordinate. On the project's
2-core machine, ResNet-18-sized updates: 10 clients, median 3-5 s, trimmed mean 4 s, Multi-Krum
0.4 s (Flower's unweighted counterparts: 3.8, 3.4 and 3.5 s); 100 clients, 29 s, 39 s and 6.3 s
(Multi-Krum's distances come from one float64 ``dsyrk`` Gram matrix, not n^2 vector passes).

The caller must reject non-finite updates before aggregating (DESIGN.md section 3: "finite
values" is an admission check); these functions do not scan for NaN or infinity, which would cost
a second pass over all the data.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np

from fedchain.aggregation.kernels import (
    AnyArray,
    FloatArray,
    flat,
    median_of_block,
    single_blas_thread,
    squared_distances,
    trimmed_mean_of_block,
    weighted_average,
    weighted_order_statistic,
)
from fedchain.aggregation.weights import (
    RULES,
    RuleParams,
    check_rule,
    check_weight_vector,
    compute_weights,
    is_int,
)
from fedchain.errors import ConfigError

__all__ = [
    "LINEAR_RULES",
    "ROBUST_RULES",
    "RULES",
    "SCREENED_RULES",
    "STEP_STANDARD_ERRORS",
    "STEP_TOLERANCE",
    "AggregationResult",
    "RuleParams",
    "StepTester",
    "UpdateScorer",
    "aggregate",
    "aggregate_round",
    "aggregate_screened",
    "choose_step",
    "compute_krum_scores",
    "compute_weights",
    "default_krum_f",
    "raises_loss",
]

LINEAR_RULES = frozenset({"fedavg", "stake", "examples-stake", "reputation"})
"""Rules whose estimator is the weighted average (they differ only in the weights)."""

ROBUST_RULES = frozenset({"median", "trimmed-mean", "multi-krum"})
"""Byzantine-robust rules; all weight clients by examples x stake**beta."""

SCREENED_RULES = frozenset({"screened"})
"""Rules that need the round's contribution scores to decide whom to average (see
:func:`aggregate_screened`)."""

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


@dataclass(frozen=True, eq=False)
class AggregationResult:
    """What :func:`aggregate` returns.

    arrays:
        The aggregated tensors, same names (in the first active update's order), shapes and
        dtypes as the inputs. Freshly allocated; they share no memory with the inputs.
    selected:
        Indices into the ``updates`` argument of the clients whose update entered the estimate
        (weight > 0, and for ``multi-krum`` chosen by Krum), ascending.
    weights:
        The weight each client finally carried, float64, summing to 1 over ``selected`` (0
        elsewhere). For median and trimmed mean these are the weights the estimator used.
    scores:
        ``multi-krum`` only: each client's Krum score (lower is more central; ``inf`` for a
        client that was not a candidate because its weight was 0). ``None`` for other rules.
    """

    arrays: dict[str, AnyArray]
    selected: tuple[int, ...]
    weights: FloatArray
    scores: tuple[float, ...] | None = field(default=None)
    contributions: FloatArray | None = field(default=None)
    """``screened`` only: each client's contribution score, measured to decide whom to average
    (0 for clients left out by the norm screen). The caller records these; it need not score
    the round again."""
    reasons: tuple[str, ...] = field(default=())
    """Per client: ``""`` if its update entered the estimate, else why not, one of
    :data:`fedchain.aggregation.explain.LEFT_OUT_REASONS`' codes (empty tuple: not given)."""
    note: str = field(default="")
    """The round's decision in one sentence (``screened``: which step it took and what it
    measured; empty for the other rules)."""

    @property
    def excluded(self) -> tuple[int, ...]:
        """Indices of the clients whose update did not enter the estimate, ascending."""
        chosen = set(self.selected)
        return tuple(i for i in range(len(self.weights)) if i not in chosen)

    @property
    def moved(self) -> bool:
        """Whether the model changes: some update entered the estimate and it is not zero."""
        return bool(self.selected) and any(np.any(a) for a in self.arrays.values())


# --------------------------------------------------------------------------------------------------
# Aggregation


def aggregate(
    updates: Sequence[Mapping[str, AnyArray]],
    weights: Sequence[float] | FloatArray,
    *,
    rule: str = "fedavg",
    params: RuleParams | None = None,
) -> AggregationResult:
    """Aggregate ``updates`` (one mapping of named tensors per client) under ``rule``.

    ``weights`` holds one non-negative finite number per update, normally from
    :func:`compute_weights`; they are normalised here, so any positive scale works. Every update
    must have the same tensor names, and each name the same shape and dtype in every update
    (float16/32/64, signed or unsigned integers, or bool). Inputs are never modified.

    Raises :class:`ConfigError` for no updates, an unknown rule, mismatched names, shapes or
    dtypes, an unsupported dtype, or weights that are not finite, negative, of the wrong length
    or all zero.
    """
    params = RuleParams() if params is None else params
    check_rule(rule)
    if rule in SCREENED_RULES:
        raise ConfigError(f"rule {rule!r} needs contribution scores: use aggregate_screened")
    if len(updates) == 0:
        raise ConfigError("cannot aggregate an empty list of updates")
    w = check_weight_vector(weights, len(updates))
    arrays = _check_updates(updates)
    active = [i for i in range(len(updates)) if w[i] > 0]

    with single_blas_thread():
        if rule == "multi-krum":
            return _aggregate_multi_krum(arrays, w, active, params)
        used = np.zeros_like(w)
        used[active] = w[active]
        if rule == "median":
            out = weighted_order_statistic(arrays, w, active, median_of_block)
        elif rule == "trimmed-mean":
            out = weighted_order_statistic(
                arrays, w, active, functools.partial(trimmed_mean_of_block, trim=params.trim)
            )
        else:
            out = weighted_average(arrays, w, active)
    return AggregationResult(
        arrays=out, selected=tuple(active), weights=used, reasons=_reasons(w, active, "")
    )


def compute_krum_scores(
    updates: Sequence[Mapping[str, AnyArray]], num_attackers: int | None = None
) -> FloatArray:
    """Return the Krum score of each update (float64; lower means closer to the others).

    A score is the sum of the squared Euclidean distances from the update (all tensors flattened,
    in float64) to its ``n - f - 2`` nearest other updates, ``f`` = ``num_attackers`` (default
    ``max(0, (n - 3) // 2)``), with at least 1 and at most ``n - 1`` neighbours.
    """
    if len(updates) == 0:
        raise ConfigError("cannot score an empty list of updates")
    if num_attackers is not None and (not is_int(num_attackers) or num_attackers < 0):
        raise ConfigError(f"num_attackers must be an integer >= 0, got {num_attackers!r}")
    arrays = _check_updates(updates)
    with single_blas_thread():
        return _krum_scores(arrays, list(range(len(arrays))), num_attackers)


def _aggregate_multi_krum(
    arrays: list[dict[str, AnyArray]], w: FloatArray, active: list[int], params: RuleParams
) -> AggregationResult:
    n = len(active)
    f = default_krum_f(n) if params.krum_f is None else params.krum_f
    m = max(1, n - f) if params.krum_m is None else params.krum_m
    m = min(m, n)
    scores = _krum_scores(arrays, active, f)
    ranked = sorted(range(n), key=lambda j: (float(scores[j]), j))
    selected = sorted(active[j] for j in ranked[:m])
    used = np.zeros_like(w)
    used[selected] = w[selected] / math.fsum(float(w[i]) for i in selected)
    all_scores = [math.inf] * len(w)
    for j, i in enumerate(active):
        all_scores[i] = float(scores[j])
    out = weighted_average(arrays, used, selected)
    return AggregationResult(
        arrays=out,
        selected=tuple(selected),
        weights=used,
        scores=tuple(all_scores),
        reasons=_reasons(w, selected, "krum"),
    )


def _reasons(w: FloatArray, selected: Sequence[int], otherwise: str) -> tuple[str, ...]:
    """Per client: "" if selected, "weight" if its weight is 0, else ``otherwise``."""
    chosen = set(selected)
    return tuple("" if i in chosen else "weight" if w[i] <= 0 else otherwise for i in range(len(w)))


def default_krum_f(n: int) -> int:
    """The most attackers Krum tolerates among ``n`` candidates: ``n >= 2f + 3``."""
    return max(0, (n - 3) // 2)


def _krum_scores(
    arrays: list[dict[str, AnyArray]], candidates: list[int], f: int | None
) -> FloatArray:
    n = len(candidates)
    if n == 1:
        return np.zeros(1, dtype=np.float64)
    f = default_krum_f(n) if f is None else f
    neighbours = min(n - 1, max(1, n - f - 2))
    distances = squared_distances(arrays, candidates)
    scores = np.empty(n, dtype=np.float64)
    for j in range(n):
        others = np.sort(np.delete(distances[j], j))
        scores[j] = math.fsum(others[:neighbours].tolist())
    return scores


# --------------------------------------------------------------------------------------------------
# Validation and the round


def _check_updates(updates: Sequence[Mapping[str, AnyArray]]) -> list[dict[str, AnyArray]]:
    """Same names, shapes and supported dtypes in every update; values as numpy arrays."""
    arrays = [
        {name: v if type(v) is np.ndarray else np.asarray(v) for name, v in u.items()}
        for u in updates
    ]
    reference = arrays[0]
    if not reference:
        raise ConfigError("update 0 has no tensors")
    for name, value in reference.items():
        if value.dtype.kind not in "fiub":
            raise ConfigError(f"tensor {name!r} has unsupported dtype {value.dtype}")
    names = set(reference)
    for index, update in enumerate(arrays[1:], start=1):
        if update.keys() != names:
            missing = sorted(names - update.keys())
            extra = sorted(update.keys() - names)
            raise ConfigError(
                f"update {index} has different tensor names than update 0 "
                f"(missing {missing}, unexpected {extra})"
            )
        for name, value in update.items():
            expected = reference[name]
            if value.shape != expected.shape or value.dtype != expected.dtype:
                raise ConfigError(
                    f"tensor {name!r} of update {index} is {value.dtype}{list(value.shape)}, "
                    f"update 0 has {expected.dtype}{list(expected.shape)}"
                )
    return arrays


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
    :data:`STEP_TOLERANCE`; see :func:`aggregate_screened`). The coordinator calls this, and so
    does anyone re-checking a round from its archived updates, so both get the same weights and
    the same model.
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
    arrays = _check_updates(updates)
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
