"""Readable and JSON views of ledger objects for ``fedchain ledger show`` (no protocol logic).

Much of what a ledger holds was written by someone else: a rejection's reason quotes a client's
error text, a run id is the coordinator's. Such text reaches a terminal only through
:func:`printable` (control characters, ANSI escapes among them, shown as escapes) and, where it
goes through rich, :func:`as_markup_text` (rich markup shown as text, never obeyed), so a client
can neither crash a reader's command (``[/bold]``) nor plant a link or rewrite the screen.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from rich.markup import escape

from fedchain.crypto.identity import fingerprint
from fedchain.ledger.derived import compute_block_hash
from fedchain.ledger.objects import (
    AnchorReceipt,
    AppApproval,
    Attestation,
    Block,
    ContributionRecord,
    Genesis,
    ModelVersion,
    Refusal,
    Registration,
    Rejection,
    RewardDeltas,
    SlashingEvidence,
    UpdateCommitment,
)
from fedchain.text import compute_printable


def printable(value: object) -> str:
    """``str(value)`` with every non-printable character (control codes, ESC, bidi overrides,
    line breaks) written as a Python escape (``\\x1b``): one line, shown as it is."""
    return compute_printable(str(value))


def as_markup_text(value: object) -> str:
    """``value`` for a rich markup string: :func:`printable`, with markup escaped."""
    return escape(printable(value))


def to_jsonable(obj: Any) -> Any:
    """Ledger dataclasses → dicts with a ``type`` key; bytes → hex; tuples → lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        return {"type": type(obj).__name__, **fields}
    if isinstance(obj, bytes):
        return obj.hex()
    if isinstance(obj, tuple | list):
        return [to_jsonable(item) for item in obj]
    return obj


def block_to_json(block: Block) -> dict[str, Any]:
    doc: dict[str, Any] = to_jsonable(block)
    doc["hash"] = compute_block_hash(block).hex()
    return doc


def _who(key: bytes) -> str:
    return fingerprint(key) if len(key) == 32 else key.hex()


def describe_transaction(tx: object) -> str:
    """One line per transaction, naming participants by their key fingerprint.

    Plain text (not rich markup), with what a participant or the coordinator wrote passed
    through :func:`printable`.
    """
    match tx:
        case Genesis():
            return (
                f"genesis run={printable(repr(tx.run_id))} participants={len(tx.participants)} "
                f"rule={printable(tx.rules.aggregation_rule)} min_stake={tx.rules.min_stake} "
                f"reward/round={tx.rules.reward_per_round}"
            )
        case Registration():
            return f"registration {_who(tx.public_key)} stake={tx.stake} examples={tx.num_examples}"
        case UpdateCommitment():
            return (
                f"commitment {_who(tx.public_key)} round={tx.round} "
                f"update={tx.update_hash.hex()[:16]} examples={tx.num_examples}"
            )
        case ModelVersion():
            return (
                f"model {tx.model_hash.hex()[:16]} parent={tx.parent_hash.hex()[:16]} "
                f"updates={len(tx.update_hashes)} rule={printable(tx.rule)}"
            )
        case ContributionRecord():
            return f"contribution round={tx.round} scores={len(tx.scores)}"
        case RewardDeltas():
            paid = sum(d for _, d in tx.deltas if d > 0)
            fined = -sum(d for _, d in tx.deltas if d < 0)
            return f"rewards round={tx.round} paid={paid} penalties={fined}"
        case SlashingEvidence():
            return f"slashing {printable(tx.kind)} offender={_who(tx.offender)}"
        case Rejection():
            return f"rejection {_who(tx.public_key)} round={tx.round}: {printable(tx.reason)}"
        case Attestation():
            return f"attestation {_who(tx.validator)} → height {tx.height}"
        case Refusal():
            return (
                f"refusal {_who(tx.public_key)} round={tx.round} {printable(tx.code)} (signed by "
                f"the holder): {printable(tx.detail)}"
            )
        case AppApproval():
            return (
                f"app approval {_who(tx.public_key)} #{tx.sequence}: app "
                f"{tx.app_digest.hex()[:16]} replaces {tx.replaces.hex()[:16]} "
                f"(fedchain {printable(tx.fedchain_version)})"
            )
        case AnchorReceipt():
            return (
                f"anchor {printable(tx.witness)} height={tx.statement.height} "
                f"block={tx.statement.block_hash.hex()[:16]} proof={len(tx.proof)} bytes"
            )
    return type(tx).__name__
