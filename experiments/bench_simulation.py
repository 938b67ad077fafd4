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

from flwr.common.logger import FLOWER_LOGGER

from clients.client_app import app as client_app
from fedchain.config import RunConfig
from fedchain.runs import prepare_run
from server.inprocess_grid import InProcessGrid
from server.server_app import run_federation

FLOWER_LOGGER.setLevel(logging.ERROR)

# Where ledger work lives: profile rows from these files are summed per area.
AREAS = {
    "hashing (client and server)": ("fedchain/hashing.py",),
    "signatures (sign + verify)": ("fedchain/identity.py", "ed25519"),
    "ledger state transition": ("fedchain/ledger/state.py", "fedchain/ledger/codec.py"),
    "ledger store (SQLite)": ("fedchain/ledger/store.py",),
    "model registry (safetensors)": ("fedchain/registry.py",),
    "light-client checks": ("fedchain/lightclient.py",),
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


def profile_ledger(config: RunConfig) -> list[tuple[str, float]]:
    setup = prepare_run(config)
    profiler = cProfile.Profile()
    profiler.enable()
    run_federation(InProcessGrid(client_app, config.clients), config, setup.run_dir)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = sum(row[2] for row in stats.values())  # tottime
    areas = []
    for area, needles in AREAS.items():
        spent = sum(
            row[2]
            for (filename, _, name), row in stats.items()
            if any(n in filename or n in name for n in needles)
        )
        areas.append((area, spent / total))
    return areas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--driver", choices=("ray", "inprocess", "both"), default="both")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    drivers = ("inprocess", "ray") if args.driver == "both" else (args.driver,)
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
            run_id="profile", out=str(root), clients=args.clients, rounds=args.rounds
        )
        areas = profile_ledger(config)
    print("where the ledger-on in-process run spends its time (share of profiled CPU time):")
    for area, share in areas:
        print(f"  {area:32} {share:6.1%}")
    results["profile_shares"] = {area: round(share, 4) for area, share in areas}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
