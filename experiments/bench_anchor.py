"""Benchmark: what anchoring the ledger costs (fedchain.anchor; issue 18).

1. Per anchor, for each witness: the seconds to publish a statement (the coordinator waits for
   it), the seconds to check a receipt (``verify --anchors``), the proof's size, and for the EVM
   witness the gas of the ``anchor`` call. EVM: eth-tester's in-memory py-evm chain in this
   process (no network, no block time: a real chain adds its confirmation wait). RFC 3161: the
   local TSA over loopback HTTP (real signed tokens; a real TSA adds its network round trip).
2. Per run: the default ``fedchain simulate`` federation (RunConfig's defaults: 10 clients,
   20 rounds, digits, cnn, screened, gtg-shapley) with anchoring off and with EVM anchoring
   every ``--every`` final blocks, alternated ``--repeats`` times; min / median / max wall
   seconds and the ratio of medians. ``--driver inprocess`` (default) drives the real ServerApp
   and ClientApp code on the in-process grid; ``ray`` runs Flower's simulation engine as
   ``fedchain simulate`` does (the in-memory chain works there too: the ServerApp runs in a
   thread of this process).
3. The anchoring interval that keeps anchoring within its share of the ledger's bar (DESIGN.md
   §6: the ledger alone at most 1.03x in process): the smallest K with one publish per K rounds
   at most ``--budget`` (default 1 %) of the unanchored run's time per round.

    python experiments/bench_anchor.py [--anchors 20] [--repeats 3] [--every 4] [--json F]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import fedchain  # noqa: F401  (first: Flower's telemetry off before flwr is imported)

# isort: split

import logging

from flwr.common.logger import FLOWER_LOGGER

from clients.client_app import app as client_app
from fedchain.anchor.evm import MEMORY, EvmWitness, deploy_contract, memory_chain
from fedchain.anchor.local_tsa import LocalTsa
from fedchain.anchor.receipts import Anchoring
from fedchain.anchor.rfc3161 import Rfc3161Witness, http_transport
from fedchain.anchor.witness import Witness
from fedchain.config import RunConfig
from fedchain.ledger.objects import AnchorStatement
from fedchain.ledger.verify import verify_ledger
from fedchain.runs.prepare import prepare_run
from server.federate import run_federation
from server.inprocess_grid import InProcessGrid

FLOWER_LOGGER.setLevel(logging.ERROR)


def spread(values: Sequence[float], digits: int = 4) -> dict[str, float]:
    return {
        "min": round(min(values), digits),
        "median": round(statistics.median(values), digits),
        "max": round(max(values), digits),
    }


def statements(count: int) -> list[AnchorStatement]:
    def h(*parts: object) -> bytes:
        return hashlib.sha256("/".join(map(str, parts)).encode()).digest()

    return [AnchorStatement(h("genesis"), i, h("block", i), h("model", i)) for i in range(count)]


def bench_witness(witness: Witness, count: int) -> dict[str, Any]:
    publish, check, sizes = [], [], []
    for statement in statements(count):
        started = time.perf_counter()
        proof = witness.publish(statement)
        publish.append(time.perf_counter() - started)
        started = time.perf_counter()
        witness.check(statement, proof)
        check.append(time.perf_counter() - started)
        sizes.append(len(proof))
    return {
        "publish_s": spread(publish),
        "check_s": spread(check),
        "proof_bytes": spread(sizes, 0),
    }


class AnchoringClock:
    """Seconds spent in :meth:`Anchoring.receipts_due` (statement, publish, receipt file):
    measured inside the run, so the share of anchoring does not drown in the noise between
    runs on a shared machine."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._original = Anchoring.receipts_due

    def __enter__(self) -> AnchoringClock:
        original, clock = self._original, self

        def timed(anchoring: Anchoring, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(anchoring, *args, **kwargs)
            finally:
                clock.seconds += time.perf_counter() - started

        Anchoring.receipts_due = timed  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        Anchoring.receipts_due = self._original  # type: ignore[method-assign]


def one_run(driver: str, config: RunConfig) -> tuple[float, int]:
    """(wall seconds, receipts on the ledger) of one run in a fresh run directory."""
    setup = prepare_run(config)
    started = time.perf_counter()
    if driver == "ray":
        from server.simulation import run_simulated  # Ray: only for --driver ray

        run_simulated(config, setup.run_dir)
    else:
        run_federation(InProcessGrid(client_app, config.clients), config, setup.run_dir)
    seconds = time.perf_counter() - started
    report = verify_ledger(setup.run_dir)
    if not report.ok:
        raise SystemExit(f"{setup.run_dir}: {report.failure}")
    return seconds, len(report.anchor_receipts)


def bench_runs(args: argparse.Namespace, root: Path, contract: str) -> dict[str, Any]:
    """Alternated runs without and with anchoring to ``contract`` (deployed once, as a real
    federation's is)."""
    times: dict[str, list[float]] = {"off": [], "evm": []}
    shares: list[float] = []
    anchoring: list[float] = []
    receipts = 0
    for repeat in range(args.repeats):
        for mode in ("evm", "off") if repeat % 2 == 0 else ("off", "evm"):
            settings: dict[str, Any] = {"run_id": f"r{repeat}-{mode}", "out": str(root)}
            if args.rounds:
                settings["rounds"] = args.rounds
            if mode == "evm":
                settings |= {
                    "anchor": "evm",
                    "anchor_url": MEMORY,
                    "anchor_every": args.every,
                    "anchor_contract": contract,
                }
            with AnchoringClock() as clock:
                seconds, count = one_run(args.driver, RunConfig(**settings))
            times[mode].append(seconds)
            line = f"  repeat {repeat + 1} anchor {mode:3}: {seconds:7.2f} s"
            if mode == "evm":
                receipts = count
                anchoring.append(clock.seconds)
                shares.append(clock.seconds / seconds)
                line += f" (anchoring {clock.seconds:.3f} s, {clock.seconds / seconds:.2%})"
            print(line, flush=True)
    off, on = statistics.median(times["off"]), statistics.median(times["evm"])
    return {
        "driver": args.driver,
        "every": args.every,
        "rounds": args.rounds or RunConfig().rounds,
        "receipts_per_run": receipts,
        "off_s": spread(times["off"], 2),
        "evm_s": spread(times["evm"], 2),
        "ratio_of_medians": round(on / off, 4),
        "anchoring_in_run_s": spread(anchoring, 3),
        "anchoring_share_of_run": spread(shares, 4),
    }


def smallest_interval(publish_s: float, round_s: float, budget: float) -> int:
    """The smallest K with publish_s / (K * round_s) <= budget."""
    return max(1, math.ceil(publish_s / (budget * round_s)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--anchors", type=int, default=20, help="anchors per witness (part 1)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per mode (part 2; 0: skip)")
    parser.add_argument("--every", type=int, default=RunConfig().anchor_every)
    parser.add_argument("--rounds", type=int, default=0, help="0: the default run's rounds")
    parser.add_argument("--driver", choices=("inprocess", "ray"), default="inprocess")
    parser.add_argument("--budget", type=float, default=0.01)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, Any] = {}

    evm = EvmWitness(memory_chain(), deploy_contract(memory_chain()))
    results["evm"] = bench_witness(evm, args.anchors)
    results["evm"]["gas"] = spread(evm.gas_used, 0)
    tsa = LocalTsa()
    with tsa.serve() as url:
        results["rfc3161"] = bench_witness(
            Rfc3161Witness([tsa.root], http_transport(url)), args.anchors
        )
    for kind in ("evm", "rfc3161"):
        r = results[kind]
        print(
            f"{kind:8} publish {r['publish_s']['median'] * 1000:7.2f} ms (min "
            f"{r['publish_s']['min'] * 1000:.2f}, max {r['publish_s']['max'] * 1000:.2f}), check "
            f"{r['check_s']['median'] * 1000:7.2f} ms, proof {r['proof_bytes']['median']:.0f} B"
            + (f", gas {r['gas']['median']:.0f}" if "gas" in r else "")
        )
    if args.repeats:
        with tempfile.TemporaryDirectory() as scratch:
            runs = bench_runs(args, Path(scratch), evm.address)
        results["runs"] = runs
        print(
            f"default run, {runs['driver']}: off {runs['off_s']['median']:.2f} s "
            f"({runs['off_s']['min']:.2f}..{runs['off_s']['max']:.2f}), evm every {args.every}: "
            f"{runs['evm_s']['median']:.2f} s "
            f"({runs['evm_s']['min']:.2f}..{runs['evm_s']['max']:.2f}), "
            f"{runs['receipts_per_run']} receipts; ratio {runs['ratio_of_medians']:.4f}; "
            f"anchoring inside the run {runs['anchoring_in_run_s']['median']:.3f} s = "
            f"{runs['anchoring_share_of_run']['median']:.2%} of it "
            f"({runs['anchoring_share_of_run']['min']:.2%}..{runs['anchoring_share_of_run']['max']:.2%})"
        )
        round_s = runs["off_s"]["median"] / runs["rounds"]
        results["interval"] = {
            kind: smallest_interval(results[kind]["publish_s"]["median"], round_s, args.budget)
            for kind in ("evm", "rfc3161")
        }
        results["interval"]["budget"] = args.budget
        results["interval"]["round_s"] = round(round_s, 3)
        print(
            f"smallest interval with anchoring <= {args.budget:.0%} of a {round_s:.2f} s round: "
            f"evm {results['interval']['evm']}, rfc3161 {results['interval']['rfc3161']}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
