"""Plot the DP trade-off tables: final accuracy against epsilon, per rule, clean and under attack.

Reads the runs that ``experiments/dp_tradeoff.py`` wrote (``*_runs.csv``: one row per run) and
draws one panel per data set: the mean final accuracy over the seeds against epsilon (``inf``: no
DP, drawn at the right), with the seeds' min-max as error bars.

    python experiments/plot_dp_tradeoff.py [--out experiments/results/dp_tradeoff.png] CSV...
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

RESULTS = Path("experiments/results")
DEFAULT_CSVS = [RESULTS / "dp_tradeoff_runs.csv", RESULTS / "dp_tradeoff_fashion-mnist_runs.csv"]


def read_runs(paths: list[Path]) -> dict[str, dict[tuple[str, str], dict[float, list[float]]]]:
    """``{dataset: {(rule, attack): {epsilon: [accuracy per seed]}}}``."""
    runs: dict[str, dict[tuple[str, str], dict[float, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for path in paths:
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                if row.get("aborted"):
                    continue
                key = (row["rule"], row["attack"])
                runs[row["dataset"]][key][float(row["epsilon"])].append(float(row["accuracy"]))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csvs", nargs="*", type=Path, default=DEFAULT_CSVS)
    parser.add_argument("--out", type=Path, default=RESULTS / "dp_tradeoff.png")
    args = parser.parse_args()
    runs = read_runs(args.csvs)
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4), squeeze=False)
    for ax, (dataset, lines) in zip(axes[0], sorted(runs.items()), strict=True):
        epsilons = sorted({e for line in lines.values() for e in line})
        finite = [e for e in epsilons if math.isfinite(e)]
        where = {e: float(i) for i, e in enumerate(finite)} | {math.inf: float(len(finite))}
        for (rule, attack), by_epsilon in sorted(lines.items()):
            xs = [e for e in epsilons if e in by_epsilon]
            means = [100 * statistics.fmean(by_epsilon[e]) for e in xs]
            low = [m - 100 * min(by_epsilon[e]) for m, e in zip(means, xs, strict=True)]
            high = [100 * max(by_epsilon[e]) - m for m, e in zip(means, xs, strict=True)]
            label = f"{rule}, {'clean' if attack == 'none' else '30 % ' + attack}"
            style = "-" if attack == "none" else "--"
            ax.errorbar(
                [where[e] for e in xs],
                means,
                yerr=[low, high],
                fmt=style + "o",
                capsize=3,
                label=label,
            )
        seeds = max(len(v) for line in lines.values() for v in line.values())
        ax.set_xticks(list(where.values()), [f"{e:g}" if math.isfinite(e) else "∞" for e in where])
        ax.set_xlabel("epsilon per client (δ = 1e-5)")
        ax.set_ylabel("final test accuracy (%)")
        ax.set_title(f"{dataset} ({seeds} seed{'s' if seeds > 1 else ''}, min-max bars)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
