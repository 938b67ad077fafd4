"""The whole suite runs with a throw-away home: no test reads or writes the user's own files.

Flower keeps its connections, local SuperLink, update-check cache and a telemetry source id under
``FLWR_HOME`` (default ``~/.flwr``); matplotlib caches fonts in ``~/.cache`` or
``~/.config/matplotlib``; Chromium creates ``~/.pki``. All of them are pointed at one temporary
directory before any test module imports ``flwr`` (Flower reads some of these paths at import),
and the directory is removed when the session ends. Ray's session files go to ``/tmp/ray`` (its
own temporary directory; Unix socket paths there must stay short).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

HOME_VARIABLES = ("HOME", "FLWR_HOME", "MPLCONFIGDIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME")

_saved: dict[str, str | None] = {}
_home: Path | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _home
    _home = Path(tempfile.mkdtemp(prefix="fedchain-tests-home-"))
    paths = {
        "HOME": _home,
        "FLWR_HOME": _home / ".flwr",
        "MPLCONFIGDIR": _home / ".config" / "matplotlib",
        "XDG_CACHE_HOME": _home / ".cache",
        "XDG_CONFIG_HOME": _home / ".config",
    }
    for name, path in paths.items():
        _saved[name] = os.environ.get(name)
        path.mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(path)


def pytest_unconfigure(config: pytest.Config) -> None:
    for name, value in _saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    if _home is not None:
        shutil.rmtree(_home, ignore_errors=True)


@pytest.fixture(scope="session")
def test_home() -> Path:
    """The session's temporary home directory (``$HOME``; ``$FLWR_HOME`` is its ``.flwr``)."""
    assert _home is not None
    return _home
