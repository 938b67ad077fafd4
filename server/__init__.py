"""The Flower ServerApp, strategy and simulation launcher (the coordinator's adapter)."""

import fedchain  # noqa: F401  (first: turns Flower's telemetry off before flwr is imported)
