"""Paying the reward pool: the payout rule and its integer split (pure, deterministic, integers).

Anyone replaying the ledger gets the same amounts on any machine. The ledger's state transition
(:mod:`fedchain.ledger.transactions`) holds every ``RewardDeltas`` to :func:`compute_round_payout`,
keeps the pool not yet paid (``carried_reward``) in the state root and each participant's score
debt (``score_debt``, :func:`compute_score_debts`) in its state; the coordinator calls the same
functions to build them (docs/ledger-spec.md, §9.5).

Score debt. A client is paid for what its scores add to its running total beyond what earlier
rounds took away: its *payable* score is ``p_i = max(0, s_i - D_i)``, where ``D_i`` (quanta, in
the state) is the negative score it has not yet earned back. Of it, ``H_i <= D_i`` is *harm*:
the part of its negative scores beyond :data:`HARM_THRESHOLD` (a score ``s < -10,000`` quanta,
0.01 of validation loss, the ledger's harmful-score line, adds ``-s - 10,000`` to ``H_i``); the
rest, ``D_i - H_i``, is noise. Each round the genesis ``harm_debt_decay_bps`` (``h``) of the
harm is forgiven and ``score_debt_decay_bps`` (``d >= h``) of the noise. After each contribution
record (:func:`compute_score_debt`): ``O = max(0, D - s)``; ``H' = H + max(0, -s - 10,000)``
when ``s < 0``, else ``min(H, O)`` (a positive score repays the noise first); then ``H :=
floor(H' x (10,000 - h) / 10,000)`` and ``D := H + floor((O - H') x (10,000 - d) / 10,000)``.
``d = h = 10,000`` keeps no debt (each round pays its own positive scores).
Why: a validation-loss score is a measurement on a finite validation split, and in late
rounds, when every step is small, an attacker's update can score a little above zero by chance
(measured: a sign flipper +0.0034 in round 8, above most honest clients); paid on its own, such
a round gave an attacker 21 % of its pool. The sampler's own error is no guide to that noise (the
antithetic walk pairs agree to about 1e-5 on those scores: the noise is in the validation split,
not the sampling), but the attacker's earlier harmful scores are: a positive score first pays
back the debt they left. An honest client's occasional small negative score is noise, repaid by
its next positive round and forgiven at ``d`` a round. Forgiving harm as fast (format 6: one
rate for the whole debt) let sign flippers take 7.2 % of the rewards on a 100-example
validation split (Fashion-MNIST subsample, decay 0.3), their early harm forgotten before their
late lucky rounds; never forgiving it starves honest clients whose one early update overshot
(a -0.11 in round 2 of a clean run) and makes their late payments hang on the sampler's error
in that one large score. The split is continuous in the score (no threshold jump), so a nudged
score moves a debt by at most the nudge, as the bound below needs.

The payout rule. Each round with a contribution record makes ``available = carried + pool``
(``pool``: the genesis ``reward_per_round``). Let ``S`` be the sum of the round's payable scores
(quanta) and ``M`` the genesis ``payout_min_score`` (quanta):

* the round's model did not move (its ``ModelVersion`` lists no update, or leaves the model as
  it was): nothing is paid, ``available`` carries over: nothing entered the model, so there is
  no contribution to pay;
* no score is payable (``S = 0``): nothing is paid, ``available`` carries over;
* otherwise the round pays ``amount = available`` when ``S >= M``, else
  ``floor(available * S / M)``, split over the payable scores by :func:`compute_reward_split`
  (largest remainder, every unit of ``amount`` paid); the rest carries over.

So client ``i`` is paid (before integer rounding) ``available * p_i / max(M, S)``: a round whose
gain is measurement noise pays in proportion to its evidence and leaves the rest to rounds that
learn, and the payment is a Lipschitz function of the scores and debts, which is what bounds a
dishonest coordinator:

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
``floor(available x 2 / M)`` units (2 of 10,000), not the pool. With score debt, ``x+`` above
reads ``max(0, x - D)``: 1-Lipschitz in the score and in the debt, so the per-client bound gains
the debt's drift ``delta`` (``phi = n ((2 + 5e-5 + delta) / M + 1e-4)``,
``compute_nudge_bound(n, M, debt_drift=delta)``). A debt is 1-Lipschitz in each earlier score
(``max(0, .)``, ``min``, and ``D = (1 - d) O + (d - h) H'`` with non-negative weights summing
to at most 1 since ``h <= d``; the floors add at most 2 quanta a round), so ``delta`` is at
most the sum of that client's earlier nudges, each within its round's tolerance, plus 2 quanta
a round. A client with no debt
in either record (no negative score) has ``delta = 0``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

BPS = 10_000
"""Basis points in one: ``score_debt_decay_bps`` is at most this (all noise debt forgiven)."""
HARM_THRESHOLD = 10_000
"""Quanta: the part of a negative score beyond ``-HARM_THRESHOLD`` is harm, a debt never forgiven
(the ledger's ``HARMFUL_SCORE`` line, 0.01 of validation loss: beyond measurement noise)."""

__all__ = [
    "Payout",
    "compute_nudge_bound",
    "compute_payable_scores",
    "compute_reward_split",
    "compute_round_payout",
    "compute_score_debt",
    "compute_score_debts",
    "has_model_moved",
]


@dataclass(frozen=True, slots=True)
class Payout:
    """One round's payout: ``available`` units (carried + the round's pool), the ``rewards``
    paid (``((key, amount), ...)`` sorted by key; empty when nothing is paid), the units
    ``carried`` to the next round, the decision (``"paid"``, ``"paid in part"`` or
    ``"carried"``) and why, in words; ``withheld``: the positive score (quanta) that went to
    repaying score debt instead of being paid (see the module docstring), and ``repaying`` the
    keys whose positive score did (sorted)."""

    available: int
    rewards: tuple[tuple[bytes, int], ...]
    carried: int
    decision: str
    reason: str
    withheld: int = 0
    repaying: tuple[bytes, ...] = ()

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
    debts: Mapping[bytes, int] | None = None,
) -> Payout:
    """The payout rule for one round's contribution record (see the module docstring):
    ``carried`` units from earlier rounds plus this round's ``pool``, its ``scores`` (quanta),
    whether its model ``moved``, the genesis ``payout_min_score`` (``min_score``, quanta) and
    each scored client's score debt as the round began (``debts``, quanta; missing: 0)."""
    if carried < 0 or pool < 0 or min_score < 0:
        raise ValueError("pools and the minimum score must not be negative")
    debts = debts or {}
    if any(debt < 0 for debt in debts.values()):
        raise ValueError("score debts must not be negative")
    available = carried + pool
    scores = list(scores)
    payable = compute_payable_scores(scores, debts)
    total = sum(score for _, score in payable)
    withheld = sum(score for _, score in scores if score > 0) - total
    repaying = tuple(sorted(k for k, score in scores if score > 0 and debts.get(k, 0) > 0))
    owing = len(repaying)
    debt_note = (
        f"; {withheld} quanta of positive scores repaid the score debt of {owing} "
        f"client{'s' if owing != 1 else ''} (negative scores of earlier rounds) and were not paid"
        if withheld
        else ""
    )
    if not moved:
        why = "the model did not move: nothing entered it, so there is no contribution to pay"
        return Payout(available, (), available, "carried", why, withheld, repaying)
    if total == 0:
        why = "no score is positive" if not withheld else "no score is payable" + debt_note
        return Payout(available, (), available, "carried", why, withheld, repaying)
    summed = "payable scores (positive less score debt)" if withheld else "positive scores"
    if total >= min_score:
        amount, decision = available, "paid"
        reason = (
            f"{summed} sum to {total} quanta, at least payout_min_score {min_score}" + debt_note
        )
    else:
        amount, decision = available * total // min_score, "paid in part"
        reason = (
            f"{summed} sum to {total} quanta, below payout_min_score {min_score}: "
            f"that fraction of the available units is paid" + debt_note
        )
    rewards = compute_reward_split(amount, payable)
    paid = sum(value for _, value in rewards)
    if paid == 0:
        decision = "carried"
    return Payout(available, rewards, available - paid, decision, reason, withheld, repaying)


