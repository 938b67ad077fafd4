"""Readable and JSON views of ledger objects for ``fedchain ledger show`` (no protocol logic)."""

from __future__ import annotations

import dataclasses
from typing import Any

from fedchain.identity import fingerprint
from fedchain.ledger.objects import (
    Attestation,
    Block,
    ContributionRecord,
    Genesis,
    ModelVersion,
    Registration,
    Rejection,
    RewardDeltas,
    SlashingEvidence,
    UpdateCommitment,
    compute_block_hash,
)


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
    """One line per transaction, naming participants by their key fingerprint."""
    match tx:
        case Genesis():
            return (
                f"genesis run={tx.run_id!r} participants={len(tx.participants)} "
                f"rule={tx.rules.aggregation_rule} min_stake={tx.rules.min_stake} "
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
                f"updates={len(tx.update_hashes)} rule={tx.rule}"
            )
        case ContributionRecord():
            return f"contribution round={tx.round} scores={len(tx.scores)}"
        case RewardDeltas():
            paid = sum(d for _, d in tx.deltas if d > 0)
            fined = -sum(d for _, d in tx.deltas if d < 0)
            return f"rewards round={tx.round} paid={paid} penalties={fined}"
        case SlashingEvidence():
            return f"slashing {tx.kind} offender={_who(tx.offender)}"
        case Rejection():
            return f"rejection {_who(tx.public_key)} round={tx.round}: {tx.reason}"
        case Attestation():
            return f"attestation {_who(tx.validator)} → height {tx.height}"
    return type(tx).__name__
