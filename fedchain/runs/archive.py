"""The update archive: every accepted client update a run keeps, in ``updates/``, by its hash.

Client updates are archived by round, not one file each: ``updates/round-NNNNNN.safetensors``
holds the round's accepted updates, each tensor named ``<update hash hex>/<tensor name>``,
written once with one fsync of the file and one of the folder (:func:`save_round_updates`)
before the round's block is prepared, so every update a block names is on disk before the block
is appended. A pack's header is only an index: :class:`UpdateArchive` finds an update through it
and every read re-hashes the update, so a pack that lies about what it holds fails like an
altered file. Runs written before packs keep one ``updates/<hash>.safetensors`` per update,
which the archive still reads.

Retention is a rule of the federation, on its genesis (``Rules.update_archive_rounds``): every
round (:data:`~fedchain.ledger.objects.ARCHIVE_ALL_ROUNDS`), none (0), or the last K rounds.
With a ledger whose head is round ``R``, the rounds whose updates the run directory must hold
are those above ``R - K`` (:func:`compute_archive_floor`); the coordinator deletes a round's pack
once the block of the round K later is final (:func:`drop_old_packs`), so no round above
``R - K`` is ever deleted whatever the finality lag, and with ``none`` it writes no pack at all.
A round below the floor whose pack is gone is "not archived by policy", not a problem; one still
on disk is checked like any other.

Anyone re-checking a run's scores and models (``fedchain verify --scores``) reads the updates
from here; ``fedchain verify`` checks that every update the ledger names in a round the policy
keeps is archived and hashes to its name (:func:`check_update_files`).
"""

from __future__ import annotations

import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy.typing as npt

from fedchain.crypto.hashing import compute_update_hash
from fedchain.errors import ConfigError, RegistryError
from fedchain.ledger.objects import ARCHIVE_ALL_ROUNDS, HASH_SIZE
from fedchain.ledger.verify import VerifyReport
from fedchain.runs.layout import (
    MODEL_SUFFIX,
    UPDATE_PACK_PREFIX,
    UPDATES_DIRNAME,
    update_pack_name,
)
from fedchain.runs.registry import require_verified
from fedchain.runs.tensorfiles import (
    Arrays,
    as_numpy,
    load_tensors,
    make_run_folder,
    read_tensor_names,
    write_tensors,
)

__all__ = [
    "UpdateArchive",
    "UpdateFilesCheck",
    "check_update_files",
    "compute_archive_floor",
    "describe_archive_policy",
    "drop_old_packs",
    "find_unnamed_update_files",
    "get_archive_rule",
    "get_archive_size",
    "get_update_rounds",
    "load_update",
    "save_round_updates",
]


def compute_archive_floor(archive_rounds: int, head_round: int) -> int:
    """The lowest round whose updates a run directory must archive when its ledger's head is
    round ``head_round``, under the rule ``archive_rounds`` (``Rules.update_archive_rounds``:
    -1 every round, 0 none, K the last K rounds). Rounds below it may have been deleted."""
    if archive_rounds == ARCHIVE_ALL_ROUNDS:
        return 0
    return head_round + 1 - archive_rounds


def describe_archive_policy(archive_rounds: int) -> str:
    if archive_rounds == ARCHIVE_ALL_ROUNDS:
        return "all rounds"
    if archive_rounds == 0:
        return "none"
    return f"the last {archive_rounds} round{'s' if archive_rounds != 1 else ''}"


def save_round_updates(run_dir: Path, round_: int, updates: Mapping[bytes, Arrays]) -> Path:
    """Archive round ``round_``'s accepted updates, keyed by the hash each was committed to,
    in one file: one write, one fsync of the file and one of ``updates/``; its path.

    The caller vouches that each update hashes to its key (admission checked it); nothing here
    hashes again, and every reader re-hashes (:class:`UpdateArchive`). An earlier pack of the
    same round (a round whose block was never appended, run again after a crash) is replaced.
    Raises :class:`~fedchain.errors.ConfigError` for arrays :func:`save_model` refuses and
    :class:`~fedchain.errors.RegistryError` if the file cannot be written.
    """
    tensors: dict[str, npt.NDArray[Any]] = {}
    for update_hash, arrays in updates.items():
        if type(update_hash) is not bytes or len(update_hash) != HASH_SIZE:
            raise ConfigError(f"an update hash is {HASH_SIZE} bytes, got {update_hash!r}")
        prefix = update_hash.hex() + _PACK_SEPARATOR
        for name, array in as_numpy(arrays).items():
            tensors[prefix + name] = array
    path = Path(run_dir) / UPDATES_DIRNAME / update_pack_name(round_)
    make_run_folder(Path(run_dir), UPDATES_DIRNAME)
    write_tensors(path, tensors)
    return path


