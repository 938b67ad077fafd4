"""Benchmark: does contribution scoring scale with the clients of a round? (issue 17, item 2)

Runs the default federation (``fedchain simulate``'s defaults: ``screened`` aggregation,
``mc-shapley`` with ``contribution-budget`` 10, the ``cnn`` model) in process (the same
ServerApp and ClientApp code as ``fedchain simulate``, driven by
:class:`server.inprocess_grid.InProcessGrid`, so the clients train one after another in this
process) and splits each round's wall time into

* client training (``clients.client_app._train``, summed over the round's clients),
* contribution scoring (:class:`fedchain.rounds.validation.RoundScorer` calls), itself split into
  building coalition models (the batched path's matrix product ``validation._models``, or the
  per-coalition ``coalitions._coalition_model``) and evaluating them on the coordinator's
  validation split (``PassThreads.utilities``: the passes, over their threads; or the
  per-coalition ``RoundScorer._utility``),
* aggregation (the coordinator's ``_aggregate``, less the scoring it calls for ``screened``),
* the rest (ledger, hashing, files, central evaluation, messages).

``prepare_run`` (data split, keys, encrypted client files, genesis) is timed on its own.
Nothing in fedchain is changed: the timers wrap functions from outside. Torch uses one thread.

    python experiments/bench_scaling.py --cell 10:10 --cell 30:30 --cell 100:100 --rounds 2
    python experiments/bench_scaling.py --cell 300:30 --rounds 2

A cell is ``registered:per-round``. ``--budget`` sets ``contribution-budget`` (default: the
configuration's). Rows are appended to ``--csv`` as they finish (column ``budget``: the budget
measured; a csv written before that column existed needs a new file).
"""

from __future__ import annotations

import argparse
import csv
import functools
import logging
import os
import subprocess
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import fedchain  # noqa: F401  (first: Flower's telemetry off before flwr is imported)

# isort: split

from flwr.common.logger import FLOWER_LOGGER

import clients.client_app as client_app_module
import fedchain.rounds.coalitions as coalitions
import fedchain.rounds.coordinator as coordinator
import fedchain.rounds.validation as validation
from fedchain.config import RunConfig, merge_config
from fedchain.learning.training import configure_threads
from fedchain.runs.prepare import prepare_run
from server.federate import run_federation
from server.inprocess_grid import InProcessGrid

FLOWER_LOGGER.setLevel(logging.ERROR)

CODE = subprocess.run(
    ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
).stdout.strip()
"""The commit measured (the csv's ``code`` column)."""
TIMES: dict[str, float] = defaultdict(float)
COUNTS: dict[str, int] = defaultdict(int)


def _timed(name: str, function: Any) -> Any:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            TIMES[name] += time.perf_counter() - started
            COUNTS[name] += 1

    return wrapper


def _counting_models(function: Any) -> Any:
    """Count the models a matrix product builds, the updates they sum and the parameters."""

    @functools.wraps(function)
    def wrapper(block: Any, stacked: Any, base: Any) -> Any:
        COUNTS["coalition_models"] += int(block.shape[0])
        COUNTS["weighted_updates"] += int((block != 0).sum())
        COUNTS["params"] = int(base.numel())
        return function(block, stacked, base)

    return wrapper


def _counting_evaluations(function: Any) -> Any:
    @functools.wraps(function)
    def wrapper(self: Any, models: Any) -> Any:
        COUNTS["evaluations"] += len(models)
        return function(self, models)

    return wrapper


