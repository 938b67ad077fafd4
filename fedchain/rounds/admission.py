"""Pure admission of a round's client replies: which are recorded, accepted or refused, and why.

Every decision here comes from the ledger's own transition: a reply's commitment is admitted
exactly when :func:`~fedchain.ledger.state.process_transaction` accepts it, so the coordinator
can never admit what ``fedchain verify`` would refuse. Functions take a working ledger state
and return the next one with the transactions to record; the coordinator (the I/O shell)
applies them, binds nodes to keys and writes the accepted updates to disk.

Reasons end up in logs, terminals and the ledger: a client's own words are quoted, escaped and
capped (:func:`quote_client_text`), and every reason is printable (:func:`compute_printable`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedchain.crypto.hashing import compute_update_hash
from fedchain.errors import LedgerError
from fedchain.ledger.codec import decode
from fedchain.ledger.containers import LedgerState
from fedchain.ledger.objects import (
    AppApproval,
    Attestation,
    Refusal,
    Rejection,
    Transaction,
    UpdateCommitment,
)
from fedchain.ledger.signatures import PLAIN, Verifier, is_signed_by
from fedchain.ledger.state import process_transaction
from fedchain.text import compute_printable

Arrays = dict[str, np.ndarray]
MAX_REASON_CHARS = 200
"""Longest reason a rejection records (in characters, after escaping)."""
_CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|[\x00-\x1f\x7f-\x9f]")
_CLASS_REPR = re.compile(r"<class '(?:[\w]+\.)*([\w()]+)'>")
_FLOWER_MESSAGE = "occurred. Message: "
MAX_CLIENT_TEXT_CHARS = 120
"""Longest quotation of a client's own text (an error message) inside a reason."""
MISMATCH_REASON = "the hash of the update that arrived differs from its signed commitment"
"""The rejection of an update that does not match its commitment (not a penalty: unprovable)."""


@dataclass(frozen=True)
class ClientReply:
    """One client's reply, as the server adapter decoded it from a Flower message.

    A reply with an ``error`` is refused, but the fields that did read well still count: its
    attestation is a vote, its seal can seal the pending block, and a fresh commitment in it
    names its sender (:func:`compute_sender`), so the refusal is on record against them.
    """

    node_id: int
    update: Arrays | None = None  # the client's update (trained weights minus the global model)
    num_examples: int = 0  # what the client's metrics claim
    commitment: bytes = b""  # an encoded UpdateCommitment
    attestation: bytes = b""  # an encoded Attestation to the pending block
    seal: bytes = b""  # the proposer's signature over the pending header, if it is the proposer
    checkpoint: int = 0  # the final height the client now holds
    refusal: bytes = b""  # an encoded Refusal: the holder's own signed refusal to train
    error: str = ""  # why the reply is refused, in the coordinator's words (a client's quoted)


@dataclass(frozen=True)
class Decision:
    node_id: int
    public_key: bytes | None
    accepted: bool
    reason: str = ""


@dataclass(frozen=True)
class Admission:
    """What admitting one reply's update did: the next working state, the transactions to
    record, the decision, and the accepted (commitment, update) if it was accepted."""

    state: LedgerState
    txs: tuple[Transaction, ...]
    decision: Decision
    accepted: tuple[UpdateCommitment, Arrays] | None = None


def admit_attestation(
    state: LedgerState, reply: ClientReply, round_: int, *, verifier: Verifier = PLAIN
) -> tuple[LedgerState, Attestation | None]:
    """``reply``'s attestation applied to ``state`` if it is a valid vote, else nothing.

    A valid vote is recorded whoever carried it (it is the validator's own signature), but it
    never tells who the carrier is: an attestation names no round and no node, so one that
    never reached the ledger (a void attempt, a lost round) could be replayed by anyone who saw
    it. Nodes are bound to keys by fresh commitments only (:func:`compute_sender`).
    """
    if not reply.attestation:
        return state, None
    try:
        attestation = decode(Attestation, reply.attestation)
        return process_transaction(state, attestation, round_, verifier=verifier), attestation
    except LedgerError:
        return state, None  # a stale or bogus attestation: it proves nothing, record nothing


