"""Splitting a round's reward pool in integer base units (pure, deterministic, integer-only)."""

from __future__ import annotations

from collections.abc import Iterable


def compute_reward_split(
    pool: int, shares: Iterable[tuple[bytes, int]]
) -> tuple[tuple[bytes, int], ...]:
    """Split ``pool`` base units in proportion to the positive integer ``shares``.

    Largest remainder: each key first gets ``pool * share // total``; the units left go one each
    to the largest remainders, ties broken by key. Integer arithmetic only, so anyone replaying
    the ledger gets the same split on any machine. Every unit is paid when any share is
    positive. Returns ``((key, amount), ...)`` sorted by key, zero amounts left out.
    """
    if pool < 0:
        raise ValueError("the pool must not be negative")
    positive = [(key, share) for key, share in shares if share > 0]
    total = sum(share for _, share in positive)
    if not positive or pool == 0:
        return ()
    paid = {key: pool * share // total for key, share in positive}
    remainders = {key: pool * share % total for key, share in positive}
    left = pool - sum(paid.values())
    for key in sorted(remainders, key=lambda k: (-remainders[k], k))[:left]:
        paid[key] += 1
    return tuple((key, amount) for key, amount in sorted(paid.items()) if amount > 0)
