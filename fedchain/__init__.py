"""fedchain: federated learning with encrypted client data, signed updates and a PoS ledger.

fedchain contacts no one unasked. Flower sends a telemetry event when a simulation, SuperLink,
SuperNode or app process starts and stops, its ``flwr`` CLI, SuperLink, SuperNode and SuperExec
ask ``api.flower.ai`` for updates, and Ray reports usage statistics. Each is switched off here, in
the one module every ``fedchain`` entry point imports first (the ``fedchain`` command,
``python -m fedchain``, ``server/`` and ``clients/`` via their ``fedchain`` imports, the library
from Python): Flower reads ``FLWR_TELEMETRY_ENABLED`` once, when ``flwr`` is first imported, so
setting it later is too late. The processes fedchain starts (SuperLink, SuperNodes, the ``flwr``
CLI, Ray's workers) inherit this environment. A value the user set is kept: exporting
``FLWR_TELEMETRY_ENABLED=1``, ``FLWR_DISABLE_UPDATE_CHECK=0`` or ``RAY_USAGE_STATS_ENABLED=1``
is an explicit opt-in.
"""

import os

__version__ = "0.1.0"

#: Environment defaults that keep Flower and Ray from contacting anyone (a user's value wins).
NO_PHONING_HOME = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}

for _name, _value in NO_PHONING_HOME.items():
    os.environ.setdefault(_name, _value)
