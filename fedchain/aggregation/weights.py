"""Each client's aggregation weight from its ledger values: examples x stake**beta x reputation.

Pure, deterministic and free of I/O. :func:`compute_weights` turns plain per-client numbers read
from the ledger state at the start of the round (examples, stake, reputation) into one float64
weight per client, summing to 1, optionally capped by :func:`apply_weight_cap`. The estimators
that use these weights are in :mod:`fedchain.aggregation.rules`.

Weight formulas (``e`` examples, ``s`` stake, ``r`` reputation in basis points, ``b`` = beta):

=================  ======================================  =====================================
rule               weight proportional to                  estimator
=================  ======================================  =====================================
fedavg             ``e`` (stake is ignored: the baseline)  weighted average
stake              ``s``                                   weighted average
examples-stake     ``e * s**b``                            weighted average
reputation         ``e * s**b * r / 10_000``               weighted average
median             ``e * s**b``                            coordinate-wise weighted median
trimmed-mean       ``e * s**b``                            coordinate-wise weighted trimmed mean
multi-krum         ``e * s**b``                            Multi-Krum selection, then average
screened           ``e * s**b * r / 10_000``               norm and contribution screens, then
                                                           average (``aggregate_screened``)
=================  ======================================  =====================================

``s**b`` is taken as 0 when ``s == 0`` for every ``b`` (also ``b == 0``), so a client without stake
carries no weight under any rule but ``fedavg``. For integral ``b`` up to 16 (the usual 0, 1, 2)
the weights are computed with exact integer arithmetic and one correctly rounded division each,
so they are the same bits on every platform; any other ``b`` goes through float64 ``pow`` on
values scaled by the largest (same bits on one platform; no overflow for huge stakes).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

from fedchain.config import RunConfig
from fedchain.errors import ConfigError

__all__ = [
    "REPUTATION_SCALE",
    "RULES",
    "RuleParams",
    "apply_weight_cap",
    "check_rule",
    "check_weight_vector",
    "compute_weights",
    "is_int",
    "is_real",
    "make_rule_params",
]

RULES = (
    "fedavg",
    "stake",
    "examples-stake",
    "reputation",
    "median",
    "trimmed-mean",
    "multi-krum",
    "screened",
)
"""Every rule name :func:`compute_weights` and ``rules.aggregate`` accept."""

REPUTATION_SCALE = 10_000
"""Reputation is stored in basis points: 10_000 means full trust, 0 means none."""

FloatArray: TypeAlias = npt.NDArray[np.float64]

_EXACT_BETA_MAX = 16
"""Integral beta up to this uses exact integer powers; beyond, float64 (integers would explode)."""


@dataclass(frozen=True)
class RuleParams:
    """Parameters of the aggregation rules (genesis "contract" values, see DESIGN.md 3.3).

    beta:
        Exponent on stake in ``examples * stake**beta`` (>= 0; 0 ignores stake size, though a
        zero stake still gives zero weight).
    cap:
        Largest share of the total weight any one client may hold, in (0, 1], or ``None`` for
        no cap. The excess is redistributed by :func:`apply_weight_cap`.
    trim:
        Weight mass removed from each tail by ``trimmed-mean``, in [0, 0.5).
    krum_f:
        Number of attackers Multi-Krum assumes. ``None``: the most Krum tolerates,
        ``max(0, (n - 3) // 2)`` for ``n`` candidates (Krum needs ``n >= 2f + 3``).
    krum_m:
        Number of updates Multi-Krum selects. ``None``: ``n - f``. Values above ``n`` select all.
    """

    beta: float = 1.0
    cap: float | None = None
    trim: float = 0.2
    krum_f: int | None = None
    krum_m: int | None = None

    def __post_init__(self) -> None:
        if not is_real(self.beta) or not math.isfinite(self.beta) or self.beta < 0:
            raise ConfigError(f"beta must be a finite number >= 0, got {self.beta!r}")
        if self.cap is not None and (
            not is_real(self.cap) or not math.isfinite(self.cap) or not 0 < self.cap <= 1
        ):
            raise ConfigError(f"cap must be in (0, 1] or None, got {self.cap!r}")
        if not is_real(self.trim) or not 0 <= self.trim < 0.5:
            raise ConfigError(f"trim must be in [0, 0.5), got {self.trim!r}")
        if self.krum_f is not None and (not is_int(self.krum_f) or self.krum_f < 0):
            raise ConfigError(f"krum_f must be an integer >= 0 or None, got {self.krum_f!r}")
        if self.krum_m is not None and (not is_int(self.krum_m) or self.krum_m < 1):
            raise ConfigError(f"krum_m must be an integer >= 1 or None, got {self.krum_m!r}")


def make_rule_params(config: RunConfig) -> RuleParams:
    """The run's rule parameters: ``beta`` and ``weight_cap`` from the config (a cap of 1 or more
    is no cap); trim and Multi-Krum's ``f`` and ``m`` keep their defaults. The coordinator and
    the re-check of a round both build their parameters here, so they weigh alike."""
    return RuleParams(beta=config.beta, cap=None if config.weight_cap >= 1 else config.weight_cap)


def compute_weights(
    rule: str,
    *,
    examples: Sequence[int],
    stakes: Sequence[int],
    reputations: Sequence[int],
    params: RuleParams | None = None,
) -> FloatArray:
    """Return each client's aggregation weight under ``rule``: float64, >= 0, summing to 1.

    ``examples`` (claimed and registered example counts), ``stakes`` (base units) and
    ``reputations`` (basis points, 0..10_000) are the ledger values at the start of the round, one
    per client, in the order the updates will be passed to ``rules.aggregate``. All three are
    validated whatever the rule. ``params.cap``, when set, is applied last.

    Under ``reputation``, when every reputation is 0 the clients weigh as under
    ``examples-stake`` (equal reputations: the limit of equal small ones), so a federation whose
    every client has been scored harmful often enough goes on. Raises :class:`ConfigError` for an
    unknown rule, mismatched lengths, no clients, negative or non-integer counts, reputations
    outside 0..10_000, or when every client's weight is 0.
    """
    params = RuleParams() if params is None else params
    check_rule(rule)
    n = len(examples)
    if n == 0:
        raise ConfigError("cannot compute weights for zero clients")
    if len(stakes) != n or len(reputations) != n:
        raise ConfigError(
            f"examples, stakes and reputations must have one entry per client: got "
            f"{n}, {len(stakes)} and {len(reputations)}"
        )
    ex = _check_counts(examples, "examples")
    st = _check_counts(stakes, "stakes")
    rep = _check_counts(reputations, "reputations")
    if any(r > REPUTATION_SCALE for r in rep):
        raise ConfigError(f"reputations are basis points in 0..{REPUTATION_SCALE}, got {rep}")

    if rule == "fedavg":
        weights = _exact_proportions(ex)
    elif rule == "stake":
        weights = _exact_proportions(st)
    else:
        reps = rep if rule == "reputation" else None
        weights = _examples_stake_weights(ex, st, params.beta, reps)
        if weights is None and reps is not None:
            # Every client's reputation is 0 (each was scored harmful often enough, as late
            # rounds of a long run can do to everyone): equal reputations weigh nothing, so
            # weigh as if all were equal, the limit of equal small reputations, rather than
            # stop the run. A client's positive score then restores its reputation.
            weights = _examples_stake_weights(ex, st, params.beta, None)
    if weights is None:
        raise ConfigError(
            f"no client has positive weight under rule {rule!r} "
            f"(examples={ex}, stakes={st}, reputations={rep})"
        )
    if params.cap is not None:
        weights = apply_weight_cap(weights, params.cap)
    return weights


def apply_weight_cap(weights: Sequence[float] | FloatArray, cap: float) -> FloatArray:
    """Cap every client's share at ``cap`` and hand the excess to the others (water-filling).

    The weights are normalised first. Clients above the cap are set to exactly ``cap``; the
    remaining mass is shared among the others in proportion to their weights, repeating until no
    share exceeds the cap, so uncapped clients keep their ratios to each other. Clients with
    weight 0 stay at 0 (stake, not the cap, decides who takes part).

    If the cap is infeasible, i.e. ``cap * k < 1`` for ``k`` clients with positive weight, no
    assignment can respect it; the result is then the uniform split ``1/k`` over those clients,
    which is the smallest largest share there is. The same happens when capping everyone would be
    needed (``cap * k == 1`` up to rounding).

    Exact and deterministic: ties in size are broken by client index and sums use ``math.fsum``.
    Raises :class:`ConfigError` for a cap outside (0, 1] or invalid weights.
    """
    if not is_real(cap) or not math.isfinite(cap) or not 0 < cap <= 1:
        raise ConfigError(f"cap must be in (0, 1], got {cap!r}")
    w = check_weight_vector(weights, None)
    positive = [i for i in range(len(w)) if w[i] > 0]
    out = np.zeros(len(w), dtype=np.float64)
    if cap * len(positive) < 1:
        out[positive] = 1.0 / len(positive)
        return out
    order = sorted(positive, key=lambda i: (-w[i], i))
    for capped in range(len(order)):
        rest = order[capped:]
        rest_sum = math.fsum(float(w[i]) for i in rest)
        scale = (1.0 - capped * cap) / rest_sum
        if w[rest[0]] * scale <= cap:
            out[order[:capped]] = cap
            out[rest] = w[rest] * scale
            return out
    out[positive] = 1.0 / len(positive)
    return out


def _exact_proportions(values: Sequence[int]) -> FloatArray | None:
    """``v_i / sum(v)`` from Python integers: one correctly rounded division each."""
    total = sum(values)
    if total == 0:
        return None
    return np.array([v / total for v in values], dtype=np.float64)


def _examples_stake_weights(
    examples: list[int], stakes: list[int], beta: float, reputations: list[int] | None
) -> FloatArray | None:
    """Weights proportional to ``examples * stake**beta`` (times reputation when given)."""
    reps = reputations if reputations is not None else [1] * len(examples)
    if float(beta).is_integer() and beta <= _EXACT_BETA_MAX:
        power = int(beta)
        raw = [
            e * s**power * r if s > 0 else 0 for e, s, r in zip(examples, stakes, reps, strict=True)
        ]
        return _exact_proportions(raw)
    # Fractional beta: scale by the largest values first so huge stakes cannot overflow float64.
    max_e, max_s, max_r = max(examples), max(stakes), max(reps)
    if max_e == 0 or max_s == 0 or max_r == 0:
        return None
    terms = [
        (e / max_e) * (s / max_s) ** beta * (r / max_r) if s > 0 else 0.0
        for e, s, r in zip(examples, stakes, reps, strict=True)
    ]
    total = math.fsum(terms)
    if total == 0:
        return None
    return np.array([t / total for t in terms], dtype=np.float64)


# --------------------------------------------------------------------------------------------------
# Validation, shared with the rules


def check_rule(rule: str) -> None:
    """Raise :class:`ConfigError` unless ``rule`` is one of :data:`RULES`."""
    if rule not in RULES:
        raise ConfigError(f"unknown aggregation rule {rule!r}; choose one of {', '.join(RULES)}")


def check_weight_vector(weights: Sequence[float] | FloatArray, n: int | None) -> FloatArray:
    """``weights`` validated (finite, >= 0, one per update when ``n`` is given, not all 0) and
    normalised to sum 1 (divided by their ``math.fsum``)."""
    try:
        w = np.array(weights, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"weights must be numbers: {exc}") from exc
    if w.ndim != 1 or w.size == 0:
        raise ConfigError(f"weights must be a non-empty 1-D sequence, got shape {w.shape}")
    if n is not None and w.size != n:
        raise ConfigError(f"got {w.size} weights for {n} updates")
    if not np.all(np.isfinite(w)):
        raise ConfigError(f"weights must be finite, got {w.tolist()}")
    if np.any(w < 0):
        raise ConfigError(f"weights must be >= 0, got {w.tolist()}")
    total = math.fsum(w.tolist())
    if total <= 0:
        raise ConfigError("at least one weight must be positive")
    return w / total


def _check_counts(values: Sequence[int], what: str) -> list[int]:
    out = []
    for i, value in enumerate(values):
        if isinstance(value, bool | np.bool_) or not is_int(value):
            raise ConfigError(f"{what}[{i}] must be an integer, got {value!r}")
        number = operator.index(value)
        if number < 0:
            raise ConfigError(f"{what}[{i}] must be >= 0, got {number}")
        out.append(number)
    return out


def is_int(value: object) -> bool:
    """An integer (Python or numpy), not a bool."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def is_real(value: object) -> bool:
    """A real number (Python or numpy int or float), not a bool."""
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )
