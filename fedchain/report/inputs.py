"""Reading a run for its report: the verdict, the blocks, ``metrics.json``, ``config.toml``, names.

:func:`load_report_inputs` verifies the run's ledger and model files with
:func:`~fedchain.ledger.verify.verify_ledger` and :func:`~fedchain.runs.registry.check_model_files`
(the verdict), decodes its blocks, maps public keys to ``clients/client-NNN.pub`` indices, and
reads ``metrics.json`` and ``config.toml`` when they are there, a deployed federation's registered
names, and the rounds the run was meant to have (:func:`read_run_plan`). Everything here is I/O;
:mod:`fedchain.report.build` turns the result into the report.

Trust: the ledger is the source of truth, and nothing after a block that fails verification is
read. Per-round accuracy is not on the ledger: it comes from the coordinator's ``metrics.json``
(``{"rounds": [{"round", "accuracy", "loss", "accepted", "rejected", "seconds"}, ...]}``), shown
as the coordinator reported it. Optional inputs are read only when they are regular files inside
the run directory (or its federation folder): a FIFO must not hang a report, nor a link make it
read someone else's files.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedchain.aggregation.explain import LEFT_OUT_REASONS
from fedchain.config import RunConfig, load_config_file
from fedchain.crypto.identity import load_public_key
from fedchain.errors import ConfigError, FedchainError, LedgerError
from fedchain.ledger.codec import decode
from fedchain.ledger.objects import (
    Block,
    Genesis,
    PublicKey,
)
from fedchain.ledger.show import printable
from fedchain.ledger.signatures import PLAIN, Verifier
from fedchain.ledger.store import LedgerStore, open_ledger_path
from fedchain.ledger.verify import VerifyReport, verify_ledger
from fedchain.runs.archive import get_archive_size
from fedchain.runs.federation import load_federation
from fedchain.runs.layout import (
    CLIENT_PUBLIC_KEY_GLOB,
    CLIENTS_DIRNAME,
    CONFIG_FILENAME,
    FEDERATION_FILENAME,
    LEDGER_FILENAME,
    METRICS_FILENAME,
    MODEL_SUFFIX,
    MODELS_DIRNAME,
    RUN_DIRNAME,
    parse_client_public_key_name,
)
from fedchain.runs.registration import verify_registration
from fedchain.runs.registry import check_model_files
from fedchain.runs.tensorfiles import read_regular_file

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


__all__ = [
    "ReportInputs",
    "RoundMetrics",
    "RunPlan",
    "describe_unfinished",
    "load_report_inputs",
    "read_registered_names",
    "read_run_plan",
]


@dataclass(frozen=True)
class RoundMetrics:
    """One round of the coordinator's ``metrics.json``; any value may be missing (None)."""

    round: int
    accuracy: float | None = None
    loss: float | None = None
    accepted: int | None = None
    rejected: int | None = None
    seconds: float | None = None
    moved: bool | None = None
    """Whether the aggregation rule moved the model (None: not recorded, a run made before)."""
    left_out: tuple[tuple[str, str], ...] | None = None
    """(hex key, reason code) of each admitted update the rule left out."""
    note: str | None = None
    """The rule's own sentence for the round (written by the coordinator; shown escaped)."""


@dataclass(frozen=True)
class ReportInputs:
    """Everything :func:`compute_report` needs, read from a run directory.

    ``blocks`` are the decoded blocks in height order, up to (not including) the block where
    verification failed or the first block that cannot be read. ``models_present`` are the
    hashes of the files in ``models/`` (by name; :func:`check_model_files` checked contents).
    ``archive_size`` is ``updates/``'s regular files and their bytes.
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
    archive_size: tuple[int, int] = (0, 0)  # updates/: (files, bytes)


def load_report_inputs(
    run_dir: Path,
    *,
    on_block: Callable[[int, int], None] | None = None,
    verifier: Verifier = PLAIN,
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
            f"holding {LEDGER_FILENAME})"
        )
    ledger_path = open_ledger_path(run_dir)  # raises when there is no ledger.db
    verification = verify_ledger(run_dir, on_block=on_block, verifier=verifier)
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
        client_indices=_read_client_indices(run_dir / CLIENTS_DIRNAME),
        metrics=metrics,
        config=config,
        models_present=_read_model_names(run_dir / MODELS_DIRNAME),
        notes=tuple(n for n in (*metrics_notes, config_note, names_note) if n),
        registered_names=names,
        plan=plan,
        archive_size=get_archive_size(run_dir),
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
    if run_dir.name == RUN_DIRNAME and (fed_dir / FEDERATION_FILENAME).exists():
        rounds = _read_rounds(fed_dir / FEDERATION_FILENAME, fed_dir)
        if rounds is not None:
            resume = f"fedchain coordinator start {fed_dir}"
            return RunPlan(rounds, str(fed_dir / FEDERATION_FILENAME), resume)
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
    if run_dir.name != RUN_DIRNAME or not (fed_dir / FEDERATION_FILENAME).exists():
        return {}, None
    try:
        _read_text(fed_dir / FEDERATION_FILENAME, fed_dir)
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
    for path in sorted(clients_dir.glob(CLIENT_PUBLIC_KEY_GLOB)):
        index = parse_client_public_key_name(path.name)
        if index is None or path.is_symlink() or not path.is_file():  # no FIFO, no link out
            continue
        with contextlib.suppress(FedchainError, OSError):
            indices[load_public_key(path)] = index
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
        moved=entry.get("moved") if isinstance(entry.get("moved"), bool) else None,
        left_out=_left_out(entry.get("left_out")),
        note=printable(entry["note"])[:MAX_NOTE_CHARS]
        if isinstance(entry.get("note"), str)
        else None,
    )
    fields = ("accuracy", "loss", "accepted", "rejected", "seconds", "moved", "left_out")
    missing = [k for k in fields if getattr(metrics, k) is None and entry.get(k) is not None]
    return metrics, missing


MAX_NOTE_CHARS = 400
"""The longest rule note shown (the rule's notes are one sentence)."""


def _left_out(value: Any) -> tuple[tuple[str, str], ...] | None:
    """``metrics.json``'s ``left_out`` (hex key -> reason code), or None if it is not that."""
    if not isinstance(value, dict):
        return None
    out = []
    for key, code in value.items():
        if not (_is_hex_key(key) and isinstance(code, str) and code in LEFT_OUT_REASONS):
            return None
        out.append((key, code))
    return tuple(sorted(out))


def _is_hex_key(text: Any) -> bool:
    return isinstance(text, str) and len(text) == 64 and all(c in "0123456789abcdef" for c in text)


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
