"""Tests for fedchain.rounds.contribution and fedchain.rounds.coalitions: Shapley axioms and known
games, GTG-Shapley, leave-one-out, gradient similarity, coalition models, quantisation, the
dispatcher, and refusals."""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Callable

import numpy as np
import pytest

from fedchain.aggregation.rules import aggregate
from fedchain.errors import ConfigError
from fedchain.ledger.objects import SCORE_SCALE
from fedchain.rounds.coalitions import (
    CachedUtility,
    compute_coalition_model,
    make_coalition_utility,
)
from fedchain.rounds.contribution import (
    EXACT_SHAPLEY_MAX_CLIENTS,
    GTG_DEFAULTS,
    MC_DEFAULTS,
    METHODS,
    compute_exact_shapley,
    compute_gradient_similarity,
    compute_gtg_shapley,
    compute_leave_one_out,
    compute_permutation_shapley,
    compute_scores,
    list_walk_coalitions,
    plan_permutation_walks,
    quantise_scores,
    sample_permutation_marginals,
)

Game = Callable[[frozenset[int]], float]


class CountingGame:
    """A utility that records every call, to check memoisation and evaluation counts."""

    def __init__(self, game: Game) -> None:
        self.game = game
        self.calls: list[frozenset[int]] = []

    def __call__(self, coalition: frozenset[int]) -> float:
        self.calls.append(coalition)
        return self.game(coalition)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def additive(values: list[float]) -> Game:
    return lambda s: sum(values[i] for i in s)


def glove_game(left: set[int], right: set[int]) -> Game:
    return lambda s: float(min(len(s & left), len(s & right)))


def random_game(n: int, seed: int) -> Game:
    """A table of independent random values: no structure at all."""
    table = np.random.default_rng(seed).random(1 << n)
    return lambda s: float(table[sum(1 << i for i in s)])


def learning_game(n: int, seed: int) -> Game:
    """Utility like a model's validation score: concave in the coalition's summed quality, with
    harmful members and a little coalition-specific noise."""
    rng = np.random.default_rng(seed)
    quality = rng.normal(0.3, 0.4, size=n)
    noise = rng.normal(0, 0.01, size=1 << n)
    return lambda s: float(
        1
        - math.exp(-max(0.0, sum(quality[i] for i in s)))
        + (noise[sum(1 << i for i in s)] if s else 0.0)
    )


def brute_force_shapley(n: int, game: Game) -> np.ndarray:
    """Average marginal over all n! orders: the definition, for small n."""
    phi = np.zeros(n)
    orders = list(itertools.permutations(range(n)))
    for order in orders:
        prefix: frozenset[int] = frozenset()
        for i in order:
            phi[i] += game(prefix | {i}) - game(prefix)
            prefix = prefix | {i}
    return phi / len(orders)


# --------------------------------------------------------------------------------------------------
# Exact Shapley


def test_exact_shapley_matches_the_permutation_definition() -> None:
    game = random_game(5, seed=3)
    np.testing.assert_allclose(compute_exact_shapley(5, game), brute_force_shapley(5, game))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_shapley_is_efficient(seed: int) -> None:
    n = 7
    game = random_game(n, seed)
    phi = compute_exact_shapley(n, game)
    assert math.fsum(phi) == pytest.approx(game(frozenset(range(n))) - game(frozenset()), abs=1e-12)


def test_exact_shapley_additive_game_gives_each_player_its_value() -> None:
    values = [0.5, -0.25, 2.0, 0.0, 1.0]
    np.testing.assert_allclose(compute_exact_shapley(5, additive(values)), values, atol=1e-15)


def test_exact_shapley_glove_game() -> None:
    # Two left gloves (0, 1), one right glove (2): the scarce right glove earns 2/3.
    phi = compute_exact_shapley(3, glove_game({0, 1}, {2}))
    np.testing.assert_allclose(phi, [1 / 6, 1 / 6, 2 / 3])


