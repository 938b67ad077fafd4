"""The Flower ServerApp run by the coordinator.

``fedchain simulate`` builds one with :func:`make_server_app` around a prepared run directory;
``flwr run .`` loads the module-level ``app``, which prepares a run directory from the
``[tool.flwr.app.config]`` settings (kebab-case keys, see fedchain.config.RunConfig) first, or,
given ``federation-dir``, runs a registered federation (server/deployment.py).
"""

from __future__ import annotations

from logging import INFO
from pathlib import Path

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fedchain.config import RunConfig, check_attack_has_attackers, merge_config
from fedchain.errors import FedchainError
from fedchain.rounds.coordinator import RoundReporter
from fedchain.runs.prepare import new_run_id, prepare_run
from server.deployment import run_deployment
from server.federate import run_federation, wait_for_nodes


def make_server_app(
    config: RunConfig, run_dir: Path, report: RoundReporter | None = None
) -> ServerApp:
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_federation(grid, config, run_dir, report)

    return server_app


NODES_TIMEOUT_S = 30.0
"""How long ``flwr run .`` waits for its SuperNodes before saying how to start enough."""

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """``flwr run .``: prepare a run directory from the run config, then run it.

    With ``federation-dir`` set (``fedchain coordinator start`` does), run that registered
    federation instead: see :mod:`server.deployment`.
    """
    run_config = dict(context.run_config)
    federation_dir = str(run_config.pop("federation-dir", "") or "")
    if federation_dir:
        run_deployment(grid, Path(federation_dir))
        return
    config = merge_config(RunConfig(), run_config)
    check_attack_has_attackers(config)
    try:  # before anything is written: Flower's default simulation has 2 SuperNodes, not 10
        wait_for_nodes(grid, config.clients, timeout=NODES_TIMEOUT_S)
    except FedchainError:
        connected = len(list(grid.get_node_ids()))
        raise FedchainError(
            f"{connected} SuperNodes connected but clients = {config.clients}: run "
            f"flwr run . --federation-config 'num-supernodes={config.clients}' (or set "
            f"--run-config 'clients={connected}')"
        ) from None
    if not config.run_id:
        config = merge_config(config, {"run-id": new_run_id(config)})
    setup = prepare_run(config)
    log(INFO, "fedchain run directory: %s", setup.run_dir.resolve())
    run_federation(grid, config, setup.run_dir)
