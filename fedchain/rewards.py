"""Splitting a round's reward pool in integer base units (pure, deterministic)."""

from __future__ import annotations

from collections.abc import Mapping


def compute_reward_split(pool: int, shares: Mapping[bytes, float]) -> tuple[tuple[bytes, int], ...]:
    """Split ``pool`` base units in proportion to the positive ``shares`` (largest remainder).

    Every unit is paid out when any share is positive. Remainder units go to the largest
    fractional parts; ties break by key, so the split is the same on every machine. Returns
    ``((key, amount), ...)`` sorted by key, zero amounts left out.
    """
    if pool < 0:
        raise ValueError("the pool must not be negative")
    positive = {key: share for key, share in shares.items() if share > 0}
    total = sum(positive.values())
    if not positive or pool == 0:
        return ()
    exact = {key: pool * share / total for key, share in positive.items()}
    paid = {key: int(amount) for key, amount in exact.items()}
    left = pool - sum(paid.values())
    by_remainder = sorted(positive, key=lambda key: (-(exact[key] - paid[key]), key))
    for key in by_remainder[:left]:
        paid[key] += 1
    return tuple((key, amount) for key, amount in sorted(paid.items()) if amount > 0)
