"""The suite's shared set-up: a throw-away home, participant keys, a genesis, in-process runs.

The whole suite runs with a throw-away home: no test reads or writes the user's own files.

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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedchain.ledger.objects import Genesis
from fedchain.ledger.synthetic import SyntheticFederation

if TYPE_CHECKING:
    from flwr.app import MetricRecord
    from flwr.clientapp import ClientApp

    from fedchain.rounds.coordinator import RoundOutcome, RoundReporter
    from fedchain.runs.prepare import RunSetup
    from server.inprocess_grid import InProcessGrid

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


# -- shared fixtures ---------------------------------------------------------------------------
# Imports of fedchain's Flower-facing modules sit inside the fixtures, not at the top: Flower reads
# FLWR_HOME when it is imported, and this file is imported before pytest_configure points it at
# the temporary home. (fedchain.ledger and fedchain.crypto import neither Flower nor torch.)

PARTICIPANTS = 4
"""How many identities ``participant_keys`` and ``genesis`` hold."""


@pytest.fixture(scope="session")
def synthetic_federation() -> SyntheticFederation:
    """Four equal-stake participants with deterministic keys, their genesis, and the blocks they
    sign (:class:`fedchain.ledger.synthetic.SyntheticFederation`, seed 0)."""
    return SyntheticFederation(PARTICIPANTS)


@pytest.fixture(scope="session")
def participant_keys(synthetic_federation: SyntheticFederation) -> list[Ed25519PrivateKey]:
    """Deterministic Ed25519 participant keys (never for real use), by participant index."""
    return list(synthetic_federation.keys)


@pytest.fixture(scope="session")
def genesis(synthetic_federation: SyntheticFederation) -> Genesis:
    """The genesis of ``participant_keys``: 10,000 stake each, the test rules of ``make_rules``."""
    return synthetic_federation.genesis


@dataclass
class InProcessFederation:
    """A prepared run and the in-process grid of its clients; :meth:`run` drives the rounds
    through the real ServerApp logic (``server.federate.run_federation``) and ClientApp code."""

    setup: RunSetup
    grid: InProcessGrid
    outcomes: list[RoundOutcome] = field(default_factory=list)  # one per ledger round
    accuracy: MetricRecord | None = None  # the last central evaluation

    def run(
        self,
        *,
        node_keys: Mapping[int, bytes] | None = None,
        report: RoundReporter | None = None,
    ) -> InProcessFederation:
        """Run every round; ``report`` also gets each round (after ``outcomes`` does)."""
        from server.federate import run_federation

        def on_round(round_: int, outcome: RoundOutcome | None, accuracy: float, s: float) -> None:
            if outcome:
                self.outcomes.append(outcome)
            if report is not None:
                report(round_, outcome, accuracy, s)

        config, run_dir = self.setup.config, self.setup.run_dir
        self.accuracy = run_federation(self.grid, config, run_dir, on_round, node_keys=node_keys)
        return self


MakeFederation = Callable[..., InProcessFederation]


@pytest.fixture(scope="session")
def inprocess_federation() -> MakeFederation:
    """A factory: ``inprocess_federation(out, apps=None, *, down=(), **settings)`` prepares the
    run ``out/<run_id>`` (run id ``"t"`` unless ``settings`` name one) of ``RunConfig(**settings)``
    and its grid: ``apps`` (default the real ClientApp; or one per client index), clients in
    ``down`` never answer. Session-scoped, so module-scoped fixtures can share one run."""
    from clients.client_app import app as client_app
    from fedchain.config import RunConfig
    from fedchain.runs.prepare import prepare_run
    from server.inprocess_grid import NODE_BASE, InProcessGrid

    def make(
        out: Path,
        apps: ClientApp | Callable[[int], ClientApp] | None = None,
        *,
        down: Iterable[int] = (),
        **settings: Any,
    ) -> InProcessFederation:
        config = RunConfig(**{"run_id": "t", "out": str(out), **settings})
        setup = prepare_run(config)
        grid = InProcessGrid(client_app if apps is None else apps, config.clients)
        grid.down = {NODE_BASE + i for i in down}
        return InProcessFederation(setup, grid)

    return make
