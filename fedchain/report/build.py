"""The contribution report of a run: who contributed what, who was rewarded or slashed and why,
how the model improved, and whether the ledger verifies (DESIGN.md §3.6).

Three layers, so each can be tested and reused on its own:

* reading (I/O): :func:`load_report_inputs` verifies the run's ledger and model files with
  :func:`~fedchain.ledger.verify.verify_ledger` and
  :func:`~fedchain.runs.registry.check_model_files` (the verdict), decodes its blocks, maps public
  keys to ``clients/client-NNN.pub`` indices, and reads ``metrics.json`` and ``config.toml`` when
  they are there;
* building (pure): :func:`compute_report` replays the blocks through the ledger's own state
  transition (:func:`~fedchain.ledger.state.process_block`), so every stake, reward and penalty
  shown is what the protocol computes, never a re-implementation of its rules, and returns a plain
  JSON-ready dict (bytes as hex, no NaN);
* rendering: :func:`render_html` turns that dict into one self-contained page (inline CSS and
  inline SVG plots from matplotlib, no script and no external address), and
  :func:`write_report_files` writes ``report.json`` and ``report.html``. The terminal summary is
  in :mod:`fedchain.cli.report`.

Trust: the ledger is the source of truth, and nothing after a block that fails verification is
used. Per-round accuracy is not on the ledger: it comes from the coordinator's ``metrics.json``
(``{"rounds": [{"round", "accuracy", "loss", "accepted", "rejected", "seconds"}, ...]}``), shown
as the coordinator reported it.

Time series are aligned with the report's ``timeline``: round 0 (the genesis) then every round,
each value taken at the end of the round (after its last block).
"""

from __future__ import annotations

import contextlib
import html
import io
import json
import math
import os
import re
import secrets
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedchain import __version__
from fedchain.config import RunConfig, load_config_file
from fedchain.crypto.identity import fingerprint, load_public_key
from fedchain.errors import ConfigError, FedchainError, LedgerError
from fedchain.ledger.codec import decode
from fedchain.ledger.objects import (
    BAD_COMMITMENT,
    SCORE_SCALE,
    Block,
    CommitmentMismatch,
    ContributionRecord,
    Genesis,
    HeaderPair,
    ModelVersion,
    PublicKey,
    Registration,
    Rejection,
    RewardDeltas,
    SlashingEvidence,
    UpdateCommitment,
    compute_block_hash,
)
from fedchain.ledger.show import printable
from fedchain.ledger.state import (
    BPS_DENOMINATOR,
    LedgerState,
    ParticipantState,
    process_block,
    process_genesis_block,
)
from fedchain.ledger.store import LedgerStore, open_ledger_path
from fedchain.ledger.verify import VerifyReport, verify_ledger
from fedchain.runs.federation import (
    FEDERATION_FILE,
    RUN_DIRNAME,
    load_federation,
    verify_registration,
)
from fedchain.runs.prepare import CLIENTS_DIR
from fedchain.runs.registry import (
    MODEL_SUFFIX,
    MODELS_DIRNAME,
    check_model_files,
    read_regular_file,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "METRICS_FILENAME",
    "REPORT_FORMAT",
    "REPORT_HTML",
    "REPORT_JSON",
    "ReportInputs",
    "RoundMetrics",
    "build_report",
    "compute_report",
    "load_report_inputs",
    "render_html",
    "render_json",
    "write_report_files",
]

REPORT_FORMAT = "fedchain-report/1"
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
METRICS_FILENAME = "metrics.json"
CONFIG_FILENAME = "config.toml"
HASH_PREFIX_CHARS = 16
NO_CONTRIBUTIONS = "no contribution scores recorded"
_CLIENT_PUB = re.compile(r"client-(\d+)\.pub")


# --------------------------------------------------------------------------------------------------
# Inputs (I/O)


@dataclass(frozen=True)
class RoundMetrics:
    """One round of the coordinator's ``metrics.json``; any value may be missing (None)."""

    round: int
    accuracy: float | None = None
    loss: float | None = None
    accepted: int | None = None
    rejected: int | None = None
    seconds: float | None = None


@dataclass(frozen=True)
class ReportInputs:
    """Everything :func:`compute_report` needs, read from a run directory.

    ``blocks`` are the decoded blocks in height order, up to (not including) the block where
    verification failed or the first block that cannot be read. ``models_present`` are the
    hashes of the files in ``models/`` (by name; :func:`check_model_files` checked contents).
    ``metrics`` is None when the run has no usable ``metrics.json``; ``notes`` say why inputs
    that are optional were missing or unreadable. ``registered_names`` are a deployed
    federation's participant names (:func:`read_registered_names`) and ``plan`` the rounds the
    run was meant to have (:func:`read_run_plan`).
    """

    run_dir: Path
    verification: VerifyReport
    model_problems: tuple[str, ...] = ()
    blocks: tuple[Block, ...] = ()
    client_indices: Mapping[PublicKey, int] = field(default_factory=dict)
    metrics: tuple[RoundMetrics, ...] | None = None
    config: Mapping[str, Any] | None = None
    models_present: frozenset[bytes] = frozenset()
    notes: tuple[str, ...] = ()
    registered_names: Mapping[PublicKey, str] = field(default_factory=dict)
    plan: RunPlan | None = None


def load_report_inputs(
    run_dir: Path, *, on_block: Callable[[int, int], None] | None = None
) -> ReportInputs:
    """Read and verify ``run_dir`` (see :class:`ReportInputs`).

    A bad ledger is not an error here: the verdict records it and the report shows it. Raises
    :class:`~fedchain.errors.FedchainError` only when there is no run directory with a ledger.
    ``on_block(height, head_height)`` follows the verification's progress. Optional inputs
    (metrics, config, key files, the federation's settings) are read only when they are
    regular files inside the run directory or its federation folder: a FIFO must not hang a
    report, nor a link make it read someone else's files.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(
            f"{run_dir}: not a run directory (give the folder that `fedchain simulate` wrote, "
            "holding ledger.db)"
        )
    ledger_path = open_ledger_path(run_dir)  # raises when there is no ledger.db
    verification = verify_ledger(run_dir, on_block=on_block)
    model_problems: tuple[str, ...] = ()
    if verification.ok:
        model_problems = tuple(check_model_files(run_dir, verification))
    stop = None if verification.failure is None else verification.failure.height
    blocks = _read_blocks(ledger_path, stop)
    metrics, metrics_notes = _read_metrics(run_dir / METRICS_FILENAME)
    config, config_note = _read_config(run_dir / CONFIG_FILENAME)
    genesis = _genesis_of(blocks)
    names, names_note = (
        read_registered_names(run_dir, genesis) if genesis is not None else ({}, None)
    )
    plan = read_run_plan(run_dir)
    return ReportInputs(
        run_dir=run_dir,
        verification=verification,
        model_problems=model_problems,
        blocks=blocks,
        client_indices=_read_client_indices(run_dir / CLIENTS_DIR),
        metrics=metrics,
        config=config,
        models_present=_read_model_names(run_dir / MODELS_DIRNAME),
        notes=tuple(n for n in (*metrics_notes, config_note, names_note) if n),
        registered_names=names,
        plan=plan,
    )


def _genesis_of(blocks: Sequence[Block]) -> Genesis | None:
    first = blocks[0].transactions[0] if blocks and blocks[0].transactions else None
    return first if isinstance(first, Genesis) else None


def _read_text(path: Path, root: Path) -> str:
    """A small optional input's text: a regular file inside ``root`` (ConfigError, OSError)."""
    try:
        return read_regular_file(path, root).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason})") from None


@dataclass(frozen=True)
class RunPlan:
    """How many rounds a run was meant to have, where that was read, and how to continue it."""

    rounds: int
    source: str
    resume: str


