"""Benchmark: what a user pays, end to end: ``fedchain simulate`` with its defaults against the
same federation as plain Flower (``fedchain simulate --ledger off``: Flower's FedAvg, nothing
signed, scored or recorded), each as the user runs it (a fresh process: imports, set-up, Ray's
start, 20 rounds, shutdown), alternated ``--repeats`` times.

With ``--split`` two variants in between split the difference into its parts, each run the
same way and alternated with the others:

* ledger only: ``--aggregation fedavg --contribution none --archive-updates none`` (the same
  FedAvg as plain Flower, with every update hashed, signed, committed, attested and sealed into
  blocks, and each round's model file written): what the ledger costs;
* + update archive: the same with the default archive (every round's updates packed and
  fsynced): what the files cost;
* the defaults add the ``screened`` rule's validation steps and ``mc-shapley`` contribution
  scores (and the payout they drive): what scoring costs.

Start-up is each variant's time to its first round line.

Prints and writes (``--json``) the wall seconds of each run, min / median / max per variant, the
ratio of each alternated pair to plain Flower, and each variant's time to its first round line.

    python experiments/bench_headline.py [--repeats 3] [--split] [--json FILE] [-- EXTRA ARGS]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULTS, PLAIN = "fedchain (defaults)", "plain Flower (--ledger off)"
VARIANTS = {DEFAULTS: [], PLAIN: ["--ledger", "off"]}
LEDGER_ONLY = ["--aggregation", "fedavg", "--contribution", "none"]
SPLIT = {
    "ledger only (fedavg, no scores, no archive)": [*LEDGER_ONLY, "--archive-updates", "none"],
    "ledger + update archive": LEDGER_ONLY,
}


def one_run(args: list[str], out: Path, run_id: str) -> tuple[float, float]:
    """(wall seconds, seconds to the first round line) of one ``fedchain simulate``."""
    command = [sys.executable, "-m", "fedchain", "simulate", "--out", str(out), "--run-id", run_id]
    started = time.perf_counter()
    first = float("nan")
    with subprocess.Popen(
        [*command, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as run:
        assert run.stdout is not None
        tail: list[str] = []
        for line in run.stdout:
            tail = [*tail[-19:], line]
            if first != first and line.startswith("round   1/"):
                first = time.perf_counter() - started
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {run.returncode}:\n{''.join(tail)}")
    return time.perf_counter() - started, first


def spread(values: list[float], digits: int = 1) -> str:
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{low:.{digits}f} / {mid:.{digits}f} / {high:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--split", action="store_true", help="also the ledger-only variants")
    parser.add_argument("--json", type=Path)
    parser.add_argument("extra", nargs="*", help="more fedchain simulate arguments (after --)")
    args = parser.parse_args()
    variants = {**VARIANTS, **SPLIT} if args.split else VARIANTS
    walls: dict[str, list[float]] = {name: [] for name in variants}
    firsts: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            order = list(variants.items())
            order = order if repeat % 2 == 0 else order[::-1]  # alternate who goes first
            for index, (name, variant) in enumerate(order):
                wall, first = one_run([*variant, *args.extra], Path(tmp), f"r{repeat}-{index}")
                walls[name].append(wall)
                firsts[name].append(first)
                print(f"repeat {repeat + 1}: {name}: {wall:.1f} s (first round {first:.1f} s)")
    ratios = {
        name: [a / b for a, b in zip(walls[name], walls[PLAIN], strict=True)]
        for name in variants
        if name != PLAIN
    }
    for name in variants:
        print(f"{name}: wall {spread(walls[name])} s, first round {spread(firsts[name])} s")
    for name, values in ratios.items():
        print(f"ratio to plain Flower per repeat, {name}: {spread(values, 2)}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"walls": walls, "first_round": firsts, "ratios": ratios, "extra": args.extra},
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
