"""The Flower app entry points named in pyproject.toml resolve to real Flower apps."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

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
