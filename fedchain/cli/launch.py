"""Where a simulation runs: the launcher the install registered (Flower's simulation engine,
loaded only when a run starts) and a Ray cluster's address, checked before anything is written."""

from __future__ import annotations

import socket
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Protocol

from fedchain.config import RunConfig
from fedchain.errors import ConfigError, FedchainError
from fedchain.rounds.coordinator import RoundReporter

__all__ = ["LAUNCHERS", "Launcher", "check_ray_address", "find_launcher"]


class Launcher(Protocol):
    """Runs a prepared run directory's rounds (``server.simulation.run_simulated``)."""

    def __call__(
        self,
        config: RunConfig,
        run_dir: Path,
        report: RoundReporter | None = None,
        *,
        ray_address: str | None = None,
    ) -> None: ...


LAUNCHERS = "fedchain.launchers"
"""The entry-point group of launchers: ``simulation = "server.simulation:run_simulated"`` in
pyproject.toml. fedchain never imports the Flower adapters (server/, clients/); the install
binds them, and loading one imports Flower (seconds) only when a run really starts."""


def check_ray_address(address: str, timeout: float = 5.0) -> None:
    """Refuse, in one line, a ``--ray-address`` that is not ``HOST:PORT`` or where nothing
    accepts a connection (Ray itself would retry for minutes)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--ray-address {address!r}: expected HOST:PORT of a Ray cluster's head")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise ConfigError(
            f"--ray-address {address}: no Ray cluster answers there ({e.strerror or e}); start "
            "one with `ray start --head` and give the address it prints"
        ) from None


def find_launcher(name: str = "simulation") -> EntryPoint:
    """The launcher the install registered as ``name`` (not loaded yet: loading it imports
    Flower), or one line saying how to get it; asked before anything is written."""
    found = entry_points(group=LAUNCHERS, name=name)
    if not found:
        raise FedchainError(
            f"no {name} launcher is installed (entry point {LAUNCHERS}:{name}): reinstall "
            "fedchain from its checkout with pip install -e . (make install)"
        )
    return next(iter(found))
