"""A run directory's files as a verifier reads them, and its safetensors files as written.

A run directory can come from anyone, so every file of it is read as a regular file inside it
(:func:`read_regular_file`, :func:`open_regular_file`): never a FIFO, socket or device, never
through a link out of the run. Named tensors (models in ``models/``, update packs in
``updates/``) are safetensors files, written atomically (:func:`write_tensors`: temporary file,
fsync, rename, folder fsync) and read back whole (:func:`load_tensors`) or by their header only
(:func:`read_tensor_names`). Nothing here hashes or decides what a file must hold: the model
registry (:mod:`fedchain.runs.registry`) and the update archive (:mod:`fedchain.runs.archive`) do.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, TypeAlias

import numpy as np
import numpy.typing as npt
import safetensors.numpy
from safetensors import SafetensorError

from fedchain.durable import fsync_directory, write_atomically
from fedchain.errors import ConfigError, RegistryError

__all__ = [
    "SAFETENSORS_RESERVED_NAME",
    "Arrays",
    "as_numpy",
    "load_tensors",
    "make_run_folder",
    "open_regular_file",
    "read_regular_file",
    "read_tensor_names",
    "write_tensors",
]

SAFETENSORS_RESERVED_NAME = "__metadata__"  # the header key of the file's metadata
MAX_HEADER_BYTES = 100 * 2**20  # a safetensors header longer than this is refused unread

Arrays: TypeAlias = "Mapping[str, npt.NDArray[Any] | np.generic]"
"""Named numpy arrays: a model, or a client update."""

_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def read_regular_file(path: Path, root: Path) -> bytes:
    """The bytes of ``path``, which must be a regular file inside ``root`` (a run directory).

    A run directory can come from anyone, so reading it must neither hang nor wander: a FIFO,
    socket or device is refused without opening it for a blocking read (``O_NONBLOCK``, then
    ``fstat`` on the open descriptor, so nothing can be swapped in between), and a symbolic
    link is followed only when its target lies inside ``root`` (a link out of the run
    directory, to ``/dev/zero`` or to someone's files, is a path trick; a link inside it only
    names another file of the run, whose contents are checked like any other). Raises
    :class:`~fedchain.errors.ConfigError` naming the file for both, and ``OSError`` (such as
    ``FileNotFoundError``) when it cannot be read.
    """
    with open_regular_file(path, root) as f:
        return f.read()


@contextlib.contextmanager
def open_regular_file(path: Path, root: Path) -> Iterator[BinaryIO]:
    """``path`` open for reading, under :func:`read_regular_file`'s rules."""
    path = Path(path)
    try:
        target = path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 on a loop of links
        raise ConfigError(f"{path}: a loop of symbolic links") from None
    inside = Path(root).resolve()
    if not target.is_relative_to(inside):
        raise ConfigError(
            f"{path}: a link to {target}, outside the run directory {inside}: refused "
            "(a run is checked from its own files only)"
        )
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(target, flags)
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
            raise ConfigError(f"{path}: {kind}, not a regular file: refused")
        yield f


def as_numpy(arrays: Arrays) -> dict[str, npt.NDArray[Any]]:
    """``arrays`` as numpy arrays a safetensors file can hold; raises
    :class:`~fedchain.errors.ConfigError` for anything else, or the name safetensors reserves."""
    tensors: dict[str, npt.NDArray[Any]] = {}
    for name, array in arrays.items():
        if not isinstance(array, np.ndarray | np.generic):
            raise ConfigError(
                f"model tensor {name!r} is a {type(array).__name__}: save_model takes numpy "
                "arrays (convert torch tensors with .cpu().numpy())"
            )
        if name == SAFETENSORS_RESERVED_NAME:
            raise ConfigError(f"a model tensor cannot be named {name!r} (safetensors reserves it)")
        tensors[name] = np.asarray(array)
    return tensors


def make_run_folder(run_dir: Path, folder: str) -> None:
    """Create ``run_dir/folder`` (and ``run_dir``) durably if missing."""
    path = Path(run_dir) / folder
    if path.is_dir():
        return
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RegistryError(f"{path}: cannot create ({e.strerror or e})") from None
    fsync_directory(Path(run_dir))


def write_tensors(path: Path, tensors: Mapping[str, npt.NDArray[Any]]) -> None:
    """Write ``tensors`` to ``path`` atomically: one write, one fsync of the file and one of its
    folder. Raises :class:`~fedchain.errors.RegistryError` if it cannot be written."""
    # safetensors writes an array's memory as is, so a non-contiguous view would be stored
    # scrambled; asarray(order="C") copies only those (and keeps 0-d arrays 0-d).
    # safetensors.numpy.save gives the very bytes save_file writes; the file gets the umask's mode.
    contiguous = {name: np.asarray(a, order="C") for name, a in tensors.items()}
    try:
        write_atomically(path, safetensors.numpy.save(contiguous))
    except (OSError, SafetensorError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise RegistryError(f"{path}: cannot write the tensor file ({reason})") from None


def load_tensors(path: Path) -> dict[str, npt.NDArray[Any]]:
    """Every tensor of the safetensors file ``path`` (a regular file of the run directory two
    levels up). Raises :class:`~fedchain.errors.RegistryError` naming the file."""
    try:
        data = read_regular_file(path, Path(path).parent.parent)
    except FileNotFoundError:
        raise RegistryError(f"{path}: no such file") from None
    except OSError as e:
        raise RegistryError(f"{path}: cannot read the file ({e.strerror or e})") from None
    except ConfigError as e:  # names the file
        raise RegistryError(str(e)) from None
    try:
        arrays: dict[str, npt.NDArray[Any]] = safetensors.numpy.load(data)
    except (SafetensorError, ValueError, TypeError, KeyError) as e:
        raise RegistryError(f"{path}: not a readable safetensors file ({e})") from None
    return arrays


def read_tensor_names(path: Path) -> list[str]:
    """The tensor names a safetensors file's header lists, without reading its tensors (its
    first 8 bytes give the header's length, little-endian; the header is JSON keyed by tensor
    name). A header only says what a file claims to hold: :func:`load_tensors` reads what it
    does. Raises :class:`~fedchain.errors.RegistryError` naming the file."""
    try:
        with open_regular_file(path, Path(path).parent.parent) as f:
            head = f.read(8)
            size = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 0 < size <= MAX_HEADER_BYTES:
                raise RegistryError(f"{path}: not a safetensors file (header length {size})")
            text = f.read(size)
    except FileNotFoundError:
        raise RegistryError(f"{path}: no such file") from None
    except OSError as e:
        raise RegistryError(f"{path}: cannot read the file ({e.strerror or e})") from None
    except ConfigError as e:
        raise RegistryError(str(e)) from None
    try:
        header = json.loads(text)
    except ValueError as e:
        raise RegistryError(f"{path}: not a safetensors file ({e})") from None
    if not isinstance(header, dict):
        raise RegistryError(f"{path}: not a safetensors file (its header is not a map)")
    return [name for name in header if name != SAFETENSORS_RESERVED_NAME]