def test_exact_shapley_symmetry_and_dummy() -> None:
    # Players 0 and 1 are interchangeable; player 3 never changes the utility.
    def game(s: frozenset[int]) -> float:
        return float(len(s & {0, 1}) ** 2) + (0.5 if 2 in s else 0.0) * len(s & {0, 1})

    phi = compute_exact_shapley(4, game)
    assert phi[0] == pytest.approx(phi[1])
    assert phi[3] == 0.0
    assert math.fsum(phi) == pytest.approx(game(frozenset(range(4))))


def test_exact_shapley_unanimity_game() -> None:
    # U(S) = 1 when S contains {1, 3}: they split it, the others are dummies.
    phi = compute_exact_shapley(5, lambda s: float({1, 3} <= s))
    np.testing.assert_allclose(phi, [0, 0.5, 0, 0.5, 0], atol=1e-15)


def test_exact_shapley_evaluates_every_coalition_once() -> None:
    game = CountingGame(random_game(6, seed=0))
    compute_exact_shapley(6, game)
    assert len(game.calls) == 64
    assert len(set(game.calls)) == 64


def test_exact_shapley_small_cases() -> None:
    assert compute_exact_shapley(0, lambda s: 1.0).shape == (0,)
    np.testing.assert_array_equal(
        compute_exact_shapley(1, lambda s: 3.0 if s else 1.0), np.array([2.0])
    )


def test_exact_shapley_is_deterministic() -> None:
    game = learning_game(8, seed=5)
    np.testing.assert_array_equal(compute_exact_shapley(8, game), compute_exact_shapley(8, game))


def test_invalid_exact_shapley_too_many_clients() -> None:
    game = CountingGame(lambda s: 0.0)
    with pytest.raises(ConfigError, match="mc-shapley"):
        compute_exact_shapley(EXACT_SHAPLEY_MAX_CLIENTS + 1, game)
    assert game.calls == []


@pytest.mark.parametrize("n", [-1, 2.0, True])
def test_invalid_exact_shapley_bad_n(n: object) -> None:
    with pytest.raises(ConfigError):
        compute_exact_shapley(n, lambda s: 0.0)  # type: ignore[arg-type]


def test_invalid_utility_not_finite() -> None:
    with pytest.raises(ConfigError, match="finite"):
        compute_exact_shapley(3, lambda s: math.nan if len(s) == 2 else 0.0)


# --------------------------------------------------------------------------------------------------
# GTG-Shapley


