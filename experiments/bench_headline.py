"""Benchmark: what a user pays, end to end: ``fedchain simulate`` with its defaults against the
same federation as plain Flower (``fedchain simulate --ledger off``: Flower's FedAvg, nothing
signed, scored or recorded), each as the user runs it (a fresh process: imports, set-up, Ray's
start, 20 rounds, shutdown), alternated ``--repeats`` times.

Prints and writes (``--json``) the wall seconds of each run, min / median / max per variant, the
ratio of each alternated pair, and each variant's time to its first round line.

    python experiments/bench_headline.py [--repeats 3] [--json FILE] [-- EXTRA SIMULATE ARGS]
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

VARIANTS = {"fedchain (defaults)": [], "plain Flower (--ledger off)": ["--ledger", "off"]}


def one_run(args: list[str], out: Path, run_id: str) -> tuple[float, float]:
    """(wall seconds, seconds to the first round line) of one ``fedchain simulate``."""
    command = [sys.executable, "-m", "fedchain", "simulate", "--out", str(out), "--run-id", run_id]
    started = time.perf_counter()
    first = float("nan")
    with subprocess.Popen(
        [*command, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as run:
        assert run.stdout is not None
        for line in run.stdout:
            if first != first and line.startswith("round   1/"):
                first = time.perf_counter() - started
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {run.returncode}")
    return time.perf_counter() - started, first


def spread(values: list[float]) -> str:
    return f"{min(values):.1f} / {statistics.median(values):.1f} / {max(values):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("extra", nargs="*", help="more fedchain simulate arguments (after --)")
    args = parser.parse_args()
    walls: dict[str, list[float]] = {name: [] for name in VARIANTS}
    firsts: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for index, (name, variant) in enumerate(VARIANTS.items()):
                wall, first = one_run([*variant, *args.extra], Path(tmp), f"r{repeat}-{index}")
                walls[name].append(wall)
                firsts[name].append(first)
                print(f"repeat {repeat + 1}: {name}: {wall:.1f} s (first round {first:.1f} s)")
    names = list(VARIANTS)
    ratios = [a / b for a, b in zip(walls[names[0]], walls[names[1]], strict=True)]
    for name in names:
        print(f"{name}: wall {spread(walls[name])} s, first round {spread(firsts[name])} s")
    print(f"ratio per alternated pair: {spread(ratios).replace(' s', '')}")
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
