"""Attacking clients for robustness experiments: who attacks, and what each attack sends.

Every attack is a transformation of what an honest client would send in one round. With ``Δ`` the
honest update (trained weights minus the global model) and ``s`` the attack's scale
(``RunConfig.attack_scale``; 0 picks the default in brackets):

=================  =========================================================================
attack             what the client sends
=================  =========================================================================
sign-flip          ``-s·Δ`` [s = 1]
scaled             ``s·Δ`` [s = 10]: a boosting attacker
gaussian           noise ``N(0, s²)`` per coordinate instead of ``Δ`` [s = 1.0]; no training
label-flip         the honest ``Δ`` of training on labels ``y → C-1-y`` (``C`` classes)
free-rider         a zero update (the global model back); no training, its real example count
free-rider-noise   noise ``N(0, s²)`` per coordinate [s = 1e-3]: the global model plus noise
inflated           the honest ``Δ``, claiming ``s`` times [s = 10] its examples everywhere, the
                   signed commitment included (the ledger's registered count refuses it)
commit-mismatch    signs a commitment for the honest ``Δ`` but sends ``-s·Δ`` [s = 4]: the
                   coordinator rejects it (the mismatch is its observation alone: no penalty)
=================  =========================================================================

With the ledger off a client sends weights, not updates: the global model plus the attacked
update (the ``commit-mismatch`` client then is just a poisoned update, as nothing is signed).

Noise is drawn from a generator seeded with (run seed, round, client index), so a run is
reproducible. Which clients attack is :func:`select_attackers` of (clients, count, seed): the
first ``count`` of a seeded permutation, so with one seed the attackers of a smaller fraction are
among those of every larger one.

Pure functions over numpy arrays and plain numbers: no Flower, no disk, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

import numpy as np

from fedchain.config import RunConfig
from fedchain.data.sources import ArrayDataset
from fedchain.errors import ConfigError

__all__ = [
    "ATTACKS",
    "DEFAULT_SCALES",
    "NO_ATTACK",
    "Attack",
    "AttackedReply",
    "attacker_indices",
    "compute_attacked_reply",
    "compute_attacked_update",
    "compute_claimed_examples",
    "compute_flipped_labels",
    "compute_sent_weights",
    "compute_zero_update",
    "flip_labels",
    "parse_attackers",
    "select_attackers",
]

Arrays = dict[str, np.ndarray]

NO_ATTACK = "none"
DEFAULT_SCALES: dict[str, float] = {
    "sign-flip": 1.0,
    "scaled": 10.0,
    "gaussian": 1.0,
    "label-flip": 1.0,  # unused
    "free-rider": 1.0,  # unused
    "free-rider-noise": 1e-3,
    "inflated": 10.0,
    "commit-mismatch": 4.0,
}
ATTACKS: tuple[str, ...] = tuple(DEFAULT_SCALES)
_UNTRAINED = frozenset({"gaussian", "free-rider", "free-rider-noise"})
_SELECTION_TAG = 0xA77A_C4E5  # separates the attacker draw from other uses of the run seed
_NOISE_TAG = 0x0015_E000


@dataclass(frozen=True)
class Attack:
    """One client's attack: a name from :data:`ATTACKS` and its scale (0: the default)."""

    name: str
    scale: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in DEFAULT_SCALES:
            raise ConfigError(f"unknown attack {self.name!r}; choose one of {', '.join(ATTACKS)}")
        if not (math.isfinite(self.scale) and self.scale >= 0):
            raise ConfigError(f"attack-scale must be a finite number >= 0, got {self.scale}")
        if self.scale == 0:
            object.__setattr__(self, "scale", DEFAULT_SCALES[self.name])

    @property
    def trains(self) -> bool:
        """Whether the attacker trains at all (noise and free riders do not)."""
        return self.name not in _UNTRAINED

    @property
    def flips_labels(self) -> bool:
        return self.name == "label-flip"

    @property
    def commits_honest_update(self) -> bool:
        """Whether the signed commitment is for the honest update rather than the one sent."""
        return self.name == "commit-mismatch"


def compute_attacked_update(
    attack: Attack, update: Mapping[str, np.ndarray], *, seed: int, round: int, client: int
) -> Arrays:
    """What ``attack`` sends instead of the honest ``update`` (same names, shapes and dtypes).

    ``update`` is the honest Δ (zeros for attacks that do not train). Only floating-point tensors
    are changed; any other dtype is passed through. ``seed``, ``round`` and ``client`` seed the
    noise of ``gaussian`` and ``free-rider-noise``.
    """
    name, s = attack.name, attack.scale
    rng = np.random.default_rng([seed, round, client, _NOISE_TAG])
    out: Arrays = {}
    for key, delta in update.items():
        if not np.issubdtype(delta.dtype, np.floating):
            out[key] = delta
        elif name in ("sign-flip", "commit-mismatch"):
            out[key] = np.multiply(delta, -s, dtype=delta.dtype)
        elif name == "scaled":
            out[key] = np.multiply(delta, s, dtype=delta.dtype)
        elif name in ("gaussian", "free-rider-noise"):
            out[key] = rng.normal(0.0, s, size=delta.shape).astype(delta.dtype)
        elif name == "free-rider":
            out[key] = np.zeros_like(delta)
        else:  # label-flip, inflated: the honest update
            out[key] = delta
    return out