def test_gtg_additive_game_equals_exact() -> None:
    values = [0.1, 0.4, -0.2, 0.3, 0.25, 0.05]
    phi = compute_gtg_shapley(6, additive(values), seed=1)
    np.testing.assert_allclose(phi, compute_exact_shapley(6, additive(values)), atol=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_gtg_tracks_exact_on_small_learning_games(seed: int) -> None:
    n = 8
    game = learning_game(n, seed)
    exact = compute_exact_shapley(n, game)
    estimate = compute_gtg_shapley(n, game, seed=seed, max_permutations=4 * n)
    assert pearson(estimate, exact) >= 0.95


def test_gtg_tracks_exact_on_unstructured_random_games() -> None:
    n = 6
    pearsons = []
    for seed in range(5):
        game = random_game(n, seed)
        estimate = compute_gtg_shapley(
            n, game, seed=seed, max_permutations=200, truncation_tolerance=0.0
        )
        pearsons.append(pearson(estimate, compute_exact_shapley(n, game)))
    assert min(pearsons) >= 0.9


def test_gtg_default_budget_is_one_guided_cycle() -> None:
    n = 10
    game = CountingGame(learning_game(n, seed=0))
    cached = CachedUtility(game)
    compute_gtg_shapley(n, cached, seed=0, truncation_tolerance=0.0)
    assert len(game.calls) == len(set(game.calls)) == cached.evaluations
    assert cached.evaluations <= 2 + n * (n - 1)  # 92 = 9 % of exact's 1,024
    assert GTG_DEFAULTS["max_permutations"] is None


def test_gtg_defaults_match_the_signature() -> None:
    signature = inspect.signature(compute_gtg_shapley)
    for name, value in GTG_DEFAULTS.items():
        assert signature.parameters[name].default == value


def test_gtg_is_deterministic_by_seed() -> None:
    game = learning_game(7, seed=2)
    a = compute_gtg_shapley(7, game, seed=11)
    np.testing.assert_array_equal(a, compute_gtg_shapley(7, game, seed=11))
    assert not np.array_equal(a, compute_gtg_shapley(7, game, seed=12))


def test_gtg_skips_a_round_without_improvement() -> None:
    game = CountingGame(lambda s: 0.5 + (0.1 if 0 in s else 0.0) - (0.1 if 1 in s else 0.0))
    phi = compute_gtg_shapley(4, game, seed=0, round_tolerance=1e-3)
    np.testing.assert_array_equal(phi, np.zeros(4))
    assert set(game.calls) == {frozenset(), frozenset(range(4))}


def test_gtg_truncates_within_a_permutation() -> None:
    # Client 0 brings almost the whole gain: once it has joined, the rest of a permutation adds
    # at most 0.005 and is not evaluated. An additive game, so without truncation GTG is exact.
    n = 6

    def game(s: frozenset[int]) -> float:
        return (1.0 if 0 in s else 0.0) + 0.001 * len(s)

    truncated, full = CountingGame(game), CountingGame(game)
    phi = compute_gtg_shapley(n, truncated, seed=0, truncation_tolerance=0.01)
    exact = compute_gtg_shapley(n, full, seed=0, truncation_tolerance=0.0)
    np.testing.assert_allclose(exact, compute_exact_shapley(n, game), atol=1e-12)
    np.testing.assert_allclose(phi, exact, atol=0.01)
    assert len(set(truncated.calls)) < len(set(full.calls))


def test_gtg_scores_a_round_whose_gain_is_below_the_truncation_tolerance() -> None:
    # Issue 19's bug: the within-permutation cut-off (0.005) also ran before the first client,
    # so a round gaining 0.004 (above the 0.001 round tolerance) scored [0, 0].
    game = additive([0.003, 0.001])
    untruncated = compute_gtg_shapley(2, game, seed=0, truncation_tolerance=0.0)
    np.testing.assert_allclose(untruncated, [0.003, 0.001], rtol=0, atol=1e-15)
    # at the default cut-off each client keeps its marginal when it leads (the guided cycle
    # leads with each once); the one after it is cut off, as GTG-Shapley intends
    default = compute_gtg_shapley(2, game, seed=0)
    np.testing.assert_allclose(default, [0.0015, 0.0005], rtol=0, atol=1e-15)


def test_gtg_without_truncation_is_unbiased_when_the_tail_cancels_out() -> None:
    # Weights [1, 0.5, -0.5, 0]: after client 0 the prefix equals U(all) exactly; a cut-off
    # (even at 0, if it truncated on equality) gives clients 1 and 2 no marginal there. A
    # tolerance of 0 never truncates, and on an additive game every permutation is exact.
    values = [1.0, 0.5, -0.5, 0.0]
    phi = compute_gtg_shapley(4, additive(values), seed=0, truncation_tolerance=0.0)
    np.testing.assert_allclose(phi, values, rtol=0, atol=1e-12)
    biased = compute_gtg_shapley(4, additive(values), seed=0, truncation_tolerance=0.005)
    assert abs(biased[1] - 0.5) > 0.05  # the documented bias of a positive cut-off


def test_gtg_stops_when_estimates_converge() -> None:
    # With a huge tolerance the first possible check (end of cycle 2) stops the sampling: the
    # same result as exactly two cycles.
    n = 5
    game = learning_game(n, seed=4)
    converged = compute_gtg_shapley(n, game, seed=3, max_permutations=50, convergence_tolerance=1e9)
    two_cycles = compute_gtg_shapley(
        n, game, seed=3, max_permutations=2 * n, convergence_tolerance=0.0
    )
    np.testing.assert_array_equal(converged, two_cycles)


def test_gtg_respects_the_evaluation_budget() -> None:
    n = 8
    cached = CachedUtility(learning_game(n, seed=1))
    compute_gtg_shapley(n, cached, seed=0, max_permutations=100, max_evaluations=30)
    assert 30 <= cached.evaluations <= 30 + n - 2


def test_gtg_small_cases() -> None:
    assert compute_gtg_shapley(0, lambda s: 0.0, seed=0).shape == (0,)
    np.testing.assert_allclose(
        compute_gtg_shapley(1, lambda s: 0.9 if s else 0.1, seed=0), np.array([0.8])
    )


# --------------------------------------------------------------------------------------------------
# Monte-Carlo (permutation) Shapley


@pytest.mark.parametrize("antithetic", [False, True])
@pytest.mark.parametrize("guided", [False, True])
def test_mc_shapley_additive_game_is_exact_and_efficient(antithetic: bool, guided: bool) -> None:
    values = [1.0, 0.5, -0.5, 0.0, 0.003, 0.001]
    phi = compute_permutation_shapley(
        6, additive(values), seed=3, antithetic=antithetic, guided=guided
    )
    np.testing.assert_allclose(phi, values, atol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_mc_shapley_is_efficient_on_any_game(seed: int) -> None:
    n = 7
    game = random_game(n, seed)
    phi = compute_permutation_shapley(n, game, seed=seed)
    full, empty = game(frozenset(range(n))), game(frozenset())
    assert math.isclose(phi.sum(), full - empty, abs_tol=1e-12)


def test_mc_shapley_budget_is_linear_in_clients() -> None:
    for n, k in ((6, 4), (10, 10), (12, 3)):
        cached = CachedUtility(learning_game(n, seed=n))
        compute_permutation_shapley(n, cached, seed=0, evaluations_per_client=k)
        assert k * n <= cached.evaluations <= k * n + 2 * (n - 1)  # a started pair finishes
    cached = CachedUtility(learning_game(10, seed=0))
    compute_permutation_shapley(10, cached, seed=0)
    assert cached.evaluations <= 0.1 * 2**10 + 18  # the default: ~10 % of exact's 1,024


@pytest.mark.parametrize("seed", range(5))
def test_mc_shapley_tracks_exact_on_small_learning_games(seed: int) -> None:
    n = 8
    game = learning_game(n, seed)
    estimate = compute_permutation_shapley(n, game, seed=seed, evaluations_per_client=16)
    assert pearson(estimate, compute_exact_shapley(n, game)) >= 0.95


def test_mc_shapley_is_deterministic_by_seed_and_dispatched() -> None:
    game = learning_game(7, seed=2)
    a = compute_permutation_shapley(7, game, seed=11)
    np.testing.assert_array_equal(a, compute_scores("mc-shapley", n=7, utility=game, seed=11))
    assert not np.array_equal(a, compute_permutation_shapley(7, game, seed=12))
    signature = inspect.signature(compute_permutation_shapley)
    for name, value in MC_DEFAULTS.items():
        assert signature.parameters[name].default == value


@pytest.mark.parametrize("n", [1, 2, 3, 6])
def test_mc_shapley_with_a_budget_of_every_coalition_is_exact(n: int) -> None:
    # 10 evaluations per client cover all 2**n coalitions up to n = 5 (and the budget of a
    # one-update step, as screened measures it): exact Shapley, and the sampler never loops
    # waiting for coalitions that do not exist
    game = learning_game(n, seed=n)
    k = 11 if n == 6 else 10  # 66 >= 64
    np.testing.assert_array_equal(
        compute_permutation_shapley(n, game, seed=0, evaluations_per_client=k),
        compute_exact_shapley(n, game),
    )


def test_mc_shapley_stops_when_the_budget_is_close_to_every_coalition() -> None:
    cached = CachedUtility(learning_game(6, seed=1))
    compute_permutation_shapley(6, cached, seed=0, evaluations_per_client=10)  # 60 of 64
    assert cached.evaluations <= 64


def reference_permutation_shapley(
    n: int, utility: Game, *, seed: int, evaluations_per_client: int, antithetic: bool, guided: bool
) -> np.ndarray:
    """The sampling loop before it was split into plan, batch evaluation and combination (commit
    694393d), kept verbatim but for names: the split must give the same numbers."""
    budget = max(2, evaluations_per_client * n)
    u = CachedUtility(utility)
    v_empty, v_full = u(frozenset()), u(frozenset(range(n)))
    rng = np.random.default_rng(seed)
    total = np.zeros(n, dtype=np.float64)
    done = drawn = 0
    while done == 0 or (u.evaluations < budget and drawn < 4 * budget):
        if guided:
            first = drawn % n
            order = [first, *rng.permutation([i for i in range(n) if i != first]).tolist()]
        else:
            order = rng.permutation(n).tolist()
        drawn += 1
        for walk in (order, order[::-1]) if antithetic else (order,):
            marginals = np.zeros(n, dtype=np.float64)
            prefix: frozenset[int] = frozenset()
            v_prev = v_empty
            for position, client in enumerate(walk):
                prefix = prefix | {client}
                v = v_full if position == n - 1 else u(prefix)
                marginals[client] = v - v_prev
                v_prev = v
            total += marginals
            done += 1
    return total / done


@pytest.mark.parametrize(
    ("n", "k", "antithetic", "guided"),
    [(7, 10, True, False), (9, 3, True, True), (12, 10, False, False), (30, 10, True, False),
     (8, 1, False, True), (100, 10, True, False)],
)  # fmt: skip
@pytest.mark.parametrize("seed", [0, 7])
def test_mc_shapley_split_gives_the_old_loops_numbers(
    n: int, k: int, antithetic: bool, guided: bool, seed: int
) -> None:
    rng = np.random.default_rng(seed + n)
    quality = rng.normal(0.1, 0.3, size=n)

    def game(s: frozenset[int]) -> float:
        return float(-math.log1p(math.exp(-sum(quality[i] for i in s))) + 1e-3 * len(s) ** 0.5)

    old, new = CountingGame(game), CountingGame(game)
    params = {"evaluations_per_client": k, "antithetic": antithetic, "guided": guided}
    expected = reference_permutation_shapley(n, old, seed=seed, **params)  # type: ignore[arg-type]
    got = compute_permutation_shapley(n, new, seed=seed, **params)  # type: ignore[arg-type]
    np.testing.assert_array_equal(got, expected)  # bit for bit
    assert new.calls == old.calls  # the same coalitions, in the same order
    marginals = sample_permutation_marginals(
        n,
        lambda cs: [game(c) for c in cs],
        seed=seed,
        **params,  # type: ignore[arg-type]
    )
    walks = plan_permutation_walks(n, seed=seed, **params)  # type: ignore[arg-type]
    assert marginals.shape == walks.shape == (len(walks), n)
    assert len(walks) % 2 == 0 or not antithetic
    np.testing.assert_allclose(marginals.mean(axis=0), expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(
        marginals.sum(axis=1), game(frozenset(range(n))) - game(frozenset()), rtol=1e-9
    )
    assert list_walk_coalitions(walks, n) == list(dict.fromkeys(old.calls))


def test_mc_shapley_evaluates_all_its_coalitions_in_one_batch() -> None:
    game = learning_game(9, seed=3)
    batches: list[int] = []

    def batch(coalitions: object) -> list[float]:
        batches.append(len(coalitions))  # type: ignore[arg-type]
        return [game(c) for c in coalitions]  # type: ignore[attr-defined]

    cached = CachedUtility(batch=batch)
    got = compute_permutation_shapley(9, cached, seed=4)
    np.testing.assert_array_equal(got, compute_permutation_shapley(9, game, seed=4))
    assert batches == [cached.evaluations] and 90 <= cached.evaluations <= 90 + 16
    compute_permutation_shapley(9, cached, seed=4)  # all cached: the batch is not called again
    assert len(batches) == 1


def test_invalid_batch_utility() -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        CachedUtility()
    with pytest.raises(ConfigError, match="returned 1 values for 2"):
        CachedUtility(batch=lambda cs: [0.0]).evaluate_many([frozenset(), frozenset({0})])
    with pytest.raises(ConfigError, match="finite"):
        CachedUtility(batch=lambda cs: [math.nan] * len(cs))(frozenset())
    with pytest.raises(ConfigError, match="finite"):
        sample_permutation_marginals(6, lambda cs: [math.inf] * len(cs), seed=0)


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_invalid_mc_shapley_budget(k: object) -> None:
    with pytest.raises(ConfigError, match="evaluations_per_client"):
        compute_permutation_shapley(3, additive([1, 2, 3]), seed=0, evaluations_per_client=k)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "params",
    [
        {"seed": -1},
        {"seed": 0, "max_permutations": 0},
        {"seed": 0, "max_evaluations": 1},
        {"seed": 0, "round_tolerance": -0.1},
        {"seed": 0, "truncation_tolerance": math.nan},
        {"seed": 0, "convergence_tolerance": math.inf},
    ],
)
def test_invalid_gtg_parameters(params: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        compute_gtg_shapley(3, lambda s: float(len(s)), **params)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# Leave-one-out


def test_leave_one_out_hand_case() -> None:
    # U(all) = 1.0; without 0: 0.4; without 1: 0.9; without 2 (harmful): 1.1.
    table = {frozenset({0, 1, 2}): 1.0, frozenset({1, 2}): 0.4, frozenset({0, 2}): 0.9}
    table[frozenset({0, 1})] = 1.1
    game = CountingGame(table.__getitem__)
    np.testing.assert_allclose(compute_leave_one_out(3, game), [0.6, 0.1, -0.1])
    assert len(game.calls) == 4  # n + 1


def test_leave_one_out_additive_game() -> None:
    values = [0.3, 0.0, -0.5]
    np.testing.assert_allclose(compute_leave_one_out(3, additive(values)), values, atol=1e-15)


# --------------------------------------------------------------------------------------------------
# Gradient similarity


def update(*values: float) -> dict[str, np.ndarray]:
    return {
        "w": np.array(values[:2], dtype=np.float32).reshape(1, 2),
        "b": np.array(values[2:], dtype=np.float32),
    }


def test_gradient_similarity_identical_updates_score_equal() -> None:
    u = update(1, 2, 3)
    np.testing.assert_allclose(compute_gradient_similarity([u, u, u], [1, 2, 3]), [1, 1, 1])


def test_gradient_similarity_sign_flipped_and_zero_updates_score_zero() -> None:
    honest = update(1, 2, 3)
    flipped = update(-1, -2, -3)
    scores = compute_gradient_similarity([honest, honest, flipped, update(0, 0, 0)], [1, 1, 1, 1])
    np.testing.assert_allclose(scores, [1, 1, 0, 0], atol=1e-12)


def test_gradient_similarity_orthogonal_updates() -> None:
    scores = compute_gradient_similarity([update(1, 0, 0), update(0, 1, 0)], [1, 1])
    np.testing.assert_allclose(scores, [1 / math.sqrt(2)] * 2)


def test_gradient_similarity_is_scale_free() -> None:
    a, b = update(1, 0.5, 0), update(0.2, 1, 1)
    base = compute_gradient_similarity([a, b], [1, 1])
    scaled = {k: 10 * v for k, v in a.items()}
    # Scaling a by 10 with weight 1/10 leaves the aggregate, and so every cosine, unchanged.
    np.testing.assert_allclose(compute_gradient_similarity([scaled, b], [0.1, 1]), base)


def test_gradient_similarity_all_zero_updates() -> None:
    zero = update(0, 0, 0)
    np.testing.assert_array_equal(compute_gradient_similarity([zero, zero], [1, 1]), [0, 0])


def test_invalid_gradient_similarity_inputs() -> None:
    with pytest.raises(ConfigError, match="shape"):
        compute_gradient_similarity([update(1, 2, 3), update(1, 2, 3, 4)], [1, 1])
    with pytest.raises(ConfigError, match="tensors"):
        compute_gradient_similarity([update(1, 2, 3), {"w": np.ones((1, 2))}], [1, 1])
    with pytest.raises(ConfigError, match="positive"):
        compute_gradient_similarity([update(1, 2, 3)], [0])
    with pytest.raises(ConfigError, match="one weight per update"):
        compute_gradient_similarity([update(1, 2, 3)], [1, 1])


# --------------------------------------------------------------------------------------------------
# Coalition models


def random_round(n: int, seed: int) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
    rng = np.random.default_rng(seed)
    shapes = {"conv": (4, 3), "bias": (4,)}
    base = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    updates = [
        {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()} for _ in range(n)
    ]
    return base, updates


def test_coalition_model_empty_is_a_copy_of_base() -> None:
    base, updates = random_round(3, seed=0)
    model = compute_coalition_model(base, updates, [1, 2, 3], frozenset())
    for name in base:
        np.testing.assert_array_equal(model[name], base[name])
        assert not np.shares_memory(model[name], base[name])


def test_coalition_model_full_is_the_aggregated_round() -> None:
    base, updates = random_round(4, seed=1)
    weights = [10, 20, 30, 40]
    model = compute_coalition_model(base, updates, weights, frozenset(range(4)))
    average = aggregate(updates, weights).arrays
    for name in base:
        np.testing.assert_array_equal(model[name], base[name] + average[name])
    fixed = compute_coalition_model(base, updates, weights, frozenset(range(4)), renormalise=False)
    for name in base:
        np.testing.assert_array_equal(fixed[name], model[name])


def test_coalition_model_renormalises_weights_over_members() -> None:
    base, updates = random_round(3, seed=2)
    model = compute_coalition_model(base, updates, [1, 3, 100], frozenset({0, 1}))
    for name in base:
        expected = base[name] + (updates[0][name] + 3 * updates[1][name]) / 4
        np.testing.assert_allclose(model[name], expected, rtol=1e-6, atol=1e-6)
        assert model[name].dtype == np.float32


def test_coalition_model_fixed_shares() -> None:
    base, updates = random_round(3, seed=3)
    model = compute_coalition_model(base, updates, [1, 3, 4], frozenset({1}), renormalise=False)
    for name in base:
        np.testing.assert_allclose(
            model[name], base[name] + 3 / 8 * updates[1][name], rtol=1e-6, atol=1e-6
        )


def test_coalition_model_members_without_weight_do_not_move_it() -> None:
    base, updates = random_round(3, seed=4)
    model = compute_coalition_model(base, updates, [0, 1, 1], frozenset({0}))
    for name in base:
        np.testing.assert_array_equal(model[name], base[name])


def test_coalition_model_zero_update_is_a_dummy_only_without_renormalising() -> None:
    base, updates = random_round(2, seed=5)
    updates.append({k: np.zeros_like(v) for k, v in base.items()})

    def score(arrays: dict[str, np.ndarray]) -> float:
        return float(sum(np.sum(v.astype(np.float64) ** 2) for v in arrays.values()))

    fixed = make_coalition_utility(base, updates, [1, 1, 1], score, renormalise=False)
    renormalised = make_coalition_utility(base, updates, [1, 1, 1], score)
    assert compute_exact_shapley(3, fixed)[2] == 0.0
    assert abs(compute_exact_shapley(3, renormalised)[2]) > 1e-2
    assert fixed.evaluations == renormalised.evaluations == 8


def test_invalid_coalition_model_inputs() -> None:
    base, updates = random_round(2, seed=6)
    with pytest.raises(ConfigError, match="client index"):
        compute_coalition_model(base, updates, [1, 1], frozenset({2}))
    with pytest.raises(ConfigError, match="one weight per update"):
        compute_coalition_model(base, updates, [1], frozenset({0}))
    with pytest.raises(ConfigError, match="finite"):
        compute_coalition_model(base, updates, [1, -1], frozenset({0}))
    with pytest.raises(ConfigError, match="tensors"):
        compute_coalition_model({"conv": base["conv"]}, updates, [1, 1], frozenset({0}))
    bad = [updates[0], {**updates[1], "bias": np.zeros(5, dtype=np.float32)}]
    with pytest.raises(ConfigError, match="shape"):
        compute_coalition_model(base, bad, [1, 1], frozenset({0}))


# --------------------------------------------------------------------------------------------------
# Cache, quantisation, dispatcher


def test_cached_utility_counts_distinct_coalitions() -> None:
    game = CountingGame(lambda s: float(len(s)))
    cached = CachedUtility(game)
    assert cached(frozenset({1, 2})) == 2.0
    assert cached(frozenset({2, 1})) == 2.0
    assert cached(frozenset()) == 0.0
    assert cached.evaluations == 2
    assert len(game.calls) == 2
    assert cached.values == {frozenset({1, 2}): 2.0, frozenset(): 0.0}


def test_quantise_scores_rounds_half_to_even() -> None:
    assert SCORE_SCALE == 10**6
    assert quantise_scores([2.5e-6, 3.5e-6, -2.5e-6, 0.5e-6, 0.25, -1.0]) == (
        2,
        4,
        -2,
        0,
        250_000,
        -1_000_000,
    )
    assert quantise_scores(np.array([0.1234564, 0.1234566])) == (123456, 123457)
    assert quantise_scores([]) == ()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_invalid_quantise_non_finite(bad: float) -> None:
    with pytest.raises(ConfigError, match="finite"):
        quantise_scores([0.1, bad])


def test_compute_scores_dispatches_every_method() -> None:
    values = [0.2, 0.5, -0.1]
    game = additive(values)
    _, updates = random_round(3, seed=7)
    weights = [1, 1, 1]
    expected = {
        "shapley": compute_exact_shapley(3, game),
        "mc-shapley": compute_permutation_shapley(3, game, seed=5),
        "gtg-shapley": compute_gtg_shapley(3, game, seed=5, max_permutations=9),
        "leave-one-out": compute_leave_one_out(3, game),
        "gradient-similarity": compute_gradient_similarity(updates, weights),
        "none": np.zeros(3),
    }
    assert set(expected) == set(METHODS)
    for method, want in expected.items():
        params = {"max_permutations": 9} if method == "gtg-shapley" else {}
        got = compute_scores(
            method, n=3, utility=game, updates=updates, weights=weights, seed=5, **params
        )
        np.testing.assert_array_equal(got, want)


def test_invalid_compute_scores() -> None:
    with pytest.raises(ConfigError, match="unknown contribution method"):
        compute_scores("banzhaf", n=3)
    with pytest.raises(ConfigError, match="needs a utility"):
        compute_scores("shapley", n=3)
    with pytest.raises(ConfigError, match="updates and weights"):
        compute_scores("gradient-similarity", n=3, weights=[1, 1, 1])
    with pytest.raises(ConfigError, match="updates for n"):
        compute_scores("gradient-similarity", n=2, updates=[update(1, 2, 3)], weights=[1])
    with pytest.raises(ConfigError, match="takes no parameters"):
        compute_scores("leave-one-out", n=2, utility=lambda s: 0.0, max_permutations=3)
    with pytest.raises(ConfigError, match="unknown gtg-shapley parameters"):
        compute_scores("gtg-shapley", n=2, utility=lambda s: 0.0, permutations=3)
    with pytest.raises(ConfigError, match="unknown mc-shapley parameters"):
        compute_scores("mc-shapley", n=2, utility=lambda s: 0.0, max_permutations=3)
