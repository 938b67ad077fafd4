"""The model registry: a run's global model versions on disk, content-addressed by their hash.

Every global model of a run, the initial one included, is one file in the run directory::

    runs/<run-id>/models/<64 lowercase hex chars>.safetensors

The name is the model's canonical hash (:func:`fedchain.crypto.hashing.compute_update_hash` of its
named tensors), the same hash the ledger records in ``Genesis.initial_model_hash`` and
``ModelVersion.model_hash``. A file is therefore checked by loading it and hashing it again;
nothing else about it (size, time, safetensors metadata) is trusted.

The ledger is the registry's index. Which models exist, their rounds and their lineage come from
the model versions on a *verified* ledger (:attr:`VerifyReport.model_versions`, collected in the
one replay that verifies it), never from listing the directory. A file in ``models/`` that no
block registers is a warning, not a failure: a coordinator saves a model before it appends the
block that registers it (so that every registered model has its file), and a crash in between
leaves such a file behind, harmlessly.

Writes are atomic (:func:`fedchain.durable.write_atomically`): a model is written to a temporary
file in ``models/``, fsynced and renamed over its final name, and the directory is fsynced, so a
reader or a crash sees either no file or the whole file. A model already on disk is not written
again (same hash, same content).

Client updates live in ``updates/`` (:mod:`fedchain.runs.archive`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy.typing as npt

from fedchain.crypto.hashing import compute_update_hash
from fedchain.errors import ConfigError, RegistryError
from fedchain.ledger.objects import HASH_SIZE
from fedchain.ledger.verify import VerifyReport, verify_ledger
from fedchain.runs.layout import MODEL_SUFFIX, MODELS_DIRNAME
from fedchain.runs.tensorfiles import (
    Arrays,
    as_numpy,
    load_tensors,
    make_run_folder,
    write_tensors,
)

__all__ = [
    "MIN_PREFIX_HEX",
    "ModelEntry",
    "check_model_files",
    "find_model",
    "find_unregistered_files",
    "get_lineage",
    "get_registered_hashes",
    "get_run_dir",
    "list_models",
    "load_model",
    "model_path",
    "require_verified",
    "save_model",
]

MIN_PREFIX_HEX = 4
"""The shortest hash prefix (hex characters) that names a model."""


@dataclass(frozen=True)
class ModelEntry:
    """One registered global model version, as the ledger records it.

    ``height`` is the block that registered it and ``parent_hash`` the model it was aggregated
    from; the initial model (round 0) has height 0, no parent, no rule and no updates.
    ``file_present`` says only that ``path`` exists; :func:`check_model_files` checks contents.
    """

    round: int
    height: int
    model_hash: bytes
    parent_hash: bytes | None
    rule: str | None
    num_updates: int
    path: Path
    file_present: bool

    @property
    def is_initial(self) -> bool:
        return self.parent_hash is None


# --------------------------------------------------------------------------------------------------
# Files


def model_path(run_dir: Path, model_hash: bytes) -> Path:
    """Where the model with that hash lives."""
    _check_hash(model_hash)
    return Path(run_dir) / MODELS_DIRNAME / f"{model_hash.hex()}{MODEL_SUFFIX}"


def save_model(run_dir: Path, arrays: Arrays) -> bytes:
    """Store a model's named numpy arrays in ``run_dir``; return its canonical hash.

    The file is written atomically (temporary file, fsync, rename, directory fsync). If the model
    is already stored and its file still hashes to its name, nothing is written; a damaged file of
    that name is replaced. ``run_dir`` and ``models/`` are created when missing, since the initial
    model is saved before the ledger (its hash goes into the genesis).

    Raises :class:`~fedchain.errors.ConfigError` for arrays that are not numpy, names and dtypes
    the canonical hash refuses (see :data:`~fedchain.crypto.hashing.CANONICAL_DTYPES`), or the name
    ``__metadata__`` that safetensors reserves, and
    :class:`~fedchain.errors.RegistryError` if the file cannot be written.
    """
    tensors = as_numpy(arrays)
    model_hash = compute_update_hash(tensors)
    path = model_path(run_dir, model_hash)
    if path.exists():
        with contextlib.suppress(RegistryError):  # damaged: fall through and replace it
            _load_verified(path, model_hash)
            return model_hash
    make_run_folder(Path(run_dir), MODELS_DIRNAME)
    write_tensors(path, tensors)
    return model_hash


def load_model(run_dir: Path, model_hash: bytes) -> dict[str, npt.NDArray[Any]]:
    """Load the model with ``model_hash`` from ``run_dir``, checking that it hashes to it.

    Raises :class:`~fedchain.errors.RegistryError` naming the file when it is missing, unreadable,
    or holds other tensors than its hash says (altered, or renamed from another model's file).
    """
    return _load_verified(model_path(run_dir, model_hash), model_hash)


def _load_verified(path: Path, model_hash: bytes) -> dict[str, npt.NDArray[Any]]:
    arrays = load_tensors(path)
    try:
        actual = compute_update_hash(arrays)
    except ConfigError as e:
        raise RegistryError(f"{path}: {e}") from None
    if actual != model_hash:
        raise RegistryError(
            f"{path}: its tensors hash to {actual.hex()}, not to the {model_hash.hex()[:16]}… "
            "its name says (the file was altered or renamed)"
        )
    return arrays


def _check_hash(model_hash: bytes) -> None:
    if type(model_hash) is not bytes or len(model_hash) != HASH_SIZE:
        raise ConfigError(f"a model hash is {HASH_SIZE} bytes, got {model_hash!r}")


# --------------------------------------------------------------------------------------------------
# The registered models, from a verified ledger


def get_run_dir(path: Path) -> Path:
    """The run directory of a ledger path: the directory itself, or the ledger file's folder."""
    path = Path(path)
    return path if path.is_dir() else path.parent


def list_models(source: Path | VerifyReport) -> list[ModelEntry]:
    """Every registered model in round order: the initial model, then each ledger ModelVersion.

    ``source`` is a run directory (or its ledger file), which is verified first, or the report
    of an earlier :func:`~fedchain.ledger.verify.verify_ledger`; files are looked up in the
    run directory of the report's path (:func:`get_run_dir`). Raises
    :class:`~fedchain.errors.RegistryError` if the ledger does not verify: models registered by
    blocks that fail their checks are not trustworthy.
    """
    report = source if isinstance(source, VerifyReport) else verify_ledger(Path(source))
    require_verified(report)
    run_dir = get_run_dir(report.path)
    initial = report.initial_model_hash
    entries = [_entry(run_dir, 0, 0, initial, None, None, 0)]
    for height, version in report.model_versions:
        entries.append(
            _entry(
                run_dir,
                version.round,
                height,
                version.model_hash,
                version.parent_hash,
                version.rule,
                len(version.update_hashes),
            )
        )
    return entries


def _entry(
    run_dir: Path,
    round_: int,
    height: int,
    model_hash: bytes,
    parent_hash: bytes | None,
    rule: str | None,
    num_updates: int,
) -> ModelEntry:
    path = model_path(run_dir, model_hash)
    return ModelEntry(
        round_, height, model_hash, parent_hash, rule, num_updates, path, path.is_file()
    )


def find_model(entries: Sequence[ModelEntry], spec: str) -> ModelEntry:
    """The entry that ``spec`` names: a round number, or a prefix of a model's hex hash.

    A prefix needs at least :data:`MIN_PREFIX_HEX` characters and must match one model (the same
    model registered in several rounds counts once; its first registration is returned). An
    all-digit spec of that length may be both; if the round and the prefix name different
    models, it is refused as ambiguous. Raises :class:`~fedchain.errors.RegistryError`.
    """
    text = spec.strip().lower()
    is_round = text.isascii() and text.isdigit()
    is_prefix = len(text) >= MIN_PREFIX_HEX and all(c in "0123456789abcdef" for c in text)
    if not (is_round or is_prefix):
        raise RegistryError(
            f"{spec!r} names no model: give a round number or at least {MIN_PREFIX_HEX} hex "
            "characters of its hash"
        )
    by_round = [e for e in entries if e.round == int(text)] if is_round else []
    by_prefix = _match_prefix(entries, text) if is_prefix else None
    if by_round and by_prefix is not None and by_prefix.model_hash != by_round[0].model_hash:
        raise RegistryError(
            f"{spec!r} is ambiguous: round {by_round[0].round} is model "
            f"{by_round[0].model_hash.hex()[:16]}…, but hash prefix {text} is round "
            f"{by_prefix.round}'s model; give more hash characters"
        )
    if by_round:
        return by_round[0]
    if by_prefix is not None:
        return by_prefix
    rounds = ", ".join(str(e.round) for e in entries[:12]) + (", …" if len(entries) > 12 else "")
    not_round = f"no model registered in round {text} (rounds with a model: {rounds})"
    not_prefix = f"no registered model's hash starts with {text}"
    if is_round and is_prefix:
        raise RegistryError(f"{not_round}, and {not_prefix}")
    raise RegistryError(not_round if is_round else not_prefix)


def _match_prefix(entries: Sequence[ModelEntry], prefix: str) -> ModelEntry | None:
    matches: dict[bytes, ModelEntry] = {}
    for entry in entries:
        if entry.model_hash.hex().startswith(prefix):
            matches.setdefault(entry.model_hash, entry)
    if len(matches) > 1:
        rounds = ", ".join(str(e.round) for e in matches.values())
        raise RegistryError(
            f"hash prefix {prefix} is ambiguous: it matches {len(matches)} models "
            f"(rounds {rounds}); give more characters"
        )
    return next(iter(matches.values()), None)


def get_lineage(entries: Sequence[ModelEntry], entry: ModelEntry) -> list[ModelEntry]:
    """``entry`` and its ancestors back to the initial model, newest first.

    On a verified ledger each version's parent is the version registered before it (the state
    transition refuses anything else), so the lineage is the list up to ``entry``, reversed.
    """
    return list(reversed(entries[: list(entries).index(entry) + 1]))


def get_registered_hashes(report: VerifyReport) -> list[bytes]:
    """The distinct registered model hashes, initial model first, in order of registration."""
    hashes = [report.initial_model_hash, *(v.model_hash for _, v in report.model_versions)]
    return list(dict.fromkeys(hashes))


def check_model_files(
    run_dir: Path,
    report: VerifyReport,
    *,
    on_file: Callable[[int, int], None] | None = None,
) -> list[str]:
    """What is wrong with ``run_dir``'s model files against a verified ledger (empty: nothing).

    Every registered model, the initial one included, must have its file, which must load and
    hash to its name (= its registered hash), and the lineage must be unbroken: the first
    version's parent is the initial model, every later one's parent the version before it.
    Files in ``models/`` that no block registers are not problems; see
    :func:`find_unregistered_files`. ``on_file(done, total)`` follows progress. Raises
    :class:`~fedchain.errors.RegistryError` if the ledger itself did not verify.
    """
    require_verified(report)
    problems = _check_lineage(report)
    hashes = get_registered_hashes(report)
    names = _describe_registrations(report)
    for done, model_hash in enumerate(hashes, start=1):
        path = model_path(run_dir, model_hash)
        if not path.exists():
            problems.append(f"{path}: missing ({names[model_hash]})")
        else:
            problems += _check_file(path, model_hash, names)
        if on_file is not None:
            on_file(done, len(hashes))
    return problems


def _check_file(path: Path, model_hash: bytes, names: Mapping[bytes, str]) -> list[str]:
    try:
        arrays = load_tensors(path)
    except RegistryError as e:  # its message names the file
        return [f"{e} ({names[model_hash]})"]
    try:
        actual = compute_update_hash(arrays)
    except ConfigError as e:
        return [f"{path}: {e} ({names[model_hash]})"]
    if actual == model_hash:
        return []
    other = names.get(actual)
    holds = f"the {other}" if other else f"a model hashing to {actual.hex()[:16]}…"
    return [f"{path}: holds {holds}, not the {names[model_hash]} its name says"]


def _check_lineage(report: VerifyReport) -> list[str]:
    problems = []
    previous = report.initial_model_hash
    for height, version in report.model_versions:
        if version.parent_hash != previous:
            problems.append(
                f"round {version.round} model (block {height}): its parent "
                f"{version.parent_hash.hex()[:16]}… is not the previous model "
                f"{previous.hex()[:16]}…"
            )
        previous = version.model_hash
    return problems


def _describe_registrations(report: VerifyReport) -> dict[bytes, str]:
    """A readable name per registered hash: where it was first registered."""
    names = {report.initial_model_hash: "initial model (genesis)"}
    for height, version in report.model_versions:
        names.setdefault(version.model_hash, f"round {version.round} model (block {height})")
    return names


def find_unregistered_files(run_dir: Path, report: VerifyReport) -> list[Path]:
    """Entries of ``models/`` that no verified block registers, sorted by name (a warning).

    Expected after a coordinator crashed between saving a model and appending its block, and
    harmless: nothing on the ledger refers to them. Leftover temporary files are listed too.
    """
    models_dir = Path(run_dir) / MODELS_DIRNAME
    if not models_dir.is_dir():
        return []
    registered = {model_path(run_dir, h).name for h in get_registered_hashes(report)}
    return sorted(p for p in models_dir.iterdir() if p.name not in registered)


def require_verified(report: VerifyReport) -> None:
    """Raise :class:`~fedchain.errors.RegistryError` unless ``report``'s ledger verified: what
    it names (models, archived updates) is only known from blocks that passed their checks."""
    if not report.ok:
        raise RegistryError(
            f"{report.path}: the ledger does not verify ({report.failure}); its models and "
            "updates cannot be trusted (run `fedchain verify` for details)"
        )