def admit_app_approvals(
    state: LedgerState,
    approvals: Sequence[AppApproval],
    round_: int,
    *,
    verifier: Verifier = PLAIN,
) -> tuple[LedgerState, tuple[AppApproval, ...]]:
    """The holders' approvals (:class:`AppApproval`) the ledger records now, by (key, sequence),
    and the state after them. Each is recorded exactly when the transition accepts it: one
    already recorded, forged or out of turn is left out (an inbox may hold approvals the ledger
    already has: they are never recorded twice)."""
    recorded = []
    for approval in sorted(approvals, key=lambda a: (a.public_key, a.sequence, a.signature)):
        try:
            state = process_transaction(state, approval, round_, verifier=verifier)
        except LedgerError:
            continue
        recorded.append(approval)
    return state, tuple(recorded)


def admit_update(
    state: LedgerState,
    reply: ClientReply,
    round_: int,
    sender: bytes | None,
    model: Mapping[str, np.ndarray],
    *,
    verifier: Verifier = PLAIN,
) -> Admission:
    """Admit or refuse ``reply``'s update to the round over global ``model``.

    ``sender``: the key the reply comes from (:func:`compute_sender`); a refusal is recorded on
    the ledger only against such a key, one the sender has shown it holds.

    An update whose hash differs from its signed commitment is refused like any other reply
    (:data:`MISMATCH_REASON`), at no cost in stake or reputation: only the coordinator saw the
    bytes that arrived (the client signs the hash it commits to, not what it sends), so a third
    party could not tell an honest coordinator's record of it from an invented one.
    """
    commitment = decode_commitment(reply.commitment)

    def reject(reason: str) -> Admission:
        reason = compute_printable(reason, MAX_REASON_CHARS)
        txs = () if sender is None else (Rejection(round_, sender, reason),)
        return Admission(state, txs, Decision(reply.node_id, sender, False, reason))

    signed = _admit_refusal(state, reply, round_, sender, verifier)
    if signed is not None:
        return signed
    if reply.error:
        return reject(reply.error)
    if commitment is None:
        return reject("no readable update commitment")
    try:
        checked = process_transaction(state, commitment, round_, verifier=verifier)
    except LedgerError as e:
        return reject(f"commitment refused: {compute_reason(e)}")
    if commitment.public_key != sender:
        return reject("its commitment is signed by another participant's key")
    if reply.update is None:
        return reject("no update arrays")
    shape_problem = check_shapes(reply.update, model)
    if shape_problem:
        return reject(shape_problem)
    agreed = state.genesis.rules.model.update_bytes
    size = sum(int(a.nbytes) for a in reply.update.values())
    if agreed and size != agreed:
        return reject(f"update is {size} bytes; the genesis's updates are {agreed}")
    key = commitment.public_key
    if compute_update_hash(reply.update) != commitment.update_hash:
        return reject(MISMATCH_REASON)
    if reply.num_examples != commitment.num_examples:
        return reject(
            f"claims {reply.num_examples} examples but committed to {commitment.num_examples}"
        )
    if not all(np.isfinite(a).all() for a in reply.update.values()):
        return reject("update has NaN or infinite values")
    decision = Decision(reply.node_id, key, True)
    return Admission(checked, (commitment,), decision, (commitment, reply.update))


def _admit_refusal(
    state: LedgerState, reply: ClientReply, round_: int, sender: bytes | None, verifier: Verifier
) -> Admission | None:
    """The holder's own signed refusal in ``reply``, recorded as itself (the holder's word,
    not a :class:`Rejection` on the coordinator's), if the ledger accepts it and it is the
    sender's; else None (the reply is refused like any other)."""
    if not reply.refusal:
        return None
    try:
        refusal = decode(Refusal, reply.refusal)
        if sender is not None and refusal.public_key != sender:
            return None
        checked = process_transaction(state, refusal, round_, verifier=verifier)
    except LedgerError:
        return None
    reason = compute_printable(
        f"refused by the data holder ({refusal.code}), signed: {refusal.detail}", MAX_REASON_CHARS
    )
    decision = Decision(reply.node_id, refusal.public_key, False, reason)
    return Admission(checked, (refusal,), decision)


def compute_sender(
    node_keys: Mapping[int, bytes],
    state: LedgerState,
    node_id: int,
    commitment: UpdateCommitment | None,
    round_: int,
    *,
    verifier: Verifier = PLAIN,
) -> tuple[bytes | None, bool]:
    """(the key a reply comes from, whether this reply newly binds ``node_id`` to it).

    The node's established key (registered, or proven by an earlier fresh commitment), else
    the key of a fresh commitment in this reply, which from now on is the node's; else none
    (the reply is reported by node id only). A commitment signed for an earlier round or model
    is public on the ledger and proves nothing about who sends it; only
    :func:`is_fresh_commitment` binds a node to a key.
    """
    known = node_keys.get(node_id)
    if known is not None:
        return known, False
    if commitment is not None and is_fresh_commitment(state, commitment, round_, verifier=verifier):
        return commitment.public_key, True
    return None, False


