"""Benchmark: the cost of the ledger in a simulated federation (DESIGN.md §6: ≤ 5 % wall time).

The same federation (data split, seeds, model, rounds) runs with the ledger on (hashing,
signing, commitments checked, blocks sealed and stored, models registered) and off (plain
Flower FedAvg: the same clients, the same training, nothing signed or recorded), alternated,
``--repeats`` times each. Two drivers:

* ``ray``: Flower's simulation engine end to end, as ``fedchain simulate`` runs it (start-up
  included, so the ratio is what a user sees);
* ``inprocess``: the same ServerApp and ClientApp code driven by an in-process Grid, which
  removes Ray's start-up and polling noise and isolates the work the ledger adds.

Then one ledger-on in-process run is profiled to show where the remaining cost goes.

    python experiments/bench_simulation.py [--driver both] [--repeats 3] [--rounds 20]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import os
import pstats
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import fedchain  # noqa: F401  (first: Flower's telemetry off before flwr is imported)

# isort: split

from flwr.common.logger import FLOWER_LOGGER

from clients.client_app import app as client_app
from fedchain.config import RunConfig
from fedchain.runs.prepare import prepare_run
from server.federate import run_federation
from server.inprocess_grid import InProcessGrid

FLOWER_LOGGER.setLevel(logging.ERROR)

# The ledger's entry points: cumulative time of each (children included) over the whole run.
ENTRY_POINTS = {
    "server: admit replies, aggregate, prepare block": ("coordinator.py", "run_round"),
    "server: seal + append block (SQLite, fsync)": ("coordinator.py", "_try_seal"),
    "server: save model file (safetensors, fsync)": ("registry.py", "save_model"),
    "server: archive the round's updates (one pack, fsync)": ("archive.py", "save_round_updates"),
    "server: decode replies (Flower arrays)": ("strategy.py", "parse_reply"),
    "server: ledger view in each message": ("coordinator.py", "ledger_view"),
    "client: replay blocks, re-derive pending, attest, seal": ("client_app.py", "_ledger_duties"),
    "client: hash update": ("hashing.py", "compute_update_hash"),
    "client: sign commitment": ("builder.py", "sign_commitment"),
}


def one_run(driver: str, config: RunConfig, root: Path) -> tuple[float, float]:
    """(wall seconds, final accuracy) of one run with a fresh run directory."""
    setup = prepare_run(config)
    accuracy: list[float] = []
    started = time.perf_counter()
    if driver == "ray":
        from server.simulation import run_simulated

        run_simulated(config, setup.run_dir, lambda r, o, a, s: accuracy.append(a))
    else:
        grid = InProcessGrid(client_app, config.clients)
        run_federation(grid, config, setup.run_dir, lambda r, o, a, s: accuracy.append(a))
    return time.perf_counter() - started, accuracy[-1] if accuracy else float("nan")


def profile_ledger(config: RunConfig) -> tuple[float, list[tuple[str, float]]]:
    """Wall seconds of one ledger-on in-process run, and the seconds spent under each entry
    point (cumulative; the client rows run inside the server's calls in process)."""
    setup = prepare_run(config)
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    run_federation(InProcessGrid(client_app, config.clients), config, setup.run_dir)
    profiler.disable()
    total = time.perf_counter() - started
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    rows = []
    for label, (filename, function) in ENTRY_POINTS.items():
        seconds = sum(
            row[3]
            for (file, _, name), row in stats.items()
            if file.endswith(filename) and name == function
        )
        rows.append((label, seconds))
    return total, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--driver", choices=("ray", "inprocess", "both"), default="both")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--profile-only", action="store_true")
    args = parser.parse_args()
    drivers = ("inprocess", "ray") if args.driver == "both" else (args.driver,)
    if args.profile_only:
        drivers = ()
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        for driver in drivers:
            times: dict[bool, list[float]] = {True: [], False: []}
            accuracy: dict[bool, list[float]] = {True: [], False: []}
            for repeat in range(args.repeats):
                for ledger in (True, False) if repeat % 2 == 0 else (False, True):
                    config = RunConfig(
                        run_id=f"{driver}-{repeat}-{'on' if ledger else 'off'}",
                        out=str(root),
                        clients=args.clients,
                        rounds=args.rounds,
                        ledger=ledger,
                        aggregation="fedavg",  # the same rule on and off (Flower's FedAvg)
                        contribution="none",  # scoring is measured on its own, not ledger cost
                    )
                    seconds, acc = one_run(driver, config, root)
                    times[ledger].append(seconds)
                    accuracy[ledger].append(acc)
                    print(
                        f"  {driver:9} repeat {repeat + 1} ledger {'on ' if ledger else 'off'}: "
                        f"{seconds:6.2f} s, accuracy {acc:.2%}",
                        flush=True,
                    )
            on, off = statistics.median(times[True]), statistics.median(times[False])
            results[driver] = {
                "ledger_on_s": round(on, 3),
                "ledger_off_s": round(off, 3),
                "ratio": round(on / off, 3),
                "accuracy_on": round(statistics.median(accuracy[True]), 4),
                "accuracy_off": round(statistics.median(accuracy[False]), 4),
            }
            print(f"{driver}: ledger on {on:.2f} s, off {off:.2f} s, ratio on/off = {on / off:.3f}")
        config = RunConfig(
            run_id="profile",
            out=str(root),
            clients=args.clients,
            rounds=args.rounds,
            aggregation="fedavg",
            contribution="none",
        )
        total, rows = profile_ledger(config)
    print(
        f"where a ledger-on in-process run ({total:.1f} s under the profiler) spends ledger time:"
    )
    for label, seconds in rows:
        print(f"  {label:50} {seconds:6.2f} s  {seconds / total:6.1%}")
    results["profile"] = {"total_s": round(total, 2), **{k: round(v, 3) for k, v in rows}}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
