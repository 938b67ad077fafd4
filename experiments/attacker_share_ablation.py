"""Which change moved the attackers' reward share: the scores or the payout rule.

One cell of the robustness grid (``screened``, IID, 30 % sign flippers, seeds 0-9, digits,
``mlp``, 10 clients, 10 rounds, in process), run with ``mc-shapley`` or GTG-Shapley scores,
with ``payout-min-score`` 0.01 (the default) or 0, and with ``score-debt-decay`` 0, 0.1, 0.3
(the default), 0.5, 0.7 or 1 (1: only harm is kept, the part of a score below -0.01); prints
the attackers' share of the rewards paid per seed and its mean over seeds 0-2 and 0-9.
``--budget`` sets ``contribution-budget`` (default: the configuration's); ``--only`` runs the
variants whose name contains it.

    python experiments/attacker_share_ablation.py
    python experiments/attacker_share_ablation.py --budget 2 --only mc-shapley
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import robustness  # this folder's grid runner

from fedchain.config import RunConfig

VARIANTS = {
    "mc-shapley, payout-min-score 0.01, score-debt-decay 0": {
        "contribution": "mc-shapley",
        "score-debt-decay": 0.0,
    },
    "mc-shapley, payout-min-score 0.01, score-debt-decay 1 (harm only)": {
        "contribution": "mc-shapley",
        "score-debt-decay": 1.0,
    },
    "mc-shapley, payout-min-score 0.01, score-debt-decay 0.1": {
        "contribution": "mc-shapley",
        "score-debt-decay": 0.1,
    },
    "mc-shapley, payout-min-score 0.01, score-debt-decay 0.3 (default)": {
        "contribution": "mc-shapley",
        "score-debt-decay": 0.3,
    },
    "mc-shapley, payout-min-score 0.01, score-debt-decay 0.5": {
        "contribution": "mc-shapley",
        "score-debt-decay": 0.5,
    },
    "mc-shapley, payout-min-score 0.01, score-debt-decay 0.7": {
        "contribution": "mc-shapley",
        "score-debt-decay": 0.7,
    },
    "mc-shapley, payout-min-score 0, score-debt-decay 0": {
        "contribution": "mc-shapley",
        "payout-min-score": 0.0,
        "score-debt-decay": 0.0,
    },
    "gtg-shapley, payout-min-score 0.01, score-debt-decay 0": {
        "contribution": "gtg-shapley",
        "score-debt-decay": 0.0,
    },
    "gtg-shapley, payout-min-score 0.01, score-debt-decay 1 (harm only)": {
        "contribution": "gtg-shapley",
        "score-debt-decay": 1.0,
    },
}
SEEDS = range(10)
BASE = {"dataset": "digits", "model": "mlp", "clients": 10, "rounds": 10}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--budget",
        type=int,
        default=RunConfig.contribution_budget,
        help=f"contribution-budget (default {RunConfig.contribution_budget})",
    )
    parser.add_argument("--only", default="", help="run the variants whose name contains this")
    args = parser.parse_args()
    robustness._init_worker()
    print(f"contribution-budget {args.budget}", flush=True)
    for name, extra in VARIANTS.items():
        if args.only not in name:
            continue
        extra = {**extra, "contribution-budget": args.budget}
        shares = []
        for seed in SEEDS:
            cell = robustness.Cell(
                "screened", "iid", (("partitioner", "iid"),), seed, "sign-flip", 0.3
            )
            shares.append(float(robustness.run_cell(cell, {**BASE, **extra})["reward_share"]))
        listed = ", ".join(f"{x:.2%}" for x in shares)
        first = sum(shares[:3]) / 3
        print(
            f"{name}: {listed} (mean seeds 0-2 {first:.2%}, 0-9 {sum(shares) / len(shares):.2%})",
            flush=True,
        )


if __name__ == "__main__":
    main()