def compute_claimed_examples(attack: Attack, num_examples: int) -> int:
    """The example count the attacker reports and signs: ``scale`` times the real if inflated."""
    if attack.name == "inflated":
        return max(1, round(num_examples * attack.scale))
    return num_examples


@dataclass(frozen=True)
class AttackedReply:
    """What an attacker replies in place of its honest update."""

    sent: Arrays  # the update it sends
    committed: Arrays  # the update its signed commitment is for (the honest one if mismatching)
    num_examples: int  # the example count it claims and signs


def compute_attacked_reply(
    attack: Attack,
    honest: Mapping[str, np.ndarray],
    num_examples: int,
    *,
    seed: int,
    round: int,
    client: int,
) -> AttackedReply:
    """``attack`` applied to one round's ``honest`` update over its real ``num_examples``
    (an attacker that does not train passes a zero update and its data's size)."""
    sent = compute_attacked_update(attack, honest, seed=seed, round=round, client=client)
    committed = dict(honest) if attack.commits_honest_update else sent
    return AttackedReply(sent, committed, compute_claimed_examples(attack, num_examples))


def compute_zero_update(base: Mapping[str, np.ndarray]) -> Arrays:
    """The update of a client that does not train: zeros shaped like the global model."""
    return {k: np.zeros_like(a) for k, a in base.items()}


def compute_sent_weights(
    base: Mapping[str, np.ndarray], update: Mapping[str, np.ndarray]
) -> Arrays:
    """What a ledger-off (FedAvg) client sends: the global model plus its update."""
    return {k: (base[k] + d).astype(base[k].dtype, copy=False) for k, d in update.items()}


def compute_flipped_labels(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Labels ``y → C-1-y``: every class becomes its mirror (``C`` = ``num_classes``)."""
    return (num_classes - 1 - np.asarray(y, dtype=np.int64)).astype(np.int64)


def flip_labels(data: ArrayDataset) -> ArrayDataset:
    """``data`` with its labels mirrored (:func:`compute_flipped_labels`); features shared."""
    flipped = compute_flipped_labels(data.y, len(data.classes))
    return ArrayDataset(data.name, data.x, flipped, data.classes, data.value_max)


def parse_attackers(text: str | int | float, clients: int) -> int:
    """How many of ``clients`` attack: a count (``3``), a percentage (``30%``) or a fraction
    (``0.3``; a number with a decimal point). Fractions round to the nearest count, halves up.

    Raises :class:`ConfigError` for anything else, negative numbers, or more than ``clients``.
    """
    raw = str(text).strip()
    hint = "give a count (3), a percentage (30%) or a fraction (0.3)"
    try:
        if raw.endswith("%"):
            count = _count_of(Decimal(raw[:-1].strip()) / 100, clients, raw)
        elif "." in raw or "e" in raw.lower():
            count = _count_of(Decimal(raw), clients, raw)
        else:
            count = int(raw)
    except (InvalidOperation, ValueError):
        raise ConfigError(f"--attackers {raw!r} is not a number; {hint}") from None
    if not 0 <= count <= clients:
        raise ConfigError(f"--attackers {raw!r}: need 0..{clients} (there are {clients} clients)")
    return count


def _count_of(fraction: Decimal, clients: int, raw: str) -> int:
    if not fraction.is_finite() or not 0 <= fraction <= 1:
        raise ConfigError(f"--attackers {raw!r}: a fraction must lie in 0..1 (0%..100%)")
    return int((fraction * clients).to_integral_value(rounding=ROUND_HALF_UP))


def select_attackers(clients: int, count: int, seed: int) -> list[int]:
    """The client indices (sorted) that attack: the first ``count`` of a permutation of
    ``range(clients)`` drawn from ``seed``. Nested: a smaller count picks a subset."""
    if not 0 <= count <= clients:
        raise ConfigError(f"attackers must be 0..{clients}, got {count}")
    order = np.random.default_rng([seed, _SELECTION_TAG]).permutation(clients)
    return sorted(int(i) for i in order[:count])


def attacker_indices(config: RunConfig) -> list[int]:
    """The client indices that attack in the run ``config`` describes (empty without attack)."""
    if config.attack == NO_ATTACK:
        return []
    return select_attackers(config.clients, config.attackers, config.seed)
