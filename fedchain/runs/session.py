"""One run's session on the coordinator, without Flower: ledger, coordinator, evaluation, metrics.

The Flower adapter (``server/federate.py``) drives the rounds; everything it needs from fedchain is
composed here: the run's chain (opened and re-verified, so a deployment resumes at its head),
the coordinator with its scorer and rule parameters, the central evaluation on the test split
after every round, and ``metrics.json`` (its history kept for the rounds the ledger holds).
Signatures are checked by one :class:`~fedchain.ledger.signatures.CachingVerifier` for the
session (a signature checked at admission is not checked again when its block is built).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedchain.aggregation.explain import encode_explanation
from fedchain.aggregation.weights import make_rule_params
from fedchain.anchor.connect import make_run_anchoring
from fedchain.config import RunConfig
from fedchain.data.sources import ArrayDataset
from fedchain.durable import write_atomically
from fedchain.errors import FedchainError
from fedchain.learning.architectures import load_numpy_state
from fedchain.learning.record import model_for_run
from fedchain.learning.training import evaluate
from fedchain.ledger.chain import Chain
from fedchain.ledger.signatures import CachingVerifier
from fedchain.rounds.admission import brief_reason
from fedchain.rounds.coordinator import Coordinator, RoundOutcome, RoundReporter
from fedchain.rounds.messages import encode_attack_settings
from fedchain.rounds.validation import RoundScorer, count_pass_threads
from fedchain.runs.layout import LEDGER_FILENAME, METRICS_FILENAME, MODEL_SUFFIX, MODELS_DIRNAME
from fedchain.runs.prepare import load_run_source, load_split
from fedchain.runs.registry import load_model

Arrays = dict[str, np.ndarray]


class Session:
    """A run's state on the coordinator between Flower's rounds.

    ``done`` is the ledger head's round when the session opened (a resumed run goes on from
    there: Flower's round ``r`` is ledger round ``done + r``); ``history`` the rows of
    ``metrics.json``.
    """

    def __init__(
        self,
        config: RunConfig,
        run_dir: Path,
        chain: Chain | None,
        test: ArrayDataset,
        report: RoundReporter | None = None,
    ) -> None:
        self.config, self.run_dir, self.chain = config, run_dir, chain
        self.report = report
        self.test = test
        self.record = chain.state.genesis.rules.model if chain is not None else None
        self.net = model_for_run(config, self.record, tuple(test.x.shape[1:]), len(test.classes))
        self.done = chain.state.round if chain is not None else 0  # rounds already on the ledger
        self.history: list[dict[str, Any]] = []
        self.outcomes: list[RoundOutcome] = []
        self.last_outcome: RoundOutcome | None = None
        self.started = time.perf_counter()

    @property
    def finished(self) -> bool:
        """Whether every configured round is on the ledger already."""
        return self.done >= self.config.rounds

    def resume_history(self) -> bool:
        """Keep ``metrics.json``'s rows of the rounds the ledger holds; False if unreadable."""
        if not self.done:
            return True
        rows = load_history(self.run_dir, self.done)
        self.history = rows or []
        return rows is not None

    def initial_model(self) -> Arrays:
        """The model the first round to run starts from: the ledger's head model, or (ledger
        off) the run directory's one initial model file."""
        if self.chain is not None:
            return load_model(self.run_dir, self.chain.state.model_head)
        files = sorted((self.run_dir / MODELS_DIRNAME).glob(f"*{MODEL_SUFFIX}"))
        if len(files) != 1:
            raise FedchainError(f"{self.run_dir}: expected exactly one initial model file")
        return load_model(self.run_dir, bytes.fromhex(files[0].name.removesuffix(MODEL_SUFFIX)))

    def make_coordinator(
        self, initial: Arrays, node_keys: Mapping[int, bytes] | None = None
    ) -> Coordinator:
        """The coordinator over the session's chain, scoring with the configured method."""
        if self.chain is None:
            raise FedchainError("a run with the ledger off has no coordinator")
        config = self.config
        scorer = None
        if config.contribution != "none":
            # the passes on the cores torch leaves idle (simulate: the clients' while they wait)
            validation = load_split(config)[1]
            scorer = RoundScorer(config, validation, self.record, threads=count_pass_threads())
        coordinator = Coordinator(
            self.run_dir,
            self.chain,
            initial,
            rule=config.aggregation,
            params=make_rule_params(config),
            scorer=scorer,
            anchoring=make_run_anchoring(config, self.run_dir, self.chain.verified),
        )
        coordinator.node_keys.update(node_keys or {})
        return coordinator

    def on_round(self, outcome: RoundOutcome) -> None:
        self.last_outcome = outcome
        self.outcomes.append(outcome)

    def evaluate(self, server_round: int, arrays: Arrays) -> tuple[float, float]:
        """Central evaluation after Flower round ``server_round`` (0: the initial model): record
        it in ``metrics.json`` and tell the reporter; (accuracy, loss)."""
        load_numpy_state(self.net, arrays)
        result = evaluate(self.net, self.test)
        elapsed = time.perf_counter() - self.started
        outcome = self.last_outcome
        if server_round > 0 or not self.history:  # a resumed run's round 0 is recorded already
            row: dict[str, Any] = {
                "round": self.done + server_round,
                "accuracy": result.accuracy,
                "loss": result.loss,
                "accepted": outcome.accepted if outcome and server_round else 0,
                "rejected": len(outcome.rejected) if outcome and server_round else 0,
                "seconds": round(elapsed, 3) if server_round else 0.0,
            }
            if outcome and server_round and outcome.aggregation is not None:
                row.update(encode_explanation(outcome.aggregation))  # accepted: averaged
            self.history.append(row)
            write_metrics(self.run_dir, self.history, encode_attack_settings(self.config))
        if self.report is not None and server_round > 0:
            self.report(self.done + server_round, outcome, result.accuracy, elapsed)
        self.started = time.perf_counter()
        return result.accuracy, result.loss

    def describe_nothing_accepted(self) -> str | None:
        """Why the run failed if none of its rounds accepted a single update, else None."""
        return describe_nothing_accepted(self.outcomes, self.done + 1)


