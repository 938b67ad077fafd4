"""fedchain.rounds.rewards: a round's pool and its scores -> payout rule and split -> whole base
units per key; and the attacks the payout rule bounds (scores nudged inside verify --scores'
tolerance).

Pre -> op -> post: the pool and the recorded shares, the split, then what each key is paid.
Negative cases are named ``test_invalid_*``.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedchain.config import RunConfig
from fedchain.ledger.objects import SCORE_SCALE
from fedchain.rounds.recheck import compute_score_tolerances
from fedchain.rounds.rewards import (
    compute_nudge_bound,
    compute_reward_split,
    compute_round_payout,
    has_model_moved,
)
from fedchain.rounds.scores import compute_quantised_scores

A, B, C = b"\x0a" * 32, b"\x0b" * 32, b"\x0c" * 32


def test_the_pool_is_split_in_proportion_to_the_shares() -> None:
    assert compute_reward_split(1_000, [(A, 1), (B, 3)]) == ((A, 250), (B, 750))


def test_every_unit_is_paid_and_the_remainder_goes_to_the_largest_remainders() -> None:
    # 10 * 1 / 3 = 3 rest 1, 10 * 2 / 3 = 6 rest 2: the unit left goes to B, not to the smaller key
    assert compute_reward_split(10, [(A, 1), (B, 2)]) == ((A, 3), (B, 7))


def test_equal_remainders_go_to_the_smaller_keys() -> None:
    assert compute_reward_split(1_000, [(C, 1), (B, 1), (A, 1)]) == ((A, 334), (B, 333), (C, 333))


def test_the_order_of_the_shares_does_not_change_the_split() -> None:
    shares = [(A, 5), (B, 7), (C, 11)]
    assert compute_reward_split(100, shares) == compute_reward_split(100, shares[::-1])


def test_zero_and_negative_shares_are_paid_nothing_and_left_out() -> None:
    split = compute_reward_split(1_000, [(A, 0), (B, -5), (C, 2)])
    assert split == ((C, 1_000),)


def test_a_key_whose_share_rounds_to_nothing_is_left_out() -> None:
    assert compute_reward_split(1, [(A, 1), (B, 1), (C, 1)]) == ((A, 1),)


@pytest.mark.parametrize("shares", [[], [(A, 0)], [(A, 0), (B, -1)]])
def test_no_positive_share_pays_nothing(shares: list[tuple[bytes, int]]) -> None:
    assert compute_reward_split(1_000, shares) == ()


def test_an_empty_pool_pays_nothing() -> None:
    assert compute_reward_split(0, [(A, 1), (B, 2)]) == ()


def test_arithmetic_is_exact_on_integers_beyond_float_precision() -> None:
    pool = 10**30 + 1
    split = dict(compute_reward_split(pool, [(A, 10**20), (B, 2 * 10**20)]))
    assert split == {
        A: 333_333_333_333_333_333_333_333_333_334,
        B: 666_666_666_666_666_666_666_666_666_667,
    }
    assert sum(split.values()) == pool and all(type(v) is int for v in split.values())


def test_invalid_negative_pool() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        compute_reward_split(-1, [(A, 1)])


KEYS = st.binary(min_size=32, max_size=32)


@given(
    pool=st.integers(0, 10**12),
    shares=st.dictionaries(KEYS, st.integers(-10, 10**9), max_size=12),
)
def test_the_split_pays_the_pool_exactly_within_one_unit_of_each_share(
    pool: int, shares: dict[bytes, int]
) -> None:
    split = compute_reward_split(pool, shares.items())
    positive = {k: s for k, s in shares.items() if s > 0}
    total = sum(positive.values())
    assert [k for k, _ in split] == sorted(k for k, _ in split)
    assert all(amount > 0 and k in positive for k, amount in split)
    if positive:
        assert sum(amount for _, amount in split) == pool
    paid = dict(split)
    for key, share in positive.items():  # floor or floor + 1 of the exact proportion
        assert pool * share // total <= paid.get(key, 0) <= pool * share // total + 1


# --------------------------------------------------------------------------------------------------
# The payout rule: available = carried + pool; paid available * min(1, S / M) by the scores


def test_a_round_whose_scores_reach_the_minimum_pays_everything_available() -> None:
    payout = compute_round_payout(
        2_500, pool=10_000, scores=[(A, 30_000), (B, 10_000)], moved=True, min_score=20_000
    )
    assert payout.rewards == ((A, 9_375), (B, 3_125)) and payout.carried == 0
    assert (payout.available, payout.paid, payout.decision) == (12_500, 12_500, "paid")


def test_a_round_below_the_minimum_pays_its_fraction_and_carries_the_rest() -> None:
    payout = compute_round_payout(
        0, pool=10_000, scores=[(A, 3_000), (B, 1_000), (C, -500)], moved=True, min_score=20_000
    )
    assert payout.rewards == ((A, 1_500), (B, 500)) and payout.carried == 8_000
    assert payout.decision == "paid in part" and "below payout_min_score 20000" in payout.reason


@pytest.mark.parametrize(
    ("scores", "moved", "why"),
    [
        ([(A, 50_000), (B, 10_000)], False, "the model did not move"),
        ([(A, 0), (B, -7)], True, "no score is positive"),
    ],
)
def test_nothing_is_paid_without_a_move_or_a_positive_score(
    scores: list[tuple[bytes, int]], moved: bool, why: str
) -> None:
    payout = compute_round_payout(300, pool=10_000, scores=scores, moved=moved, min_score=20_000)
    assert payout.rewards == () and payout.carried == 10_300
    assert payout.decision == "carried" and why in payout.reason


def test_a_minimum_of_zero_is_the_old_rule() -> None:
    scores = [(A, 3), (B, 1)]
    payout = compute_round_payout(0, pool=1_000, scores=scores, moved=True, min_score=0)
    assert payout.rewards == compute_reward_split(1_000, scores) and payout.carried == 0


def test_the_model_moved_only_with_updates_and_a_new_model() -> None:
    assert has_model_moved((A,), B, C)
    assert not has_model_moved((), B, C)  # a ModelVersion listing no updates
    assert not has_model_moved((A,), C, C)  # the model left as it was


@given(
    carried=st.integers(0, 10**6),
    pool=st.integers(0, 10**6),
    scores=st.lists(st.integers(-(10**6), 10**6), min_size=1, max_size=12),
    moved=st.booleans(),
    min_score=st.integers(0, 10**5),
)
def test_every_unit_is_paid_or_carried(
    carried: int, pool: int, scores: list[int], moved: bool, min_score: int
) -> None:
    keyed = [(bytes([i]) * 32, s) for i, s in enumerate(scores)]
    payout = compute_round_payout(
        carried, pool=pool, scores=keyed, moved=moved, min_score=min_score
    )
    available, positive = carried + pool, sum(s for s in scores if s > 0)
    assert payout.paid + payout.carried == available
    assert all(amount > 0 for _, amount in payout.rewards)
    if not moved or positive == 0:
        assert payout.paid == 0
    else:
        assert payout.paid == (
            available if positive >= min_score else available * positive // min_score
        )


# --------------------------------------------------------------------------------------------------
# Attacks: a coordinator that records scores inside verify --scores' tolerance


def _nudges_inside_the_tolerance(raw: dict[bytes, float], target: bytes) -> list[dict[bytes, int]]:
    """Recorded score vectors a dishonest coordinator could write for a round whose honest
    recomputation is ``raw``, each passing the comparison ``recheck_scores`` makes (quantised,
    per score, within :func:`compute_score_tolerances`): the target raised by the most the
    tolerance allows and everyone else lowered by it, and the same with the others untouched
    or raised."""
    keys = sorted(raw)
    honest = dict(compute_quantised_scores(keys, [raw[k] for k in keys]))
    tolerance = compute_score_tolerances(raw)
    room = {k: math.floor(tolerance[k] * SCORE_SCALE + 1e-9) for k in keys}
    out = []
    for others in (-1, 0, 1):
        recorded = {k: honest[k] + (room[k] if k == target else others * room[k]) for k in keys}
        for k in keys:  # what recheck_scores accepts
            assert abs(recorded[k] - honest[k]) / SCORE_SCALE <= tolerance[k]
        out.append(recorded)
    return out


@given(
    raw=st.lists(
        st.one_of(
            st.floats(-0.3, 1.5),  # early rounds: gains of tenths
            st.floats(-0.01, 0.01),  # late rounds: measurement noise
            st.floats(-2e-6, 2e-6),  # a round with no positive honest score, nearly
        ),
        min_size=2,
        max_size=10,
    ),
    carried=st.integers(0, 100_000),
    target=st.integers(0, 9),
    moved=st.booleans(),
)
def test_a_nudge_inside_the_tolerance_moves_at_most_the_stated_fraction(
    raw: list[float], carried: int, target: int, moved: bool
) -> None:
    """Spec §9.5's bound, played against the real tolerance, quantisation and payout rule at
    the defaults (pool 10,000, payout_min_score 0.01): the round's payments move by at most
    ``2 phi`` of what is available in L1, plus ``4 n`` units of rounding."""
    pool, min_score = 10_000, 10_000
    keyed = {bytes([i]) * 32: x for i, x in enumerate(raw)}
    victim = sorted(keyed)[target % len(keyed)]
    honest = compute_quantised_scores(sorted(keyed), [keyed[k] for k in sorted(keyed)])
    fair = compute_round_payout(carried, pool=pool, scores=honest, moved=moved, min_score=min_score)
    n = len(raw)
    limit = 2 * compute_nudge_bound(n, min_score) * fair.available + 4 * n
    for recorded in _nudges_inside_the_tolerance(keyed, victim):
        nudged = compute_round_payout(
            carried, pool=pool, scores=sorted(recorded.items()), moved=moved, min_score=min_score
        )
        a, b = dict(fair.rewards), dict(nudged.rewards)
        moved_units = sum(abs(a.get(k, 0) - b.get(k, 0)) for k in keyed)
        assert moved_units <= limit
        assert abs(nudged.carried - fair.carried) <= limit


def test_the_stated_fraction_at_the_defaults() -> None:
    phi = compute_nudge_bound(10, round(RunConfig().payout_min_score * SCORE_SCALE))
    assert phi == pytest.approx(0.003, rel=1e-3)  # 0.3 %: 60 of 10,000 units in L1
    assert compute_nudge_bound(10, 0) == math.inf  # no minimum, no bound


def test_invalid_no_positive_honest_score_does_not_pay_the_pool_to_a_plus_two_score() -> None:
    """Issue 12's last gap: no honest score of the round is positive (one recomputed as -0.4e-6,
    quantised 0, whose tolerance is the 2-quanta floor); a coordinator records it as +2. Before,
    that +2 was the only positive score and took the whole pool. Now it is paid 2 / M of what
    is available (2 units of 10,000 at the default minimum) and the rest is carried."""
    raw = {A: -0.4e-6, B: -0.004, C: -0.02}
    keys = sorted(raw)
    honest = dict(compute_quantised_scores(keys, [raw[k] for k in keys]))
    assert honest[A] == 0 and all(s <= 0 for s in honest.values())
    tolerance = compute_score_tolerances(raw)
    recorded = {**honest, A: 2}
    assert abs(recorded[A] - honest[A]) / SCORE_SCALE <= tolerance[A]  # recheck_scores accepts
    assert compute_reward_split(10_000, recorded.items()) == ((A, 10_000),)  # the old rule
    payout = compute_round_payout(
        0, pool=10_000, scores=sorted(recorded.items()), moved=True, min_score=10_000
    )
    assert payout.rewards == ((A, 2),) and payout.carried == 9_998
    fair = compute_round_payout(
        0, pool=10_000, scores=sorted(honest.items()), moved=True, min_score=10_000
    )
    assert fair.rewards == () and fair.carried == 10_000
