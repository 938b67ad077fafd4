"""Replace a file atomically, never readable beyond its final mode, not even for a moment.

Certificates, SuperNode keys, PID files and the ``flwr`` configuration are all written this way.
This is deploy's own until :mod:`fedchain.durable` grows the one shared atomic write (issue 11).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["write_file"]


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data`` through a temporary file created with ``mode`` (so a key is
    never readable by others, not even for a moment), then rename it into place."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
