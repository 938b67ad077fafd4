"""Start-up of the default run: imports at CLI start and in prepare_run; time to first round.

Compares source trees (a checkout before a change and one after), alternating them in every
repeat so that a busy machine slows both alike::

    git archive <before> | tar -x -C /tmp/before          # the tree before, outside the repo
    python experiments/bench_startup.py --repeats 3 before=/tmp/before after=.

For each repeat and tree, with ``PYTHONPATH=TREE`` (which wins over the editable install, also in
Ray's workers):

1. ``python -X importtime -m fedchain --help``: wall seconds, ``fedchain.cli``'s cumulative
   import time, and which of torch, sklearn, scipy.linalg, flwr, ray it imported;
2. ``python -X importtime -c <prepare_run(RunConfig(run_id="t", out=tmp))>``: the default run's
   set-up, wall seconds and the cumulative import time of those libraries;
3. ``python -m fedchain simulate --out <tmp> --run-id t`` (the default configuration): wall
   seconds from start to its ``run t:`` line (set-up done) and to its first ``round   1/`` line;
   then Ctrl-C (SIGINT to that process; a second one if it has not ended 10 s later: the first
   stops Ray, and the server waits out its round), so the rest of the run is not timed.

Prints each measurement, then min / median / max per tree (``experiments/results/startup.md``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PREPARE = (
    "import sys; from fedchain.config import RunConfig; from fedchain.runs.prepare import "
    "prepare_run; prepare_run(RunConfig(run_id='t', out=sys.argv[1]))"
)
HEAVY = ("torch", "sklearn", "scipy.linalg", "flwr", "ray")
IMPORT_LINE = re.compile(r"import time:\s+\d+ \|\s+(\d+) \|\s*(\S+)$")


def cumulative_imports(stderr: str) -> dict[str, float]:
    """Each module's cumulative import seconds, from ``-X importtime`` output (first import)."""
    found: dict[str, float] = {}
    for line in stderr.splitlines():
        match = IMPORT_LINE.match(line)
        if match and match.group(2) not in found:
            found[match.group(2)] = int(match.group(1)) / 1e6
    return found


def run_timed(args: list[str], tree: Path) -> tuple[float, dict[str, float]]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    done = subprocess.run(args, cwd=tree, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed in {tree}:\n{done.stderr[-2000:]}")
    return time.perf_counter() - start, cumulative_imports(done.stderr)


def first_round(tree: Path) -> tuple[float, float]:
    """(seconds to the ``run t:`` line, seconds to the first round's line) of the default run."""
    out = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    command = [sys.executable, "-m", "fedchain", "simulate", "--out", str(out), "--run-id", "t"]
    start = time.perf_counter()
    proc = subprocess.Popen(
        command, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    setup = first = float("nan")
    assert proc.stdout is not None
    for line in proc.stdout:
        now = time.perf_counter() - start
        if line.startswith("run t:"):
            setup = now
        if re.match(r"round\s+1/", line):
            first = now
            break
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        proc.wait()
    shutil.rmtree(out, ignore_errors=True)
    return setup, first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-run", action="store_true", help="imports only (1 and 2)")
    parser.add_argument("trees", nargs="+", help="LABEL=PATH of a source tree")
    options = parser.parse_args()
    trees = [
        (label, Path(path).resolve()) for label, path in (t.split("=", 1) for t in options.trees)
    ]
    results: dict[str, dict[str, list[float]]] = {label: {} for label, _ in trees}

    def record(label: str, name: str, value: float) -> None:
        results[label].setdefault(name, []).append(value)

    for repeat in range(options.repeats):
        for label, tree in trees:
            wall, cli = run_timed(
                [sys.executable, "-X", "importtime", "-m", "fedchain", "--help"], tree
            )
            record(label, "--help wall", wall)
            record(label, "--help fedchain.cli import", cli.get("fedchain.cli", 0.0))
            at_start = [h for h in HEAVY if h in cli]
            out = tempfile.mkdtemp(prefix="bench-startup-")
            wall, prep = run_timed([sys.executable, "-X", "importtime", "-c", PREPARE, out], tree)
            shutil.rmtree(out, ignore_errors=True)
            record(label, "prepare_run wall", wall)
            for h in HEAVY:
                record(label, f"prepare_run {h} import", prep.get(h, 0.0))
            line = (
                f"repeat {repeat} {label}: --help imports {at_start or 'none of ' + str(HEAVY)}; "
                f"prepare_run {wall:.2f} s ("
                + ", ".join(f"{h} {prep.get(h, 0.0):.2f}" for h in HEAVY)
                + ")"
            )
            if not options.skip_run:
                setup, first = first_round(tree)
                record(label, "simulate: set-up done", setup)
                record(label, "simulate: first round", first)
                line += f"; simulate set-up {setup:.2f} s, first round {first:.2f} s"
            print(line, flush=True)
    for label, measured in results.items():
        for name, values in measured.items():
            print(
                f"{label:8} {name:32} min {min(values):6.2f}  median "
                f"{statistics.median(values):6.2f}  max {max(values):6.2f} s"
            )


if __name__ == "__main__":
    main()
