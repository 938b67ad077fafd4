"""The ServerApp's deployment mode: a registered federation's rounds on a real SuperLink.

``fedchain coordinator start`` submits the ServerApp with the run config ``federation-dir``; the
ServerApp then runs :func:`run_deployment`: it creates the federation's run directory and ledger
on the first start, or resumes the existing ledger at its head, and runs the rounds still to do.

Resuming: the ledger head's round ``k`` is the number of rounds done (a block pending at a crash
was never appended, so its round simply runs again); Flower numbers the new run's rounds from 1,
and the strategy maps Flower round ``r`` to ledger round ``k + r``. Model files the lost round
saved are removed first (:func:`fedchain.federation.remove_unregistered_models`).
"""

from __future__ import annotations

import json
import logging
import time
from logging import INFO, WARNING
from pathlib import Path

from flwr.app import ArrayRecord, MetricRecord
from flwr.common.logger import FLOWER_LOGGER, log
from flwr.serverapp import Grid

from fedchain.aggregation import RuleParams
from fedchain.coordinator import Coordinator, RoundOutcome
from fedchain.errors import FedchainError
from fedchain.federation import (
    Federation,
    load_federation,
    prepare_federation_run,
    registered_node_keys,
    remove_unregistered_models,
)
from fedchain.ledger.chain import Chain
from fedchain.ledger.store import LEDGER_FILENAME
from fedchain.registry import load_model
from server.server_app import train_settings, write_metrics
from server.strategy import FedchainStrategy, to_array_record


def wait_for_nodes(grid: Grid, count: int, timeout: float) -> None:
    """Wait until ``count`` SuperNodes are connected, logging progress every 10 s."""
    deadline = time.monotonic() + timeout
    last_log = 0.0
    while (connected := len(list(grid.get_node_ids()))) < count:
        now = time.monotonic()
        if now > deadline:
            raise FedchainError(
                f"only {connected} of {count} clients connected within {timeout:.0f} s"
            )
        if now - last_log >= 10:
            log(INFO, "waiting for clients: %d of %d connected", connected, count)
            last_log = now
        time.sleep(1.0)
    log(INFO, "%d clients connected", connected)


def _load_history(run_dir: Path, done: int) -> list[dict[str, float | int]]:
    """``metrics.json`` rows of the rounds the ledger holds (a lost round's row is dropped)."""
    path = run_dir / "metrics.json"
    if not path.exists():
        return []
    try:
        rows = json.loads(path.read_text())["rounds"]
    except (OSError, ValueError, KeyError, TypeError):
        log(WARNING, "%s: unreadable; starting a new metrics history", path)
        return []
    return [row for row in rows if int(row.get("round", 0)) <= done]


def run_deployment(grid: Grid, fed_dir: Path) -> None:
    """Run the federation in ``fed_dir`` from its ledger head to its configured rounds."""
    federation = load_federation(fed_dir)
    run_dir, config, created = prepare_federation_run(federation)
    log(
        INFO,
        "fedchain federation %s: %s run directory %s",
        federation.name,
        "new" if created else "resuming",
        run_dir,
    )
    for path in remove_unregistered_models(run_dir):
        log(INFO, "removed %s (saved by a round the ledger never recorded)", path.name)
    handler = logging.FileHandler(run_dir / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    FLOWER_LOGGER.addHandler(handler)
    try:
        with Chain.open(run_dir / LEDGER_FILENAME) as chain:  # verified; resumes at the head
            _run_rounds(grid, federation, config, run_dir, chain)
    finally:
        FLOWER_LOGGER.removeHandler(handler)
        handler.close()


def _run_rounds(grid, federation: Federation, config, run_dir: Path, chain: Chain) -> None:
    from fedchain.models import build_model, load_numpy_state
    from fedchain.runs import load_split
    from fedchain.scoring import RoundScorer
    from fedchain.sources import load_source
    from fedchain.training import evaluate

    done = chain.state.round
    remaining = config.rounds - done
    if remaining <= 0:
        log(INFO, "all %d rounds are on the ledger; nothing to do", config.rounds)
        return
    log(
        INFO,
        "ledger head: height %d, round %d; running rounds %d..%d",
        chain.state.height,
        done,
        done + 1,
        config.rounds,
    )
    test = load_source(config.dataset, root=config.data_root or None, split="test")
    net = build_model(config.model, tuple(test.x.shape[1:]), len(test.classes), seed=0)
    model = load_model(run_dir, chain.state.model_head)
    scorer = None
    if config.contribution != "none":
        scorer = RoundScorer(config, load_split(config)[1])
    params = RuleParams(beta=config.beta, cap=None if config.weight_cap >= 1 else config.weight_cap)
    coordinator = Coordinator(
        run_dir, chain, model, rule=config.aggregation, params=params, scorer=scorer
    )
    coordinator.node_keys.update(registered_node_keys(federation))
    history = _load_history(run_dir, done)
    last: list[RoundOutcome | None] = [None]
    started = [time.perf_counter()]

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        load_numpy_state(net, {k: v.numpy() for k, v in arrays.items()})
        result = evaluate(net, test)
        outcome = last[0]
        if server_round > 0 or not history:  # round 0 of a resumed run is already recorded
            history.append(
                {
                    "round": done + server_round,
                    "accuracy": result.accuracy,
                    "loss": result.loss,
                    "accepted": outcome.accepted if outcome and server_round else 0,
                    "rejected": len(outcome.rejected) if outcome and server_round else 0,
                    "seconds": round(time.perf_counter() - started[0], 3) if server_round else 0.0,
                }
            )
            write_metrics(run_dir, history)
        if server_round > 0 and outcome is not None:
            log(
                INFO,
                "round %d: accuracy %.4f, %d accepted, %d rejected (%s), head %d, final %d",
                done + server_round,
                result.accuracy,
                outcome.accepted,
                len(outcome.rejected),
                "; ".join(d.reason for d in outcome.rejected) or "-",
                outcome.head_height,
                outcome.final_height,
            )
        started[0] = time.perf_counter()
        return MetricRecord({"accuracy": result.accuracy, "loss": result.loss})

    def on_round(outcome: RoundOutcome) -> None:
        last[0] = outcome

    count = len(federation.participants)
    min_clients = federation.min_clients or count
    strategy = FedchainStrategy(
        coordinator,
        fraction_train=1.0,  # every connected participant trains; at least min_clients
        min_nodes=min_clients,
        timeout=config.round_timeout,
        on_round=on_round,
        round_offset=done,
    )
    wait_for_nodes(grid, min_clients, federation.join_timeout)
    settings = train_settings(config, run_dir)
    strategy.start(
        grid,
        to_array_record(model),
        remaining,
        config.round_timeout,
        settings,
        evaluate_fn=evaluate_fn,
    )
    strategy.close_ledger(settings)
    log(
        INFO,
        "fedchain federation %s: done; ledger head %d, final height %d",
        federation.name,
        chain.state.height,
        coordinator.final_height,
    )
