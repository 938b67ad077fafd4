"""Durable file updates: what a crash may not undo once a write has returned.

Every file fedchain replaces in place (models, updates, keys, certificates, data files, the
report, ``metrics.json``, ``config.toml``, state files) goes through :func:`write_atomically`:
a reader, or a crash, sees the old file or the new one, never a part.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["fsync_directory", "write_atomically"]

Writer = Callable[[BinaryIO], None]


def fsync_directory(directory: Path) -> None:
    """Make a rename or a new entry in ``directory`` durable (best effort: a no-op where the
    platform does not allow it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomically(
    path: Path, content: bytes | Writer, *, mode: int | None = None, overwrite: bool = True
) -> None:
    """Write ``content`` (bytes, or a function that writes to the open file) to ``path``.

    The data goes to a temporary file beside ``path`` (a random hidden name), is fsynced, and is
    renamed over ``path``; the directory is then fsynced. ``mode``: the file's exact permission
    bits whatever the umask (the temporary file is 0600 until then, so a key is never readable
    by others, not even for a moment); ``None``: the umask decides, as for any new file.
    ``overwrite=False``: never replace an existing ``path`` (raises :class:`FileExistsError`).
    Errors are the operating system's (:class:`OSError`); callers word them for their users.
    The temporary file never outlives the call.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    create_mode = 0o600 if mode is not None else 0o666
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, create_mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            if mode is not None:
                os.fchmod(handle.fileno(), mode)
            if isinstance(content, bytes | bytearray | memoryview):
                handle.write(content)
            else:
                content(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    fsync_directory(path.parent)
