"""Experiment: what example-level differential privacy costs the default federation.

Issue 15, deliverable 3 (part): the default federation (``fedchain simulate``'s defaults: digits,
10 IID clients, 20 rounds, the CNN, rule ``screened``, GTG-Shapley scores; and the same with
plain FedAvg) with DP-SGD at epsilon 1, 3, 8 and infinity (DP off), each clean and with 30 %
sign-flip attackers. A run the federation itself stops (an error) is recorded as aborted. For each
epsilon the noise multiplier is the smallest whose 20 rounds (20 DP-SGD steps a round at
sampling rate 0.1, delta 1e-5) stay within it, by Opacus's RDP accountant; the genesis' cap is
then exactly 20 participations. Every run is a real federation on the in-process grid (as
``experiments/robustness.py``), verified before its numbers are read; it records the final test
accuracy and the attackers' share of the rewards.

    python experiments/dp_tradeoff.py [--out experiments/results] [--seeds 0] [--rounds 20]

Writes ``dp_tradeoff_runs.csv`` (rows as they finish; a rerun skips rows already there) and
``dp_tradeoff.md``. Runs one federation at a time (DP-SGD is CPU-bound).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.robustness import Cell, _init_worker, run_cell
from fedchain.ledger.builder import make_rules
from fedchain.privacy.accountant import compute_dp_rules, compute_epsilon, privacy_of

EPSILONS = (1.0, 3.0, 8.0, math.inf)
SAMPLE_RATE, DELTA, LOCAL_EPOCHS = 0.1, 1e-5, 2
STEPS = round(LOCAL_EPOCHS / SAMPLE_RATE)
ATTACK, FRACTION = "sign-flip", 0.3
RULES = ("screened", "fedavg")  # the default rule, and plain FedAvg by examples for reference
FIELDS = [
    "rule",
    "epsilon",
    "noise",
    "spent",
    "seed",
    "attack",
    "accuracy",
    "reward_share",
    "curve",
    "aborted",
]


def spent(noise: float, rounds: int) -> float:
    rules = make_rules(
        dp=compute_dp_rules(
            "example", noise_multiplier=noise, clip_norm=1.0, delta=DELTA, max_epsilon=1e9,
            sample_rate=SAMPLE_RATE, steps_per_round=STEPS,
        )
    )  # fmt: skip
    return compute_epsilon(privacy_of(rules), rounds)


def noise_for(epsilon: float, rounds: int) -> float:
    """The smallest noise multiplier (to 1e-3) whose ``rounds`` participations spend at most
    ``epsilon``."""
    low, high = 0.3, 50.0
    while high - low > 1e-3:
        middle = (low + high) / 2
        low, high = (middle, high) if spent(middle, rounds) > epsilon else (low, middle)
    return round(high + 5e-4, 3)


def dp_settings(epsilon: float, rounds: int) -> tuple[dict[str, Any], float, float]:
    if math.isinf(epsilon):
        return {}, 0.0, math.inf
    noise = noise_for(epsilon, rounds)
    used = spent(noise, rounds)
    settings = {
        "dp": "example",
        "dp-noise": noise,
        "dp-clip": 1.0,
        "dp-sample-rate": SAMPLE_RATE,
        "dp-delta": DELTA,
        "dp-max-epsilon": epsilon,
    }
    return settings, noise, used


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    csv_path = args.out / "dp_tradeoff_runs.csv"
    done = set()
    if csv_path.exists():
        with csv_path.open() as f:
            done = {(r["rule"], r["epsilon"], r["seed"], r["attack"]) for r in csv.DictReader(f)}
    _init_worker()
    base = {"rounds": args.rounds, "local-epochs": LOCAL_EPOCHS}
    for epsilon in EPSILONS:
        settings, noise, used = dp_settings(epsilon, args.rounds)
        for rule in RULES:
            for seed in args.seeds:
                for attack, fraction in (("none", 0.0), (ATTACK, FRACTION)):
                    if (rule, f"{epsilon:g}", str(seed), attack) in done:
                        continue
                    cell = Cell(rule, "iid", (("partitioner", "iid"),), seed, attack, fraction)
                    out = {
                        "rule": rule,
                        "epsilon": f"{epsilon:g}",
                        "noise": f"{noise:g}",
                        "spent": f"{used:.3f}",
                        "seed": seed,
                        "attack": attack,
                    }
                    try:
                        row = run_cell(cell, {**base, **settings})
                        out.update(
                            accuracy=row["accuracy"],
                            reward_share=row.get("reward_share", ""),
                            curve=row["curve"],
                        )
                    except Exception as e:  # a run the federation itself stops: a finding
                        out.update(accuracy="", reward_share="", curve="", aborted=str(e)[:200])
                    _append(csv_path, out)
                    print(rule, out["epsilon"], attack, out.get("accuracy"), flush=True)
    write_markdown(csv_path, args.out / "dp_tradeoff.md")


def _append(csv_path: Path, row: dict[str, Any]) -> None:
    new = not csv_path.exists()
    with csv_path.open("a", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def write_markdown(csv_path: Path, md_path: Path) -> None:
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    lines = [
        "# Example-level DP on the default federation (experiments/dp_tradeoff.py)",
        "",
        f"digits, 10 IID clients, CNN, GTG-Shapley scores; DP-SGD at sampling rate "
        f"{SAMPLE_RATE:g}, {STEPS} steps a round, clip 1, delta {DELTA:g}; attack: "
        f"{FRACTION:.0%} {ATTACK}.",
        "",
        "| rule | epsilon | noise multiplier | epsilon spent | seed | attack | final accuracy | "
        "attackers' reward share |",
        "|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        share = f"{float(r['reward_share']):.1%}" if r["reward_share"] else "-"
        accuracy = (
            f"{float(r['accuracy']):.1%}" if r["accuracy"] else f"aborted: {r['aborted'][:90]}"
        )
        lines.append(
            f"| {r['rule']} | {r['epsilon']} | {r['noise']} | {r['spent']} | {r['seed']} | "
            f"{r['attack']} | {accuracy} | {share} |"
        )
    md_path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
