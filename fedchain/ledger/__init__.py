"""The proof-of-stake ledger: pure protocol core plus a thin SQLite store.

- :mod:`fedchain.ledger.codec` — the one canonical byte encoding (hashing, signing, storage).
- :mod:`fedchain.ledger.objects` — the ledger's frozen dataclasses: genesis, transactions, blocks.
- :mod:`fedchain.ledger.consensus` — validators, proposer choice, finality, double-sign detection.
- :mod:`fedchain.ledger.state` — the state transition: ``process_transaction``, ``process_block``.
- :mod:`fedchain.ledger.builder` — helpers that make valid, signed objects and blocks.
- :mod:`fedchain.ledger.store` — the SQLite (WAL) block store.

Everything but the store is pure: no Flower, no disk, no clock, no unseeded randomness.
"""
