"""Run a prepared federation on Flower's simulation engine (Ray), on this machine."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from fedchain.config import RunConfig
from server.server_app import RoundReporter, make_server_app

_QUIET_ENV = {
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "FLWR_TELEMETRY_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
}


def run_simulated(
    config: RunConfig,
    run_dir: Path,
    report: RoundReporter | None = None,
    *,
    cpus: int | None = None,
) -> None:
    """Run ``config.rounds`` rounds with ``config.clients`` virtual SuperNodes.

    Flower's and Ray's logs go to ``run_dir/log.txt``; the console gets ``report``'s lines.
    """
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    from flwr.common.logger import FLOWER_LOGGER
    from flwr.simulation import run_simulation

    from clients.client_app import app as client_app

    handler = logging.FileHandler(run_dir / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    console_handlers = [h for h in FLOWER_LOGGER.handlers if not isinstance(h, logging.FileHandler)]
    for h in console_handlers:
        FLOWER_LOGGER.removeHandler(h)
    FLOWER_LOGGER.addHandler(handler)
    cpus = cpus or os.cpu_count() or 1
    try:
        run_simulation(
            server_app=make_server_app(config, run_dir, report),
            client_app=client_app,
            num_supernodes=config.clients,
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {
                    "num_cpus": cpus,
                    "num_gpus": 0,
                    "include_dashboard": False,
                    "logging_level": logging.ERROR,
                    "log_to_driver": False,
                },
            },
        )
    finally:
        FLOWER_LOGGER.removeHandler(handler)
        handler.close()
        for h in console_handlers:
            FLOWER_LOGGER.addHandler(h)
