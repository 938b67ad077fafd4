"""A run directory's files that are newer than its ledger's head, and whether that is a failure.

A round ``r`` writes its files before the block that records it exists: the coordinator archives
the round's accepted updates in ``updates/`` (one pack, ``round-r``) and saves the new model in
``models/`` when it aggregates (:mod:`fedchain.rounds.coordinator`), the session then appends
round ``r``'s row to ``metrics.json``, and block B(r) is only appended when round ``r+1``'s
replies bring its seal (the last round's, in the closing exchange). So a run stopped at any
moment legitimately holds files of *one* round past its ledger's last round: the round whose
block was pending. What :func:`find_leftovers` decides about each kind of file, and why:

* ``metrics.json`` rows past the ledger's last round ``k``: the row of round ``k+1`` is a
  **warning** (the round in progress when the run stopped); a row of round ``k+2`` or later is a
  **failure**. Every (re)start of a run rewrites the file with the ledger's rounds only
  (:func:`fedchain.runs.session.load_history`, for ``fedchain simulate --resume`` and a
  restarted deployment alike) and each round appends one row, so no honest run ever records two
  rounds its ledger does not hold: the ledger lost blocks from its end.
* ``models/`` files no verified block registers: a **warning**, however many. The file carries
  no round; ``fedchain simulate --resume`` removes them
  (:func:`fedchain.runs.federation.remove_unregistered_models`) but a restarted deployment keeps
  them, and a re-run round may aggregate a different model, so stale files of several
  interrupted rounds can accumulate honestly. Nothing on the ledger refers to them.
* ``updates/`` files no verified block names: a **warning**, for the same reasons (archived
  before the block; a re-run round replaces its pack, but may accept no update at all and leave
  the old one). A pack counts as named if any update it holds is
  (:func:`fedchain.runs.archive.find_unnamed_update_files`).

Files are a tripwire, not a proof: whoever deletes blocks can delete files too. What a data
holder saw cannot be taken back: ``fedchain verify --checkpoint``
(:mod:`fedchain.ledger.checkpoints`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedchain.errors import ConfigError
from fedchain.ledger.verify import VerifyReport
from fedchain.runs.archive import find_unnamed_update_files
from fedchain.runs.layout import METRICS_FILENAME
from fedchain.runs.registry import find_unregistered_files
from fedchain.runs.tensorfiles import read_regular_file

__all__ = ["Leftovers", "compute_leftover_verdict", "find_leftovers", "read_metrics_rounds"]

_LISTED = 3  # file names shown per warning


@dataclass(frozen=True)
class Leftovers:
    """What ``run_dir`` holds past its verified ledger's head, and the verdict on it."""

    models: tuple[Path, ...]  # models/ entries no verified block registers
    updates: tuple[Path, ...]  # updates/ entries no verified block names
    metrics_rounds: tuple[int, ...]  # metrics.json rounds past the ledger's last round
    problems: tuple[str, ...]  # failures
    warnings: tuple[str, ...]


def find_leftovers(run_dir: Path, report: VerifyReport) -> Leftovers:
    """The files of ``run_dir`` newer than the head of its verified ledger (``report``), with
    :func:`compute_leftover_verdict`'s problems and warnings."""
    run_dir = Path(run_dir)
    models = tuple(find_unregistered_files(run_dir, report))
    updates = tuple(find_unnamed_update_files(run_dir, report))
    notes: list[str] = []
    try:
        rounds = read_metrics_rounds(run_dir)
    except ConfigError as e:
        rounds, notes = (), [f"{e}: its rounds were not compared with the ledger"]
    past = tuple(r for r in rounds if r > report.rounds)
    problems, warnings = compute_leftover_verdict(report.rounds, models, updates, past)
    return Leftovers(models, updates, past, problems, (*warnings, *notes))


def compute_leftover_verdict(
    ledger_round: int,
    models: Sequence[Path],
    updates: Sequence[Path],
    metrics_rounds: Sequence[int],
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(problems, warnings)`` for files past a ledger whose last round is ``ledger_round``
    (the rules of the module docstring)."""
    problems: list[str] = []
    warnings: list[str] = []
    lost = sorted(r for r in metrics_rounds if r > ledger_round + 1)
    if lost:
        problems.append(
            f"{METRICS_FILENAME} records rounds up to {lost[-1]} but the ledger ends at round "
            f"{ledger_round}: a stopped run leaves at most the round in progress "
            f"({ledger_round + 1}) unrecorded, so blocks were deleted from the ledger's end"
        )
    elif metrics_rounds:
        warnings.append(
            f"{METRICS_FILENAME} has round {ledger_round + 1}, which the ledger does not hold "
            "(the round in progress when the run stopped)"
        )
    for paths, what in ((models, "no block registers"), (updates, "no block names")):
        if paths:
            names = ", ".join(p.name for p in paths[:_LISTED])
            more = ", …" if len(paths) > _LISTED else ""
            warnings.append(
                f"{len(paths)} file(s) in {paths[0].parent} that {what} (written by a round "
                f"whose block was never sealed, or the ledger's last blocks were deleted; "
                f"--checkpoint tells which): {names}{more}"
            )
    return tuple(problems), tuple(warnings)


def read_metrics_rounds(run_dir: Path) -> tuple[int, ...]:
    """The rounds ``metrics.json`` has rows for (``()`` without the file). Raises
    :class:`~fedchain.errors.ConfigError` naming the file if it is not such a file."""
    path = Path(run_dir) / METRICS_FILENAME
    try:
        text = read_regular_file(path, Path(run_dir))
    except FileNotFoundError:
        return ()
    except OSError as e:
        raise ConfigError(f"{path}: unreadable ({e.strerror or e})") from None
    try:
        rows = json.loads(text)["rounds"]
        rounds = tuple(row["round"] for row in rows)
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: not a metrics file ({type(e).__name__}: {e})") from None
    if not all(type(r) is int for r in rounds):
        raise ConfigError(f"{path}: not a metrics file (a round that is not an integer)")
    return rounds