def read_run_plan(run_dir: Path) -> RunPlan | None:
    """The rounds ``run_dir`` was started for, or None when nothing says.

    A simulated run's ``config.toml`` names them; a deployed run (``FED_DIR/run``) follows its
    federation's settings (``FED_DIR/federation.toml``), which a coordinator may raise before a
    restart, so those win when both are there. Only ``rounds`` is read: a run whose other
    settings a newer fedchain refuses (``lr = inf``) still says how far it got.
    """
    run_dir = Path(run_dir)
    fed_dir = run_dir.parent
    if run_dir.name == RUN_DIRNAME and (fed_dir / FEDERATION_FILE).exists():
        rounds = _read_rounds(fed_dir / FEDERATION_FILE, fed_dir)
        if rounds is not None:
            resume = f"fedchain coordinator start {fed_dir}"
            return RunPlan(rounds, str(fed_dir / FEDERATION_FILE), resume)
    rounds = _read_rounds(run_dir / CONFIG_FILENAME, run_dir)
    if rounds is not None:
        resume = f"fedchain simulate --resume {run_dir}"
        return RunPlan(rounds, str(run_dir / CONFIG_FILENAME), resume)
    return None


def _read_rounds(path: Path, root: Path) -> int | None:
    """``rounds`` of a TOML settings file (top level or ``[fedchain]``; absent: the default)."""
    try:
        doc = tomllib.loads(_read_text(path, root))
    except (FedchainError, OSError, tomllib.TOMLDecodeError):
        return None
    table = doc.get("fedchain", doc)
    rounds = table.get("rounds", RunConfig.rounds) if isinstance(table, dict) else None
    return rounds if type(rounds) is int and rounds >= 1 else None


def describe_unfinished(ledger_round: int, plan: RunPlan | None) -> str | None:
    """The line that says a run stopped before its last round (None when it did not)."""
    if plan is None or ledger_round >= plan.rounds:
        return None
    return f"unfinished: ledger at round {ledger_round} of {plan.rounds}; resume with {plan.resume}"


def read_registered_names(
    run_dir: Path, genesis: Genesis
) -> tuple[dict[PublicKey, str], str | None]:
    """A deployed run's participant names: ``{public key: name}``, and a note if unreadable.

    They come from the federation's ``federation.toml`` beside the run directory
    (``FED_DIR/run``). A name is the coordinator's label and is not itself signed; it is used
    only for an entry whose registration is signed by its key (checked here) and matches that
    key's genesis entry (stake, dataset commitment, examples), so a name is never attached to
    a key whose owner did not register with this federation. A name two entries share is
    dropped (both keep their fingerprints).
    """
    run_dir = Path(run_dir)
    fed_dir = run_dir.parent
    if run_dir.name != RUN_DIRNAME or not (fed_dir / FEDERATION_FILE).exists():
        return {}, None
    try:
        _read_text(fed_dir / FEDERATION_FILE, fed_dir)
        entries = load_federation(fed_dir).participants
    except (FedchainError, OSError) as e:
        return {}, f"participants' names not shown: {e}"
    on_genesis = {
        p.public_key: (p.stake, p.dataset_hash, p.num_examples) for p in genesis.participants
    }
    names: dict[PublicKey, str] = {}
    for entry in entries:
        reg = entry.registration
        if on_genesis.get(reg.public_key) != (reg.stake, reg.dataset_hash, reg.num_examples):
            continue
        with contextlib.suppress(FedchainError):
            verify_registration(entry)
            names[reg.public_key] = entry.name
    shared = {n for n in names.values() if list(names.values()).count(n) > 1}
    return {k: n for k, n in names.items() if n not in shared}, None


def _read_blocks(ledger_path: Path, stop: int | None) -> tuple[Block, ...]:
    """Decoded blocks below height ``stop`` (all if None), up to the first unreadable one."""
    blocks: list[Block] = []
    with contextlib.suppress(LedgerError), LedgerStore.open(ledger_path, readonly=True) as store:
        for stored in store.iter_blocks():
            if stop is not None and stored.height >= stop:
                break
            blocks.append(decode(Block, stored.data))
    return tuple(blocks)


def _read_client_indices(clients_dir: Path) -> dict[PublicKey, int]:
    """``client-NNN.pub`` files → {public key: NNN}; unreadable files are skipped."""
    indices: dict[PublicKey, int] = {}
    if not clients_dir.is_dir():
        return indices
    for path in sorted(clients_dir.glob("client-*.pub")):
        match = _CLIENT_PUB.fullmatch(path.name)
        if match is None or path.is_symlink() or not path.is_file():  # no FIFO, no link out
            continue
        with contextlib.suppress(FedchainError, OSError):
            indices[load_public_key(path)] = int(match.group(1))
    return indices


def _read_model_names(models_dir: Path) -> frozenset[bytes]:
    names: set[bytes] = set()
    if models_dir.is_dir():
        for path in models_dir.glob(f"*{MODEL_SUFFIX}"):
            with contextlib.suppress(ValueError):
                names.add(bytes.fromhex(path.name.removesuffix(MODEL_SUFFIX)))
    return frozenset(names)


def _read_metrics(path: Path) -> tuple[tuple[RoundMetrics, ...] | None, list[str]]:
    """The coordinator's per-round metrics, and notes on what is missing from them and why.

    Whatever the file holds, this returns: unreadable or garbled as a whole (not JSON, not
    UTF-8, nested too deep, a FIFO), the metrics are None with a note; a value that is not a
    finite number (NaN, Infinity, text) is missing (None), with one note naming where.
    """
    if not path.exists():
        return None, [f"no {METRICS_FILENAME} in the run directory: accuracy per round not shown"]
    try:
        doc = json.loads(_read_text(path, path.parent))
        rounds = doc["rounds"]
        if not isinstance(rounds, list):
            raise TypeError("'rounds' is not a list")
        parsed: dict[int, RoundMetrics] = {}
        dropped: list[str] = []
        for entry in rounds:
            metrics, missing = _parse_round_metrics(entry)
            parsed[metrics.round] = metrics
            dropped += [f"round {metrics.round} {name}" for name in missing]
    except (FedchainError, OSError, ValueError, TypeError, KeyError, RecursionError) as e:
        reason = "nested too deep" if isinstance(e, RecursionError) else printable(e)
        return None, [f"{path.name} is unreadable ({reason}): accuracy per round not shown"]
    notes = []
    if dropped:
        listed = ", ".join(dropped[:4]) + (
            f" and {len(dropped) - 4} more" if len(dropped) > 4 else ""
        )
        notes.append(f"{path.name}: not a finite number, shown as missing: {listed}")
    return tuple(parsed[r] for r in sorted(parsed)), notes


def _parse_round_metrics(entry: Any) -> tuple[RoundMetrics, list[str]]:
    """One round's metrics, and the names of the values present but not finite numbers."""
    if not isinstance(entry, dict):
        raise TypeError(f"a round entry is {type(entry).__name__}, not an object")
    round_ = entry["round"]
    if type(round_) is not int or round_ < 0:
        raise TypeError(f"round {printable(repr(round_))[:40]} is not a round number")
    metrics = RoundMetrics(
        round=round_,
        accuracy=_finite(entry.get("accuracy")),
        loss=_finite(entry.get("loss")),
        accepted=_count(entry.get("accepted")),
        rejected=_count(entry.get("rejected")),
        seconds=_finite(entry.get("seconds")),
    )
    fields = ("accuracy", "loss", "accepted", "rejected", "seconds")
    missing = [k for k in fields if getattr(metrics, k) is None and entry.get(k) is not None]
    return metrics, missing


