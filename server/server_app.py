"""The Flower ServerApp run by the coordinator.

Placeholder until the simulation issue: importable so ``[tool.flwr.app]`` resolves; it logs that no
federation is configured yet and returns.
"""

from __future__ import annotations

from logging import INFO

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    log(INFO, "fedchain ServerApp: simulated rounds are not implemented yet")
