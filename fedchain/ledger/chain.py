"""A ledger on disk with its current state: the I/O shell around the pure state transition.

:class:`Chain` is what a coordinator holds. Appending a block first runs it through
:func:`~fedchain.ledger.state.process_block` (so an invalid block never reaches the file) and
then stores it in one SQLite transaction. Reopening replays the stored blocks from genesis, so a
coordinator that crashed resumes exactly at the last block it appended, with a state it has
re-verified rather than trusted.
"""

from __future__ import annotations

from pathlib import Path

from fedchain.errors import InvalidBlock, LedgerStoreError
from fedchain.ledger.codec import compute_hash, encode
from fedchain.ledger.containers import LedgerState
from fedchain.ledger.derived import compute_block_hash
from fedchain.ledger.genesis import compute_genesis_block, process_genesis_block
from fedchain.ledger.objects import Block, Genesis
from fedchain.ledger.signatures import PLAIN, Verifier
from fedchain.ledger.state import process_block
from fedchain.ledger.store import LedgerStore, StoredBlock
from fedchain.ledger.verify import VerifyReport, verify_ledger


def compute_stored_block(block: Block) -> StoredBlock:
    """The row a block becomes: indexed header fields plus its canonical encoding."""
    header = block.header
    return StoredBlock(
        height=header.height,
        block_hash=compute_block_hash(header),
        parent_hash=header.parent_hash,
        round=header.round,
        proposer=header.proposer,
        data=encode(block),
    )


class Chain:
    """An open ledger file and the state after its head block.

    ``verifier`` checks the signatures of every block appended (and, for :meth:`open`, of the
    stored ones): :data:`~fedchain.ledger.signatures.PLAIN` unless the caller passes a faster
    one, which the chain keeps (``chain.verifier``) so that whoever builds blocks for it can
    share it. The caller owns it: closing the chain does not close the verifier.
    """

    def __init__(
        self,
        store: LedgerStore,
        state: LedgerState,
        verified: VerifyReport | None = None,
        *,
        verifier: Verifier = PLAIN,
    ) -> None:
        self.store = store
        self.state = state
        self.verified = verified  # the verification ``open`` resumed from (None after create)
        self.verifier = verifier

    @classmethod
    def create(cls, path: Path, genesis: Genesis, *, verifier: Verifier = PLAIN) -> Chain:
        """Start a new ledger file holding only the genesis block."""
        block = compute_genesis_block(genesis)
        state = process_genesis_block(block)
        store = LedgerStore.create(Path(path), compute_hash(genesis), compute_stored_block(block))
        return cls(store, state, verifier=verifier)

    @classmethod
    def open(cls, path: Path, *, verifier: Verifier = PLAIN) -> Chain:
        """Reopen a ledger for appending, resuming from the state its full verification ends in."""
        report = verify_ledger(Path(path), verifier=verifier, details=False)
        if not report.ok or report.state is None:
            raise LedgerStoreError(
                f"{path}: cannot resume a ledger that fails verification: {report.failure}"
            )
        store = LedgerStore.open(Path(path))
        if store.head().block_hash != report.head_hash:
            store.close()
            raise LedgerStoreError(f"{path}: the ledger changed while it was being verified")
        return cls(store, report.state, report, verifier=verifier)

    def append(self, block: Block, post_state: LedgerState | None = None) -> LedgerState:
        """Validate ``block`` against the head, store it durably, and advance the state.

        ``post_state`` is the state :func:`~fedchain.ledger.builder.build_block` returned with
        ``block`` when this process built it from ``self.state``: that already ran every check,
        so it is not run twice. A block from elsewhere is always fully processed.
        """
        if post_state is None:
            post_state = process_block(self.state, block, verifier=self.verifier)
        elif (
            block.header.parent_hash != self.state.head_hash
            or post_state.head_hash != compute_block_hash(block)
            or post_state.height != self.state.height + 1
        ):
            raise InvalidBlock("the block and state given do not extend this chain's head")
        self.store.append(compute_stored_block(block))
        self.state = post_state
        return post_state

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Chain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