def _finite(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        with contextlib.suppress(OverflowError):  # an int past float's range
            if math.isfinite(value):
                return float(value)
    return None


def _count(value: Any) -> int | None:
    return value if type(value) is int and value >= 0 else None


def _read_config(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The run's resolved settings, JSON-ready: a setting that is not a finite number
    (``lr = inf`` in a run made before such values were refused) is kept as its text."""
    if not path.exists():
        return None, None
    try:
        _read_text(path, path.parent)  # a regular file inside the run, or refused
        table = load_config_file(path).to_toml_dict()
    except (FedchainError, OSError) as e:
        return None, f"{CONFIG_FILENAME} not shown: {printable(e)}"
    return {k: _json_value(v) for k, v in table.items()}, None


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


# --------------------------------------------------------------------------------------------------
# The report (pure)


@dataclass(frozen=True)
class _Replay:
    """Blocks with the state after each (genesis first); ``stopped`` says why it ended early."""

    blocks: tuple[Block, ...]
    states: tuple[LedgerState, ...]
    stopped: str | None


def _compute_replay(blocks: Sequence[Block]) -> _Replay:
    """Replay ``blocks`` through the ledger's state transition, stopping at the first failure."""
    states: list[LedgerState] = []
    stopped = None
    try:
        for block in blocks:
            if not states:
                states.append(process_genesis_block(block))
            else:
                states.append(process_block(states[-1], block))
    except LedgerError as e:
        stopped = f"block {len(states)}: {e}"
    return _Replay(tuple(blocks[: len(states)]), tuple(states), stopped)


def compute_report(inputs: ReportInputs) -> dict[str, Any]:
    """The report as a JSON-ready dict (see the module docstring for what it holds)."""
    replay = _compute_replay(inputs.blocks)
    if not replay.states:
        genesis = None
    else:
        first = replay.blocks[0].transactions[0]
        genesis = first if isinstance(first, Genesis) else None
    verification = _verification_json(inputs, replay)
    progress = _progress_json(inputs)
    unfinished = [progress["unfinished"]] if progress["unfinished"] else []
    if genesis is None:
        return {
            "format": REPORT_FORMAT,
            "generator": f"fedchain {__version__}",
            "run": {"run_id": inputs.verification.run_id, "run_dir": str(inputs.run_dir)},
            "verification": verification,
            "timeline": [],
            "rounds": [],
            "participants": [],
            "events": [],
            "lineage": [],
            "totals": {},
            "contributions_recorded": False,
            "metrics_available": False,
            "initial_model": {"accuracy": None, "loss": None},
            "progress": progress,
            "notes": [*unfinished, *inputs.notes, "the ledger's genesis block could not be read"],
        }
    ledger_rounds = sorted({b.header.round for b in replay.blocks} - {0})
    metrics = {m.round: m for m in inputs.metrics or () if m.round > 0}
    initial = next((m for m in inputs.metrics or () if m.round == 0), None)
    rounds = sorted(set(ledger_rounds) | set(metrics))
    timeline = [0, *rounds]
    events = _events_json(inputs, replay, genesis)
    participants = _participants_json(inputs, replay, genesis, timeline, events)
    rounds_json = _rounds_json(replay, timeline[1:], metrics, events)
    contributions = any(
        isinstance(tx, ContributionRecord) for b in replay.blocks for tx in b.transactions
    )
    notes = [*unfinished, *inputs.notes]
    if not contributions:
        notes.append(
            f"{NO_CONTRIBUTIONS} on this ledger (contribution method "
            f"{genesis.rules.contribution_method!r}): rewards were not split by contribution"
        )
    if replay.stopped is not None or not inputs.verification.ok:
        last = replay.blocks[-1].header
        notes.append(
            f"ledger data is shown up to block {last.height} (round {last.round}), the last "
            "block that verified"
        )
    return {
        "format": REPORT_FORMAT,
        "generator": f"fedchain {__version__}",
        "run": _run_json(inputs, genesis),
        "verification": verification,
        "timeline": timeline,
        "rounds": rounds_json,
        "participants": participants,
        "events": events,
        "lineage": _lineage_json(inputs, replay, genesis),
        "totals": _totals_json(participants, rounds_json, events, replay),
        "contributions_recorded": contributions,
        "metrics_available": bool(metrics),
        "initial_model": {
            "accuracy": None if initial is None else initial.accuracy,
            "loss": None if initial is None else initial.loss,
        },
        "progress": progress,
        "notes": notes,
    }


def _progress_json(inputs: ReportInputs) -> dict[str, Any]:
    """How far the run got: the verified ledger's round against the rounds it was started for
    (``planned_rounds`` None when nothing in or beside the run directory says)."""
    plan = inputs.plan
    done = inputs.verification.rounds
    return {
        "ledger_round": done,
        "planned_rounds": None if plan is None else plan.rounds,
        "planned_from": None if plan is None else plan.source,
        "finished": None if plan is None else done >= plan.rounds,
        "unfinished": describe_unfinished(done, plan),
        "resume": None if plan is None or done >= plan.rounds else plan.resume,
    }


def _run_json(inputs: ReportInputs, genesis: Genesis) -> dict[str, Any]:
    rules = genesis.rules
    return {
        "run_id": genesis.run_id,
        "run_dir": str(inputs.run_dir),
        "genesis_hash": inputs.verification.genesis_hash.hex(),
        "rules": {
            "min_stake": rules.min_stake,
            "reward_per_round": rules.reward_per_round,
            "slash_bps": dict(rules.slash_bps),
            "aggregation_rule": rules.aggregation_rule,
            "aggregation_params": dict(rules.aggregation_params),
            "contribution_method": rules.contribution_method,
            "weight_cap_bps": rules.weight_cap_bps,
            "reputation_penalty_bps": rules.reputation_penalty_bps,
        },
        "config": None if inputs.config is None else dict(inputs.config),
    }


def _verification_json(inputs: ReportInputs, replay: _Replay) -> dict[str, Any]:
    v = inputs.verification
    failure = (
        None if v.failure is None else {"height": v.failure.height, "reason": v.failure.reason}
    )
    if v.failure is not None:
        where = f"block {v.failure.height}"
        # the state transition's messages often name the block already
        first_failure: str | None = (
            v.failure.reason if v.failure.reason.startswith(where) else str(v.failure)
        )
    elif inputs.model_problems:
        first_failure = f"model files: {inputs.model_problems[0]}"
    elif replay.stopped is not None:  # verify accepted what the replay refused: never expected
        first_failure = f"replay: {replay.stopped}"
    else:
        first_failure = None
    return {
        "ok": first_failure is None,
        "verdict": "verified" if first_failure is None else "FAILED",
        "first_failure": first_failure,
        "ledger_ok": v.ok,
        "failure": failure,
        "models_checked": v.ok,
        "model_problems": list(inputs.model_problems),
        "blocks": v.blocks,
        "head_height": v.head_height,
        "head_hash": v.head_hash.hex(),
        "final_height": v.final_height,
        "rounds": v.rounds,
        "signatures": v.signatures,
        "tx_counts": dict(v.tx_counts),
        "participants": v.participants,
        "active": v.active,
        "total_stake": v.total_stake,
        "report_blocks": len(replay.blocks),
    }


def _state_at(replay: _Replay, round_: int) -> LedgerState | None:
    """The state at the end of ``round_``: after the last replayed block of a round <= it.

    None past the last replayed round, where the ledger says nothing (or nothing verified).
    """
    if not replay.states or round_ > replay.blocks[-1].header.round:
        return None
    found = replay.states[0]
    for block, state in zip(replay.blocks, replay.states, strict=True):
        if block.header.round > round_:
            break
        found = state
    return found


def _participant_order(
    keys: Iterable[PublicKey], client_indices: Mapping[PublicKey, int]
) -> list[PublicKey]:
    """Simulated clients by index, then everyone else by fingerprint (deterministic)."""
    return sorted(keys, key=lambda k: (client_indices.get(k, math.inf), fingerprint(k)))


def _who(key: PublicKey, inputs: ReportInputs) -> dict[str, Any]:
    """How the report names a participant: a simulated client by its index, a deployed
    federation's participant by its registered name (see :func:`read_registered_names`),
    anyone else by the fingerprint of its key (always given too)."""
    index = inputs.client_indices.get(key)
    registered = inputs.registered_names.get(key)
    fp = fingerprint(key) if len(key) == 32 else key.hex()
    name = registered or fp
    if index is not None:
        name = f"client {index}"
    return {"fingerprint": fp, "client": index, "registered_name": registered, "name": name}


def _participants_json(
    inputs: ReportInputs,
    replay: _Replay,
    genesis: Genesis,
    timeline: Sequence[int],
    events: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    indices = inputs.client_indices
    final = replay.states[-1]
    initial = {p.public_key: p.stake for p in genesis.participants}
    joined = dict.fromkeys(initial, 0)
    rewards: dict[PublicKey, dict[int, int]] = defaultdict(dict)
    penalties: dict[PublicKey, int] = defaultdict(int)
    scores: dict[PublicKey, dict[int, int]] = defaultdict(dict)  # quantised, summed per round
    counts: dict[str, dict[PublicKey, int]] = defaultdict(lambda: defaultdict(int))
    for block in replay.blocks[1:]:
        round_ = block.header.round
        for tx in block.transactions:
            if isinstance(tx, Registration):
                initial.setdefault(tx.public_key, tx.stake)
                joined.setdefault(tx.public_key, round_)
            elif isinstance(tx, RewardDeltas):
                for key, delta in tx.deltas:
                    if delta > 0:
                        rewards[key][round_] = rewards[key].get(round_, 0) + delta
                    else:
                        penalties[key] -= delta
            elif isinstance(tx, ContributionRecord):
                for key, score in tx.scores:
                    scores[key][round_] = scores[key].get(round_, 0) + score
            elif isinstance(tx, UpdateCommitment):
                counts["updates"][tx.public_key] += 1
            elif isinstance(tx, Rejection):
                counts["rejections"][tx.public_key] += 1
            elif isinstance(tx, SlashingEvidence):
                counts["slashings"][tx.offender] += 1
    slashed: dict[str, int] = defaultdict(int)
    for event in events:
        slashed[event["public_key"]] += event["stake_lost"]
    states = [_state_at(replay, r) for r in timeline]
    result = []
    for key in _participant_order(final.participants, indices):
        now = final.participants[key]
        stake_series: list[int | None] = []
        for r, state in zip(timeline, states, strict=True):
            p = None if state is None or r < joined.get(key, 0) else state.participants.get(key)
            stake_series.append(None if p is None else p.stake)
        cumulative: list[int | None] = []
        running = 0
        for r, stake in zip(timeline, stake_series, strict=True):
            running += rewards[key].get(r, 0)
            cumulative.append(None if stake is None else running)
        contribution = [_unquantise(scores[key].get(r)) for r in timeline]
        result.append(
            {
                "public_key": key.hex(),
                **_who(key, inputs),
                "num_examples": now.num_examples,
                "joined_round": joined.get(key, 0),
                "initial_stake": initial.get(key, now.stake),
                "stake": now.stake,
                "stake_change": now.stake - initial.get(key, now.stake),
                "rewards": sum(rewards[key].values()),
                "penalties": penalties[key],
                "slashed": slashed[key.hex()],
                "updates": counts["updates"][key],
                "rejections": counts["rejections"][key],
                "slashings": counts["slashings"][key],
                "contribution": _unquantise(sum(scores[key].values()) if scores[key] else None),
                "reputation_bps": now.reputation_bps,
                "reputation": now.reputation_bps / BPS_DENOMINATOR,
                "active": now.active,
                "stake_by_round": stake_series,
                "rewards_by_round": cumulative,
                "contribution_by_round": contribution,
            }
        )
    return result


def _unquantise(score: int | None) -> float | None:
    return None if score is None else score / SCORE_SCALE


def _stake_lost(pre: ParticipantState | None, post: ParticipantState | None, block: Block) -> int:
    """Stake a participant lost in ``block`` beyond its explicit reward deltas: slashing."""
    if pre is None or post is None:
        return 0
    explicit = sum(
        delta
        for tx in block.transactions
        if isinstance(tx, RewardDeltas)
        for key, delta in tx.deltas
        if key == pre.public_key
    )
    return max(0, max(0, pre.stake + explicit) - post.stake)


def _describe_evidence(tx: SlashingEvidence) -> tuple[str, dict[str, Any]]:
    """A sentence saying what the offence was, and the evidence's checkable details (hex)."""
    evidence = tx.evidence
    if isinstance(evidence, CommitmentMismatch):
        c = evidence.commitment
        return (
            f"sent an update that does not match its signed commitment in round {c.round} "
            f"(committed {c.update_hash.hex()[:HASH_PREFIX_CHARS]}…, received "
            f"{evidence.observed_update_hash.hex()[:HASH_PREFIX_CHARS]}…)",
            {
                "commitment_round": c.round,
                "committed_update_hash": c.update_hash.hex(),
                "observed_update_hash": evidence.observed_update_hash.hex(),
                "num_examples": c.num_examples,
            },
        )
    if isinstance(evidence, HeaderPair):
        first, second = evidence.first.header, evidence.second.header
        return (
            f"signed two different block headers at height {first.height}",
            {
                "height": first.height,
                "first_block_hash": compute_block_hash(first).hex(),
                "second_block_hash": compute_block_hash(second).hex(),
            },
        )
    return (  # an AttestationPair: the codec admits no other evidence
        f"attested to two different blocks at height {evidence.first.height}",
        {
            "height": evidence.first.height,
            "first_block_hash": evidence.first.block_hash.hex(),
            "second_block_hash": evidence.second.block_hash.hex(),
        },
    )


def _events_json(inputs: ReportInputs, replay: _Replay, genesis: Genesis) -> list[dict[str, Any]]:
    """Rejected updates, slashing (with its evidence) and ejections, in ledger order.

    A slashing's ``stake_lost`` is what its block took from the offender beyond the block's
    explicit reward deltas (several offences of one key in one block: on the first).
    """
    events: list[dict[str, Any]] = []

    def add(block: Block, kind: str, key: PublicKey, reason: str, **more: Any) -> None:
        where = {"round": block.header.round, "height": block.header.height, "kind": kind}
        empty = {"slashing_kind": None, "evidence_kind": None, "evidence": None, "stake_lost": 0}
        who = {"public_key": key.hex(), **_who(key, inputs)}
        events.append({**where, **who, "reason": reason, **empty, **more})

    for pre, block, post in zip(replay.states, replay.blocks[1:], replay.states[1:], strict=False):
        charged: set[PublicKey] = set()
        for tx in block.transactions:
            if isinstance(tx, Rejection):
                add(block, "rejected", tx.public_key, tx.reason)
            elif isinstance(tx, SlashingEvidence):
                reason, details = _describe_evidence(tx)
                key = tx.offender
                lost = 0
                if key not in charged:
                    charged.add(key)
                    lost = _stake_lost(pre.participants.get(key), post.participants.get(key), block)
                add(
                    block,
                    "slashed",
                    key,
                    reason,
                    slashing_kind=tx.kind,
                    evidence_kind=type(tx.evidence).__name__,
                    evidence=details,
                    stake_lost=lost,
                )
        for key, after in post.participants.items():
            before = pre.participants.get(key)
            if before is not None and before.active and not after.active:
                reason = (
                    f"stake {after.stake:,} fell below the minimum stake "
                    f"{genesis.rules.min_stake:,}"
                )
                add(block, "ejected", key, reason)
    return events


def _rounds_json(
    replay: _Replay,
    rounds: Sequence[int],
    metrics: Mapping[int, RoundMetrics],
    events: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    by_round: dict[int, list[Block]] = defaultdict(list)
    for block in replay.blocks[1:]:
        by_round[block.header.round].append(block)
    result = []
    for r in rounds:
        blocks = by_round.get(r, [])
        txs = [tx for b in blocks for tx in b.transactions]
        deltas = [d for tx in txs if isinstance(tx, RewardDeltas) for _, d in tx.deltas]
        models = [tx for tx in txs if isinstance(tx, ModelVersion)]
        round_events = [e for e in events if e["round"] == r]
        m = metrics.get(r)
        ledger: dict[str, Any] = {
            "accepted": sum(isinstance(tx, UpdateCommitment) for tx in txs),
            "rejected": sum(
                e["kind"] == "rejected"
                or (e["kind"] == "slashed" and e["slashing_kind"] == BAD_COMMITMENT)
                for e in round_events
            ),
            "slashing_events": sum(e["kind"] == "slashed" for e in round_events),
            "stake_slashed": sum(e["stake_lost"] for e in round_events),
            "rewards_paid": sum(d for d in deltas if d > 0),
            "penalties": -sum(d for d in deltas if d < 0),
        }
        if not blocks:  # a round only metrics.json names: the ledger says nothing of it
            ledger = dict.fromkeys(ledger)
        result.append(
            {
                "round": r,
                "on_ledger": bool(blocks),
                "heights": [b.header.height for b in blocks],
                **ledger,
                "contributions_recorded": any(isinstance(tx, ContributionRecord) for tx in txs),
                "model_hash": models[-1].model_hash.hex() if models else None,
                "accuracy": None if m is None else m.accuracy,
                "loss": None if m is None else m.loss,
                "seconds": None if m is None else m.seconds,
            }
        )
    return result


def _lineage_json(inputs: ReportInputs, replay: _Replay, genesis: Genesis) -> list[dict[str, Any]]:
    present = inputs.models_present
    lineage = [
        {
            "round": 0,
            "height": 0,
            "model_hash": genesis.initial_model_hash.hex(),
            "parent_hash": None,
            "rule": None,
            "updates": 0,
            "file_present": genesis.initial_model_hash in present,
        }
    ]
    for block in replay.blocks[1:]:
        for tx in block.transactions:
            if isinstance(tx, ModelVersion):
                lineage.append(
                    {
                        "round": tx.round,
                        "height": block.header.height,
                        "model_hash": tx.model_hash.hex(),
                        "parent_hash": tx.parent_hash.hex(),
                        "rule": tx.rule,
                        "updates": len(tx.update_hashes),
                        "file_present": tx.model_hash in present,
                    }
                )
    return lineage


def _totals_json(
    participants: Sequence[Mapping[str, Any]],
    rounds: Sequence[Mapping[str, Any]],
    events: Sequence[Mapping[str, Any]],
    replay: _Replay,
) -> dict[str, Any]:
    accuracies = [r["accuracy"] for r in rounds if r["accuracy"] is not None]
    return {
        "rounds": sum(r["on_ledger"] for r in rounds),
        "participants": len(participants),
        "active": sum(p["active"] for p in participants),
        "total_stake": sum(p["stake"] for p in participants),
        "rewards_paid": sum(p["rewards"] for p in participants),
        "penalties": sum(p["penalties"] for p in participants),
        "stake_slashed": sum(p["slashed"] for p in participants),
        "accepted_updates": sum(r["accepted"] or 0 for r in rounds),
        "rejected_updates": sum(r["rejected"] or 0 for r in rounds),
        "slashing_events": sum(e["kind"] == "slashed" for e in events),
        "ejections": sum(e["kind"] == "ejected" for e in events),
        "final_accuracy": accuracies[-1] if accuracies else None,
        "best_accuracy": max(accuracies) if accuracies else None,
        "model_head": replay.states[-1].model_head.hex(),
    }


def build_report(
    run_dir: Path, *, on_block: Callable[[int, int], None] | None = None
) -> dict[str, Any]:
    """:func:`compute_report` of :func:`load_report_inputs`."""
    return compute_report(load_report_inputs(run_dir, on_block=on_block))


# --------------------------------------------------------------------------------------------------
# Files


def render_json(report: Mapping[str, Any]) -> str:
    """``report.json``: strict JSON (``allow_nan=False``: the builder leaves no NaN)."""
    return json.dumps(report, indent=2, allow_nan=False) + "\n"


def write_report_files(
    report: Mapping[str, Any], out_dir: Path, *, html_page: bool = True
) -> list[Path]:
    """Write ``report.json`` (and ``report.html``) into ``out_dir``; return their paths.

    Each file is written to a temporary name and renamed, so a reader never sees half a report.
    """
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{out_dir}: cannot create the output folder ({e.strerror})") from None
    files = [(out_dir / REPORT_JSON, render_json(report))]
    if html_page:
        files.append((out_dir / REPORT_HTML, render_html(report)))
    for path, text in files:
        _write_atomically(path, text)
    return [path for path, _ in files]


def _write_atomically(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        temp.write_text(text, encoding="utf-8")
        os.replace(temp, path)
    except OSError as e:
        temp.unlink(missing_ok=True)
        raise ConfigError(f"{path}: cannot write ({e.strerror or e})") from None


# --------------------------------------------------------------------------------------------------
# HTML


def render_html(report: Mapping[str, Any]) -> str:
    """One self-contained page: inline CSS, inline SVG plots, no scripts, no external address."""
    run = report["run"]
    title = f"fedchain report · {run.get('run_id', '')}"
    sections = [
        _html_header(report),
        _html_verdict(report["verification"]),
        _html_unfinished(report),
        _html_cards(report),
        _html_accuracy(report),
        _html_contributions(report),
        _html_rewards_and_stake(report),
        _html_participants(report),
        _html_events(report),
        _html_rounds(report),
        _html_lineage(report),
        _html_notes(report),
        _html_footer(report),
    ]
    body = "\n".join(s for s in sections if s)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
        f'<body>\n<main id="report">\n{body}\n</main>\n</body>\n</html>\n'
    )


_CSS = """
:root { --fg: #1f2933; --muted: #616e7c; --line: #e4e7eb; --bg: #f5f7fa; --ok: #18794e;
  --ok-bg: #e6f6ec; --bad: #b42318; --bad-bg: #fdecea; --accent: #1f5fa8; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1200px; margin: 0 auto; padding: 24px 28px 48px; }
header h1 { margin: 0 0 2px; font-size: 26px; }
header p { margin: 0; color: var(--muted); }
code, .mono { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace;
  font-size: 13px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 10px;
  padding: 18px 22px; margin-top: 18px; }
section h2 { margin: 0 0 4px; font-size: 18px; }
section .lead { margin: 0 0 12px; color: var(--muted); font-size: 14px; }
.verdict { display: flex; gap: 18px; align-items: center; border-width: 2px; }
.verdict .badge { font-size: 22px; font-weight: 700; padding: 8px 18px; border-radius: 8px;
  letter-spacing: .04em; white-space: nowrap; }
.verdict.ok { border-color: var(--ok); background: var(--ok-bg); }
.verdict.ok .badge { background: var(--ok); color: #fff; }
.verdict.failed { border-color: var(--bad); background: var(--bad-bg); }
.verdict.failed .badge { background: var(--bad); color: #fff; }
.verdict.unfinished { border-color: #9a5b00; background: #fff4e5; }
.verdict.unfinished .badge { background: #9a5b00; color: #fff; }
.verdict p { margin: 0; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: 12px;
  margin-top: 18px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 12px 14px; }
.card .value { font-size: 22px; font-weight: 650; }
.card .label { color: var(--muted); font-size: 13px; }
.grid2 { display: grid; grid-template-columns: 1fr 1fr; gap: 18px; }
.grid2 section { margin-top: 0; }
.pair { margin-top: 18px; }
@media (max-width: 900px) { .grid2 { grid-template-columns: 1fr; } }
figure { margin: 0; }
figure svg { width: 100%; height: auto; display: block; }
.empty { padding: 18px; border: 1px dashed #cbd2d9; border-radius: 8px; color: var(--muted);
  text-align: center; background: #fafbfc; }
table { width: 100%; border-collapse: collapse; font-size: 14px; }
th, td { text-align: left; padding: 6px 8px; border-bottom: 1px solid var(--line);
  vertical-align: top; }
td { white-space: nowrap; }
td.wrap { white-space: normal; }
th { font-weight: 600; color: var(--muted); font-size: 12px; text-transform: uppercase;
  letter-spacing: .03em; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:last-child td { border-bottom: none; }
.tag { display: inline-block; padding: 1px 8px; border-radius: 999px; font-size: 12px;
  font-weight: 600; }
.tag.rejected { background: #fff4e5; color: #9a5b00; }
.tag.slashed { background: var(--bad-bg); color: var(--bad); }
.tag.ejected { background: #ece8ff; color: #5b3cc4; }
.tag.yes { background: var(--ok-bg); color: var(--ok); }
.tag.no { background: var(--bad-bg); color: var(--bad); }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px;
  margin-right: 6px; vertical-align: baseline; }
.pos { color: var(--ok); } .neg { color: var(--bad); }
.notes li { color: var(--muted); }
footer { margin-top: 24px; color: var(--muted); font-size: 13px; text-align: center; }
.scroll { overflow-x: auto; }
"""


_DASH = "\u2013"  # an en dash: "no value"


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _short(hex_hash: str | None) -> str:
    return _DASH if not hex_hash else f"{hex_hash[:HASH_PREFIX_CHARS]}…"


def _num(value: int | None) -> str:
    return _DASH if value is None else f"{value:,}"


def _pct(value: float | None) -> str:
    return _DASH if value is None else f"{value * 100:.2f} %"


def _score(value: float | None) -> str:
    return _DASH if value is None else f"{value:+.4f}"


def _signed(value: int) -> str:
    css = "pos" if value > 0 else "neg" if value < 0 else ""
    return f'<span class="{css}">{value:+,}</span>' if value else "0"


def _html_header(report: Mapping[str, Any]) -> str:
    run = report["run"]
    rules = run.get("rules", {})
    config = run.get("config") or {}
    run_id = run.get("run_id") or "(unknown: the ledger cannot be read)"
    facts = [f"run <strong>{_esc(run_id)}</strong>"]
    if config:
        facts.append(f"dataset {_esc(config.get('dataset'))} ({_esc(config.get('partitioner'))})")
        facts.append(f"model {_esc(config.get('model'))}")
    if rules:
        facts.append(f"aggregation {_esc(rules['aggregation_rule'])}")
        facts.append(f"contribution {_esc(rules['contribution_method'])}")
    return (
        "<header>\n<h1>Contribution report</h1>\n"
        f"<p>{' · '.join(facts)}</p>\n"
        f'<p class="mono">{_esc(run.get("run_dir", ""))}</p>\n</header>'
    )


def _html_unfinished(report: Mapping[str, Any]) -> str:
    line = (report.get("progress") or {}).get("unfinished")
    if not line:
        return ""
    return (
        '<section class="verdict unfinished" id="unfinished">\n'
        '<div class="badge">UNFINISHED</div>\n'
        f"<div><p><strong>The run stopped early.</strong> {_esc(line)}</p></div>\n</section>"
    )


def _html_verdict(v: Mapping[str, Any]) -> str:
    if v["ok"]:
        detail = (
            f"Every block, signature and state transition checks out from genesis: "
            f"{v['blocks']:,} blocks, {v['signatures']:,} signatures, final height "
            f"{v['final_height']:,}; every model file matches its registered hash."
        )
        return (
            '<section class="verdict ok" id="verdict">\n<div class="badge">VERIFIED</div>\n'
            f"<div><p><strong>Ledger verified.</strong> {_esc(detail)}</p></div>\n</section>"
        )
    extra = "".join(f"<p>also: {_esc(p)}</p>" for p in v.get("model_problems", [])[1:4])
    return (
        '<section class="verdict failed" id="verdict">\n<div class="badge">FAILED</div>\n'
        "<div><p><strong>Verification failed.</strong> First failure:</p>"
        f'<p class="mono">{_esc(v["first_failure"])}</p>{extra}'
        "<p>Nothing the ledger records after the failing block is trusted or shown.</p>"
        "</div>\n</section>"
    )


def _html_cards(report: Mapping[str, Any]) -> str:
    t = report.get("totals") or {}
    if not t:
        return ""
    cards = [
        ("rounds", _num(t["rounds"])),
        (f"participants ({t['active']} active)", _num(t["participants"])),
        ("final accuracy", _pct(t["final_accuracy"])),
        ("rewards paid", _num(t["rewards_paid"])),
        ("updates accepted / rejected", f"{t['accepted_updates']} / {t['rejected_updates']}"),
        ("slashing events", _num(t["slashing_events"])),
        ("stake slashed", _num(t["stake_slashed"])),
    ]
    items = "".join(
        f'<div class="card"><div class="value">{_esc(value)}</div>'
        f'<div class="label">{_esc(label)}</div></div>'
        for label, value in cards
    )
    return f'<div class="cards">{items}</div>'


def _section(ident: str, title: str, lead: str, content: str) -> str:
    return (
        f'<section id="{ident}">\n<h2>{_esc(title)}</h2>\n<p class="lead">{lead}</p>\n'
        f"{content}\n</section>"
    )


def _figure(svg: str, ident: str, caption: str) -> str:
    return f'<figure class="plot" id="{ident}" aria-label="{_esc(caption)}">{svg}</figure>'


def _empty(text: str, ident: str) -> str:
    return f'<div class="empty" id="{ident}">{_esc(text)}</div>'


def _html_accuracy(report: Mapping[str, Any]) -> str:
    lead = "Central evaluation of the global model after each round (from the coordinator's "
    lead += f"<code>{METRICS_FILENAME}</code>)."
    if not report.get("metrics_available"):
        return _section(
            "accuracy",
            "Global accuracy per round",
            lead,
            _empty(
                f"no {METRICS_FILENAME} in the run directory: accuracy not recorded",
                "plot-accuracy",
            ),
        )
    return _section(
        "accuracy",
        "Global accuracy per round",
        lead,
        _figure(
            _plot(_draw_accuracy, report, "acc", (11, 3.4)),
            "plot-accuracy",
            "global accuracy per round",
        ),
    )


def _html_contributions(report: Mapping[str, Any]) -> str:
    lead = "Each client's recorded contribution score per round (quantised on the ledger; "
    lead += "blue helped the model, red hurt it, grey: not scored)."
    if not report.get("contributions_recorded"):
        content = _empty(f"{NO_CONTRIBUTIONS} on this ledger", "plot-contributions")
    else:
        height = max(2.2, 0.42 * len(report["participants"]) + 1.3)
        content = _figure(
            _plot(_draw_contributions, report, "contrib", (11, height)),
            "plot-contributions",
            "contribution per client per round",
        )
    return _section("contributions", "Contribution per client per round", lead, content)


def _html_rewards_and_stake(report: Mapping[str, Any]) -> str:
    if not report["participants"]:
        return ""
    rewards = _section(
        "rewards",
        "Cumulative rewards",
        "Reward units paid to each client from the rounds' pools.",
        _figure(_plot(_draw_rewards, report, "rewards", (5.6, 3.8)), "plot-rewards", "rewards"),
    )
    stake = _section(
        "stake",
        "Stake over time",
        "Each client's stake at the end of every round; &times; marks a slashing.",
        _figure(_plot(_draw_stake, report, "stake", (5.6, 3.8)), "plot-stake", "stake"),
    )
    return f'<div class="grid2 pair">{rewards}\n{stake}</div>'


def _html_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    numeric: set[int],
    wrap: frozenset[int] = frozenset(),
) -> str:
    """A table of already escaped cells; ``numeric`` columns align right, ``wrap`` ones wrap."""

    def cell(tag: str, index: int, content: str) -> str:
        classes = " ".join(
            name for name, cols in (("num", numeric), ("wrap", wrap)) if index in cols
        )
        return (
            f'<{tag} class="{classes}">{content}</{tag}>'
            if classes
            else f"<{tag}>{content}</{tag}>"
        )

    head = "".join(cell("th", i, _esc(h)) for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>" for row in rows
    )
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="scroll">{table}</div>'


def _html_participants(report: Mapping[str, Any]) -> str:
    colours = _participant_colours(len(report["participants"]))
    rows = []
    for p, colour in zip(report["participants"], colours, strict=True):
        swatch = f'<span class="swatch" style="background:{colour}"></span>'
        active = (
            '<span class="tag yes">yes</span>'
            if p["active"]
            else '<span class="tag no">ejected</span>'
        )
        rows.append(
            [
                f'{swatch}<span class="mono">{_esc(p["fingerprint"])}</span>',
                _DASH if p["name"] == p["fingerprint"] else _esc(p["name"]),
                _num(p["stake"]),
                _signed(p["stake_change"]),
                _num(p["rewards"]),
                _num(p["penalties"]),
                _num(p["slashed"]),
                _esc(_score(p["contribution"])),
                f"{p['reputation'] * 100:.0f} %",
                f"{p['updates']} / {p['rejections'] + p['slashings']}",
                active,
            ]
        )
    table = _html_table(
        [
            "key fingerprint",
            "name",
            "final stake",
            "change",
            "rewards",
            "penalties",
            "slashed",
            "contribution",
            "reputation",
            "updates ok / refused",
            "active",
        ],
        rows,
        {2, 3, 4, 5, 6, 7, 8, 9},
    )
    lead = "Participants are named by the SHA-256 fingerprint of their ledger key, and by "
    lead += "client index where the run directory holds their <code>.pub</code> file, or by "
    lead += "the name their federation registered them under (<code>federation.toml</code>, "
    lead += "for a registration signed by that key)."
    return _section("participants", "Participants", lead, table)


def _html_who(entry: Mapping[str, Any]) -> str:
    """A participant cell: the key fingerprint, and the client index or registered name where
    one is known."""
    who = f'<span class="mono">{_esc(entry["fingerprint"])}</span>'
    return who if entry["name"] == entry["fingerprint"] else f"{who}<br>{_esc(entry['name'])}"


def _html_events(report: Mapping[str, Any]) -> str:
    events = report["events"]
    lead = "Updates the coordinator refused, slashing with the evidence kind anyone can re-check, "
    lead += "and ejections below the minimum stake."
    if not events:
        return _section(
            "events",
            "Rejected updates and slashing",
            lead,
            _empty("none: every update was accepted", "events-empty"),
        )
    rows = [
        [
            str(e["round"]),
            str(e["height"]),
            f'<span class="tag {_esc(e["kind"])}">{_esc(e["kind"])}</span>',
            _html_who(e),
            _esc(e["slashing_kind"] or _DASH),
            _esc(e["evidence_kind"] or _DASH),
            _esc(e["reason"]),
            _num(e["stake_lost"]) if e["kind"] == "slashed" else _DASH,
        ]
        for e in events
    ]
    table = _html_table(
        ["round", "block", "event", "participant", "offence", "evidence", "reason", "stake lost"],
        rows,
        {0, 1, 7},
        wrap=frozenset({6}),
    )
    return _section("events", "Rejected updates and slashing", lead, table)


def _html_rounds(report: Mapping[str, Any]) -> str:
    rows = [
        [
            str(r["round"]),
            _esc(_pct(r["accuracy"])),
            _DASH if r["loss"] is None else f"{r['loss']:.4f}",
            _num(r["accepted"]),
            _num(r["rejected"]),
            _num(r["slashing_events"]),
            _num(r["rewards_paid"]),
            _num(r["penalties"]),
            "yes" if r["contributions_recorded"] else _DASH,
            f'<span class="mono">{_esc(_short(r["model_hash"]))}</span>',
            _DASH if r["seconds"] is None else f"{r['seconds']:.1f}",
        ]
        for r in report["rounds"]
    ]
    table = _html_table(
        [
            "round",
            "accuracy",
            "loss",
            "accepted",
            "rejected",
            "slashed",
            "rewards",
            "penalties",
            "scores",
            "model",
            "seconds",
        ],
        rows,
        {0, 1, 2, 3, 4, 5, 6, 7, 10},
    )
    return _section("rounds", "Rounds", "What the ledger recorded each round.", table)


def _html_lineage(report: Mapping[str, Any]) -> str:
    rows = [
        [
            str(m["round"]),
            str(m["height"]),
            f'<span class="mono" title="{_esc(m["model_hash"])}">'
            f"{_esc(_short(m['model_hash']))}</span>",
            f'<span class="mono">{_esc(_short(m["parent_hash"]))}</span>',
            _esc(m["rule"] or "initial model"),
            str(m["updates"]),
            '<span class="tag yes">present</span>'
            if m["file_present"]
            else '<span class="tag no">missing</span>',
        ]
        for m in report["lineage"]
    ]
    table = _html_table(
        ["round", "block", "model hash", "parent", "rule", "updates", "file"], rows, {0, 1, 5}
    )
    lead = "Every global model version registered on the ledger, with the model it was aggregated "
    lead += "from and the number of committed updates it aggregates."
    return _section("lineage", "Model lineage", lead, table)


def _html_notes(report: Mapping[str, Any]) -> str:
    notes = report.get("notes") or []
    if not notes:
        return ""
    items = "".join(f"<li>{_esc(n)}</li>" for n in notes)
    return _section(
        "notes",
        "Notes",
        "What this report could not show, and why.",
        f'<ul class="notes">{items}</ul>',
    )


def _html_footer(report: Mapping[str, Any]) -> str:
    v = report["verification"]
    return (
        f"<footer>{_esc(report['generator'])} · {_esc(REPORT_FORMAT)} · genesis "
        f'<span class="mono">{_esc(_short(report["run"].get("genesis_hash")))}</span> · head '
        f'<span class="mono">{_esc(_short(v.get("head_hash")))}</span></footer>'
    )


# --------------------------------------------------------------------------------------------------
# Plots (matplotlib, imported only when a page is rendered)


_PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


def _participant_colours(count: int) -> list[str]:
    """One colour per participant, the same in every plot and table (tab10, then tab20)."""
    if count <= len(_PALETTE):
        return list(_PALETTE[:count])
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    cmap = colormaps["tab20"]
    return [to_hex(cmap(i % 20)) for i in range(count)]


_RC: dict[Any, Any] = {  # keys: matplotlib rcParams
    "svg.fonttype": "none",  # text stays text: smaller, selectable, uses the page's fonts
    "svg.hashsalt": "fedchain-report",  # deterministic ids: the same run gives the same page
    "font.family": "sans-serif",
    "font.size": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e4e7eb",
    "grid.linewidth": 0.8,
    "axes.edgecolor": "#9aa5b1",
    "axes.labelcolor": "#3e4c59",
    "xtick.color": "#52606d",
    "ytick.color": "#52606d",
    "legend.frameon": False,
}
_SVG_HEAD = re.compile(r"^.*?(?=<svg)", re.DOTALL)
_SVG_NAMESPACES = re.compile(r'\s+xmlns(?::xlink)?="[^"]*"')
_SVG_SIZE = re.compile(r'\s(?:width|height)="[\d.]+pt"')
_SVG_ID = re.compile(r'\bid="([^"]+)"')
_SVG_REF = re.compile(r'(href="#|url\(#)')


def _plot(
    draw: Callable[[Figure, Mapping[str, Any]], None],
    report: Mapping[str, Any],
    ident: str,
    size: tuple[float, float],
) -> str:
    """``draw`` on a new figure of ``size`` inches, in the report's style, as inline SVG."""
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(_RC):
        figure = Figure(figsize=size, layout="constrained")
        draw(figure, report)
        buffer = io.StringIO()
        figure.savefig(
            buffer,
            format="svg",
            metadata={"Date": None, "Creator": None, "Format": None, "Type": None},
        )
    return _inline_svg(buffer.getvalue(), ident)


def _inline_svg(text: str, ident: str) -> str:
    """An SVG file as an ``<svg>`` element to inline in HTML5.

    The XML prolog, DOCTYPE and namespace declarations go (HTML's parser puts an inline ``svg``
    in the SVG namespace by itself), so the page names no external address; the fixed size goes
    too, so the plot scales with its column (the viewBox keeps its proportions). Ids get the
    plot's prefix: they must be unique across the page's several SVGs.
    """
    text = _SVG_HEAD.sub("", text, count=1)
    text = _SVG_NAMESPACES.sub("", text)
    text = _SVG_SIZE.sub("", text, count=2)
    text = _SVG_ID.sub(rf'id="{ident}-\1"', text)
    return _SVG_REF.sub(rf"\1{ident}-", text)


def _ticks(xs: Sequence[int]) -> list[int]:
    """At most about 20 tick positions."""
    step = max(1, math.ceil(len(xs) / 20))
    return list(xs[::step])


def _draw_accuracy(figure: Figure, report: Mapping[str, Any]) -> None:
    """Accuracy (and loss, on its own axis) per round; round 0 is the initial model."""
    initial = report.get("initial_model") or {}
    points = [(0, initial.get("accuracy"), initial.get("loss"))]
    points += [(r["round"], r["accuracy"], r["loss"]) for r in report["rounds"]]
    accuracy = [(x, a * 100) for x, a, _ in points if a is not None]
    ax = figure.add_subplot()
    xs, ys = zip(*accuracy, strict=True)
    ax.plot(xs, ys, marker="o", color="#1f5fa8", linewidth=2, label="accuracy")
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy (%)", color="#1f5fa8")
    ax.set_xticks(_ticks(xs))
    ax.annotate(
        f"{ys[-1]:.2f} %",
        (xs[-1], ys[-1]),
        textcoords="offset points",
        xytext=(0, 8),
        ha="center",
        color="#1f5fa8",
        fontweight="bold",
    )
    losses = [(x, loss) for x, _, loss in points if loss is not None]
    if losses:
        twin = ax.twinx()
        loss_x, loss_y = zip(*losses, strict=True)
        twin.plot(loss_x, loss_y, color="#9aa5b1", linestyle="--", marker=".", label="loss")
        twin.set_ylabel("loss", color="#7b8794")
        twin.grid(False)
        twin.spines["right"].set_visible(True)
        lines = ax.get_lines() + twin.get_lines()
        ax.legend(lines, [str(line.get_label()) for line in lines], loc="center right")


def _draw_contributions(figure: Figure, report: Mapping[str, Any]) -> None:
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    rounds = report["timeline"][1:]
    participants = report["participants"]
    grid = np.array(
        [
            [np.nan if v is None else v for v in p["contribution_by_round"][1:]]
            for p in participants
        ],
        dtype=float,
    )
    finite = grid[np.isfinite(grid)]
    bound = float(np.max(np.abs(finite))) if finite.size else 0.0
    bound = bound or 1.0
    ax = figure.add_subplot()
    ax.grid(False)
    ax.set_facecolor("#e4e7eb")  # rounds without a score show through as grey
    image = ax.imshow(
        np.ma.masked_invalid(grid),
        cmap="RdBu",
        norm=TwoSlopeNorm(vmin=-bound, vcenter=0.0, vmax=bound),
        aspect="auto",
        interpolation="nearest",
    )
    figure.colorbar(image, ax=ax, fraction=0.04, pad=0.01).set_label("contribution score")
    ax.set_yticks(range(len(participants)), [p["name"] for p in participants])
    columns = _ticks(list(range(len(rounds))))
    ax.set_xticks(columns, [str(rounds[i]) for i in columns])
    ax.set_xlabel("round")
    for spine in ax.spines.values():
        spine.set_visible(False)
    if grid.size <= 240:
        for (row, col), value in np.ndenumerate(grid):
            if np.isfinite(value):
                colour = "white" if abs(value) > 0.6 * bound else "#1f2933"
                ax.text(
                    col, row, f"{value:.3f}", ha="center", va="center", fontsize=8, color=colour
                )


def _draw_rewards(figure: Figure, report: Mapping[str, Any]) -> None:
    _draw_series(figure, report, "rewards_by_round", "reward units (cumulative)")


def _draw_stake(figure: Figure, report: Mapping[str, Any]) -> None:
    _draw_series(figure, report, "stake_by_round", "stake")


def _draw_series(figure: Figure, report: Mapping[str, Any], key: str, label: str) -> None:
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    timeline = report["timeline"]
    participants = report["participants"]
    colours = _participant_colours(len(participants))
    ax = figure.add_subplot()
    stake = key == "stake_by_round"
    for p, colour in zip(participants, colours, strict=True):
        points = [(r, v) for r, v in zip(timeline, p[key], strict=True) if v is not None]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.6, color=colour, label=p["name"])
    if stake:
        _draw_slashings(ax, report, colours)
        _draw_min_stake(ax, report)
    ax.set_xlabel("round")
    ax.set_ylabel(label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    if len(participants) <= 12:
        ax.legend(fontsize=8, loc="best", ncol=2 if len(participants) > 6 else 1)


def _draw_slashings(ax: Axes, report: Mapping[str, Any], colours: Sequence[str]) -> None:
    timeline = report["timeline"]
    by_key = {p["public_key"]: p for p in report["participants"]}
    for event in report["events"]:
        p = by_key.get(event["public_key"])
        if event["kind"] != "slashed" or p is None or event["round"] not in timeline:
            continue
        value = p["stake_by_round"][timeline.index(event["round"])]
        if value is not None:
            ax.plot(
                [event["round"]],
                [value],
                marker="x",
                markersize=10,
                mew=2.5,
                color="#b42318",
                zorder=5,
            )


def _draw_min_stake(ax: Axes, report: Mapping[str, Any]) -> None:
    """The ejection line, only where a stake comes near it (else it would flatten the plot)."""
    min_stake = report["run"]["rules"]["min_stake"]
    stakes = [v for p in report["participants"] for v in p["stake_by_round"] if v is not None]
    if stakes and min(stakes) < 2 * min_stake:
        ax.axhline(min_stake, color="#b42318", linestyle=":", linewidth=1.2)
        ax.annotate(
            "minimum stake",
            (report["timeline"][-1], min_stake),
            xytext=(0, 3),
            textcoords="offset points",
            ha="right",
            color="#b42318",
            fontsize=8,
        )