def install_timers() -> None:
    """Wrap the functions whose time is split out (module globals, looked up at call time)."""
    client_app_module._train = _timed("train", client_app_module._train)
    validation.RoundScorer.__call__ = _timed("score", validation.RoundScorer.__call__)  # type: ignore[method-assign]
    validation.PassThreads.utilities = _timed(  # type: ignore[method-assign]
        "evaluate", _counting_evaluations(validation.PassThreads.utilities)
    )
    validation._models = _timed("coalition", _counting_models(validation._models))
    # the per-coalition path (stacked updates beyond STACK_LIMIT_BYTES)
    validation.RoundScorer._utility = _timed("evaluate_one", validation.RoundScorer._utility)  # type: ignore[method-assign]
    coalitions._coalition_model = _timed("coalition_one", coalitions._coalition_model)
    coordinator.Coordinator._aggregate = _timed("aggregate", coordinator.Coordinator._aggregate)  # type: ignore[method-assign]


def run_cell(
    registered: int, per_round: int, rounds: int, dataset: str, budget: int
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fedchain-scaling-") as scratch:
        config = merge_config(
            RunConfig(),
            {
                "dataset": dataset,
                "contribution-budget": budget,
                "clients": registered,
                "clients-per-round": 0 if per_round == registered else per_round,
                "rounds": rounds,
                "run-id": "run",
                "out": scratch,
            },
        )
        started = time.perf_counter()
        setup = prepare_run(config)
        prepare_s = time.perf_counter() - started
        TIMES.clear()
        COUNTS.clear()
        previous: dict[str, Any] = {
            "t": time.perf_counter(),
            "times": dict(TIMES),
            "counts": dict(COUNTS),
        }

        def on_round(round_: int, outcome: Any, accuracy: float, seconds: float) -> None:
            now = time.perf_counter()
            delta = {k: TIMES[k] - previous["times"].get(k, 0.0) for k in TIMES}
            counts = {k: COUNTS[k] - previous["counts"].get(k, 0) for k in COUNTS}
            wall = now - previous["t"]
            row = {
                "dataset": dataset,
                "registered": registered,
                "per_round": per_round,
                "round": round_,
                "wall_s": round(wall, 3),
                "train_s": round(delta.get("train", 0.0), 3),
                "score_s": round(delta.get("score", 0.0), 3),
                "evaluations": counts.get("evaluations", 0) + counts.get("evaluate_one", 0),
                "evaluate_s": round(delta.get("evaluate", 0.0) + delta.get("evaluate_one", 0.0), 3),
                "coalition_s": round(
                    delta.get("coalition", 0.0) + delta.get("coalition_one", 0.0), 3
                ),
                # the screened rule scores inside _aggregate: aggregation alone is the rest
                "weighted_per_coalition": round(
                    counts.get("weighted_updates", 0) / max(counts.get("coalition_models", 0), 1), 1
                ),
                "params": COUNTS.get("params", 0),
                "aggregate_s": round(delta.get("aggregate", 0.0) - delta.get("score", 0.0), 3),
                "accuracy": round(accuracy, 4),
                "prepare_s": round(prepare_s, 2),
            }
            row["rest_s"] = round(wall - row["train_s"] - row["score_s"] - row["aggregate_s"], 3)
            row["code"] = CODE
            row["budget"] = config.contribution_budget
            rows.append(row)
            print(row, flush=True)
            previous.update(t=now, times=dict(TIMES), counts=dict(COUNTS))

        previous["t"] = time.perf_counter()
        run_federation(
            InProcessGrid(client_app_module.app, config.clients), config, setup.run_dir, on_round
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cell", action="append", required=True, help="registered:per-round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--csv", type=Path, default=Path("experiments/results/scaling.csv"))
    parser.add_argument(
        "--budget",
        type=int,
        default=RunConfig.contribution_budget,
        help="contribution-budget (coalition evaluations per scored client); "
        f"default {RunConfig.contribution_budget}, fedchain simulate's",
    )
    args = parser.parse_args()
    configure_threads(1)
    install_timers()
    for cell in args.cell:
        registered, per_round = (int(x) for x in cell.split(":"))
        rows = run_cell(registered, per_round, args.rounds, args.dataset, args.budget)
        new = not args.csv.exists()
        with args.csv.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            if new:
                writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
