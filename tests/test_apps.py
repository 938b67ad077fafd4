"""The Flower app entry points named in pyproject.toml resolve to real Flower apps."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

import clients.client_app as real_client
import server.server_app as server_app
from fedchain.errors import FedchainError
from server.inprocess_grid import InProcessGrid

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def load_component(ref: str) -> object:
    module, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(module), attribute)


def test_flwr_app_components_resolve():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    components = config["components"]
    assert isinstance(load_component(components["serverapp"]), ServerApp)
    assert isinstance(load_component(components["clientapp"]), ClientApp)
    assert config["publisher"]


def test_invalid_flwr_run_with_too_few_supernodes_says_how_to_start_enough(tmp_path, monkeypatch):
    """``flwr run .`` on Flower's default 2 simulated SuperNodes with clients = 10: one clear
    error naming --federation-config, before any run directory is written (it waited 120 s
    and failed with a traceback)."""
    monkeypatch.setattr(server_app, "NODES_TIMEOUT_S", 0.5)
    context = Context(
        run_id=1,
        node_id=0,
        node_config={},
        state=RecordDict(),
        run_config={"clients": 10, "rounds": 1, "out": str(tmp_path / "runs")},
    )
    with pytest.raises(FedchainError, match="num-supernodes=10"):
        server_app.main(InProcessGrid(real_client.app, 2), context)
    assert not (tmp_path / "runs").exists()