def is_fresh_commitment(
    state: LedgerState, commitment: UpdateCommitment, round_: int, *, verifier: Verifier = PLAIN
) -> bool:
    """Whether ``commitment`` proves that whoever sends it holds its key now: signed by that
    key in this federation, for this run, this round and the current global model.

    Nobody but the key's holder can have such a signature before the round's block is out
    (it names a round and a model that did not exist before), unlike any commitment already
    on the ledger. Every check here is also one of
    :func:`~fedchain.ledger.state.process_transaction`'s, so a commitment the ledger accepts
    is always fresh; one that is fresh but refused for its content (too many examples, a
    second update) still identifies its sender.
    """
    return (
        commitment.run_id == state.genesis.run_id
        and commitment.round == round_
        and commitment.base_model_hash == state.model_head
        and is_signed_by(commitment, commitment.public_key, state.genesis_hash, verifier=verifier)
    )


def decode_commitment(data: bytes) -> UpdateCommitment | None:
    """The reply's commitment, or None if it has none or it does not decode."""
    try:
        return decode(UpdateCommitment, data) if data else None
    except LedgerError:
        return None


def compute_reply_order(reply: ClientReply) -> tuple[bytes, int]:
    """Replies in the order of their committed public keys (unreadable ones first, by node):
    the same updates give the same block and the same floating-point sums however they
    arrived."""
    commitment = decode_commitment(reply.commitment)
    return (b"" if commitment is None else commitment.public_key), reply.node_id


def check_shapes(update: Mapping[str, np.ndarray], model: Mapping[str, np.ndarray]) -> str:
    """Why ``update``'s tensors do not fit ``model`` (names, shapes, dtypes), or ``""``."""
    if set(update) != set(model):
        return "update tensors do not match the model's names"
    for name, array in update.items():
        if array.shape != model[name].shape:
            return f"tensor {name} has shape {array.shape}, the model's is {model[name].shape}"
        if array.dtype != model[name].dtype:
            return f"tensor {name} has dtype {array.dtype}, the model's is {model[name].dtype}"
    return ""


def compute_reason(error: Exception) -> str:
    """A ledger refusal's text without its ``transaction ...:`` prefix."""
    text = str(error)
    return text.split(": ", 1)[1] if text.startswith("transaction") and ": " in text else text


def brief_reason(reason: str, limit: int = 160) -> str:
    """One printable line of a rejection reason, for a console or an error message.

    A client's error text can be a whole Ray traceback (80 lines with terminal colour codes,
    all of it on the ledger and in ``log.txt``): keep its kind (the text before the first
    ``:``) and its last line, which in a Python or Ray traceback is the exception's message,
    drop control characters (a client chooses this text), and cut it to ``limit`` characters.
    """
    text = " ".join(_CONTROL.sub(" ", compute_gist(reason)).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def compute_gist(text: str) -> str:
    """The part of a multi-line text worth keeping: its first line's kind (before ``:``) and its
    last line, which in a Python or Ray traceback is the exception's message. A kind written
    ``<class 'a.b.Name'>`` is shortened to ``Name``, and of Flower's wording ``Exception
    ClientAppException occurred. Message: ...`` only the client's message is kept (a
    quotation of a client's error is capped: the message is what the reader needs)."""
    parts = [part.strip() for part in text.splitlines() if part.strip()]
    if len(parts) <= 1:
        return parts[0] if parts else text
    kind = _CLASS_REPR.sub(r"\1", parts[0].split(":", 1)[0])
    last = parts[-1]
    if _FLOWER_MESSAGE in last:
        return f"{kind}: {last.split(_FLOWER_MESSAGE, 1)[1]}"
    return f"{kind}: … {last}"


def quote_client_text(text: object, limit: int = MAX_CLIENT_TEXT_CHARS) -> str:
    """Text a client wrote, as a quotation a reader cannot mistake for the coordinator's own
    words: in double quotes, its own quotes and backslashes escaped, printable, capped."""
    raw = text if isinstance(text, str) else f"<{type(text).__name__}>"
    return '"' + compute_printable(raw, limit, quoting=True) + '"'
