"""The privacy accountant: epsilon spent by a client's participations, and the participation cap.

Opacus's RDP accountant (``opacus.accountants``) turns a mechanism into epsilon: one
participation is ``steps`` compositions of the sampled Gaussian mechanism with noise multiplier
``noise`` at sampling rate ``rate`` (client level: one step at rate 1, the Gaussian mechanism on
the clipped update), so ``k`` participations are ``k * steps`` compositions, and their epsilon at
``delta`` grows with ``k``.

Client level is local differential privacy: the client releases its own clipped update, so two
datasets of one client may give updates at opposite ends of the ball of radius ``clip``, and the
Gaussian mechanism's L2 sensitivity is ``2 clip``, not ``clip`` (the figure for one example's
clipped gradient in DP-SGD, or for adding or removing a client in a sum the server noises). With
noise of standard deviation ``noise x clip`` that is the Gaussian mechanism of noise multiplier
``noise / 2`` at sensitivity 1, which is what the accountant is given
(:func:`compute_accounted_noise`).

Why the ledger decides on an integer. RDP is computed in floating point, which may round
differently on another machine or Opacus version; a ledger decision taken from it could replay
differently. So the float is used once, when the genesis is made: :func:`compute_dp_rules`
records the mechanism as integers and :func:`compute_max_participations`, the largest ``k``
whose epsilon stays within the maximum, as ``Rules.dp_max_participations``. Since every
commitment must claim exactly the rules' mechanism, a client's privacy loss is a function of
its count of accepted participations alone; the ledger compares that integer count with the
integer cap, which every replay decides the same way. Epsilon itself
(:func:`compute_epsilon`) is reported, never used for consensus; ``fedchain verify`` re-checks
that the genesis' cap does not allow more than its maximum epsilon (:func:`check_cap`).
"""

from __future__ import annotations

from dataclasses import dataclass

from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp

from fedchain.errors import ConfigError
from fedchain.ledger.objects import DP_MODES, DP_OFF, Rules

__all__ = [
    "MAX_PARTICIPATIONS",
    "MICRO",
    "PICO",
    "Privacy",
    "check_cap",
    "compute_accounted_noise",
    "compute_dp_rules",
    "compute_epsilon",
    "compute_max_participations",
    "privacy_of",
]

MICRO = 10**6
"""``_micro`` rule fields hold a real number times 10**6."""
PICO = 10**12
"""``_pico`` rule fields hold a real number times 10**12."""
MAX_PARTICIPATIONS = 10**6
"""The cap's ceiling: a budget that allows this many participations is as good as unlimited."""
_EPSILON_SLACK = 1e-9
"""Relative tolerance of :func:`check_cap` for another machine's rounding of the same sum."""


@dataclass(frozen=True)
class Privacy:
    """A federation's differential privacy, as real numbers (from the rules' integers)."""

    mode: str
    noise_multiplier: float
    clip_norm: float
    sample_rate: float
    steps_per_round: int
    delta: float
    max_epsilon: float


def compute_accounted_noise(privacy: Privacy) -> float:
    """The noise multiplier the accountant sees: the configured one for DP-SGD (sensitivity
    ``clip``), half of it at client level (sensitivity ``2 clip``: see the module docstring)."""
    if privacy.mode == "client":
        return privacy.noise_multiplier / 2
    return privacy.noise_multiplier


def compute_epsilon(privacy: Privacy, participations: int) -> float:
    """Epsilon at ``privacy.delta`` after ``participations`` participations (0.0 for none),
    by Opacus's RDP accountant over its default orders."""
    if participations <= 0:
        return 0.0
    orders = RDPAccountant.DEFAULT_ALPHAS
    curve = rdp.compute_rdp(
        q=privacy.sample_rate,
        noise_multiplier=compute_accounted_noise(privacy),
        steps=privacy.steps_per_round * participations,
        orders=orders,
    )
    epsilon, _ = rdp.get_privacy_spent(orders=orders, rdp=curve, delta=privacy.delta)
    return float(epsilon)