def drop_old_packs(run_dir: Path, archive_rounds: int, final_round: int) -> list[Path]:
    """Delete the round packs the retention rule ``archive_rounds`` no longer keeps once round
    ``final_round``'s block is final (rounds up to ``final_round - archive_rounds``); the paths
    deleted. A crash before or during this leaves packs that verify like any other."""
    if archive_rounds == ARCHIVE_ALL_ROUNDS:
        return []
    folder = Path(run_dir) / UPDATES_DIRNAME
    if not folder.is_dir():
        return []
    dropped = []
    for path in sorted(folder.iterdir()):
        round_ = _round_of_pack(path)
        if round_ is not None and round_ <= final_round - archive_rounds:
            path.unlink(missing_ok=True)
            dropped.append(path)
    return dropped


def _round_of_pack(path: Path) -> int | None:
    """The round of a pack named by :func:`update_pack_name`, else None."""
    digits = path.name.removeprefix(UPDATE_PACK_PREFIX).removesuffix(MODEL_SUFFIX)
    if not (digits.isascii() and digits.isdigit()) or path.name != update_pack_name(int(digits)):
        return None
    return int(digits)


def load_update(run_dir: Path, update_hash: bytes) -> dict[str, npt.NDArray[Any]]:
    """The archived update with ``update_hash``, checked to hash to it (one lookup: to read
    many, use one :class:`UpdateArchive`)."""
    return UpdateArchive(run_dir).load_many([update_hash])[0]


_PACK_SEPARATOR = "/"  # a pack's tensor name: <update hash hex>/<the update's tensor name>


class UpdateArchive:
    """A run directory's archived updates, found by hash (round packs and, for older runs,
    one file per update).

    The index (which file holds which hash) is read once, from the files' headers, when first
    needed; it is never trusted: every update read is re-hashed. ``unreadable`` lists the files
    of ``updates/`` whose header could not be read, with why.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self._index: dict[bytes, Path] | None = None
        self._files: dict[Path, tuple[bytes, ...]] = {}
        self._unreadable: dict[Path, str] = {}

    @property
    def index(self) -> dict[bytes, Path]:
        """Which file holds each update hash (the first file that names it)."""
        if self._index is None:
            self._index = self._read_index()
        return self._index

    @property
    def files(self) -> dict[Path, tuple[bytes, ...]]:
        """The update hashes each readable archive file names."""
        _ = self.index
        return self._files

    @property
    def unreadable(self) -> dict[Path, str]:
        """The archive files whose header could not be read, with why."""
        _ = self.index
        return self._unreadable

    def where(self, update_hash: bytes) -> Path | None:
        return self.index.get(update_hash)

    def load_many(self, hashes: Sequence[bytes]) -> list[dict[str, npt.NDArray[Any]]]:
        """The updates with ``hashes``, in that order, each file read once. Raises
        :class:`~fedchain.errors.RegistryError` naming the file for a missing update or one
        that does not hash to its name."""
        by_file: dict[Path, dict[bytes, dict[str, npt.NDArray[Any]]]] = {}
        found: list[dict[str, npt.NDArray[Any]]] = []
        for update_hash in hashes:
            path = self.where(update_hash)
            if path is None:
                folder = self.run_dir / UPDATES_DIRNAME
                raise RegistryError(f"{folder}: no archived update {update_hash.hex()} (missing)")
            if path not in by_file:
                by_file[path] = self.read_file(path)
            arrays = by_file[path].get(update_hash)
            if arrays is None:
                raise RegistryError(f"{path}: does not hold update {update_hash.hex()}")
            _check_update_hash(path, update_hash, arrays)
            found.append(arrays)
        return found

    def read_file(self, path: Path) -> dict[bytes, dict[str, npt.NDArray[Any]]]:
        """The updates one archive file holds, by the hash its names claim (not yet checked)."""
        arrays = load_tensors(path)
        single = _hash_of_single_file(path)
        if single is not None:
            return {single: arrays}
        updates: dict[bytes, dict[str, npt.NDArray[Any]]] = {}
        for name, array in arrays.items():
            update_hash = _split_pack_name(name)
            if update_hash is None:
                raise RegistryError(f"{path}: tensor {name!r} names no update: not an update pack")
            updates.setdefault(update_hash[0], {})[update_hash[1]] = array
        return updates

    def _read_index(self) -> dict[bytes, Path]:
        index: dict[bytes, Path] = {}
        folder = self.run_dir / UPDATES_DIRNAME
        if not folder.is_dir():
            return index
        for path in sorted(folder.iterdir()):
            single = _hash_of_single_file(path)
            if single is not None:
                hashes: tuple[bytes, ...] = (single,)
            elif path.name.startswith(UPDATE_PACK_PREFIX) and path.name.endswith(MODEL_SUFFIX):
                try:
                    hashes = _read_pack_hashes(path)
                except RegistryError as e:
                    self._unreadable[path] = str(e)
                    continue
            else:
                continue
            self._files[path] = hashes
            for update_hash in hashes:
                index.setdefault(update_hash, path)
        return index


def _hash_of_single_file(path: Path) -> bytes | None:
    """The hash a pre-pack ``updates/<hash>.safetensors`` file is named by, else None."""
    stem = path.name.removesuffix(MODEL_SUFFIX)
    if path.name == stem or len(stem) != 2 * HASH_SIZE:
        return None
    try:
        return bytes.fromhex(stem) if stem == stem.lower() else None
    except ValueError:
        return None


def _split_pack_name(name: str) -> tuple[bytes, str] | None:
    prefix, separator, tensor = name.partition(_PACK_SEPARATOR)
    if not separator or len(prefix) != 2 * HASH_SIZE or prefix != prefix.lower():
        return None
    try:
        return bytes.fromhex(prefix), tensor
    except ValueError:
        return None


def _read_pack_hashes(path: Path) -> tuple[bytes, ...]:
    """The update hashes a pack's header names, without reading its tensors."""
    hashes: dict[bytes, None] = {}
    for name in read_tensor_names(path):
        split = _split_pack_name(name)
        if split is None:
            raise RegistryError(f"{path}: tensor {name!r} names no update: not an update pack")
        hashes.setdefault(split[0])
    return tuple(hashes)


