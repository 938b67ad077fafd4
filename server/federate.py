"""Run a federation's rounds on a Flower grid: the strategy, the wait for nodes, the Flower log.

Used by both modes of the ServerApp: simulation and ``flwr run .`` (server/server_app.py) and a
registered federation's deployment (server/deployment.py). What fedchain itself composes (the
chain, the coordinator, central evaluation, metrics.json) is :mod:`fedchain.runs.session`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
)

from fedchain.aggregation.kernels import load_in_background
from fedchain.aggregation.rules import default_krum_f
from fedchain.config import RunConfig
from fedchain.errors import FedchainError
from fedchain.rounds.coordinator import RoundReporter
from fedchain.rounds.messages import encode_train_settings
from fedchain.runs.layout import LOG_FILENAME, METRICS_FILENAME
from fedchain.runs.session import open_session
from server.strategy import FedchainStrategy, to_array_record


def wait_for_nodes(grid: Grid, count: int, timeout: float = 120.0) -> None:
    """Wait until ``count`` clients (SuperNodes) are connected, logging progress every 10 s."""
    deadline = time.monotonic() + timeout
    last_log = time.monotonic()
    while (connected := len(list(grid.get_node_ids()))) < count:
        now = time.monotonic()
        if now > deadline:
            raise FedchainError(
                f"only {connected} of {count} clients connected within {timeout:.0f} s"
            )
        if now - last_log >= 10:
            log(INFO, "waiting for clients: %d of %d connected", connected, count)
            last_log = now
        time.sleep(0.2)


def train_settings(config: RunConfig, run_dir: Path) -> ConfigRecord:
    """What every client is told each round besides the model and its ledger view
    (:func:`fedchain.rounds.messages.encode_train_settings`)."""
    return ConfigRecord(encode_train_settings(config, run_dir))


def run_federation(
    grid: Grid,
    config: RunConfig,
    run_dir: Path,
    report: RoundReporter | None = None,
    *,
    min_nodes: int | None = None,
    fraction_train: float | None = None,
    join_timeout: float = 120.0,
    node_keys: Mapping[int, bytes] | None = None,
) -> MetricRecord | None:
    """Run the configured rounds still to do on ``grid``; return the last central evaluation.

    A ledger whose head is at round ``k`` (a resumed deployment) runs rounds ``k+1..rounds``:
    Flower numbers its rounds from 1, the strategy maps them to ledger rounds, and
    ``metrics.json`` keeps the rows of the rounds the ledger holds. ``report`` gets ledger
    round numbers. ``min_nodes`` (default: the clients sampled per round) must be connected
    before the first round; ``node_keys`` (Flower node id -> participant key) lets the
    coordinator name a registered client that never replies.
    """
    min_nodes = min_nodes or config.sampled_per_round
    if fraction_train is None:
        fraction_train = config.sampled_per_round / config.clients
    settings = train_settings(config, run_dir)
    with open_session(config, run_dir, report) as session:
        done = session.done
        if session.finished:
            log(INFO, "all %d rounds are on the ledger; nothing to do", config.rounds)
            return None
        if done:
            log(
                INFO,
                "ledger head at round %d; running rounds %d..%d",
                done,
                done + 1,
                config.rounds,
            )
        if not session.resume_history():
            path = run_dir / METRICS_FILENAME
            log(WARNING, "%s: unreadable; starting a new metrics history", path)

        def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            numpy = {k: v.numpy() for k, v in arrays.items()}
            accuracy, loss = session.evaluate(server_round, numpy)
            return MetricRecord({"accuracy": accuracy, "loss": loss})

        strategy: FedAvg
        initial = session.initial_model()
        if session.chain is None:
            strategy = flower_strategy(config)
        else:
            load_in_background()  # the aggregation kernels' BLAS, while round 1 trains
            strategy = FedchainStrategy(
                session.make_coordinator(initial, node_keys),
                fraction_train=fraction_train,
                min_nodes=min_nodes,
                timeout=config.round_timeout,
                on_round=session.on_round,
                round_offset=done,
            )
        wait_for_nodes(grid, min_nodes, join_timeout)
        try:
            result = strategy.start(
                grid,
                to_array_record(initial),
                config.rounds - done,
                config.round_timeout,
                settings,
                evaluate_fn=evaluate_fn,
            )
        except FedchainError as e:  # e.g. no validator could seal: say why if no client worked
            if session.outcomes and (why := session.describe_nothing_accepted()):
                raise FedchainError(f"{e}; {why}") from e
            raise
        if isinstance(strategy, FedchainStrategy):
            strategy.close_ledger(settings)
            log(
                INFO,
                "ledger head %s, final height %s",
                strategy.coordinator.state.height,
                strategy.coordinator.final_height,
            )
            if why := session.describe_nothing_accepted():
                raise FedchainError(why)
        elif not result.train_metrics_clientapp:
            raise FedchainError(
                f"no client update was aggregated in rounds {done + 1}..{config.rounds}: every "
                f"client failed (Flower's log: {run_dir / LOG_FILENAME})"
            )
    return result.evaluate_metrics_serverapp.get(config.rounds - done)


def flower_strategy(config: RunConfig) -> FedAvg:
    """Flower's own strategy for a ledger-off run, unmodified: ``config.aggregation`` is
    ``flwr-fedavg`` (or ``fedavg``), ``flwr-krum``, ``flwr-multikrum``, ``flwr-trimmed-mean``
    or ``flwr-median`` (fedchain.config.FLOWER_RULES).

    Krum and Multi-Krum assume the same number of attackers ``f`` as fedchain's multi-krum
    (``max(0, (n - 3) // 2)`` of the ``n`` sampled clients); Multi-Krum averages ``n - f``.
    FedTrimmedAvg cuts ``beta = 0.2`` from each tail (Flower's default, as fedchain's trim).
    """
    n = config.sampled_per_round
    common: dict[str, Any] = {
        "fraction_train": config.sampled_per_round / config.clients,
        "fraction_evaluate": 0.0,
        "min_train_nodes": n,
        "min_available_nodes": n,
    }
    f = default_krum_f(n)
    rule = config.aggregation
    if rule in ("fedavg", "flwr-fedavg"):
        return FedAvg(**common)
    if rule == "flwr-krum":
        return Krum(**common, num_malicious_nodes=f)
    if rule == "flwr-multikrum":
        return MultiKrum(**common, num_malicious_nodes=f, num_nodes_to_select=n - f)
    if rule == "flwr-trimmed-mean":
        return FedTrimmedAvg(**common, beta=0.2)
    if rule == "flwr-median":
        return FedMedian(**common)
    raise FedchainError(f"aggregation {rule!r} is not one of Flower's strategies")
