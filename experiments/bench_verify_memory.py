"""Benchmark: ``fedchain verify``'s peak memory and time against the ledger's length (issue 17).

For each ``ROUNDSxPARTICIPANTS`` size, a synthetic ledger
(:func:`fedchain.ledger.synthetic.write_synthetic_ledger`: every participant commits an update
and attests to the previous block each round) is built in ``--dir`` (kept there and reused by a
later run, so the slow build is paid once; default: a temporary directory), then
``python -m fedchain verify LEDGER`` runs in a child process, ``--repeats`` times. Each run's
peak resident set size is the child's own ``ru_maxrss`` (``os.wait4``, so neither the build
nor another run is counted); its time is wall seconds from start to exit, and its CPU seconds
(user + system, all its threads: steadier than wall time on a shared machine). A one-block ledger of
the same participants gives the floor (interpreter, imports, the participant table). ``--tree``
runs the verify of another source tree (``PYTHONPATH=TREE``), e.g. the commit before a change::

    git archive <before> | tar -x -C /tmp/before
    python experiments/bench_verify_memory.py --dir /tmp/ledgers --tree /tmp/before

With memory bounded by the largest block, the peak RSS of 100 and 1,000 rounds at the same
participants is about the same; a verifier that keeps something per round grows with rounds.

    python experiments/bench_verify_memory.py [--sizes 1x1000,100x1000,1000x1000]
        [--dir /tmp/fedchain-verify-bench] [--repeats 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fedchain.ledger.synthetic import write_synthetic_ledger


def parse_size(text: str) -> tuple[int, int]:
    rounds, _, participants = text.partition("x")
    return int(rounds), int(participants)


def build(folder: Path, rounds: int, participants: int) -> Path:
    """The ledger of this size in ``folder``, built unless a previous run left it complete."""
    path = folder / f"synthetic-{rounds}x{participants}.db"
    if path.is_file():
        return path
    partial = path.with_suffix(".partial")
    for leftover in folder.glob(partial.name + "*"):
        leftover.unlink()
    started = time.perf_counter()
    print(f"building {rounds} rounds x {participants} participants…", flush=True)
    write_synthetic_ledger(partial, participants, rounds, seed=1)
    for suffix in ("-wal", "-shm"):  # closed cleanly: empty side files
        Path(f"{partial}{suffix}").unlink(missing_ok=True)
    partial.rename(path)
    print(f"  built in {time.perf_counter() - started:.0f} s", flush=True)
    return path


def measure(path: Path, tree: Path) -> dict[str, float]:
    """Peak RSS (MB), wall and CPU seconds of one ``fedchain verify`` of ``path`` in a child."""
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "fedchain", "verify", str(path.resolve())],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tree)},
        cwd=tree,  # `python -m` puts the working directory first on sys.path
    )
    assert child.stdout is not None
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0 or "verified" not in output:
        raise SystemExit(f"fedchain verify {path} failed ({child.returncode}):\n{output}")
    # ru_maxrss is in kilobytes on Linux
    return {
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "seconds": round(seconds, 1),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1x1000,100x1000,1000x1000")
    parser.add_argument("--dir", type=Path, help="keep the ledgers here (default: a temp dir)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--tree",
        type=Path,
        default=Path(__file__).resolve().parents[1],
        help="the source tree whose `fedchain verify` runs (default: this one)",
    )
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    print(f"python {platform.python_version()}  cpu_count {os.cpu_count()}")
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.dir or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        results = []
        for rounds, participants in sizes:
            path = build(folder, rounds, participants)
            size_mb = path.stat().st_size / 1e6
            for repeat in range(args.repeats):
                numbers = measure(path, args.tree.resolve())
                results.append(
                    {"rounds": rounds, "participants": participants, "ledger_mb": size_mb} | numbers
                )
                print(
                    f"{rounds} rounds x {participants} participants ({size_mb:.0f} MB), "
                    f"repeat {repeat + 1}: peak RSS {numbers['peak_rss_mb']:.0f} MB, "
                    f"{numbers['seconds']:.1f} s ({numbers['cpu_seconds']:.1f} s CPU)",
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
