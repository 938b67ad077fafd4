"""fedchain.rounds.rewards: a round's pool and its scores -> split -> whole base units per key.

Pre -> op -> post: the pool and the recorded shares, the split, then what each key is paid.
Negative cases are named ``test_invalid_*``.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedchain.rounds.rewards import compute_reward_split

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
