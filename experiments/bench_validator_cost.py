"""Benchmark: what validating a block costs each client per round (issue 12, deliverable 1).

Clients re-execute every block before they attest or seal it (``fedchain.rounds.replica``), so
each message carries blocks with their bodies and the pending block's transactions, and each
client replays them. On the default federation (10 clients, 20 rounds, driven in process with
the real ClientApp and ``server.federate.run_federation``) this measures, per message:

* the ledger view's bytes: before (signed headers and the pending header only, what the light
  client needed) and after (blocks, with bodies where the client does not hold them, plus the
  pending transactions);
* client CPU (process time) for the replica check, and for the light check alone;
* replaying the whole stored ledger from genesis (what a restarted deployed holder does).

The two functions are wrapped to count and time them (instrumentation only; what they return is
unchanged).

    python experiments/bench_validator_cost.py [--json experiments/results/validator_cost.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clients import client_app
from fedchain.config import RunConfig
from fedchain.ledger.codec import decode, encode
from fedchain.ledger.objects import Block
from fedchain.ledger.store import LedgerStore
from fedchain.rounds import messages as m
from fedchain.rounds import participant
from fedchain.rounds.coordinator import Coordinator
from fedchain.rounds.replica import replay_replica
from fedchain.runs.prepare import prepare_run
from server.federate import run_federation
from server.inprocess_grid import InProcessGrid


def measure(out: Path) -> dict[str, Any]:
    config = RunConfig(run_id="demo", out=str(out))
    setup = prepare_run(config)
    views: list[tuple[int, int, int]] = []  # (bytes before, bytes after, blocks in the view)
    times: list[tuple[float, float]] = []  # (replica check s, light check s)
    honest_view = Coordinator.ledger_view
    real_check = client_app.check_view_replayed

    def measured_view(self: Coordinator, node_id: int) -> dict[str, object]:
        view: Mapping[str, Any] = honest_view(self, node_id)
        blocks = view[m.BLOCKS]
        pending = len(view[m.PENDING])
        headers = sum(len(encode(decode(Block, b).signed_header)) for b in blocks)
        body = sum(map(len, blocks)) + sum(map(len, view[m.PENDING_TRANSACTIONS]))
        views.append((headers + pending, body + pending, len(blocks)))
        return dict(view)

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.process_time()
        result = real_check(*args, **kwargs)
        middle = time.process_time()
        participant.check_view(args[1], args[2])  # the light check alone, for comparison
        times.append((middle - start, time.process_time() - middle))
        return result

    Coordinator.ledger_view = measured_view  # type: ignore[method-assign]
    client_app.check_view_replayed = timed  # type: ignore[assignment]
    try:
        started = time.time()
        run_federation(InProcessGrid(client_app.app, config.clients), config, setup.run_dir)
        wall = time.time() - started
    finally:
        Coordinator.ledger_view = honest_view  # type: ignore[method-assign]
        client_app.check_view_replayed = real_check
    with LedgerStore.open(setup.run_dir / "ledger.db", readonly=True) as store:
        encodings = [stored.data for stored in store.iter_blocks()]
    start = time.process_time()
    replay_replica(encodings)
    replay = time.process_time() - start
    return {
        "messages": len(views),
        "run_wall_s": round(wall, 1),
        "view_bytes_before_mean": round(statistics.mean(v[0] for v in views)),
        "view_bytes_before_max": max(v[0] for v in views),
        "view_bytes_after_mean": round(statistics.mean(v[1] for v in views)),
        "view_bytes_after_max": max(v[1] for v in views),
        "blocks_per_view_max": max(v[2] for v in views),
        "client_check_ms_mean": round(1000 * statistics.mean(t[0] for t in times), 2),
        "client_check_ms_max": round(1000 * max(t[0] for t in times), 2),
        "light_check_ms_mean": round(1000 * statistics.mean(t[1] for t in times), 2),
        "replay_from_genesis_ms": round(1000 * replay, 1),
        "blocks": len(encodings),
        "ledger_bytes": sum(map(len, encodings)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fedchain-validator-cost-") as tmp:
        result = measure(Path(tmp))
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
