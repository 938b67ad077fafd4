"""Append real, signed round blocks to a ledger, acknowledging each on stdout (crash test).

Usage: ``python tests/crash_chain_writer.py PATH ROUNDS``

Creates the ledger (a 10-participant synthetic federation, seed 7) or resumes it through
:meth:`Chain.open`, which re-verifies the file first, then appends ROUNDS blocks and prints
``acked <height>`` (flushed) once each append has returned, i.e. once it is durable.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fedchain.ledger.chain import Chain
from fedchain.ledger.synthetic import SyntheticFederation

PARTICIPANTS, SEED = 10, 7


def main(path: Path, rounds: int) -> None:
    federation = SyntheticFederation(PARTICIPANTS, seed=SEED)
    chain = Chain.open(path) if path.exists() else Chain.create(path, federation.genesis)
    with chain:
        for _ in range(rounds):
            block, state = federation.make_round(chain.state)
            chain.append(block, state)
            print(f"acked {block.header.height}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
