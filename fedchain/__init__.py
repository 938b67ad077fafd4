"""fedchain: federated learning with encrypted client data, signed updates and a PoS ledger."""

__version__ = "0.1.0"
