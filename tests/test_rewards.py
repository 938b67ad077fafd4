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
    compute_score_debt,
    compute_score_debts,
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
# Score debt: a positive score first repays the client's earlier negative ones


def test_a_debt_is_repaid_before_a_positive_score_is_paid() -> None:
    """Pre: B owes 30,000 quanta. Op: scores +30,000 / +34,000. Post: B is payable for 4,000
    only; the round's payable scores (34,000) still reach M, so all 10,000 units are paid 30 : 4,
    and the reason says what the debt kept back."""
    payout = compute_round_payout(
        0,
        pool=10_000,
        scores=[(A, 30_000), (B, 34_000)],
        moved=True,
        min_score=20_000,
        debts={B: 30_000},
    )
    assert payout.rewards == ((A, 8_824), (B, 1_176)) and payout.carried == 0
    assert payout.withheld == 30_000
    assert "30000 quanta of positive scores repaid the score debt of 1 client" in payout.reason


def test_a_round_whose_positive_scores_only_repay_debt_pays_nothing() -> None:
    """The late-round case of the ablation: the only positive score is an attacker's lucky one,
    smaller than what it owes. Nothing is paid; the pool is carried."""
    payout = compute_round_payout(
        500,
        pool=10_000,
        scores=[(A, 3_400), (B, -1_000)],
        moved=True,
        min_score=10_000,
        debts={A: 12_000},
    )
    assert payout.rewards == () and payout.carried == 10_500 and payout.decision == "carried"
    assert "no score is payable" in payout.reason and "score debt" in payout.reason


def test_debts_grow_with_negative_scores_shrink_with_positive_ones_and_decay() -> None:
    debts = {A: (5_000, 0), B: (1_000, 0)}
    scores = [(A, -3_000), (B, 4_000), (C, -9_999)]
    assert compute_score_debts(debts, scores, 0, 0) == {A: (8_000, 0), B: (0, 0), C: (9_999, 0)}
    assert compute_score_debts(debts, scores, 2_500, 0) == {  # floor
        A: (6_000, 0),
        B: (0, 0),
        C: (7_499, 0),
    }
    no_debt = compute_score_debts(debts, scores, 10_000, 10_000)
    assert no_debt == {A: (0, 0), B: (0, 0), C: (0, 0)}


def test_harm_beyond_the_threshold_is_forgiven_at_its_own_rate() -> None:
    # -25,000: 15,000 of harm (beyond -10,000) and 10,000 of noise, of which half is forgiven
    assert compute_score_debt(0, 0, -25_000, 5_000, 0) == (20_000, 15_000)
    assert compute_score_debt(0, 0, -25_000, 10_000, 0) == (15_000, 15_000)
    assert compute_score_debt(0, 0, -25_000, 5_000, 2_000) == (17_000, 12_000)
    debt, harm = 15_000, 15_000
    for _ in range(50):  # no score: harm decay 0 forgives nothing, whatever the noise decay
        debt, harm = compute_score_debt(debt, harm, 0, 10_000, 0)
    assert (debt, harm) == (15_000, 15_000)
    for _ in range(3):
        debt, harm = compute_score_debt(debt, harm, 0, 10_000, 2_000)
    assert (debt, harm) == (7_680, 7_680)  # 15,000 x 0.8^3
    # a positive score repays the noise first, then the harm
    assert compute_score_debt(20_000, 15_000, 3_000, 0, 0) == (17_000, 15_000)
    assert compute_score_debt(20_000, 15_000, 8_000, 0, 0) == (12_000, 12_000)
    assert compute_score_debt(20_000, 15_000, 30_000, 0, 0) == (0, 0)
    # a noise-sized negative score adds no harm
    assert compute_score_debt(12_000, 12_000, -10_000, 10_000, 0) == (12_000, 12_000)


def _attackers_share(attacker: list[int], honest: list[int], decay: int, harm_decay: int) -> int:
    paid = {A: 0, B: 0}
    carried, debts = 0, {}
    for a, h in zip(attacker, honest, strict=True):
        scores = [(A, a), (B, h)]
        owed = {key: debt for key, (debt, _) in debts.items()}
        payout = compute_round_payout(
            carried, pool=10_000, scores=scores, moved=True, min_score=10_000, debts=owed
        )
        debts.update(compute_score_debts(debts, scores, decay, harm_decay))
        carried = payout.carried
        for key, amount in payout.rewards:
            paid[key] += amount
    assert paid[B] > 0
    return paid[A]


def test_a_sign_flippers_early_harm_outlasts_its_late_lucky_rounds() -> None:
    """The 7.2 % case (Fashion-MNIST subsample, decay 0.3): one very harmful first round, a few
    harmful ones, then small lucky positive scores. Forgiving harm as fast as noise paid the
    attacker; never forgiving it does not."""
    attacker = [-300_000, -25_000, -12_000, -24_000] + [-1_000, 2_500, 3_000, -500, 2_000] * 3
    honest = [250_000, 60_000, 30_000, 20_000] + [4_000, 3_000, 2_000, 3_500, 1_000] * 3
    assert _attackers_share(attacker, honest, 3_000, 3_000) > 0
    assert _attackers_share(attacker, honest, 3_000, 0) == 0


