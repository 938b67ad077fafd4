"""The proof-of-stake ledger: pure protocol core plus a thin SQLite store.

- :mod:`fedchain.ledger.codec` — the one canonical byte encoding (hashing, signing, storage).
- :mod:`fedchain.ledger.objects` — the ledger's frozen dataclasses: genesis, transactions, blocks.
- :mod:`fedchain.ledger.containers` — the state as values (LedgerState), state root, evidence id.
- :mod:`fedchain.ledger.consensus` — validators, proposer choice, finality, double-sign detection.
- :mod:`fedchain.ledger.genesis` — the genesis state, the canonical block 0, genesis checks.
- :mod:`fedchain.ledger.transactions` — the per-kind transaction rules on a working copy.
- :mod:`fedchain.ledger.state` — the state transition: ``process_transaction``, ``process_block``.
- :mod:`fedchain.ledger.signatures` — signature verifiers: ``PLAIN`` (default), opt-in caching.
- :mod:`fedchain.ledger.builder` — helpers that make valid, signed objects and blocks.
- :mod:`fedchain.ledger.store` — the SQLite (WAL) block store.
- :mod:`fedchain.ledger.chain` — the I/O shell: validate with the core, then store.
- :mod:`fedchain.ledger.verify` — re-check a stored ledger; ``iter_replay``, the one replay.
- :mod:`fedchain.ledger.lightclient`, :mod:`~fedchain.ledger.show`,
  :mod:`~fedchain.ledger.synthetic` — a client's head check, the ``ledger show`` view, synthetic
  ledgers for tests and benchmarks.

Everything but the store and the chain is pure: no Flower, no disk, no clock, no unseeded
randomness, and no process-global state (a faster verifier is passed in explicitly).
"""
