"""fedchain: federated learning with encrypted client data, signed updates and a PoS ledger.

fedchain contacts no one unasked. Flower sends a telemetry event when a simulation, SuperLink,
SuperNode or app process starts and stops; its ``flwr`` CLI, SuperLink, SuperNode and SuperExec
ask ``api.flower.ai`` for updates; Ray reports usage statistics. Each is switched off here, by
default, because this module runs before anything of fedchain's: the ``fedchain`` command and
``python -m fedchain`` import it before any ``flwr`` import, and so does the library used from
Python (``server/`` and ``clients/`` import ``fedchain`` in their package ``__init__``, before
their modules import ``flwr``). It has to be that early: Flower reads ``FLWR_TELEMETRY_ENABLED``
once, when ``flwr`` is first imported. The processes fedchain starts (SuperLink, SuperNodes, the
``flwr`` CLI, Ray's workers) inherit this environment. A value the user set is kept: exporting
``FLWR_TELEMETRY_ENABLED=1``, ``FLWR_DISABLE_UPDATE_CHECK=0`` or ``RAY_USAGE_STATS_ENABLED=1``
is an explicit opt-in. ``flwr run .`` is Flower's own launcher: its processes start before any
fedchain code runs, so the README has the user export the same variables for it.
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
