"""The witness interface: publish an anchor statement, check a proof of it, list what it holds.

A witness is anything outside the coordinator that records a statement's 32-byte digest
(:func:`compute_anchor_digest`) with a time the coordinator cannot choose: a contract on an EVM
chain (:mod:`fedchain.anchor.evm`) or an RFC 3161 timestamping authority
(:mod:`fedchain.anchor.rfc3161`). :meth:`Witness.publish` returns the proof bytes the ledger
records; :meth:`Witness.check` raises :class:`~fedchain.errors.AnchorError` unless the proof shows
this witness saw exactly this statement, and says when; :meth:`Witness.history` lists the
anchors the witness itself holds for a federation (an EVM chain can; a TSA keeps no searchable
record, so it lists none and the receipts kept outside the ledger stand in for it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from fedchain.ledger.codec import compute_hash
from fedchain.ledger.objects import AnchorStatement

__all__ = ["DIGEST_SIZE", "Stamp", "Witness", "WitnessRecord", "compute_anchor_digest"]

DIGEST_SIZE = 32


def compute_anchor_digest(statement: AnchorStatement) -> bytes:
    """What a witness records: ``compute_hash(statement)`` (SHA-256 of its tagged encoding)."""
    return compute_hash(statement)


@dataclass(frozen=True, slots=True)
class Stamp:
    """When and where a witness saw a digest: ``time`` in Unix seconds as the witness tells it
    (the EVM block's timestamp, the TSA's genTime), ``where`` in words (chain, contract and
    block; or the TSA's name and serial number)."""

    time: int
    where: str


@dataclass(frozen=True, slots=True)
class WitnessRecord:
    """An anchor the witness holds for a federation: the height the anchorer claimed and the
    digest it recorded (checked against the ledger's own statement at that height)."""

    height: int
    digest: bytes
    stamp: Stamp


class Witness(Protocol):
    """One witness. ``kind`` is the name an :class:`~fedchain.ledger.objects.AnchorReceipt`
    records (one of :data:`~fedchain.ledger.objects.ANCHOR_WITNESSES`)."""

    @property
    def kind(self) -> str: ...

    def publish(self, statement: AnchorStatement) -> bytes:
        """Have the witness record ``statement``'s digest; return the proof the ledger keeps."""
        ...

    def check(self, statement: AnchorStatement, proof: bytes) -> Stamp:
        """The stamp ``proof`` shows for ``statement``; raises AnchorError if it shows none."""
        ...

    def history(self, genesis_hash: bytes, proofs: Sequence[bytes]) -> list[WitnessRecord]:
        """The anchors of federation ``genesis_hash`` the witness holds, by the anchorers that
        ``proofs`` (the receipts in hand) name or the witness was told to trust."""
        ...
