"""Tests for fedchain.aggregation (weights, rules): weight formulas, the cap, every rule, attacks,
refusals."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from fedchain.aggregation.round import aggregate_round
from fedchain.aggregation.rules import (
    SCREENED_RULES,
    AggregationResult,
    aggregate,
    compute_krum_scores,
    default_krum_f,
)
from fedchain.aggregation.screened import (
    STEP_STANDARD_ERRORS,
    STEP_TOLERANCE,
    UpdateScorer,
    aggregate_screened,
    choose_step,
    raises_loss,
)
from fedchain.aggregation.weights import (
    RULES,
    RuleParams,
    apply_weight_cap,
    compute_weights,
    make_rule_params,
)
from fedchain.config import RunConfig
from fedchain.errors import ConfigError

Update = dict[str, np.ndarray]
ROBUST = ("median", "trimmed-mean", "multi-krum")
PLAIN_RULES = tuple(r for r in RULES if r not in SCREENED_RULES)


def weights_for(
    rule: str,
    examples: list[int],
    stakes: list[int] | None = None,
    reputations: list[int] | None = None,
    **params: Any,
) -> np.ndarray:
    n = len(examples)
    return compute_weights(
        rule,
        examples=examples,
        stakes=stakes if stakes is not None else [1] * n,
        reputations=reputations if reputations is not None else [10_000] * n,
        params=RuleParams(**params),
    )


def scalar_updates(values: list[float], dtype: Any = np.float32) -> list[Update]:
    """One single-element tensor per client: easy hand-checked robust statistics."""
    return [{"x": np.array([v], dtype=dtype)} for v in values]


def random_updates(rng: np.random.Generator, n: int, *, big: int = 300_007) -> list[Update]:
    """Several tensors and dtypes; by default one crossing the internal 2**18-element block."""
    updates = []
    for _ in range(n):
        updates.append(
            {
                "conv.weight": rng.standard_normal((8, 3, 3, 3), dtype=np.float32),
                "big": rng.standard_normal(big, dtype=np.float32),
                "bias": rng.standard_normal(5, dtype=np.float32),
                "scalar": np.array(rng.standard_normal(), dtype=np.float32),
                "empty": np.zeros((0, 4), dtype=np.float32),
                "double": rng.standard_normal((20, 30)),
                "double_big": rng.standard_normal(9_000),
                "half": rng.standard_normal(50).astype(np.float16),
                "num_batches_tracked": np.array(rng.integers(0, 1_000), dtype=np.int64),
                "counts": rng.integers(-50, 50, size=(4, 4)).astype(np.int32),
                "pixels": rng.integers(0, 256, size=17).astype(np.uint8),
                "mask": rng.random(33) > 0.5,
            }
        )
    return updates


def naive_average(updates: list[Update], weights: np.ndarray, name: str) -> np.ndarray:
    stacked = np.stack([u[name].astype(np.float64) for u in updates])
    return np.average(stacked, axis=0, weights=weights)


# --------------------------------------------------------------------------------------------------
# Weights


def test_fedavg_weights_are_proportional_to_examples() -> None:
    w = weights_for("fedavg", [10, 30, 60], stakes=[5, 0, 1])
    assert w.dtype == np.float64
    assert w.tolist() == [0.1, 0.3, 0.6]  # stake ignored, even a zero stake


def test_stake_weights_are_proportional_to_stake() -> None:
    assert weights_for("stake", [1, 1, 1], stakes=[1, 3, 0]).tolist() == [0.25, 0.75, 0.0]


@pytest.mark.parametrize(
    ("beta", "expected"),
    [(1.0, [2 / 3, 1 / 3]), (2.0, [8 / 9, 1 / 9]), (0.5, [0.5, 0.5]), (0.0, [1 / 3, 2 / 3])],
)
def test_examples_stake_weights(beta: float, expected: list[float]) -> None:
    # 100 * 4**beta : 200 * 1**beta
    w = weights_for("examples-stake", [100, 200], stakes=[4, 1], beta=beta)
    np.testing.assert_allclose(w, expected, rtol=1e-15)


def test_reputation_weights_multiply_by_trust() -> None:
    w = weights_for(
        "reputation", [100, 100, 100], stakes=[1, 1, 2], reputations=[10_000, 5_000, 2_500]
    )
    assert w.tolist() == [0.5, 0.25, 0.25]  # 1 : 0.5 : 2 * 0.25


def test_reputation_zero_means_zero_weight() -> None:
    w = weights_for("reputation", [10, 10], stakes=[1, 1], reputations=[0, 10_000])
    assert w.tolist() == [0.0, 1.0]


@pytest.mark.parametrize("rule", ["median", "trimmed-mean", "multi-krum"])
def test_robust_rules_use_examples_stake_weights(rule: str) -> None:
    args: dict[str, Any] = {"examples": [10, 20, 30], "stakes": [3, 2, 1], "beta": 1.5}
    np.testing.assert_array_equal(weights_for(rule, **args), weights_for("examples-stake", **args))


@pytest.mark.parametrize("rule", ["stake", "examples-stake", "reputation", "median"])
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 2.0])
def test_zero_stake_gets_zero_weight(rule: str, beta: float) -> None:
    w = weights_for(rule, [50, 50, 50], stakes=[0, 7, 3], beta=beta)
    assert w[0] == 0.0
    assert w[1] > 0 and w[2] > 0
    assert math.isclose(w.sum(), 1.0, rel_tol=1e-15)


def test_huge_stakes_do_not_overflow() -> None:
    w = weights_for("examples-stake", [1, 1], stakes=[3 * 10**200, 10**200], beta=2.0)
    np.testing.assert_allclose(w, [0.9, 0.1], rtol=1e-15)
    w = weights_for("examples-stake", [1, 1], stakes=[4 * 10**300, 10**300], beta=0.5)
    np.testing.assert_allclose(w, [2 / 3, 1 / 3], rtol=1e-14)


def test_integral_beta_weights_are_exact() -> None:
    # every weight is one correctly rounded division of exact integers
    w = weights_for("examples-stake", [3, 5, 7], stakes=[11, 13, 17], beta=3.0)
    raw = [3 * 11**3, 5 * 13**3, 7 * 17**3]
    assert w.tolist() == [r / sum(raw) for r in raw]


def test_large_beta_uses_floats_without_blowing_up() -> None:
    w = weights_for("examples-stake", [1, 1], stakes=[2 * 10**40, 10**40], beta=1e18)
    assert w.tolist() == [1.0, 0.0]
    w = weights_for("examples-stake", [1, 1], stakes=[2, 1], beta=20.0)
    np.testing.assert_allclose(w, [2**20 / (2**20 + 1), 1 / (2**20 + 1)], rtol=1e-14)


def test_weights_accept_numpy_integers() -> None:
    w = compute_weights(
        "examples-stake",
        examples=np.array([1, 3]),
        stakes=np.array([2, 2], dtype=np.uint64),
        reputations=[10_000, 10_000],
    )
    assert w.tolist() == [0.25, 0.75]


def test_cap_applies_inside_compute_weights() -> None:
    w = weights_for("fedavg", [60, 30, 10], cap=0.4)
    np.testing.assert_allclose(w, [0.4, 0.4, 0.2], rtol=1e-15)


def test_make_rule_params_reads_beta_and_cap_from_the_config() -> None:
    assert make_rule_params(RunConfig()) == RuleParams(beta=1.0, cap=None)
    assert make_rule_params(RunConfig(beta=2.0, weight_cap=0.3)) == RuleParams(beta=2.0, cap=0.3)
    assert make_rule_params(RunConfig(weight_cap=1.0)).cap is None  # 1: no cap


# --------------------------------------------------------------------------------------------------
# Weight cap (water-filling)


def test_cap_redistributes_excess_proportionally() -> None:
    w = apply_weight_cap([0.5, 0.2, 0.2, 0.1], 0.4)
    np.testing.assert_allclose(w, [0.4, 0.24, 0.24, 0.12], rtol=1e-15)


def test_cap_cascades_when_redistribution_pushes_others_over() -> None:
    # 0.6 -> 0.4 gives 0.2 to the others 3:1, lifting 0.3 to 0.45 > cap: it is capped too
    w = apply_weight_cap([0.6, 0.3, 0.1], 0.4)
    np.testing.assert_allclose(w, [0.4, 0.4, 0.2], rtol=1e-15)


def test_cap_above_largest_share_changes_nothing() -> None:
    w = apply_weight_cap([2.0, 1.0, 1.0], 0.5)  # also normalises
    assert w.tolist() == [0.5, 0.25, 0.25]


@pytest.mark.parametrize("seed", range(20))
def test_cap_properties_on_random_weights(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 30))
    raw = rng.pareto(1.0, n) + 1e-3
    raw[rng.random(n) < 0.2] = 0.0
    raw[0] = max(raw[0], 1e-3)
    positive = int((raw > 0).sum())
    cap = float(rng.uniform(1.0 / positive, 1.0))
    w = apply_weight_cap(raw, cap)
    assert w.max() <= cap * (1 + 1e-12)
    assert math.isclose(w.sum(), 1.0, rel_tol=1e-12)
    assert np.all(w[raw == 0] == 0)
    uncapped = (raw > 0) & (w < cap * (1 - 1e-12))
    if uncapped.sum() >= 2:  # uncapped clients keep their ratios
        ratios = w[uncapped] / raw[uncapped]
        np.testing.assert_allclose(ratios, ratios[0], rtol=1e-12)
    capped = w >= cap * (1 - 1e-12)
    if capped.any() and uncapped.any():  # nobody capped was smaller than somebody uncapped
        assert raw[capped].min() >= raw[uncapped].max()


def test_cap_infeasible_falls_back_to_uniform() -> None:
    # 3 clients cannot all stay at or below 0.3
    assert apply_weight_cap([0.5, 0.3, 0.2], 0.3).tolist() == [1 / 3, 1 / 3, 1 / 3]


def test_cap_infeasible_keeps_zero_weights_at_zero() -> None:
    assert apply_weight_cap([0.7, 0.3, 0.0], 0.4).tolist() == [0.5, 0.5, 0.0]


def test_cap_at_exactly_one_over_n_is_uniform() -> None:
    w = apply_weight_cap([0.7, 0.2, 0.1], 1 / 3)
    np.testing.assert_allclose(w, [1 / 3] * 3, rtol=1e-15)
    w = apply_weight_cap([0.4, 0.3, 0.2, 0.1], 0.25)
    np.testing.assert_allclose(w, [0.25] * 4, rtol=1e-15)


# --------------------------------------------------------------------------------------------------
# Weighted average


@pytest.mark.parametrize("rule", ["fedavg", "stake", "examples-stake", "reputation"])
def test_weighted_average_matches_naive_reference(rule: str) -> None:
    rng = np.random.default_rng(7)
    updates = random_updates(rng, 6)
    weights = rng.random(6)
    weights /= weights.sum()
    result = aggregate(updates, weights, rule=rule)
    assert list(result.arrays) == list(updates[0])
    for name, first in updates[0].items():
        got = result.arrays[name]
        assert got.dtype == first.dtype and got.shape == first.shape, name
        ref = naive_average(updates, weights, name)
        if first.dtype == np.float32:
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6, err_msg=name)
        elif first.dtype == np.float64:
            np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-13, err_msg=name)
        elif first.dtype == np.float16:
            np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3, err_msg=name)
        elif first.dtype == np.bool_:
            np.testing.assert_array_equal(got, ref > 0.5, err_msg=name)
        else:  # integers: the float64 average rounded to nearest
            assert np.all(np.abs(got - ref) <= 0.5 + 1e-9), name
    assert result.selected == tuple(range(6))
    assert result.excluded == ()
    np.testing.assert_allclose(result.weights, weights, rtol=1e-15)
    assert result.scores is None


def test_weighted_average_known_answer() -> None:
    updates = [
        {"w": np.array([1.0, 2.0], np.float32), "n": np.array(10, np.int64)},
        {"w": np.array([3.0, -2.0], np.float32), "n": np.array(13, np.int64)},
    ]
    result = aggregate(updates, [0.25, 0.75])
    np.testing.assert_array_equal(result.arrays["w"], np.array([2.5, -1.0], np.float32))
    assert result.arrays["n"].dtype == np.int64 and int(result.arrays["n"]) == 12  # 12.25


def test_weights_are_normalised() -> None:
    updates = random_updates(np.random.default_rng(1), 3)
    a = aggregate(updates, [2.0, 2.0, 4.0]).arrays
    b = aggregate(updates, [0.25, 0.25, 0.5]).arrays
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_single_update_is_returned_unchanged_but_copied() -> None:
    updates = random_updates(np.random.default_rng(2), 1)
    result = aggregate(updates, [3.0])
    for name, value in updates[0].items():
        np.testing.assert_array_equal(result.arrays[name], value)
        assert not np.shares_memory(result.arrays[name], value)


def test_zero_weight_updates_are_ignored() -> None:
    rng = np.random.default_rng(3)
    updates = random_updates(rng, 3)
    poisoned = {name: value.copy() for name, value in updates[1].items()}
    poisoned["big"][:] = np.nan
    poisoned["double"][:] = np.inf
    result = aggregate([updates[0], poisoned, updates[2]], [0.5, 0.0, 0.5])
    clean = aggregate([updates[0], updates[2]], [0.5, 0.5])
    for name in clean.arrays:
        np.testing.assert_array_equal(result.arrays[name], clean.arrays[name])
    assert result.selected == (0, 2)
    assert result.excluded == (1,)
    assert result.weights.tolist() == [0.5, 0.0, 0.5]


def test_inputs_are_not_modified_and_outputs_are_fresh() -> None:
    updates = random_updates(np.random.default_rng(4), 4, big=1_000)
    before = [{name: value.copy() for name, value in u.items()} for u in updates]
    for rule in PLAIN_RULES:
        result = aggregate(updates, [0.1, 0.2, 0.3, 0.4], rule=rule)
        for name, value in result.arrays.items():
            assert not any(np.shares_memory(value, u[name]) for u in updates)
    for u, b in zip(updates, before, strict=True):
        for name in u:
            np.testing.assert_array_equal(u[name], b[name])


def test_non_contiguous_and_big_endian_inputs() -> None:
    rng = np.random.default_rng(5)
    base = [rng.standard_normal((40, 30), dtype=np.float32) for _ in range(3)]
    strided = [{"t": b.T} for b in base]  # Fortran-ordered views
    swapped = [{"t": b.astype(">f4")} for b in base]
    w = [0.2, 0.3, 0.5]
    expected = aggregate([{"t": np.ascontiguousarray(b.T)} for b in base], w).arrays["t"]
    np.testing.assert_array_equal(aggregate(strided, w).arrays["t"], expected)
    reference = sum(wi * b.astype(np.float64) for wi, b in zip(w, base, strict=True))
    got = aggregate(swapped, w).arrays["t"]
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-6)


def test_mapping_order_does_not_matter() -> None:
    updates = random_updates(np.random.default_rng(6), 3)
    reordered = [updates[0]] + [dict(reversed(list(u.items()))) for u in updates[1:]]
    a = aggregate(updates, [1, 2, 3]).arrays
    b = aggregate(reordered, [1, 2, 3]).arrays
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


# --------------------------------------------------------------------------------------------------
# Weighted median


def median_of(values: list[float], weights: list[float]) -> float:
    return float(aggregate(scalar_updates(values), weights, rule="median").arrays["x"][0])


def test_weighted_median_ignores_a_light_attacker() -> None:
    assert median_of([1.0, 2.0, 3.0, 1e6], [0.3, 0.3, 0.3, 0.1]) == 2.0


def test_weighted_median_follows_a_heavy_attacker() -> None:
    assert median_of([1.0, 2.0, 3.0, 1e6], [0.1, 0.1, 0.1, 0.7]) == 1e6


def test_weighted_median_uses_weights_not_counts() -> None:
    # sorted 1, 2, 3, 4 with cumulative weight .1 .2 .3 1.0: half is reached at 4
    assert median_of([4.0, 3.0, 2.0, 1.0], [0.7, 0.1, 0.1, 0.1]) == 4.0


def test_weighted_median_at_exact_half_averages_neighbours() -> None:
    assert median_of([1.0, 3.0], [0.5, 0.5]) == 2.0
    assert median_of([5.0, 1.0, 3.0, 7.0], [1, 1, 1, 1]) == 4.0


def test_weighted_median_ignores_zero_weight_even_at_half() -> None:
    assert median_of([1.0, 1e9, 3.0], [0.5, 0.0, 0.5]) == 2.0


def test_equal_weight_median_matches_numpy() -> None:
    rng = np.random.default_rng(8)
    for n in (1, 2, 5, 10):
        updates = [{"a": rng.standard_normal((7, 9), dtype=np.float32)} for _ in range(n)]
        got = aggregate(updates, np.ones(n), rule="median").arrays["a"]
        expected = np.median(np.stack([u["a"] for u in updates]), axis=0)
        np.testing.assert_array_equal(got, expected)


def test_median_keeps_dtypes() -> None:
    updates = random_updates(np.random.default_rng(9), 5, big=1_000)
    result = aggregate(updates, [1, 1, 1, 1, 1], rule="median")
    for name, first in updates[0].items():
        assert result.arrays[name].dtype == first.dtype
        assert result.arrays[name].shape == first.shape
    stacked = np.stack([u["num_batches_tracked"] for u in updates])
    assert result.arrays["num_batches_tracked"] == np.median(stacked)  # odd n: a real value


# --------------------------------------------------------------------------------------------------
# Weighted trimmed mean


def trimmed_of(values: list[float], weights: list[float], trim: float) -> float:
    params = RuleParams(trim=trim)
    result = aggregate(
        scalar_updates(values, np.float64), weights, rule="trimmed-mean", params=params
    )
    return float(result.arrays["x"][0])


def test_trimmed_mean_drops_both_tails() -> None:
    assert trimmed_of([1.0, 2.0, 3.0, 4.0, 100.0], [1] * 5, 0.2) == pytest.approx(3.0, rel=1e-15)


def test_trimmed_mean_trims_weight_mass_fractionally() -> None:
    # lower 0.2: all of 1 (0.1) and 0.1 of 2; upper 0.2: all of 100 (0.1) and 0.1 of 4
    got = trimmed_of([1.0, 2.0, 3.0, 4.0, 100.0], [0.1, 0.2, 0.3, 0.3, 0.1], 0.2)
    assert got == pytest.approx((2 * 0.1 + 3 * 0.3 + 4 * 0.2) / 0.6, rel=1e-9)


def test_trimmed_mean_ignores_a_light_attacker_and_follows_a_heavy_one() -> None:
    assert trimmed_of([1.0, 2.0, 3.0, 1e6], [0.3, 0.3, 0.3, 0.1], 0.2) == pytest.approx(
        (1 * 0.1 + 2 * 0.3 + 3 * 0.2) / 0.6, rel=1e-9
    )
    # 1e6 holds 0.7 of the weight: 0.5 of it survives the upper cut, next to 0.1 of the value 3
    got = trimmed_of([1.0, 2.0, 3.0, 1e6], [0.1, 0.1, 0.1, 0.7], 0.2)
    assert got == pytest.approx((3 * 0.1 + 1e6 * 0.5) / 0.6, rel=1e-9)


def test_trimmed_mean_with_zero_trim_is_the_weighted_average() -> None:
    rng = np.random.default_rng(10)
    updates = [{"a": rng.standard_normal(50)} for _ in range(4)]
    w = np.array([0.1, 0.2, 0.3, 0.4])
    got = aggregate(updates, w, rule="trimmed-mean", params=RuleParams(trim=0.0)).arrays["a"]
    # weights are counted in units of 2**-40 here, hence the 1e-9 tolerance
    np.testing.assert_allclose(got, naive_average(updates, w, "a"), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("n", "trim"), [(10, 0.2), (10, 0.3), (5, 0.2), (4, 0.25), (3, 0.0)])
def test_equal_weight_trimmed_mean_matches_the_classic_one(n: int, trim: float) -> None:
    rng = np.random.default_rng(n)
    updates = [{"a": rng.standard_normal((6, 11))} for _ in range(n)]
    got = aggregate(updates, np.ones(n), rule="trimmed-mean", params=RuleParams(trim=trim)).arrays[
        "a"
    ]
    cut = int(trim * n)  # what scipy.stats.trim_mean drops from each end
    ordered = np.sort(np.stack([u["a"] for u in updates]), axis=0)
    expected = ordered[cut : n - cut].mean(axis=0)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------------------------------
# Multi-Krum


def clustered_updates(rng: np.random.Generator, honest: int, outliers: list[float]) -> list[Update]:
    updates = [
        {"a": rng.normal(1.0, 0.1, size=(20, 5)).astype(np.float32), "b": rng.normal(0, 0.1, 7)}
        for _ in range(honest)
    ]
    for scale in outliers:
        updates.append({"a": np.full((20, 5), scale, np.float32), "b": np.full(7, scale)})
    return updates


def test_multi_krum_drops_obvious_outliers() -> None:
    updates = clustered_updates(np.random.default_rng(11), 8, [50.0, -40.0])
    result = aggregate(updates, np.ones(10), rule="multi-krum")
    # n = 10: f = 3, m = 7 selected, both outliers among the excluded
    assert len(result.selected) == 7
    assert {8, 9} <= set(result.excluded)
    honest_mean = np.mean([u["a"] for u in updates[:8]], axis=0)
    assert np.abs(result.arrays["a"] - honest_mean).max() < 0.2
    assert result.scores is not None and len(result.scores) == 10
    assert min(result.scores[8], result.scores[9]) > max(result.scores[:8])
    assert math.isclose(result.weights.sum(), 1.0)
    assert all(result.weights[i] == 0 for i in result.excluded)


def test_multi_krum_averages_selected_with_renormalised_weights() -> None:
    updates = clustered_updates(np.random.default_rng(12), 4, [100.0])
    w = np.array([0.1, 0.2, 0.3, 0.2, 0.2])
    result = aggregate(updates, w, rule="multi-krum", params=RuleParams(krum_f=1, krum_m=4))
    assert result.selected == (0, 1, 2, 3)
    np.testing.assert_allclose(result.weights, [0.125, 0.25, 0.375, 0.25, 0.0], rtol=1e-15)
    ref = naive_average(updates[:4], w[:4] / w[:4].sum(), "a")
    np.testing.assert_allclose(result.arrays["a"], ref, rtol=1e-5, atol=1e-6)


def test_krum_scores_match_brute_force() -> None:
    rng = np.random.default_rng(13)
    updates = [
        {"a": rng.standard_normal((30, 4), dtype=np.float32), "b": rng.standard_normal(9)}
        for _ in range(7)
    ]
    flat = np.stack([np.concatenate([u["a"].ravel(), u["b"]]).astype(np.float64) for u in updates])
    distances = ((flat[:, None, :] - flat[None, :, :]) ** 2).sum(axis=-1)
    for f in (None, 0, 1, 2):
        neighbours = 7 - (2 if f is None else f) - 2  # default f = (7 - 3) // 2 = 2
        expected = [np.sort(np.delete(distances[i], i))[:neighbours].sum() for i in range(7)]
        np.testing.assert_allclose(compute_krum_scores(updates, f), expected, rtol=1e-10)


def test_default_krum_f_is_the_most_krum_tolerates() -> None:
    # Krum needs n >= 2f + 3 candidates
    assert [default_krum_f(n) for n in range(1, 10)] == [0, 0, 0, 0, 1, 1, 2, 2, 3]
    assert all(n >= 2 * default_krum_f(n) + 3 for n in range(3, 50))


def test_multi_krum_ties_break_by_index() -> None:
    same = {"a": np.ones(4, np.float32)}
    updates = [dict(same) for _ in range(5)]
    result = aggregate(updates, np.ones(5), rule="multi-krum", params=RuleParams(krum_m=2))
    assert result.selected == (0, 1)


def test_multi_krum_m_above_n_selects_all_and_zero_weight_is_no_candidate() -> None:
    updates = clustered_updates(np.random.default_rng(14), 3, [1e3])
    result = aggregate(updates, [1, 1, 1, 0], rule="multi-krum", params=RuleParams(krum_m=10))
    assert result.selected == (0, 1, 2)
    assert result.scores is not None and result.scores[3] == math.inf


def test_multi_krum_single_candidate() -> None:
    updates = clustered_updates(np.random.default_rng(15), 2, [])
    result = aggregate(updates, [0, 1], rule="multi-krum")
    assert result.selected == (1,)
    np.testing.assert_array_equal(result.arrays["a"], updates[1]["a"])


# --------------------------------------------------------------------------------------------------
# Attacks against the robust rules


def attacked_updates(
    rng: np.random.Generator, honest: int, attackers: int, attack: str
) -> tuple[list[Update], np.ndarray]:
    target = rng.normal(0.0, 1.0, size=200).astype(np.float32)
    updates = [{"a": (target + rng.normal(0, 0.05, 200)).astype(np.float32)} for _ in range(honest)]
    for _ in range(attackers):
        if attack == "sign-flip":
            bad = -10.0 * target
        elif attack == "scaled":
            bad = 100.0 * target
        else:
            bad = rng.normal(0.0, 20.0, 200)
        updates.append({"a": bad.astype(np.float32)})
    return updates, target


@pytest.mark.parametrize("attack", ["sign-flip", "scaled", "noise"])
@pytest.mark.parametrize("attackers", [3, 4])
def test_robust_rules_resist_30_and_40_percent_attackers(attack: str, attackers: int) -> None:
    updates, target = attacked_updates(np.random.default_rng(16), 10 - attackers, attackers, attack)
    w = np.ones(10)
    plain = aggregate(updates, w, rule="fedavg").arrays["a"]
    assert np.abs(plain - target).mean() > 1.0  # FedAvg is dragged away
    trim = attackers / 10  # trim at least the attackers' weight mass
    rules = {"median": RuleParams(), "trimmed-mean": RuleParams(trim=trim)}
    rules["multi-krum"] = RuleParams(krum_f=attackers)
    for rule, params in rules.items():
        got = aggregate(updates, w, rule=rule, params=params).arrays["a"]
        assert np.abs(got - target).mean() < 0.1, (rule, attack)


def test_stake_weight_lets_median_resist_a_majority_of_light_attackers() -> None:
    # 6 attackers out of 10 but holding only 30 % of the stake
    updates, target = attacked_updates(np.random.default_rng(17), 4, 6, "sign-flip")
    w = weights_for("median", [100] * 10, stakes=[7] * 4 + [2] * 6)
    got = aggregate(updates, w, rule="median").arrays["a"]
    assert np.abs(got - target).mean() < 0.1


# --------------------------------------------------------------------------------------------------
# Determinism


@pytest.mark.parametrize("rule", PLAIN_RULES)
def test_same_inputs_give_bit_identical_outputs(rule: str) -> None:
    updates = random_updates(np.random.default_rng(18), 5, big=1_000 if rule in ROBUST else 300_007)
    copies = [{name: value.copy() for name, value in u.items()} for u in updates]
    w = [0.3, 0.1, 0.2, 0.25, 0.15]
    a = aggregate(updates, w, rule=rule)
    b = aggregate(copies, w, rule=rule)
    assert a.selected == b.selected
    for name in a.arrays:
        assert a.arrays[name].tobytes() == b.arrays[name].tobytes(), name


def test_result_is_an_aggregation_result() -> None:
    result = aggregate(scalar_updates([1.0, 2.0]), [1, 1])
    assert isinstance(result, AggregationResult)


# --------------------------------------------------------------------------------------------------
# Refusals


def test_invalid_empty_update_list() -> None:
    with pytest.raises(ConfigError, match="empty"):
        aggregate([], [])


def test_invalid_update_without_tensors() -> None:
    with pytest.raises(ConfigError, match="no tensors"):
        aggregate([{}, {}], [1, 1])


def test_invalid_mismatched_names() -> None:
    with pytest.raises(ConfigError, match=r"update 1 .*missing \['b'\].*unexpected \['c'\]"):
        aggregate([{"a": np.ones(2), "b": np.ones(2)}, {"a": np.ones(2), "c": np.ones(2)}], [1, 1])


def test_invalid_mismatched_shapes() -> None:
    with pytest.raises(ConfigError, match="'a' of update 1"):
        aggregate([{"a": np.ones(3)}, {"a": np.ones(4)}], [1, 1])


def test_invalid_mismatched_dtypes() -> None:
    with pytest.raises(ConfigError, match="'a' of update 1"):
        aggregate([{"a": np.ones(3, np.float32)}, {"a": np.ones(3, np.float64)}], [1, 1])


@pytest.mark.parametrize("dtype", [np.complex64, object, "U3"])
def test_invalid_unsupported_dtype(dtype: Any) -> None:
    with pytest.raises(ConfigError, match="unsupported dtype"):
        aggregate([{"a": np.zeros(2, dtype=dtype)}], [1])


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([1.0, math.nan], "finite"),
        ([1.0, math.inf], "finite"),
        ([1.0, -0.5], ">= 0"),
        ([0.0, 0.0], "positive"),
        ([1.0], "1 weights for 2 updates"),
        ([[1.0, 1.0]], "1-D"),
        (["a", "b"], "numbers"),
    ],
)
def test_invalid_weights(weights: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        aggregate(scalar_updates([1.0, 2.0]), weights)


def test_invalid_rule() -> None:
    with pytest.raises(ConfigError, match="unknown aggregation rule 'mean'"):
        aggregate(scalar_updates([1.0]), [1], rule="mean")
    with pytest.raises(ConfigError, match="unknown aggregation rule"):
        weights_for("krum", [1])


@pytest.mark.parametrize(
    ("field", "values", "message"),
    [
        ("examples", [10, -1], r"examples\[1\] must be >= 0"),
        ("stakes", [-5, 1], r"stakes\[0\] must be >= 0"),
        ("examples", [1.5, 2], r"examples\[0\] must be an integer"),
        ("stakes", [True, 1], r"stakes\[0\] must be an integer"),
        ("reputations", [10_001, 0], "basis points"),
        ("reputations", [-1, 0], r"reputations\[0\] must be >= 0"),
        ("stakes", [1, 2, 3], "one entry per client"),
    ],
)
def test_invalid_weight_inputs(field: str, values: list[Any], message: str) -> None:
    args: dict[str, Any] = {"examples": [1, 1], "stakes": [1, 1], "reputations": [1, 1]}
    args[field] = values
    with pytest.raises(ConfigError, match=message):
        compute_weights("reputation", **args)


def test_invalid_no_clients_or_no_positive_weight() -> None:
    with pytest.raises(ConfigError, match="zero clients"):
        compute_weights("fedavg", examples=[], stakes=[], reputations=[])
    with pytest.raises(ConfigError, match="no client has positive weight"):
        weights_for("stake", [10, 10], stakes=[0, 0])
    with pytest.raises(ConfigError, match="no client has positive weight"):
        weights_for("examples-stake", [0, 10], stakes=[5, 0], beta=0.5)


@pytest.mark.parametrize(
    "params",
    [
        {"beta": -1.0},
        {"beta": math.nan},
        {"beta": math.inf},
        {"cap": 0.0},
        {"cap": 1.5},
        {"cap": math.nan},
        {"trim": 0.5},
        {"trim": -0.1},
        {"krum_f": -1},
        {"krum_f": 1.5},
        {"krum_m": 0},
        {"krum_m": True},
    ],
)
def test_invalid_rule_params(params: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        RuleParams(**params)


@pytest.mark.parametrize("cap", [0.0, -0.1, 1.01, math.nan])
def test_invalid_cap(cap: float) -> None:
    with pytest.raises(ConfigError, match="cap"):
        apply_weight_cap([0.5, 0.5], cap)


def test_invalid_krum_attackers() -> None:
    with pytest.raises(ConfigError, match="num_attackers"):
        compute_krum_scores(scalar_updates([1.0, 2.0]), -1)


# --------------------------------------------------------------------------------------------------
# screened: norm screen, then contribution screen


def vector_updates(rows: list[list[float]]) -> list[Update]:
    return [{"w": np.asarray(r, dtype=np.float32)} for r in rows]


def alignment_scorer(target: np.ndarray, calls: list[int] | None = None):  # type: ignore[no-untyped-def]
    """Score = weight x (update . target): positive when the update points the right way."""

    def score(updates, weights):  # type: ignore[no-untyped-def]
        if calls is not None:
            calls.append(len(updates))
        return np.array([w * float(u["w"] @ target) for u, w in zip(updates, weights, strict=True)])

    return score


def test_screened_averages_only_the_updates_that_help() -> None:
    honest = [[1.0, 0.0], [1.2, 0.1], [0.8, -0.1]]
    flipped = [[-1.0, 0.0], [-1.1, 0.0]]  # 40 %, same length as the honest ones
    free_rider = [[0.0, 0.0]]
    updates = vector_updates(honest + flipped + free_rider)
    result = aggregate_screened(updates, [1.0] * 6, alignment_scorer(np.array([1.0, 0.0])))
    assert result.selected == (0, 1, 2)
    np.testing.assert_allclose(result.arrays["w"], np.mean(honest, axis=0), rtol=1e-6, atol=1e-6)
    assert result.weights.tolist()[3:] == [0.0, 0.0, 0.0]
    assert result.contributions is not None
    assert all(result.contributions[i] > 0 for i in range(3))
    assert all(result.contributions[i] < 0 for i in (3, 4)) and result.contributions[5] == 0
    assert result.reasons == ("", "", "", "harmful", "harmful", "useless")
    assert "helpful" in result.note


def test_screened_norm_screen_leaves_boosted_updates_out_unscored() -> None:
    updates = vector_updates([[1.0, 0.0], [0.9, 0.1], [1.1, 0.0], [10.0, 0.0], [0.0, 30.0]])
    calls: list[int] = []
    result = aggregate_screened(
        updates, [1.0] * 5, alignment_scorer(np.array([1.0, 0.0]), calls), norm_screen=3.0
    )
    assert calls == [3, 1]  # the three that passed the norm screen, then the step they make
    assert result.selected == (0, 1, 2)
    assert result.reasons[3:] == ("norm", "norm")
    assert result.contributions is not None and result.contributions[3:].tolist() == [0.0, 0.0]


def test_screened_scores_with_weights_renormalised_over_the_screened() -> None:
    updates = vector_updates([[1.0], [1.0], [100.0]])
    seen: list[list[float]] = []

    def scorer(ups, weights):  # type: ignore[no-untyped-def]
        seen.append([float(w) for w in weights])
        return np.ones(len(ups))

    result = aggregate_screened(updates, [1.0, 3.0, 4.0], scorer)
    assert seen == [[0.25, 0.75], [1.0]]  # the round, then the step as one update
    assert result.weights.tolist() == [0.25, 0.75, 0.0]


def quadratic_loo_scorer(target: np.ndarray):  # type: ignore[no-untyped-def]
    """A validation-loss scorer in miniature: utility of a coalition = -|its model - target|^2
    (the model: base 0 plus the members' weighted updates, not renormalised, as
    :class:`~fedchain.rounds.validation.RoundScorer` builds them); score = leave-one-out. One
    update of weight 1 scores its own gain: the loss before minus after."""

    def loss(step: np.ndarray) -> float:
        return float(np.sum((step - target) ** 2))

    def score(updates, weights):  # type: ignore[no-untyped-def]
        vectors = [w * u["w"].astype(np.float64) for u, w in zip(updates, weights, strict=True)]
        total = np.sum(vectors, axis=0)
        if len(vectors) == 1:
            return np.array([loss(np.zeros_like(total)) - loss(total)])
        return np.array([loss(total - v) - loss(total) for v in vectors])

    return score


def test_screened_step_lowers_the_validation_loss_and_says_why() -> None:
    target = np.array([1.0, 0.0])
    updates = vector_updates([[0.6, 3.0], [0.6, -3.0], [0.6, 0.2], [0.6, -0.2], [0.6, 0.0]])
    result = aggregate_screened(updates, [1.0] * 5, quadratic_loo_scorer(target))
    assert result.moved and result.selected == (2, 3, 4)
    assert result.reasons == ("norm", "norm", "", "", "")
    np.testing.assert_allclose(result.arrays["w"], [0.6, 0.0], atol=1e-6)
    assert float(np.sum((result.arrays["w"] - target) ** 2)) < 1.0  # the loss before
    assert result.note == (
        "averaged the helpful updates (validation-loss gain of each step: helpful +0.84)"
    )


def test_screened_takes_the_thin_step_the_old_evidence_share_refused() -> None:
    updates = vector_updates([[1.0], [2.0], [3.0], [4.0]])
    step_gain = quadratic_loo_scorer(np.array([1.0]))  # the loss is lowest at 1
    one_helps = lambda ups, ws: (  # noqa: E731
        np.array([1.0, -1, -1, -1]) if len(ups) > 1 else step_gain(ups, ws)
    )
    # a quarter of the weight helps: the old rule (a third needed as evidence) froze this round
    few = aggregate_screened(updates, [1.0] * 4, one_helps)
    assert few.selected == (0,) and few.moved
    np.testing.assert_allclose(few.arrays["w"], [1.0])
    assert few.reasons == ("", "harmful", "harmful", "harmful")
    assert few.note == (
        "averaged the helpful updates (validation-loss gain of each step: helpful +1, all -1.25)"
    )


def test_screened_does_not_freeze_for_lack_of_evidence() -> None:
    # every score within the scorer's tolerance (0), the step's too: no evidence of harm
    updates = vector_updates([[1.0], [2.0], [3.0], [4.0]])
    result = aggregate_screened(updates, [1.0] * 4, lambda ups, ws: np.zeros(len(ups)))
    assert result.selected == (0, 1, 2, 3) and result.moved
    np.testing.assert_allclose(result.arrays["w"], [2.5])


def test_screened_freezes_only_when_every_step_raises_the_loss() -> None:
    updates = vector_updates([[1.0], [2.0], [3.0]])
    # each update scores well, but the step they make raises the validation loss
    scorer = lambda ups, ws: np.ones(len(ups)) if len(ups) > 1 else np.array([-0.5])  # noqa: E731
    result = aggregate_screened(updates, [1.0] * 3, scorer)
    assert result.selected == () and not result.moved
    assert result.arrays["w"].tolist() == [0.0] and result.weights.tolist() == [0.0] * 3
    assert result.reasons == ("frozen",) * 3 and "unchanged" in result.note
    # at the optimum every update is harmful: none is averaged, each for its own reason
    at_optimum = aggregate_screened(updates, [1.0] * 3, quadratic_loo_scorer(np.zeros(1)))
    assert at_optimum.selected == () and at_optimum.reasons == ("harmful",) * 3


def test_screened_does_not_freeze_on_a_rise_inside_the_tolerance() -> None:
    # late in a clean run FedAvg's step raises a small validation split's loss by a few
    # hundredths of a nat while test accuracy still rises: no evidence of harm, so it moves
    updates = vector_updates([[1.0], [2.0], [3.0]])
    for gain, moved in ((-0.5 * STEP_TOLERANCE, True), (-1.5 * STEP_TOLERANCE, False)):
        scorer = lambda ups, ws, g=gain: np.ones(len(ups)) if len(ups) > 1 else np.array([g])  # noqa: E731
        result = aggregate_screened(updates, [1.0] * 3, scorer)
        assert result.moved is moved
        assert result.selected == ((0, 1, 2) if moved else ())
    assert f"by more than {STEP_TOLERANCE:g}" in result.note
    strict = aggregate_screened(updates, [1.0] * 3, scorer, step_tolerance=0.0)
    assert not strict.moved
    with pytest.raises(ConfigError, match="step_tolerance"):
        aggregate_screened(updates, [1.0] * 3, scorer, step_tolerance=-1.0)


def test_screened_ties_inside_the_tolerance_go_to_the_larger_step() -> None:
    # a harmful-scored update enters only when the step with it is about as good as without
    updates = vector_updates([[1.0], [1.0], [-1.0]])
    scores = np.array([1.0, 1.0, -1.0])

    def scorer_with(all_gain: float) -> UpdateScorer:
        return lambda ups, ws: (
            scores if len(ups) > 1 else [0.1 if float(ups[0]["w"][0]) == 1.0 else all_gain]
        )

    near = aggregate_screened(updates, [1.0] * 3, scorer_with(0.1 - 0.5 * STEP_TOLERANCE))
    assert near.selected == (0, 1, 2) and near.reasons == ("", "", "")
    worse = aggregate_screened(updates, [1.0] * 3, scorer_with(0.1 - 1.5 * STEP_TOLERANCE))
    assert worse.selected == (0, 1) and worse.reasons == ("", "", "harmful")


def test_screened_ties_never_let_free_riders_in() -> None:
    # 40 % free riders: their zero updates only shorten the step; on a tie (the step measures
    # as well with them) the rule averages the fewest useless updates, so they stay out
    updates = vector_updates([[1.0], [1.0], [1.2], [0.0], [0.0]])
    scores = np.array([1.0, 1.0, 1.0, 0.0, 0.0])
    scorer = lambda ups, ws: scores if len(ups) > 1 else np.array([0.1])  # noqa: E731
    result = aggregate_screened(updates, [1.0] * 5, scorer)
    assert result.selected == (0, 1, 2)
    assert result.reasons == ("", "", "", "useless", "useless")


def test_screened_takes_the_larger_gain_of_its_two_steps() -> None:
    # the helpful updates alone overshoot; with the useless (zero) update the step is shorter
    # and lowers the loss more, so the rule takes that one
    target = np.array([1.0])
    updates = vector_updates([[1.8], [1.8], [0.0]])
    result = aggregate_screened(updates, [1.0] * 3, quadratic_loo_scorer(target))
    assert result.contributions is not None and result.contributions[2] == 0
    assert result.selected == (0, 1, 2)
    np.testing.assert_allclose(result.arrays["w"], [1.2], rtol=1e-6)
    assert "not harmful" in result.note


def test_screened_is_deterministic_and_leaves_inputs_alone() -> None:
    updates = random_updates(np.random.default_rng(7), 5, big=1_000)
    before = [{k: v.copy() for k, v in u.items()} for u in updates]
    scores = np.array([1.0, -1.0, 1.0, 0.0, 1.0])
    scorer = lambda ups, ws: scores if len(ups) > 1 else np.array([1.0])  # noqa: E731
    a = aggregate_screened(updates, [0.2] * 5, scorer, norm_screen=100.0)
    b = aggregate_screened(updates, [0.2] * 5, scorer, norm_screen=100.0)
    assert a.selected == b.selected == (0, 1, 2, 4)  # equal gains: all but the useless one
    for name in a.arrays:
        assert a.arrays[name].tobytes() == b.arrays[name].tobytes()
        assert not any(np.shares_memory(a.arrays[name], u[name]) for u in updates)
    for u, orig in zip(updates, before, strict=True):
        for name in u:
            np.testing.assert_array_equal(u[name], orig[name])


def test_aggregate_round_screened_weighs_by_reputation_and_needs_a_scorer() -> None:
    updates = vector_updates([[1.0], [1.0], [1.0]])
    ones = lambda ups, ws: np.ones(len(ups))  # noqa: E731
    result = aggregate_round(
        "screened",
        None,
        updates,
        examples=[10, 10, 20],
        stakes=[1, 1, 1],
        reputations=[10_000, 5_000, 10_000],
        scorer=ones,
    )
    np.testing.assert_allclose(result.weights, [2 / 7, 1 / 7, 4 / 7])  # e x s x r
    with pytest.raises(ConfigError, match="contribution"):
        aggregate_round(
            "screened", None, updates, examples=[1] * 3, stakes=[1] * 3, reputations=[1] * 3
        )


def test_every_reputation_at_zero_weighs_as_equal_reputations_and_the_round_goes_on() -> None:
    # late rounds of a long clean run can score every client harmful until all reputations
    # are 0: that stopped the run ("no client has positive weight"); now equal reputations
    # weigh as examples x stake, and screened still measures and averages
    np.testing.assert_allclose(
        weights_for("reputation", [10, 30], stakes=[1, 1], reputations=[0, 0]),
        weights_for("examples-stake", [10, 30], stakes=[1, 1]),
    )
    updates = vector_updates([[1.0], [1.0], [1.0]])
    ones = lambda ups, ws: np.ones(len(ups))  # noqa: E731
    result = aggregate_round(
        "screened", None, updates, examples=[10, 10, 20], stakes=[1, 1, 1],
        reputations=[0, 0, 0], scorer=ones,
    )  # fmt: skip
    assert result.moved and result.selected == (0, 1, 2)
    np.testing.assert_allclose(result.weights, [1 / 4, 1 / 4, 1 / 2])
    # one reputation above 0 still takes all the weight: only a federation-wide 0 falls back
    np.testing.assert_allclose(
        weights_for("reputation", [10, 30], stakes=[1, 1], reputations=[0, 1]), [0.0, 1.0]
    )


def test_invalid_screened_through_plain_aggregate() -> None:
    with pytest.raises(ConfigError, match="aggregate_screened"):
        aggregate(vector_updates([[1.0]]), [1.0], rule="screened")


def test_invalid_screened_scorer_returns_wrong_count() -> None:
    with pytest.raises(ConfigError, match="scores"):
        aggregate_screened(vector_updates([[1.0], [1.0]]), [1, 1], lambda u, w: np.ones(3))


def test_screened_keeps_slightly_negative_but_drops_harmful_and_negligible() -> None:
    updates = vector_updates([[1.0], [1.0], [1.0], [2.0], [0.5]])
    scores = np.array([1.0, 1.0, -0.1, -0.5, 0.01])  # mean positive m = 0.67
    result = aggregate_screened(  # a step's gain: -10 (step - 1)^2, measurable in every step
        updates,
        [1.0] * 5,
        lambda ups, ws: scores if len(ups) > 1 else [-10 * (float(ups[0]["w"][0]) - 1) ** 2],
    )
    assert result.selected == (0, 1, 2)  # -0.1 > -0.25 m kept; -0.5 harmful; 0.01 negligible
    assert result.reasons[3:] == ("harmful", "useless")


def test_screened_keeps_sign_flippers_and_free_riders_out_when_it_measures_the_step() -> None:
    # 40 % attackers: two flip an honest update, two free-ride; the all-updates step is
    # measured too, and loses: the attackers stay out of the model
    target = np.array([1.0, 0.0])
    honest = [[0.9, 0.1], [1.0, -0.1], [1.1, 0.0], [0.95, 0.05], [1.05, -0.05], [1.0, 0.0]]
    attackers = [[-1.0, -0.1], [-1.1, 0.1], [0.0, 0.0], [0.0, 0.0]]
    updates = vector_updates(honest + attackers)
    result = aggregate_screened(updates, [1.0] * 10, quadratic_loo_scorer(target))
    assert result.selected == tuple(range(6)) and result.moved
    assert result.reasons[6:] == ("harmful", "harmful", "useless", "useless")
    np.testing.assert_allclose(result.arrays["w"], np.mean(honest, axis=0), rtol=1e-6, atol=1e-6)
    assert result.note.startswith("averaged the helpful updates")


@pytest.mark.parametrize("preload", ["", "load_in_background()\n"], ids=["cold", "preloaded"])
def test_the_blas_limit_holds_the_blas_the_kernels_call(preload: str) -> None:
    """In a fresh process (scipy not yet imported), the one-thread limit covers scipy's BLAS,
    which the weighted average calls: the limit used to be made before scipy was loaded and
    missed it (axpy then ran on two threads, up to 100x slower beside torch's workers). Also
    when a coordinator started loading it in the background and the kernel runs at once."""
    probe = (
        "import threadpoolctl\n"
        "from fedchain.aggregation.kernels import _blas, load_in_background, single_blas_thread\n"
        f"{preload}"
        "with single_blas_thread():\n"
        "    _blas()\n"
        "    info = threadpoolctl.threadpool_info()\n"
        "print(sorted({(i['filepath'], i['num_threads']) for i in info if i['user_api'] == 'blas'"
        " and 'scipy.libs' in i['filepath']}))\n"
    )
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "2"}
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "scipy.libs" in out  # scipy's own OpenBLAS is the one measured
    assert out.strip().endswith("1)]"), out


# --------------------------------------------------------------------------------------------------
# screened: the paired step test (per-example validation-loss differences)

EXAMPLES = 144  # the default federation's validation split


def jitter(seed: int, scale: float, m: int = EXAMPLES) -> np.ndarray:
    return scale * np.random.default_rng(seed).standard_normal(m)


def per_example_tester(by_step: dict[float, np.ndarray]):  # type: ignore[no-untyped-def]
    """A step tester in miniature: a step (one-coordinate updates) -> its differences, looked
    up by the step's value (as the coordinator's tester measures the step it is given)."""

    def test(step):  # type: ignore[no-untyped-def]
        return by_step[round(float(step["w"][0]), 4)]

    return test


def test_raises_loss_is_a_paired_test_of_the_mean_against_its_standard_error() -> None:
    tiny_everywhere = 0.001 + jitter(0, 0.0005)  # a rise of a thousandth nat on most examples
    assert raises_loss(tiny_everywhere)
    noisy = jitter(1, 0.5)
    noisy += 0.01 - noisy.mean()  # mean +0.01, spread 0.5: SE 0.042, the split's noise
    assert math.isclose(float(noisy.mean()), 0.01) and not raises_loss(noisy)
    assert not raises_loss(-tiny_everywhere) and not raises_loss(np.zeros(EXAMPLES))
    assert raises_loss(np.full(EXAMPLES, 1e-9))  # the same rise everywhere: SE 0
    se = float(np.std(noisy, ddof=1)) / math.sqrt(EXAMPLES)
    assert raises_loss(noisy, k=0.9 * 0.01 / se) and not raises_loss(noisy, k=1.1 * 0.01 / se)
    assert STEP_STANDARD_ERRORS == 2.0


def test_screened_paired_test_freezes_on_a_consistent_rise_the_tolerance_let_through() -> None:
    updates = vector_updates([[1.0], [2.0], [3.0]])
    scorer = lambda ups, ws: np.ones(len(ups)) if len(ups) > 1 else np.array([-0.001])  # noqa: E731
    rise = 0.001 + jitter(0, 0.0005)  # the one candidate (all helpful) raises it everywhere
    tester = per_example_tester({2.0: rise})
    frozen = aggregate_screened(updates, [1.0] * 3, scorer, step_tester=tester)
    assert not frozen.moved and frozen.reasons == ("frozen",) * 3
    assert "standard errors" in frozen.note
    assert aggregate_screened(updates, [1.0] * 3, scorer).moved  # the scalar test: within 0.02


def test_screened_paired_test_moves_on_a_noisy_rise() -> None:
    updates = vector_updates([[1.0], [2.0], [3.0]])
    scorer = lambda ups, ws: np.ones(len(ups))  # noqa: E731
    noisy = jitter(1, 0.5)
    noisy += 0.01 - noisy.mean()  # mean +0.01 (a rise), spread 0.5: no evidence of harm
    result = aggregate_screened(
        updates, [1.0] * 3, scorer, step_tester=per_example_tester({2.0: noisy})
    )
    assert result.moved and result.selected == (0, 1, 2)
    assert result.note == (
        "averaged the helpful updates (validation-loss gain of each step: helpful -0.01)"
    )


def test_screened_paired_ties_need_the_larger_step_not_measurably_worse() -> None:
    # two helpful updates and one harmful-scored one: it enters only when the step with it
    # is no worse than the step without it, paired example by example
    updates = vector_updates([[1.0], [1.0], [-1.0]])
    scores = np.array([1.0, 1.0, -1.0])
    scorer = lambda ups, ws: scores  # noqa: E731
    helpful = -0.05 + jitter(2, 0.01)  # the helpful step (1.0) lowers the loss everywhere
    for extra, enters in ((jitter(3, 0.2), True), (0.005 + jitter(3, 0.001), False)):
        tester = per_example_tester({1.0: helpful, round(1 / 3, 4): helpful + extra})
        result = aggregate_screened(updates, [1.0] * 3, scorer, step_tester=tester)
        assert result.selected == ((0, 1, 2) if enters else (0, 1))
        # the scalar test ties both: each is within 0.02 of the best
        assert abs(float(extra.mean())) < STEP_TOLERANCE


def test_attacker_cannot_widen_the_standard_error_to_tie_a_worse_step() -> None:
    # a hostile update spreads its effect wide on the validation examples (noise, or helping
    # a few examples a lot while hurting most): the step with it is 0.04 nats worse on the
    # mean, but the paired differences' spread (0.3) would hide that from the test alone
    updates = vector_updates([[1.0], [1.0], [-1.0]])
    scores = np.array([1.0, 1.0, -1.0])
    scorer = lambda ups, ws: scores  # noqa: E731
    helpful = -0.05 + jitter(2, 0.01)
    hostile = jitter(4, 0.3)
    hostile += 0.04 - hostile.mean()
    assert not raises_loss(hostile)  # the paired test alone would tie them ...
    tester = per_example_tester({1.0: helpful, round(1 / 3, 4): helpful + hostile})
    result = aggregate_screened(updates, [1.0] * 3, scorer, step_tester=tester)
    assert result.selected == (0, 1) and result.reasons[2] == "harmful"  # ... the rule does not
    # and it cannot keep the model moving with a noisy step that raises the mean loss: with
    # every honest step worse than no step, the noisy one is too (mean rise > the tolerance)
    rise = 0.03 + jitter(5, 0.001)
    tester = per_example_tester({1.0: rise, round(1 / 3, 4): 0.03 + hostile})
    frozen = aggregate_screened(updates, [1.0] * 3, scorer, step_tester=tester)
    assert not frozen.moved and frozen.reasons == ("frozen", "frozen", "harmful")
    # a step worse on most examples but better on a few, 0.01 worse on the mean: a tie, as
    # under the scalar test (the rule judges the mean loss; a consistent 0.01 is kept out,
    # above); the paired test opens no way in the tolerance kept shut
    few = np.full(EXAMPLES, 0.03)
    few[:4] = 0.03 - (0.03 * EXAMPLES - 0.01 * EXAMPLES) / 4  # -0.69 on 4 examples
    assert math.isclose(float(few.mean()), 0.01) and not raises_loss(few)
    tester = per_example_tester({1.0: helpful, round(1 / 3, 4): helpful + few})
    paired = aggregate_screened(updates, [1.0] * 3, scorer, step_tester=tester)
    gains = {1.0: 0.05, round(1 / 3, 4): 0.04}
    scalar = aggregate_screened(
        updates,
        [1.0] * 3,
        lambda ups, ws: scores if len(ups) > 1 else [gains[round(float(ups[0]["w"][0]), 4)]],
    )
    assert paired.selected == scalar.selected == (0, 1, 2)


def test_choose_step_without_differences_is_the_scalar_tolerance() -> None:
    candidates = [("helpful", [0]), ("all", [0, 1])]
    verdicts = {0: "", 1: "harmful"}
    for gains, best in (
        ([0.1, 0.09], 1),  # within the tolerance: the larger step
        ([0.1, 0.07], 0),
        ([-0.01, -0.015], 1),  # rises within the tolerance: no evidence of harm
        ([-0.03, -0.025], None),  # every step worse than no step: freeze
        ([], None),
    ):
        assert choose_step(gains, None, candidates[: len(gains)], verdicts) == best


def test_invalid_step_tester_answers() -> None:
    updates = vector_updates([[1.0], [2.0]])
    ones = lambda ups, ws: np.ones(len(ups))  # noqa: E731
    for answer, match in ((np.zeros(1), ">= 2"), (np.array([0.0, math.nan]), "finite")):

        def tester(step: Mapping[str, Any], answer: np.ndarray = answer) -> np.ndarray:
            return answer

        with pytest.raises(ConfigError, match=match):
            aggregate_screened(updates, [1.0] * 2, ones, step_tester=tester)
    with pytest.raises(ConfigError, match="standard_errors"):
        aggregate_screened(updates, [1.0] * 2, ones, standard_errors=-1.0)