def test_score_debt_moves_by_at_most_the_nudge() -> None:
    """The payout bound needs a debt 1-Lipschitz in the score (plus 2 quanta of flooring),
    across the harm threshold too."""
    for debt, harm in ((0, 0), (30_000, 12_000), (5_000, 0)):
        for score in range(-10_010, -9_990):
            for nudge in (-2, -1, 1, 2):
                for decays in ((3_000, 0), (3_000, 2_000), (3_000, 3_000)):
                    a = compute_score_debt(debt, harm, score, *decays)
                    b = compute_score_debt(debt, harm, score + nudge, *decays)
                    assert abs(a[0] - b[0]) <= abs(nudge) + 2
                    assert abs(a[1] - b[1]) <= abs(nudge) + 1


def test_no_debt_is_the_rule_without_debt() -> None:
    scores = [(A, 3_000), (B, 1_000), (C, -500)]
    plain = compute_round_payout(0, pool=10_000, scores=scores, moved=True, min_score=20_000)
    zero = compute_round_payout(
        0, pool=10_000, scores=scores, moved=True, min_score=20_000, debts={A: 0, C: 0}
    )
    assert plain == zero and plain.withheld == 0 and "debt" not in plain.reason


def test_invalid_debts_and_decay() -> None:
    with pytest.raises(ValueError, match="debts must not be negative"):
        compute_round_payout(0, pool=1, scores=[(A, 1)], moved=True, min_score=0, debts={A: -1})
    for bad in ((-1, 0), (10_001, 0), (3_000, 3_001), (3_000, -1)):
        with pytest.raises(ValueError, match="harm_debt_decay_bps"):
            compute_score_debts({}, [(A, 1)], *bad)
    with pytest.raises(ValueError, match="harm must be in"):
        compute_score_debt(5, 6, 1, 0, 0)


@given(
    carried=st.integers(0, 10**6),
    pool=st.integers(0, 10**6),
    scored=st.lists(
        st.tuples(st.integers(-(10**6), 10**6), st.integers(0, 10**6)), min_size=1, max_size=12
    ),
    moved=st.booleans(),
    min_score=st.integers(0, 10**5),
)
def test_every_unit_is_paid_or_carried_with_debts(
    carried: int, pool: int, scored: list[tuple[int, int]], moved: bool, min_score: int
) -> None:
    keyed = [(bytes([i]) * 32, s) for i, (s, _) in enumerate(scored)]
    debts = {bytes([i]) * 32: d for i, (_, d) in enumerate(scored)}
    payout = compute_round_payout(
        carried, pool=pool, scores=keyed, moved=moved, min_score=min_score, debts=debts
    )
    available = carried + pool
    payable = sum(max(0, s - d) for s, d in scored)
    assert payout.paid + payout.carried == available
    assert payout.withheld == sum(s for s, _ in scored if s > 0) - payable
    if not moved or payable == 0:
        assert payout.paid == 0
    else:
        assert payout.paid == (
            available if payable >= min_score else available * payable // min_score
        )
    for key, amount in payout.rewards:  # no one is paid beyond what it owes
        assert amount > 0 and dict(keyed)[key] > debts[key]


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


@given(
    raw=st.lists(
        st.tuples(
            st.one_of(st.floats(-0.3, 1.5), st.floats(-0.01, 0.01)),
            st.integers(0, 50_000),  # the honest debt
            st.integers(-50, 50),  # how far the recorded debt drifted from it
        ),
        min_size=2,
        max_size=10,
    ),
    carried=st.integers(0, 100_000),
    target=st.integers(0, 9),
)
def test_a_nudge_and_a_drifted_debt_move_at_most_the_stated_fraction(
    raw: list[tuple[float, int, int]], carried: int, target: int
) -> None:
    """Spec §9.5 step 5: with score debts that earlier nudges moved by at most ``delta``
    quanta each, a nudge inside this round's tolerance moves the payments by at most
    ``2 phi(delta)`` of what is available, plus ``4 n`` units."""
    pool, min_score = 10_000, 10_000
    keys = [bytes([i]) * 32 for i in range(len(raw))]
    keyed = {k: x for k, (x, _, _) in zip(keys, raw, strict=True)}
    honest_debts = {k: d for k, (_, d, _) in zip(keys, raw, strict=True)}
    drifted = {k: max(0, d + e) for k, (_, d, e) in zip(keys, raw, strict=True)}
    delta = max(abs(drifted[k] - honest_debts[k]) for k in keys)
    victim = keys[target % len(keys)]
    honest = compute_quantised_scores(keys, [keyed[k] for k in keys])
    fair = compute_round_payout(
        carried, pool=pool, scores=honest, moved=True, min_score=min_score, debts=honest_debts
    )
    n = len(raw)
    limit = 2 * compute_nudge_bound(n, min_score, debt_drift=delta) * fair.available + 4 * n
    for recorded in _nudges_inside_the_tolerance(keyed, victim):
        nudged = compute_round_payout(
            carried,
            pool=pool,
            scores=sorted(recorded.items()),
            moved=True,
            min_score=min_score,
            debts=drifted,
        )
        a, b = dict(fair.rewards), dict(nudged.rewards)
        assert sum(abs(a.get(k, 0) - b.get(k, 0)) for k in keys) <= limit
        assert abs(nudged.carried - fair.carried) <= limit
