"""Paying the reward pool: the payout rule and its integer split (pure, deterministic, integers).

Anyone replaying the ledger gets the same amounts on any machine. The ledger's state transition
(:mod:`fedchain.ledger.transactions`) holds every ``RewardDeltas`` to :func:`compute_round_payout`
and keeps the pool not yet paid (``carried_reward``) in the state root; the coordinator calls the
same function to build them (docs/ledger-spec.md, §9.5).

The payout rule. Each round with a contribution record makes ``available = carried + pool``
(``pool``: the genesis ``reward_per_round``). Let ``S`` be the sum of the round's positive scores
(quanta) and ``M`` the genesis ``payout_min_score`` (quanta):

* the round's model did not move (its ``ModelVersion`` lists no update, or leaves the model as
  it was): nothing is paid, ``available`` carries over: nothing entered the model, so there is
  no contribution to pay;
* no score is positive (``S = 0``): nothing is paid, ``available`` carries over;
* otherwise the round pays ``amount = available`` when ``S >= M``, else
  ``floor(available * S / M)``, split over the positive scores by :func:`compute_reward_split`
  (largest remainder, every unit of ``amount`` paid); the rest carries over.

So client ``i`` is paid (before integer rounding) ``available * s_i / max(M, S)``: a round whose
gain is measurement noise pays in proportion to its evidence and leaves the rest to rounds that
learn, and the payment is a Lipschitz function of the scores, which is what bounds a dishonest
coordinator:

**Bound.** ``fedchain verify --scores`` accepts a recorded score within
``max(2, 1e-4 x L)`` quanta of its recomputation (``L``: the round's largest positive
recomputed score; 0 for a score recomputed as exactly 0). Against the honest record ``q``, a
recorded ``r`` then differs per score by at most ``2 + 1e-4 x L`` quanta (both are integers, ``q``
within half a quantum of the recomputation), and ``L <= S_q + 1/2``. Summing over ``n`` scored
clients, ``D = sum |r_i+ - q_i+| <= n (2 + 5e-5 + 1e-4 S_q)``. With ``m(x) = max(M, sum x)``,
``sum_i |r_i+ / m(r) - q_i+ / m(q)| <= 2 D / max(m(r), m(q))``, and ``D / max(M, S_q) <= phi``
where ``phi = n ((2 + 5e-5) / M + 1e-4)`` (:func:`compute_nudge_bound`). So a nudge inside the
tolerance moves the round's payments by at most ``2 phi x available`` in L1 (plus ``4 n`` units of
integer rounding), and the pool carried on by at most as much (which later rounds pay by their
own scores). At the defaults (``n = 10``, ``M = 10,000`` quanta = 0.01 validation loss, pool
10,000): ``phi = 0.3 %``, at most 60 + 40 units of 10,000. The proof is in the spec. In
particular a round with no positive honest score pays a score recorded as ``+2`` quanta
``floor(available x 2 / M)`` units (2 of 10,000), not the pool.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "Payout",
    "compute_nudge_bound",
    "compute_reward_split",
    "compute_round_payout",
    "has_model_moved",
]


@dataclass(frozen=True, slots=True)
class Payout:
    """One round's payout: ``available`` units (carried + the round's pool), the ``rewards``
    paid (``((key, amount), ...)`` sorted by key; empty when nothing is paid), the units
    ``carried`` to the next round, the decision (``"paid"``, ``"paid in part"`` or
    ``"carried"``) and why, in words."""

    available: int
    rewards: tuple[tuple[bytes, int], ...]
    carried: int
    decision: str
    reason: str

    @property
    def paid(self) -> int:
        return sum(amount for _, amount in self.rewards)


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


def has_model_moved(update_hashes: Sequence[bytes], model_hash: bytes, parent_hash: bytes) -> bool:
    """Whether a round's model version moved the model: it lists updates and changes the hash."""
    return bool(update_hashes) and model_hash != parent_hash


def compute_round_payout(
    carried: int,
    *,
    pool: int,
    scores: Iterable[tuple[bytes, int]],
    moved: bool,
    min_score: int,
) -> Payout:
    """The payout rule for one round's contribution record (see the module docstring):
    ``carried`` units from earlier rounds plus this round's ``pool``, its ``scores`` (quanta),
    whether its model ``moved``, and the genesis ``payout_min_score`` (``min_score``, quanta)."""
    if carried < 0 or pool < 0 or min_score < 0:
        raise ValueError("pools and the minimum score must not be negative")
    available = carried + pool
    positive = [(key, score) for key, score in scores if score > 0]
    total = sum(score for _, score in positive)
    if not moved:
        why = "the model did not move: nothing entered it, so there is no contribution to pay"
        return Payout(available, (), available, "carried", why)
    if total == 0:
        return Payout(available, (), available, "carried", "no score is positive")
    if total >= min_score:
        amount, decision = available, "paid"
        reason = f"positive scores sum to {total} quanta, at least payout_min_score {min_score}"
    else:
        amount, decision = available * total // min_score, "paid in part"
        reason = (
            f"positive scores sum to {total} quanta, below payout_min_score {min_score}: "
            f"that fraction of the available units is paid"
        )
    rewards = compute_reward_split(amount, positive)
    paid = sum(value for _, value in rewards)
    if paid == 0:
        decision = "carried"
    return Payout(available, rewards, available - paid, decision, reason)


def compute_nudge_bound(clients: int, min_score: int) -> float:
    """``phi``: a recorded score nudged inside ``verify --scores``' tolerance moves a round's
    payments by at most ``2 phi`` of its available pool in L1 (plus ``4 n`` units of rounding),
    and the carried pool by at most as much; ``inf`` when ``min_score`` is 0 (no bound: the
    split of a round's tiny scores pays the whole pool)."""
    if min_score <= 0:
        return float("inf")
    return clients * ((2 + 5e-5) / min_score + 1e-4)
