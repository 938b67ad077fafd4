"""Which change moved the attackers' reward share: the scores or the payout rule.

One cell of the robustness grid (``screened``, IID, 30 % sign flippers, seeds 0-2, digits,
``mlp``, 10 clients, 10 rounds, in process), run with ``mc-shapley`` or GTG-Shapley scores and
with ``payout-min-score`` 0.01 (the default) or 0; prints the attackers' share of the rewards
paid per seed and its mean.

    python experiments/attacker_share_ablation.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import robustness  # this folder's grid runner

VARIANTS = {
    "mc-shapley, payout-min-score 0.01 (default)": {"contribution": "mc-shapley"},
    "mc-shapley, payout-min-score 0": {"contribution": "mc-shapley", "payout-min-score": 0.0},
    "gtg-shapley, payout-min-score 0.01": {"contribution": "gtg-shapley"},
    "gtg-shapley, payout-min-score 0": {"contribution": "gtg-shapley", "payout-min-score": 0.0},
}
BASE = {"dataset": "digits", "model": "mlp", "clients": 10, "rounds": 10}


def main() -> None:
    robustness._init_worker()
    for name, extra in VARIANTS.items():
        shares = []
        for seed in (0, 1, 2):
            cell = robustness.Cell(
                "screened", "iid", (("partitioner", "iid"),), seed, "sign-flip", 0.3
            )
            shares.append(float(robustness.run_cell(cell, {**BASE, **extra})["reward_share"]))
        listed = ", ".join(f"{x:.2%}" for x in shares)
        print(f"{name}: {listed} (mean {sum(shares) / len(shares):.2%})", flush=True)


if __name__ == "__main__":
    main()
