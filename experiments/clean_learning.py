"""Experiment: does the default ``screened`` rule learn as well as FedAvg on clean data?

Issue 19: on clean data (no attacker) ``screened`` must match or beat FedAvg at every round
count (20 and 50 rounds, IID and Dirichlet 0.5), and never freeze the model for lack of
evidence while honest updates still lower the validation loss.

Every run is a real federation with the ledger on, run exactly as a cell of
``experiments/robustness.py`` (its ``run_cell``: the real ServerApp and ClientApp code, messages
delivered in process), with the settings of ``experiments/configs/robustness.toml``'s ``[run]``
and ``rounds`` set to 20 or 50. Both rules are fedchain's (the ledger on, scored by the same
contribution method); ``fedavg`` weighs by examples. Per run it records the accuracy after every
round (the global model on the test split) and, for ``screened``, the rounds in which the model
did not move.

    python experiments/clean_learning.py [--seeds 0 1 2] [--rounds 20 50]
        [--out experiments/results] [--only-report]

Rows go to ``--out/clean_learning.json`` as runs finish (an interrupted run resumes: runs already
there are not run again); ``clean_learning.md`` is written from it. Runs one at a time.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.robustness import DEFAULT_CONFIG, Cell, _init_worker, load_grid

RULES = ("screened", "fedavg")
PARTITIONS = (
    ("iid", (("partitioner", "iid"),)),
    ("dirichlet-0.5", (("alpha", 0.5), ("partitioner", "dirichlet"))),
)


def run_one(rule: str, partition: str, settings: tuple[tuple[str, Any], ...], seed: int,
            rounds: int, base: Mapping[str, Any]) -> dict[str, Any]:  # fmt: skip
    """One clean federation; its accuracy per round and the rounds the model did not move."""
    from clients.client_app import app as client_app  # imports torch
    from fedchain.config import RunConfig, merge_config
    from fedchain.runs.prepare import prepare_run
    from server.federate import run_federation
    from server.inprocess_grid import InProcessGrid

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedchain-clean-") as scratch:
        config = merge_config(
            RunConfig(),
            {**base, **dict(settings), "seed": seed, "aggregation": rule, "rounds": rounds,
             "ledger": True, "run-id": "run", "out": scratch},
        )  # fmt: skip
        setup = prepare_run(config)
        curve: list[float] = []
        frozen: list[int] = []

        def on_round(r: int, outcome: Any, accuracy: float, seconds: float) -> None:
            curve.append(accuracy)
            explained = None if outcome is None else outcome.aggregation
            if explained is not None and not explained.moved:
                frozen.append(r)

        run_federation(InProcessGrid(client_app, config.clients), config, setup.run_dir, on_round)
    return {
        "rule": rule,
        "partition": partition,
        "seed": seed,
        "rounds": rounds,
        "curve": [round(a, 4) for a in curve],
        "frozen": frozen,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _key(row: Mapping[str, Any]) -> tuple[str, str, int, int]:
    return (row["rule"], row["partition"], int(row["seed"]), int(row["rounds"]))


def report(rows: Sequence[Mapping[str, Any]], base: Mapping[str, Any], command: str) -> str:
    """The Markdown summary: final accuracy per rule, and per round where screened trails."""
    by: dict[tuple[str, str, int], list[Mapping[str, Any]]] = {}
    for row in rows:
        by.setdefault((row["rule"], row["partition"], int(row["rounds"])), []).append(row)
    settings = ", ".join(f"{k} = {v}" for k, v in base.items())
    seeds = sorted({int(r["seed"]) for r in rows})
    lines = [
        "# Clean learning: screened vs FedAvg, no attacker",
        "",
        f"Produced by `{command}` on {platform.machine()}; settings: {settings}; seeds "
        f"{', '.join(map(str, seeds))}. Both rules run with the ledger on and the same "
        "contribution scores; accuracy is the global model's on the test split after each round "
        "(360 images: one image is 0.28 points). A frozen round is one in which the rule left "
        "the model unchanged because every step it measured raised the validation loss (by more "
        "than the rule's step tolerance, fedchain.aggregation.screened.STEP_TOLERANCE, or by more "
        "than 2 standard errors of its per-example differences: the paired step test, "
        "STEP_STANDARD_ERRORS).",
        "",
        "| partition | rounds | FedAvg final | screened final | screened - FedAvg, final "
        "(points) | per seed | screened - FedAvg, mean over every round (points) "
        "| seed-rounds ahead / behind / level | rounds where screened's mean trails by > 0.5 "
        "points | screened rounds frozen |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for partition, _ in PARTITIONS:
        for rounds in sorted({int(r["rounds"]) for r in rows}):
            fed = by.get(("fedavg", partition, rounds), [])
            scr = by.get(("screened", partition, rounds), [])
            if not fed or not scr:
                continue
            fed_curve = _mean_curve(fed)
            scr_curve = _mean_curve(scr)
            pairs = enumerate(zip(scr_curve, fed_curve, strict=True), start=1)
            trails = [r for r, (a, b) in pairs if b - a > 0.005]
            frozen = sum(len(r["frozen"]) for r in scr)
            paired = {int(r["seed"]): r["curve"] for r in fed}
            diffs = [
                a - b
                for r in scr
                for a, b in zip(r["curve"], paired[int(r["seed"])], strict=True)
            ]  # fmt: skip
            per_seed = ", ".join(
                f"{100 * (r['curve'][-1] - paired[int(r['seed'])][-1]):+.2f}"
                for r in sorted(scr, key=lambda r: int(r["seed"]))
            )
            ahead, behind = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
            lines.append(
                f"| {partition} | {rounds} | {_mean_sd(fed)} | {_mean_sd(scr)} "
                f"| {100 * (scr_curve[-1] - fed_curve[-1]):+.2f} | {per_seed} "
                f"| {100 * statistics.fmean(diffs):+.2f} "
                f"| {ahead} / {behind} / {len(diffs) - ahead - behind} "
                f"| {', '.join(map(str, trails)) or 'none'} "
                f"| {frozen} of {len(scr) * rounds} |"
            )
    lines += ["", "Mean accuracy per round (%), the longest runs:", ""]
    longest = max(int(r["rounds"]) for r in rows)
    for partition, _ in PARTITIONS:
        fed = by.get(("fedavg", partition, longest), [])
        scr = by.get(("screened", partition, longest), [])
        if not fed or not scr:
            continue
        lines += [f"**{partition}**", "", "| round | FedAvg | screened |", "|---|---|---|"]
        for i, (a, b) in enumerate(zip(_mean_curve(fed), _mean_curve(scr), strict=True)):
            lines.append(f"| {i + 1} | {100 * a:.2f} | {100 * b:.2f} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def _mean_curve(rows: Sequence[Mapping[str, Any]]) -> list[float]:
    return [statistics.fmean(values) for values in zip(*(r["curve"] for r in rows), strict=True)]


def _mean_sd(rows: Sequence[Mapping[str, Any]]) -> str:
    finals = [100 * r["curve"][-1] for r in rows]
    sd = statistics.stdev(finals) if len(finals) > 1 else 0.0
    return f"{statistics.fmean(finals):.2f} ± {sd:.2f} %"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--only-report", action="store_true")
    args = parser.parse_args(argv)
    _, base = load_grid(args.config)
    base = {k: v for k, v in base.items() if k != "rounds"}
    path = args.out / "clean_learning.json"
    rows: list[dict[str, Any]] = json.loads(path.read_text())["runs"] if path.exists() else []
    command = "python experiments/clean_learning.py " + shlex.join(
        ["--seeds", *map(str, args.seeds), "--rounds", *map(str, args.rounds)]
    )
    if not args.only_report:
        _init_worker()
        done = {_key(r) for r in rows}
        for rounds in args.rounds:
            for seed in args.seeds:
                for partition, settings in PARTITIONS:
                    for rule in RULES:
                        cell = Cell(rule, partition, settings, seed, "none", 0.0)
                        if (rule, partition, seed, rounds) in done:
                            continue
                        row = run_one(rule, partition, cell.settings, seed, rounds, base)
                        rows.append(row)
                        print(f"{rule:>9} {partition:>13} seed {seed} {rounds} rounds: "
                              f"{row['curve'][-1]:.2%}, frozen {row['frozen']}, "
                              f"{row['seconds']} s", flush=True)  # fmt: skip
                        args.out.mkdir(parents=True, exist_ok=True)
                        doc = {"command": command, "settings": base, "runs": rows}
                        path.write_text(json.dumps(doc, indent=1) + "\n")
    (args.out / "clean_learning.md").write_text(report(rows, base, command))


if __name__ == "__main__":
    main()
