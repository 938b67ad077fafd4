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
    ARCHIVE_ALL_ROUNDS,
    DP_OFF,
    EMPTY_HASH,
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
    Rules,
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


def describe_contract(rules: Rules) -> list[str]:
    """The federation's rules as a data holder reads them before it signs a registration (which
    binds them through the federation id): the rules of data use first, then the model, the
    stake and the payout. One line each, :func:`printable` (the coordinator wrote the model's
    source and licence)."""
    model = rules.model
    tensors = len(model.trainable)
    lines = [
        "rounds: "
        + (
            f"at most {rules.max_rounds} (no update is accepted for a later round)"
            if rules.max_rounds
            else "no limit"
        ),
        "local epochs a round may ask of you: "
        + (f"at most {rules.max_local_epochs}" if rules.max_local_epochs else "no limit"),
        "what leaves your machine: one model update a round"
        + (
            f", {model.update_bytes:,} bytes ({tensors} trainable tensors as float32)"
            if model.update_bytes
            else ""
        )
        + "; never your examples",
    ]
    if rules.dp_mode == DP_OFF:
        lines.append("differential privacy: off (the coordinator sees each update as trained)")
    else:
        lines.append(
            f"differential privacy: {rules.dp_mode} level, noise multiplier "
            f"{rules.dp_noise_micro / 10**6:g}, clip {rules.dp_clip_micro / 10**6:g}, delta "
            f"{rules.dp_delta_pico / 10**12:g}, epsilon at most "
            f"{rules.dp_max_epsilon_micro / 10**6:g} ({rules.dp_max_participations} "
            "participations)"
        )
    access = rules.model_access
    lines.append(
        "who may be given the models: the participants"
        + (
            f" and {len(access)} other key{'s' if len(access) != 1 else ''} ("
            + ", ".join(fingerprint(key) for key in access)
            + ")"
            if access
            else ""
        )
    )
    archive = rules.update_archive_rounds
    lines.append(
        "updates the coordinator archives: "
        + (
            "every round's"
            if archive == ARCHIVE_ALL_ROUNDS
            else "none"
            if archive == 0
            else f"the last {archive} rounds'"
        )
    )
    base = (
        "its seeded initialisation"
        if model.base_hash == EMPTY_HASH
        else (
            f"base {model.base_hash.hex()[:16]} ({model.base_source or 'source not stated'}; "
            f"licence {model.base_licence or 'not stated'})"
        )
    )
    lines += [
        f"model: {model.architecture or 'not stated'}, {model.finetune} fine-tuning from {base}",
        f"stake: at least {rules.min_stake:,}; "
        + (
            ", ".join(f"{kind} slashes {bps / 100:g} %" for kind, bps in rules.slash_bps)
            or "no slashing"
        ),
        f"aggregation: {rules.aggregation_rule}; contribution: {rules.contribution_method}; "
        f"{rules.reward_per_round:,} reward units a round",
    ]
    return [printable(line) for line in lines]
