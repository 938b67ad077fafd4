"""The Flower ServerApp run by the coordinator.

``fedchain simulate`` builds one with :func:`make_server_app` around a prepared run directory;
``flwr run .`` loads the module-level ``app``, which prepares a run directory from the
``[tool.flwr.app.config]`` settings (kebab-case keys, see fedchain.config.RunConfig) first, or,
given ``federation-dir``, runs a registered federation (server/deployment.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Mapping
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, ConfigRecordValues, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import (
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
)

from fedchain.aggregation.rules import RuleParams, _default_krum_f
from fedchain.config import RunConfig, check_attack_has_attackers, merge_config
from fedchain.errors import FedchainError
from fedchain.ledger.chain import Chain
from fedchain.ledger.store import LEDGER_FILENAME
from fedchain.rounds.admission import brief_reason
from fedchain.rounds.coordinator import Coordinator, RoundOutcome
from fedchain.rounds.messages import encode_attack_settings, encode_train_settings
from fedchain.runs.prepare import new_run_id, prepare_run
from fedchain.runs.registry import load_model
from server.strategy import FedchainStrategy, to_array_record

RoundReporter = Callable[[int, RoundOutcome | None, float, float], None]


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


def load_history(run_dir: Path, done: int) -> list[dict[str, float | int]]:
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
    from fedchain.data.sources import load_source
    from fedchain.learning.architectures import build_model, load_numpy_state
    from fedchain.learning.training import evaluate

    min_nodes = min_nodes or config.sampled_per_round
    if fraction_train is None:
        fraction_train = config.sampled_per_round / config.clients
    test = load_source(config.dataset, root=config.data_root or None, split="test")
    model_net = build_model(config.model, tuple(test.x.shape[1:]), len(test.classes), seed=0)
    last_outcome: list[RoundOutcome | None] = [None]
    outcomes: list[RoundOutcome] = []
    started = [time.perf_counter()]
    settings = train_settings(config, run_dir)

    with contextlib.ExitStack() as stack:
        chain = (
            stack.enter_context(Chain.open(run_dir / LEDGER_FILENAME)) if config.ledger else None
        )
        done = chain.state.round if chain is not None else 0  # rounds already on the ledger
        if done >= config.rounds:
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
        history = load_history(run_dir, done) if done else []

        def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            load_numpy_state(model_net, {k: v.numpy() for k, v in arrays.items()})
            result = evaluate(model_net, test)
            elapsed = time.perf_counter() - started[0]
            outcome = last_outcome[0]
            if server_round > 0 or not history:  # a resumed run's round 0 is recorded already
                history.append(
                    {
                        "round": done + server_round,
                        "accuracy": result.accuracy,
                        "loss": result.loss,
                        "accepted": outcome.accepted if outcome and server_round else 0,
                        "rejected": len(outcome.rejected) if outcome and server_round else 0,
                        "seconds": round(elapsed, 3) if server_round else 0.0,
                    }
                )
                write_metrics(run_dir, history, encode_attack_settings(config))
            if report is not None and server_round > 0:
                report(done + server_round, outcome, result.accuracy, elapsed)
            started[0] = time.perf_counter()
            return MetricRecord({"accuracy": result.accuracy, "loss": result.loss})

        strategy: FedAvg
        if chain is None:
            initial = _initial_without_ledger(run_dir)
            strategy = flower_strategy(config)
        else:
            initial = load_model(run_dir, chain.state.model_head)
            scorer = None
            if config.contribution != "none":
                from fedchain.rounds.recheck import RoundScorer
                from fedchain.runs.prepare import load_split

                scorer = RoundScorer(config, load_split(config)[1])
            params = RuleParams(
                beta=config.beta, cap=None if config.weight_cap >= 1 else config.weight_cap
            )
            coordinator = Coordinator(
                run_dir, chain, initial, rule=config.aggregation, params=params, scorer=scorer
            )
            coordinator.node_keys.update(node_keys or {})

            def on_round(outcome: RoundOutcome) -> None:
                last_outcome[0] = outcome
                outcomes.append(outcome)

            strategy = FedchainStrategy(
                coordinator,
                fraction_train=fraction_train,
                min_nodes=min_nodes,
                timeout=config.round_timeout,
                on_round=on_round,
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
            if outcomes and (why := describe_nothing_accepted(outcomes, done + 1)):
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
            if why := describe_nothing_accepted(outcomes, done + 1):
                raise FedchainError(why)
        elif not result.train_metrics_clientapp:
            raise FedchainError(
                f"no client update was aggregated in rounds {done + 1}..{config.rounds}: every "
                f"client failed (Flower's log: {run_dir / 'log.txt'})"
            )
    return result.evaluate_metrics_serverapp.get(config.rounds - done)


def describe_nothing_accepted(outcomes: list[RoundOutcome], first: int) -> str | None:
    """Why the run failed if no round from ``first`` on accepted a single update, else None.

    Such a run fails: the model never moved, so its "final accuracy" would be the initial
    model's. The ledger keeps every rejection; the message names the first, which is usually
    the reason for all of them (a client error, say).
    """
    if any(outcome.accepted for outcome in outcomes):
        return None
    rejected = [d for outcome in outcomes for d in outcome.rejected]
    why = brief_reason(rejected[0].reason) if rejected else "no client replied"
    last = first + len(outcomes) - 1
    rounds = f"round {first}" if last <= first else f"rounds {first}..{last}"
    return f"no client update was accepted in {rounds}: {why}"


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
    f = _default_krum_f(n)
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


def write_metrics(
    run_dir: Path,
    history: list[dict[str, float | int]],
    attack: Mapping[str, ConfigRecordValues] | None = None,
) -> None:
    """``metrics.json``: central accuracy and loss per round (round 0: the initial model), and
    with an attack, which clients attacked (``attack``, ``attack-scale``, ``attackers``)."""
    target = run_dir / "metrics.json"
    scratch = target.with_suffix(".json.tmp")
    doc: dict[str, Any] = {"rounds": history}
    if attack:
        doc["attack"] = dict(attack)
    scratch.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(scratch, target)


def _initial_without_ledger(run_dir: Path) -> dict:  # type: ignore[type-arg]
    from fedchain.runs.registry import MODEL_SUFFIX, MODELS_DIRNAME

    files = sorted((run_dir / MODELS_DIRNAME).glob(f"*{MODEL_SUFFIX}"))
    if len(files) != 1:
        raise FedchainError(f"{run_dir}: expected exactly one initial model file")
    return load_model(run_dir, bytes.fromhex(files[0].name.removesuffix(MODEL_SUFFIX)))


def make_server_app(
    config: RunConfig, run_dir: Path, report: RoundReporter | None = None
) -> ServerApp:
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_federation(grid, config, run_dir, report)

    return server_app


NODES_TIMEOUT_S = 30.0
"""How long ``flwr run .`` waits for its SuperNodes before saying how to start enough."""

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """``flwr run .``: prepare a run directory from the run config, then run it.

    With ``federation-dir`` set (``fedchain coordinator start`` does), run that registered
    federation instead: see :mod:`server.deployment`.
    """
    run_config = dict(context.run_config)
    federation_dir = str(run_config.pop("federation-dir", "") or "")
    if federation_dir:
        from server.deployment import run_deployment

        run_deployment(grid, Path(federation_dir))
        return
    config = merge_config(RunConfig(), run_config)
    check_attack_has_attackers(config)
    try:  # before anything is written: Flower's default simulation has 2 SuperNodes, not 10
        wait_for_nodes(grid, config.clients, timeout=NODES_TIMEOUT_S)
    except FedchainError:
        connected = len(list(grid.get_node_ids()))
        raise FedchainError(
            f"{connected} SuperNodes connected but clients = {config.clients}: run "
            f"flwr run . --federation-config 'num-supernodes={config.clients}' (or set "
            f"--run-config 'clients={connected}')"
        ) from None
    if not config.run_id:
        config = merge_config(config, {"run-id": new_run_id(config)})
    setup = prepare_run(config)
    log(INFO, "fedchain run directory: %s", setup.run_dir.resolve())
    run_federation(grid, config, setup.run_dir)
