"""The report's privacy: each client's participations and the epsilon they spent, round by round.

With differential privacy in the genesis rules, a participation is an accepted
:class:`~fedchain.ledger.objects.UpdateCommitment` (the ledger counts them the same way,
``dp_participations``), and its epsilon is :func:`fedchain.privacy.accountant.compute_epsilon`
of the count: reported, never used by the ledger (docs/ledger-spec.md §9.6). Imports Opacus.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from fedchain.ledger.objects import Genesis, PublicKey, UpdateCommitment
from fedchain.ledger.verify import ReplayStep
from fedchain.privacy.accountant import compute_epsilon, privacy_of

__all__ = ["compute_privacy"]


def compute_privacy(
    steps: Sequence[ReplayStep], genesis: Genesis, timeline: Sequence[int]
) -> dict[str, Any]:
    """``{"mode", "noise_multiplier", "clip_norm", "sample_rate", "steps_per_round", "delta",
    "max_epsilon", "max_participations", "clients": {public key hex: {"dp_participations",
    "epsilon", "epsilon_by_round"}}}``; ``epsilon_by_round`` is aligned with ``timeline``
    (each value after the round's last block)."""
    privacy = privacy_of(genesis.rules)
    by_round: dict[PublicKey, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for step in steps[1:]:
        for tx in step.block.transactions:
            if isinstance(tx, UpdateCommitment):
                by_round[tx.public_key][step.block.header.round] += 1
    keys = sorted({p.public_key for p in genesis.participants} | set(by_round))
    epsilon_of: dict[int, float] = {}

    def epsilon(count: int) -> float:
        if count not in epsilon_of:
            epsilon_of[count] = compute_epsilon(privacy, count)
        return epsilon_of[count]

    clients = {}
    for key in keys:
        counts = by_round[key]
        series, total = [], 0
        for round_ in timeline:
            total += counts.get(round_, 0)
            series.append(epsilon(total))
        clients[key.hex()] = {
            "dp_participations": total,
            "epsilon": epsilon(total),
            "epsilon_by_round": series,
        }
    return {
        "mode": privacy.mode,
        "noise_multiplier": privacy.noise_multiplier,
        "clip_norm": privacy.clip_norm,
        "sample_rate": privacy.sample_rate,
        "steps_per_round": privacy.steps_per_round,
        "delta": privacy.delta,
        "max_epsilon": privacy.max_epsilon,
        "max_participations": genesis.rules.dp_max_participations,
        "clients": clients,
    }