def _check_update_hash(path: Path, update_hash: bytes, arrays: Arrays) -> None:
    try:
        actual = compute_update_hash(arrays)
    except ConfigError as e:
        raise RegistryError(f"{path}: update {update_hash.hex()[:16]}…: {e}") from None
    if actual != update_hash:
        raise RegistryError(
            f"{path}: the update it names {update_hash.hex()[:16]}… hashes to "
            f"{actual.hex()[:16]}… (the file was altered)"
        )


@dataclass(frozen=True)
class UpdateFilesCheck:
    """What :func:`check_update_files` found: ``problems`` (verify fails), ``warnings``,
    ``checked`` updates that are archived and hash to their names' hashes, and ``dropped``:
    updates of rounds the retention rule no longer keeps (``dropped_rounds``) whose file is
    gone, as the rule allows."""

    problems: tuple[str, ...]
    warnings: tuple[str, ...]
    checked: int
    dropped: int
    dropped_rounds: tuple[int, ...]
    policy: str  # describe_archive_policy

    @property
    def named(self) -> int:
        return self.checked + self.dropped


def get_update_rounds(report: VerifyReport) -> dict[bytes, int]:
    """The round of each update a verified ledger names (its commitment's, or its
    ModelVersion's)."""
    rounds: dict[bytes, int] = {}
    for record in report.round_records:
        for commitment in record.commitments:
            rounds.setdefault(commitment.update_hash, commitment.round)
        for update_hash in record.model_version.update_hashes:
            rounds.setdefault(update_hash, record.model_version.round)
    return rounds


def get_archive_rule(report: VerifyReport) -> int:
    """A verified ledger's ``Rules.update_archive_rounds``."""
    if report.state is None:
        return ARCHIVE_ALL_ROUNDS
    return report.state.genesis.rules.update_archive_rounds


