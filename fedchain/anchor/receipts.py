"""The coordinator's side of anchoring: when to anchor, what statement, and the receipt it records.

Every ``every`` final blocks (:func:`is_anchor_due`) the coordinator publishes the statement of
its highest final block (:func:`compute_statement`: genesis hash, height, block hash, and the
global model after that block) to its witness, and puts the :class:`AnchorReceipt` in the next
block it prepares. A copy of each receipt goes to the run directory's ``anchors/`` folder
(:func:`~fedchain.runs.layout.anchor_receipt_path`): a file an outsider can keep, since a ledger
shortened below a receipt no longer carries it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from fedchain.anchor.witness import Witness
from fedchain.durable import write_atomically
from fedchain.errors import AnchorError, DecodeError
from fedchain.ledger.codec import compute_hash, decode, encode
from fedchain.ledger.derived import compute_block_hash
from fedchain.ledger.objects import (
    AnchorReceipt,
    AnchorStatement,
    Block,
    Genesis,
    Hash32,
    ModelVersion,
)
from fedchain.runs.layout import ANCHORS_DIRNAME, anchor_receipt_path

__all__ = [
    "MAX_PUBLISH_FAILURES",
    "Anchoring",
    "BlockAt",
    "compute_model_head_at",
    "compute_statement",
    "is_anchor_due",
    "load_receipt_files",
    "save_receipt_file",
]


def is_anchor_due(final_height: int, anchored_height: int, every: int) -> bool:
    """Whether to anchor now: the final height is ``every`` or more blocks past the last one
    anchored (``every`` < 1: never)."""
    return every >= 1 and final_height >= anchored_height + every


BlockAt = Callable[[int], Block]
"""A chain's block at a height (genesis: 0); a list's ``__getitem__`` will do."""


def compute_model_head_at(block_at: BlockAt, height: int) -> Hash32:
    """The global model after block ``height``: the latest ModelVersion at or below it (read
    from block ``height`` down), else the genesis initial model."""
    for h in range(height, 0, -1):
        for tx in reversed(block_at(h).transactions):
            if isinstance(tx, ModelVersion):
                return tx.model_hash
    genesis = block_at(0).transactions[0]
    if not isinstance(genesis, Genesis):
        raise AnchorError("block 0 does not hold the genesis")
    return genesis.initial_model_hash


def compute_statement(block_at: BlockAt, height: int) -> AnchorStatement:
    """The statement anchoring block ``height`` of the chain ``block_at`` reads."""
    genesis = block_at(0).transactions[0]
    return AnchorStatement(
        compute_hash(genesis),
        height,
        compute_block_hash(block_at(height)),
        compute_model_head_at(block_at, height),
    )


MAX_PUBLISH_FAILURES = 3
"""Publishing may fail this many times in a row (a node or TSA briefly away: the anchor is
retried at the next block) before the run stops rather than go on unanchored."""


class Anchoring:
    """A coordinator's anchoring: its witness, its interval in final blocks, the run directory
    its receipt copies go to, and the highest height anchored so far (from the ledger when a
    run resumes). ``failures`` are the publish errors so far, in words."""

    def __init__(
        self, witness: Witness, every: int, run_dir: Path, anchored_height: int = 0
    ) -> None:
        if every < 1:
            raise AnchorError(f"the anchoring interval must be at least 1 block, got {every}")
        self.witness, self.every, self.run_dir = witness, every, Path(run_dir)
        self.anchored_height = anchored_height
        self.seconds: list[float] = []  # per publish, for the cost benchmark
        self.failures: list[str] = []
        self._failed_in_a_row = 0

    def receipts_due(self, block_at: BlockAt, final_height: int) -> list[AnchorReceipt]:
        """Publish the statement of block ``final_height`` if an anchor is due; its receipt."""
        if not is_anchor_due(final_height, self.anchored_height, self.every):
            return []
        statement = compute_statement(block_at, final_height)
        started = time.perf_counter()
        try:
            proof = self.witness.publish(statement)
        except AnchorError as e:
            self.failures.append(f"height {final_height}: {e}")
            self._failed_in_a_row += 1
            if self._failed_in_a_row >= MAX_PUBLISH_FAILURES:
                raise AnchorError(
                    f"anchoring failed {self._failed_in_a_row} times in a row; last: {e}"
                ) from e
            return []  # retried at the next block
        self._failed_in_a_row = 0
        self.seconds.append(time.perf_counter() - started)
        receipt = AnchorReceipt(self.witness.kind, statement, proof)
        save_receipt_file(self.run_dir, receipt)
        self.anchored_height = final_height
        return [receipt]


def save_receipt_file(run_dir: Path, receipt: AnchorReceipt) -> Path:
    """Write the outsider's copy of ``receipt`` (its canonical encoding)."""
    path = anchor_receipt_path(run_dir, receipt.statement.height)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, encode(receipt))
    return path


def load_receipt_files(folder: Path) -> list[tuple[Path, AnchorReceipt]]:
    """The receipts in ``folder`` (a run directory's ``anchors/``, or an outsider's copy of it;
    a run directory is taken to mean its ``anchors/``), sorted by file name; none if absent."""
    folder = Path(folder)
    if (folder / ANCHORS_DIRNAME).is_dir():
        folder = folder / ANCHORS_DIRNAME
    if not folder.is_dir():
        return []
    receipts = []
    for path in sorted(folder.glob("*.receipt")):
        try:
            receipts.append((path, decode(AnchorReceipt, path.read_bytes())))
        except (OSError, DecodeError) as e:
            raise AnchorError(f"{path}: not an anchor receipt ({e})") from e
    return receipts
