"""Append blocks to a ledger store in a loop, acknowledging each one on stdout (for the crash test).

Usage: ``python tests/crash_writer.py PATH N [BLOCK_BYTES]``

Creates the ledger if PATH does not exist, otherwise resumes from its head, then appends N blocks
and prints ``acked <height>`` (flushed) after each append has returned, i.e. after it is durable.
The test kills this process with SIGKILL at an arbitrary point and checks that every acknowledged
block survived and the chain is whole.

The blocks are fake (random data, SHA-256 of the data as hash): this tests the store alone.
``crash_chain_writer.py`` does the same with real signed blocks, checked by ``verify``.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from fedchain.ledger.store import HASH_SIZE, LedgerStore, StoredBlock

GENESIS_HASH = hashlib.sha256(b"fedchain/test/fake-genesis").digest()
DEFAULT_BLOCK_BYTES = 25 * 1024  # a round's block: ~100 commitments + ~100 attestations


def make_genesis_block(data: bytes) -> StoredBlock:
    return StoredBlock(
        height=0,
        block_hash=hashlib.sha256(data).digest(),
        parent_hash=bytes(HASH_SIZE),
        round=0,
        proposer=bytes(HASH_SIZE),
        data=data,
    )


def make_next_block(parent: StoredBlock, data: bytes) -> StoredBlock:
    height = parent.height + 1
    return StoredBlock(
        height=height,
        block_hash=hashlib.sha256(data).digest(),
        parent_hash=parent.block_hash,
        round=height,
        proposer=hashlib.sha256(b"proposer %d" % (height % 7)).digest(),
        data=data,
    )


def open_or_create(path: Path, block_bytes: int) -> LedgerStore:
    if path.exists():
        return LedgerStore.open(path)
    return LedgerStore.create(path, GENESIS_HASH, make_genesis_block(os.urandom(block_bytes)))


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    path, count = Path(argv[0]), int(argv[1])
    block_bytes = int(argv[2]) if len(argv) == 3 else DEFAULT_BLOCK_BYTES
    with open_or_create(path, block_bytes) as store:
        head = store.head()
        for _ in range(count):
            block = make_next_block(head, os.urandom(block_bytes))
            store.append(block)
            print(f"acked {block.height}", flush=True)
            head = block
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
