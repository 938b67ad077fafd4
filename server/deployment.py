"""The ServerApp's deployment mode: a registered federation's rounds on a real SuperLink.

``fedchain coordinator start`` submits the ServerApp with the run config ``federation-dir``; the
ServerApp then runs :func:`run_deployment`: it creates the federation's run directory and ledger
on the first start, or resumes the existing ledger at its head, and runs the rounds still to do.

Resuming: the ledger head's round ``k`` is the number of rounds done (a block pending at a crash
was never appended, so its round simply runs again); Flower numbers the new run's rounds from 1,
and the strategy maps Flower round ``r`` to ledger round ``k + r``. Model files the lost round
saved are removed first (:func:`fedchain.runs.federation.remove_unregistered_models`).
"""

from __future__ import annotations

import logging
from logging import INFO
from pathlib import Path

from flwr.common.logger import FLOWER_LOGGER, log
from flwr.serverapp import Grid

from fedchain.rounds.coordinator import RoundOutcome
from fedchain.runs.federation import (
    load_federation,
    prepare_federation_run,
    registered_node_keys,
    remove_unregistered_models,
)
from fedchain.runs.layout import LOG_FILENAME
from server.federate import run_federation
from server.strategy import compute_round_metrics


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
    handler = logging.FileHandler(run_dir / LOG_FILENAME)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    FLOWER_LOGGER.addHandler(handler)
    try:
        run_federation(
            grid,
            config,
            run_dir,
            _log_round,
            min_nodes=federation.min_clients or len(federation.participants),
            fraction_train=1.0,  # every connected participant trains; at least min_nodes
            join_timeout=federation.join_timeout,
            node_keys=registered_node_keys(federation),
        )
    finally:
        FLOWER_LOGGER.removeHandler(handler)
        handler.close()


def _log_round(round_: int, outcome: RoundOutcome | None, accuracy: float, seconds: float) -> None:
    """The round in the coordinator's log: whether the model moved, the updates accepted
    (averaged into the model), left out by the rule and why, and refused by the ledger and why;
    then what the payout rule did with the pool, and why."""
    if outcome is None:
        return
    counts = compute_round_metrics(outcome)
    explained = outcome.aggregation
    left_out = [] if explained is None else explained.left_out
    log(
        INFO,
        "round %d: accuracy %.4f, model %s, %d accepted, %d left out (%s), %d refused (%s), "
        "head %d, final %d",
        round_,
        accuracy,
        "moved" if counts["moved"] else "unchanged",
        counts["accepted"],
        counts["left_out"],
        "; ".join(f"{key.hex()[:16]}: {code}" for key, code in left_out) or "-",
        counts["refused"],
        "; ".join(d.reason for d in outcome.rejected) or "-",
        outcome.head_height,
        outcome.final_height,
    )
    if outcome.payout is not None:
        p = outcome.payout
        log(
            INFO,
            "round %d: pool %s, %d of %d units paid, %d carried (%s)",
            round_,
            p.decision,
            p.paid,
            p.available,
            p.carried,
            p.reason,
        )