def compute_max_participations(privacy: Privacy) -> int:
    """The most participations whose epsilon stays within ``privacy.max_epsilon`` (0 if even
    one exceeds it; at most :data:`MAX_PARTICIPATIONS`). Epsilon never falls as participations
    grow, so a doubling then a bisection finds it."""

    def within(k: int) -> bool:
        return compute_epsilon(privacy, k) <= privacy.max_epsilon

    if not within(1):
        return 0
    low, high = 1, 2
    while high < MAX_PARTICIPATIONS and within(high):
        low, high = high, min(2 * high, MAX_PARTICIPATIONS)
    if within(high):
        return high
    while high - low > 1:  # within(low), not within(high)
        middle = (low + high) // 2
        low, high = (middle, high) if within(middle) else (low, middle)
    return low


def compute_dp_rules(
    mode: str,
    *,
    noise_multiplier: float,
    clip_norm: float,
    delta: float,
    max_epsilon: float,
    sample_rate: float = 1.0,
    steps_per_round: int = 1,
) -> dict[str, int | str]:
    """The ``dp_*`` fields of :class:`~fedchain.ledger.objects.Rules` for this privacy (all 0
    for mode ``off``). Real numbers are rounded to the rules' integers first, and the cap is
    computed from the rounded values, so that it is exactly what :func:`privacy_of` the rules
    gives back. Client level (``mode`` ``client``) is one step at rate 1 per participation."""
    if mode not in DP_MODES:
        raise ConfigError(f"dp must be one of {', '.join(sorted(DP_MODES))}, got {mode!r}")
    if mode == DP_OFF:
        return {"dp_mode": DP_OFF}
    if mode == "client":
        sample_rate, steps_per_round = 1.0, 1
    fields: dict[str, int | str] = {
        "dp_mode": mode,
        "dp_noise_micro": round(noise_multiplier * MICRO),
        "dp_clip_micro": round(clip_norm * MICRO),
        "dp_sample_rate_micro": round(sample_rate * MICRO),
        "dp_steps_per_round": steps_per_round,
        "dp_delta_pico": round(delta * PICO),
        "dp_max_epsilon_micro": round(max_epsilon * MICRO),
    }
    for name, value in fields.items():
        if name != "dp_mode" and not (isinstance(value, int) and value >= 1):
            raise ConfigError(f"{name} must round to a positive integer, got {value}")
    if not (int(fields["dp_sample_rate_micro"]) <= MICRO and int(fields["dp_delta_pico"]) < PICO):
        raise ConfigError("the sampling rate must be at most 1 and delta below 1")
    rules = Rules(0, 0, (), "", (), "", 0, 0, **fields)  # type: ignore[arg-type]
    fields["dp_max_participations"] = compute_max_participations(privacy_of(rules))
    return fields


def privacy_of(rules: Rules) -> Privacy:
    """The rules' privacy as real numbers."""
    return Privacy(
        mode=rules.dp_mode,
        noise_multiplier=rules.dp_noise_micro / MICRO,
        clip_norm=rules.dp_clip_micro / MICRO,
        sample_rate=rules.dp_sample_rate_micro / MICRO,
        steps_per_round=rules.dp_steps_per_round,
        delta=rules.dp_delta_pico / PICO,
        max_epsilon=rules.dp_max_epsilon_micro / MICRO,
    )


def check_cap(rules: Rules) -> str:
    """Why the genesis' participation cap allows more than its maximum epsilon, or ``""``
    (also with DP off). A cap below the largest allowed is the federation's choice, not an
    error: it only spends less privacy."""
    if rules.dp_mode == DP_OFF:
        return ""
    privacy = privacy_of(rules)
    epsilon = compute_epsilon(privacy, rules.dp_max_participations)
    if epsilon > privacy.max_epsilon * (1 + _EPSILON_SLACK):
        return (
            f"the genesis caps each client at {rules.dp_max_participations} participations, "
            f"which spend epsilon {epsilon:.4g} at delta {privacy.delta:g}: above its maximum "
            f"{privacy.max_epsilon:g}"
        )
    return ""