def check_update_files(
    run_dir: Path,
    report: VerifyReport,
    *,
    on_file: Callable[[int, int], None] | None = None,
) -> UpdateFilesCheck:
    """``run_dir``'s archived updates against a verified ledger.

    Every update the ledger names (:attr:`VerifyReport.update_hashes`: each accepted commitment
    and each model version's inputs) in a round the genesis's retention rule keeps
    (:func:`compute_archive_floor`) must be in ``updates/``, load and hash to its name. The
    coordinator archives a round's updates before the block naming them exists and deletes a
    pack only once the rule no longer keeps it, so a missing or altered update is never a
    crash's doing: it withholds or replaces evidence that the round's scores and model are
    recomputed from (a problem). An update of a round below the floor is "not archived by
    policy" when absent, and checked like any other when present. A run directory without any
    ``updates/`` folder (copied without its archive, or written before updates were archived)
    is a warning: its ledger and models still verify, its scores cannot be re-checked
    (``--scores`` fails). Raises :class:`~fedchain.errors.RegistryError` if the ledger itself
    did not verify.
    """
    require_verified(report)
    rule = get_archive_rule(report)
    policy = describe_archive_policy(rule)
    floor = compute_archive_floor(rule, report.rounds)
    rounds = get_update_rounds(report)
    updates_dir = Path(run_dir) / UPDATES_DIRNAME
    count = len(report.update_hashes)
    required = sum(rounds.get(h, floor) >= floor for _, h in report.update_hashes)
    if required and not updates_dir.is_dir():
        warning = (
            f"no {updates_dir}: the {required} updates the ledger names in rounds its retention "
            f"rule keeps ({policy}) are not archived here, so the scores cannot be re-checked "
            "(--scores)"
        )
        return UpdateFilesCheck((), (warning,), 0, 0, (), policy)
    archive = UpdateArchive(run_dir)
    problems = [f"{path}: unreadable ({why})" for path, why in archive.unreadable.items()]
    by_file: dict[Path, list[tuple[int, bytes]]] = {}
    dropped_rounds: set[int] = set()
    done = checked = dropped = 0

    def progress() -> None:
        if on_file is not None:
            on_file(done, count)

    for height, update_hash in report.update_hashes:
        path = archive.where(update_hash)
        round_ = rounds.get(update_hash, floor)
        if path is not None:
            by_file.setdefault(path, []).append((height, update_hash))
            continue
        if round_ < floor:
            dropped_rounds.add(round_)
            dropped += 1
        else:
            problems.append(
                f"{updates_dir}: update {update_hash.hex()[:16]}… of round {round_} missing "
                f"(update named by block {height}; the archive keeps {policy})"
            )
        done += 1
        progress()
    for path, named in by_file.items():
        try:
            held = archive.read_file(path)
        except RegistryError as e:  # its message names the file
            problems += [f"{e} (update named by block {height})" for height, _ in named]
            held = {}
        for height, update_hash in named:
            if update_hash in held:
                try:
                    _check_update_hash(path, update_hash, held[update_hash])
                    checked += 1
                except RegistryError as e:
                    problems.append(f"{e} (update named by block {height})")
            elif held:
                problems.append(
                    f"{path}: its header names update {update_hash.hex()[:16]}…, which it does "
                    f"not hold (update named by block {height})"
                )
            done += 1
            progress()
        held.clear()  # one file's tensors in memory at a time
    return UpdateFilesCheck(
        tuple(sorted(problems)), (), checked, dropped, tuple(sorted(dropped_rounds)), policy
    )


def find_unnamed_update_files(run_dir: Path, report: VerifyReport) -> list[Path]:
    """Entries of ``updates/`` that hold no update a verified block names, sorted by name (a
    warning: a round whose block was never appended). A pack counts as named if any of its
    updates is; an unreadable file or a leftover temporary file is listed."""
    updates_dir = Path(run_dir) / UPDATES_DIRNAME
    if not updates_dir.is_dir():
        return []
    archive = UpdateArchive(run_dir)
    named = {h for _, h in report.update_hashes}
    return sorted(
        p for p in updates_dir.iterdir() if not any(h in named for h in archive.files.get(p, ()))
    )


def get_archive_size(run_dir: Path) -> tuple[int, int]:
    """``(files, bytes)`` of the regular files in ``run_dir``'s ``updates/`` folder (links are
    not followed; ``(0, 0)`` without the folder)."""
    folder = Path(run_dir) / UPDATES_DIRNAME
    if not folder.is_dir():
        return 0, 0
    stats = [p.lstat() for p in folder.iterdir()]
    sizes = [s.st_size for s in stats if stat.S_ISREG(s.st_mode)]
    return len(sizes), sum(sizes)
