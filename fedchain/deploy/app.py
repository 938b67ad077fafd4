"""The Flower app fedchain submits (its FAB) and the digest a data holder approves.

A FAB is the zip ``flwr run`` builds from an app folder; Flower names it by the SHA-256 of its
bytes everywhere (``flwr/cli/run/run.py``, the SuperLink's and the SuperNode's state), and a
SuperNode's tasks carry that hash. fedchain's FAB holds one ``pyproject.toml`` and no code: its
components are the installed ``server`` and ``clients`` packages, so the digest fixes which
entry points run and their config, and a FAB that ships a module to shadow them has another
digest. It holds nothing of any one federation (the coordinator passes its folder as a run
config override, which Flower keeps outside the FAB), so every federation of one fedchain
release submits the same FAB, and a data holder computes the digest it approves from its own
installed copy (:func:`app_digest`), trusting neither the coordinator's file nor its word.

Building is deterministic (fixed zip dates, sorted files, ``pyproject.toml`` re-serialised by
Flower: ``flwr/cli/build.py``); two machines agree when they run the same Flower version.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from fedchain import __version__

__all__ = [
    "APP_PYPROJECT",
    "FEDERATION_DIR_KEY",
    "app_digest",
    "build_app_fab",
    "compute_folder_digest",
    "fedchain_version",
    "write_app_bundle",
]

FEDERATION_DIR_KEY = "federation-dir"
"""The run config key naming the coordinator's federation folder (read by the ServerApp only)."""

APP_PYPROJECT = (
    "# Written by fedchain: the app bundle `flwr run` submits (see fedchain/deploy/app.py).\n"
    "[build-system]\n"
    'requires = ["setuptools>=69"]\n'
    'build-backend = "setuptools.build_meta"\n\n'
    "[project]\n"
    'name = "fedchain-federation"\n'
    f'version = "{__version__}"\n'
    "dependencies = []\n\n"
    "[tool.flwr.app]\n"
    'publisher = "fedchain"\n\n'
    "[tool.flwr.app.components]\n"
    'serverapp = "server.server_app:app"\n'
    'clientapp = "clients.client_app:app"\n\n'
    "[tool.flwr.app.config]\n"
    f'{FEDERATION_DIR_KEY} = ""\n'
)


def fedchain_version() -> str:
    """The version of the fedchain package running here (what a registration records)."""
    return __version__


def write_app_bundle(folder: Path) -> Path:
    """Write the app folder ``flwr run`` submits (one ``pyproject.toml``) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(APP_PYPROJECT)
    return folder


def build_app_fab() -> bytes:
    """The FAB ``flwr run`` builds from :func:`write_app_bundle`'s folder, built here."""
    from flwr.cli.build import build_fab_from_files

    fab, _metadata = build_fab_from_files({"pyproject.toml": APP_PYPROJECT.encode()})
    return fab


def compute_folder_digest(folder: Path) -> bytes:
    """SHA-256 of the FAB ``flwr run`` builds from the app folder ``folder``: the digest the
    holders' nodes see."""
    from flwr.cli.build import build_fab_from_disk

    return hashlib.sha256(build_fab_from_disk(folder)).digest()


@functools.lru_cache(maxsize=1)
def app_digest() -> bytes:
    """SHA-256 of :func:`build_app_fab`: the app a holder of this fedchain approves."""
    return hashlib.sha256(build_app_fab()).digest()