def compute_payable_scores(
    scores: Iterable[tuple[bytes, int]], debts: Mapping[bytes, int]
) -> list[tuple[bytes, int]]:
    """``(key, max(0, score - debt))`` for every positive payable score, in the given order."""
    out = []
    for key, score in scores:
        payable = score - debts.get(key, 0)
        if payable > 0:
            out.append((key, payable))
    return out


def compute_score_debt(
    debt: int, harm: int, score: int, decay_bps: int, harm_decay_bps: int
) -> tuple[int, int]:
    """One client's score debt after a contribution record: ``(debt, harm)`` (quanta) from its
    debt and harm as the round began, its ``score``, the genesis ``score_debt_decay_bps``
    (``decay_bps``) and ``harm_debt_decay_bps`` (``harm_decay_bps``, at most ``decay_bps``).
    See the module docstring: harm is the part of negative scores beyond
    :data:`HARM_THRESHOLD`; ``harm_decay_bps`` of it is forgiven each round, ``decay_bps`` of
    the rest."""
    if not 0 <= harm_decay_bps <= decay_bps <= BPS:
        raise ValueError(
            f"need 0 <= harm_debt_decay_bps ({harm_decay_bps}) <= score_debt_decay_bps "
            f"({decay_bps}) <= {BPS}"
        )
    if not 0 <= harm <= debt:
        raise ValueError(f"harm must be in 0..debt ({debt}), got {harm}")
    owed = max(0, debt - score)
    harm = harm + max(0, -score - HARM_THRESHOLD) if score < 0 else min(harm, owed)
    noise = owed - harm
    harm = harm * (BPS - harm_decay_bps) // BPS
    return harm + noise * (BPS - decay_bps) // BPS, harm


def compute_score_debts(
    debts: Mapping[bytes, tuple[int, int]],
    scores: Iterable[tuple[bytes, int]],
    decay_bps: int,
    harm_decay_bps: int,
) -> dict[bytes, tuple[int, int]]:
    """Each scored client's ``(debt, harm)`` after a contribution record
    (:func:`compute_score_debt`), from ``debts`` as the round began (missing: ``(0, 0)``).
    Returns the scored keys only; the others' are unchanged."""
    return {
        key: compute_score_debt(*debts.get(key, (0, 0)), score, decay_bps, harm_decay_bps)
        for key, score in scores
    }


def compute_nudge_bound(clients: int, min_score: int, *, debt_drift: float = 0.0) -> float:
    """``phi``: a recorded score nudged inside ``verify --scores``' tolerance moves a round's
    payments by at most ``2 phi`` of its available pool in L1 (plus ``4 n`` units of rounding),
    and the carried pool by at most as much; ``inf`` when ``min_score`` is 0 (no bound: the
    split of a round's tiny scores pays the whole pool). ``debt_drift``: the most (quanta) any
    client's score debt differs from its honest one, through earlier rounds' nudges (0 when no
    client has a debt; see the module docstring)."""
    if min_score <= 0:
        return float("inf")
    return clients * ((2 + 5e-5 + debt_drift) / min_score + 1e-4)
