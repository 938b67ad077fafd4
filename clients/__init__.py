"""The Flower ClientApp (what runs on a data holder's machine)."""

import fedchain  # noqa: F401  (first: turns Flower's telemetry off before flwr is imported)
