"""What ``fedchain verify --anchors`` runs: every anchor, checked with its witness and the ledger.

Three sources name anchors: the receipts in the verified ledger, receipt files kept outside it
(the run directory's ``anchors/``, or an outsider's copy), and the witness itself (an EVM
contract lists the anchorer's records of the federation; a TSA lists none). Each must check out
with its witness (:meth:`~fedchain.anchor.witness.Witness.check`), and each must agree with the
ledger: the statement at its height is the ledger's own statement at that height (block hash
and global model), the height is final in the ledger, and the ledger reaches it. So a ledger
shortened below an anchored height fails ("shortened"), a block rewritten at or below it fails
("rewritten"), and a receipt whose proof does not check (a wrong digest, contract or TSA) fails
("forged"). The highest height that checks is the last anchored height.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedchain.anchor.witness import Stamp, Witness, WitnessRecord, compute_anchor_digest
from fedchain.errors import AnchorError
from fedchain.ledger.objects import AnchorReceipt, AnchorStatement, Hash32
from fedchain.ledger.verify import VerifyReport

__all__ = ["AnchorFinding", "AnchorsReport", "check_anchors", "compute_ledger_statement"]


@dataclass(frozen=True, slots=True)
class AnchorFinding:
    """One anchor that checked out: where it was found, its witness, height and stamp."""

    source: str
    witness: str
    height: int
    stamp: Stamp


@dataclass(frozen=True)
class AnchorsReport:
    """The outcome of :func:`check_anchors`: ``failures`` empty means every anchor checks."""

    findings: tuple[AnchorFinding, ...] = ()
    failures: tuple[str, ...] = ()
    anchored_height: int = -1  # the highest height anchored and checked; -1: none
    witnesses: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.failures


def compute_ledger_statement(report: VerifyReport, height: int) -> AnchorStatement | None:
    """The statement a verified ledger makes about block ``height``; None past its head."""
    if not 0 <= height < len(report.block_hashes):
        return None
    return AnchorStatement(
        report.genesis_hash, height, report.block_hashes[height], _model_head_at(report, height)
    )


def _model_head_at(report: VerifyReport, height: int) -> Hash32:
    heights = [h for h, _ in report.model_heads]
    index = bisect.bisect_right(heights, height)
    return report.model_heads[index - 1][1] if index else report.initial_model_hash


def check_anchors(
    report: VerifyReport,
    witnesses: Mapping[str, Witness],
    receipt_files: Sequence[tuple[Path, AnchorReceipt]] = (),
) -> AnchorsReport:
    """Check every anchor of the verified ledger ``report`` (see the module docstring).

    ``witnesses`` maps a witness kind (``"evm"``, ``"rfc3161"``) to the witness the verifier
    trusts; an anchor whose witness is missing is a failure that says what to give.
    """
    if not report.ok:
        return AnchorsReport(failures=(f"the ledger does not verify: {report.failure}",))
    findings: list[AnchorFinding] = []
    failures: list[str] = []
    proofs: dict[str, list[bytes]] = {}
    named = [(f"block {h}", r) for h, r in report.anchor_receipts]
    named += [(str(path), r) for path, r in receipt_files]
    for source, receipt in named:
        proofs.setdefault(receipt.witness, []).append(receipt.proof)
        try:
            stamp = _check_receipt(report, witnesses, receipt)
        except AnchorError as e:
            failures.append(f"{source}: {e}")
            continue
        findings.append(AnchorFinding(source, receipt.witness, receipt.statement.height, stamp))
    for kind, witness in sorted(witnesses.items()):
        try:
            records = witness.history(report.genesis_hash, proofs.get(kind, []))
        except AnchorError as e:
            failures.append(f"the {kind} witness: {e}")
            continue
        for record in records:
            source = f"the {kind} witness ({record.stamp.where})"
            try:
                _check_record(report, record)
            except AnchorError as e:
                failures.append(f"{source}: {e}")
                continue
            findings.append(AnchorFinding(source, kind, record.height, record.stamp))
    heights = [f.height for f in findings]
    return AnchorsReport(
        tuple(findings), tuple(failures), max(heights, default=-1), tuple(sorted(witnesses))
    )


def _check_receipt(
    report: VerifyReport, witnesses: Mapping[str, Witness], receipt: AnchorReceipt
) -> Stamp:
    witness = witnesses.get(receipt.witness)
    if witness is None:
        raise AnchorError(f"an {receipt.witness} anchor, and no {receipt.witness} witness given")
    statement = receipt.statement
    if statement.genesis_hash != report.genesis_hash:
        raise AnchorError(
            f"the receipt is for federation {statement.genesis_hash.hex()[:16]}…, not this one"
        )
    stamp = witness.check(statement, receipt.proof)  # forged proofs fail here, ledger or not
    _check_against_ledger(report, statement.height, stamp, statement)
    return stamp


def _check_record(report: VerifyReport, record: WitnessRecord) -> None:
    ours = compute_ledger_statement(report, record.height)
    if ours is not None and compute_anchor_digest(ours) != record.digest:
        raise AnchorError(
            f"block {record.height} is not the block anchored at {_when(record.stamp)}: the "
            "ledger was rewritten at or below that height after it was anchored"
        )
    _check_against_ledger(report, record.height, record.stamp)


def _check_against_ledger(
    report: VerifyReport, height: int, stamp: Stamp, statement: AnchorStatement | None = None
) -> None:
    """Refuse an anchor of ``height`` (checked with its witness) that the verified ledger
    contradicts; ``statement``, if known, must be the ledger's own at that height."""
    ours = compute_ledger_statement(report, height)
    if ours is None:
        raise AnchorError(
            f"height {height} was anchored at {_when(stamp)}, but this ledger ends at height "
            f"{report.head_height}: it was shortened after it was anchored"
        )
    if statement is not None and statement.block_hash != ours.block_hash:
        raise AnchorError(
            f"block {height} is not the block anchored at {_when(stamp)}: the ledger was "
            "rewritten at or below that height after it was anchored"
        )
    if statement is not None and statement.model_head != ours.model_head:
        raise AnchorError(
            f"the anchored model head at height {height} is not the ledger's global model "
            "after that block"
        )
    if height > report.final_height:
        raise AnchorError(
            f"height {height} was anchored at {_when(stamp)}, but this ledger proves blocks "
            f"final only up to height {report.final_height}: it was shortened after it was "
            "anchored (the blocks whose attestations made it final are gone)"
        )


def _when(stamp: Stamp) -> str:
    return f"{stamp.where}, time {stamp.time}"