@contextlib.contextmanager
def open_session(
    config: RunConfig, run_dir: Path, report: RoundReporter | None = None
) -> Iterator[Session]:
    """The run's session: the test split loaded, the ledger (if on) open and verified."""
    test = load_run_source(config, "test")
    with contextlib.ExitStack() as stack:
        chain = None
        if config.ledger:
            verifier = stack.enter_context(CachingVerifier())
            chain = stack.enter_context(Chain.open(run_dir / LEDGER_FILENAME, verifier=verifier))
        yield Session(config, run_dir, chain, test, report)


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


def load_history(run_dir: Path, done: int) -> list[dict[str, Any]] | None:
    """``metrics.json`` rows of the rounds the ledger holds (a lost round's row is dropped);
    ``[]`` without the file, None if it is unreadable."""
    path = run_dir / METRICS_FILENAME
    if not path.exists():
        return []
    try:
        rows = json.loads(path.read_text())["rounds"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return [row for row in rows if int(row.get("round", 0)) <= done]


def write_metrics(
    run_dir: Path,
    history: list[dict[str, Any]],
    attack: Mapping[str, Any] | None = None,
) -> None:
    """``metrics.json``: central accuracy and loss per round (round 0: the initial model), and
    with an attack, which clients attacked (``attack``, ``attack-scale``, ``attackers``)."""
    doc: dict[str, Any] = {"rounds": history}
    if attack:
        doc["attack"] = dict(attack)
    write_atomically(run_dir / METRICS_FILENAME, (json.dumps(doc, indent=1) + "\n").encode())
