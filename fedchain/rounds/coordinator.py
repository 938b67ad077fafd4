"""The coordinator's side of a round: admit replies, aggregate, register the model, build blocks.

This is the I/O shell the Flower strategy calls (it holds the ledger file and the run directory);
every decision it makes comes from the pure protocol: a reply's commitment is admitted exactly
when :func:`~fedchain.ledger.state.process_transaction` accepts it, so the coordinator can never
admit what ``fedchain verify`` would refuse.

Blocks are *pipelined* so that no round needs an extra message: block B(r), holding round r's
commitments, model version and rewards, is prepared unsigned at the end of round r. Round r+1's
train messages carry its header; the proposer drawn by stake signs it ("seal") and every client
attests to it in its reply. B(r) is appended when its seal arrives, and B(r+1) carries the
attestations to B(r). After the last round one closing exchange seals the last round's block and
records the attestations that make it final.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedchain.aggregation.rules import AggregationResult, RuleParams
from fedchain.crypto.hashing import compute_update_hash
from fedchain.errors import FedchainError, LedgerError
from fedchain.ledger.builder import prepare_block, seal_block
from fedchain.ledger.chain import Chain
from fedchain.ledger.codec import decode, encode
from fedchain.ledger.consensus import compute_finalized_height, get_validators
from fedchain.ledger.objects import (
    BAD_COMMITMENT,
    Attestation,
    Block,
    BlockHeader,
    CommitmentMismatch,
    ContributionRecord,
    ModelVersion,
    Rejection,
    RewardDeltas,
    SignedHeader,
    SlashingEvidence,
    Transaction,
    UpdateCommitment,
)
from fedchain.ledger.state import LedgerState, is_signed_by, process_transaction
from fedchain.rounds.rewards import compute_reward_split
from fedchain.rounds.scores import (
    Scorer,
    compute_aggregation,
    compute_quantised_scores,
    compute_raw_scores,
)
from fedchain.runs.registry import save_model, save_update

Arrays = dict[str, np.ndarray]
MAX_SEAL_ATTEMPTS = 8
MAX_REASON_CHARS = 200
"""Longest reason a rejection records (in characters, after escaping)."""
_CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|[\x00-\x1f\x7f-\x9f]")
MAX_CLIENT_TEXT_CHARS = 120
"""Longest quotation of a client's own text (an error message) inside a reason."""


@dataclass(frozen=True)
class ClientReply:
    """One client's reply, as the server adapter decoded it from a Flower message.

    A reply with an ``error`` is refused, but the fields that did read well still count: its
    attestation is a vote, its seal can seal the pending block, and a fresh commitment in it
    names its sender (:meth:`Coordinator._sender`), so the refusal is on record against them.
    """

    node_id: int
    update: Arrays | None = None  # the client's update (trained weights minus the global model)
    num_examples: int = 0  # what the client's metrics claim
    commitment: bytes = b""  # an encoded UpdateCommitment
    attestation: bytes = b""  # an encoded Attestation to the pending block
    seal: bytes = b""  # the proposer's signature over the pending header, if it is the proposer
    checkpoint: int = 0  # the final height the client now holds
    error: str = ""  # why the reply is refused, in the coordinator's words (a client's quoted)


@dataclass(frozen=True)
class Decision:
    node_id: int
    public_key: bytes | None
    accepted: bool
    reason: str = ""


@dataclass
class RoundOutcome:
    round: int
    decisions: list[Decision] = field(default_factory=list)
    model_hash: bytes = b""
    head_height: int = 0
    final_height: int = 0
    weights: dict[bytes, float] = field(default_factory=dict)
    scores: dict[bytes, int] = field(default_factory=dict)  # quantised, as recorded

    @property
    def accepted(self) -> int:
        return sum(d.accepted for d in self.decisions)

    @property
    def rejected(self) -> list[Decision]:
        return [d for d in self.decisions if not d.accepted]


@dataclass
class Pending:
    """A prepared block waiting for its proposer's signature."""

    header: BlockHeader
    transactions: tuple[Transaction, ...]
    post_state: LedgerState


class Coordinator:
    """Holds the chain, the global model and what each client was last shown."""

    def __init__(
        self,
        run_dir: Path,
        chain: Chain,
        model: Arrays,
        *,
        rule: str,
        params: RuleParams,
        scorer: Scorer | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.chain = chain
        self.model = {name: np.ascontiguousarray(a) for name, a in model.items()}
        self.model_hash = chain.state.model_head
        if compute_update_hash(self.model) != self.model_hash:
            raise FedchainError("the model given is not the ledger's current model")
        self.rule, self.params = rule, params
        self.scorer = scorer
        self.pending: Pending | None = None
        self.node_keys: dict[int, bytes] = {}
        self.checkpoints: dict[int, int] = {}
        self.headers: list[SignedHeader] = [
            decode(Block, stored.data).signed_header for stored in chain.store.iter_blocks()
        ]
        # Resuming (Chain.open verified the ledger): finality continues from the stored blocks.
        verified = chain.verified
        self.validators_by_height: dict[int, dict[bytes, int]] = (
            {h: dict(v) for h, v in verified.validators_by_height.items()} if verified else {}
        )
        self.final_height = verified.final_height if verified else 0

    # -- what clients are sent ------------------------------------------------------------------

    @property
    def state(self) -> LedgerState:
        return self.chain.state

    def ledger_view(self, node_id: int) -> dict[str, object]:
        """The ledger part of a message to ``node_id``: headers from its checkpoint to the head,
        the final height, and the pending header (if any) with the key drawn to seal it."""
        start = min(self.checkpoints.get(node_id, 0), self.final_height)
        view: dict[str, object] = {
            "genesis-hash": self.state.genesis_hash,
            "run-id": self.state.genesis.run_id,
            "headers": [encode(h) for h in self.headers[start:]],
            "final-height": self.final_height,
            "pending": b"" if self.pending is None else encode(self.pending.header),
        }
        return view

    def node_for(self, public_key: bytes) -> int | None:
        for node_id, key in self.node_keys.items():
            if key == public_key:
                return node_id
        return None

    # -- a round ----------------------------------------------------------------------------------

    def seal_from(self, replies: Sequence[ClientReply]) -> bool:
        """Append the pending block if one reply carries its proposer's valid seal."""
        if self.pending is None:
            return True
        return any(reply.seal and self._try_seal(reply.seal) for reply in replies)

    def _try_seal(self, signature: bytes) -> bool:
        pending = self.pending
        if pending is None:
            return True
        try:
            block = seal_block(
                pending.header, signature, pending.transactions, self.state.genesis_hash
            )
        except LedgerError:
            return False
        validators = dict(get_validators(self.state))
        self.chain.append(block, pending.post_state)
        self.validators_by_height[block.header.height] = validators
        self.headers.append(block.signed_header)
        self.pending = None
        self._update_finality()
        return True

    def reattempt(self, attempt: int) -> BlockHeader:
        """Re-prepare the pending block for the proposer drawn at ``attempt`` (its first choice
        did not seal it). Attestations to the old header are void: it never entered the chain."""
        if self.pending is None:
            raise FedchainError("no block is pending")
        txs = self.pending.transactions
        header, post = prepare_block(self.state, txs, attempt, round=self.pending.header.round)
        self.pending = Pending(header, txs, post)
        return header

    def run_round(self, round_: int, replies: Sequence[ClientReply]) -> RoundOutcome:
        """Admit round ``round_``'s replies, aggregate, register the model, prepare its block.

        The previous round's block must be sealed first (:meth:`seal_from`).
        """
        if self.pending is not None:
            raise FedchainError(f"block {self.pending.header.height} is still waiting for its seal")
        outcome = RoundOutcome(round_)
        work = self.state
        txs: list[Transaction] = []
        replies = sorted(replies, key=_reply_order)  # arrival order must not change the model
        for reply in replies:
            work = self._admit_attestation(work, reply, round_, txs)
        accepted: list[tuple[UpdateCommitment, Arrays]] = []
        for reply in replies:
            work = self._admit_update(work, reply, round_, txs, accepted, outcome)
        if accepted:
            base = self.model
            result = self._aggregate(accepted, round_, txs, outcome)
            updates = [u for _, u in accepted]
            raw = compute_raw_scores(result, base, updates, self.scorer, round_)
            scores = compute_quantised_scores([c.public_key for c, _ in accepted], raw)
            txs.append(ContributionRecord(round_, scores))
            outcome.scores = dict(scores)
            pool = self.state.genesis.rules.reward_per_round
            deltas = compute_reward_split(pool, scores)
            if deltas:
                txs.append(RewardDeltas(round_, deltas))
        header, post = prepare_block(self.state, txs, round=round_)
        self.pending = Pending(header, tuple(txs), post)
        self._update_finality()
        outcome.model_hash = self.model_hash
        outcome.head_height = self.state.height
        outcome.final_height = self.final_height
        return outcome

    def close(self, replies: Sequence[ClientReply]) -> Pending:
        """After the last round: a block of the attestations to the last round's block."""
        txs: list[Transaction] = []
        work = self.state
        for reply in replies:
            work = self._admit_attestation(work, reply, self.state.round, txs)
        header, post = prepare_block(self.state, txs, round=self.state.round)
        self.pending = Pending(header, tuple(txs), post)
        return self.pending

    # -- admission ----------------------------------------------------------------------------

    def _admit_attestation(
        self, work: LedgerState, reply: ClientReply, round_: int, txs: list[Transaction]
    ) -> LedgerState:
        if not reply.attestation:
            return work
        try:
            attestation = decode(Attestation, reply.attestation)
            work = process_transaction(work, attestation, round_)
        except LedgerError:
            return work  # a stale or bogus attestation: it proves nothing, record nothing
        # A valid vote is recorded whoever carried it (it is the validator's own signature),
        # but it never tells who the carrier is: an attestation names no round and no node,
        # so one that never reached the ledger (a void attempt, a lost round) could be
        # replayed by anyone who saw it. Nodes are bound to keys by fresh commitments only.
        self.checkpoints[reply.node_id] = reply.checkpoint
        txs.append(attestation)
        return work

    def _admit_update(
        self,
        work: LedgerState,
        reply: ClientReply,
        round_: int,
        txs: list[Transaction],
        accepted: list[tuple[UpdateCommitment, Arrays]],
        outcome: RoundOutcome,
    ) -> LedgerState:
        commitment = _decode_commitment(reply.commitment)
        sender = self._sender(work, reply.node_id, commitment, round_)

        def reject(reason: str) -> LedgerState:
            reason = compute_printable(reason, MAX_REASON_CHARS)
            outcome.decisions.append(Decision(reply.node_id, sender, False, reason))
            if sender is not None:  # only against a key the sender has shown it holds
                txs.append(Rejection(round_, sender, reason))
            return work

        if reply.error:
            return reject(reply.error)
        if commitment is None:
            return reject("no readable update commitment")
        try:
            checked = process_transaction(work, commitment, round_)
        except LedgerError as e:
            return reject(f"commitment refused: {_reason(e)}")
        if commitment.public_key != sender:
            return reject("its commitment is signed by another participant's key")
        if reply.update is None:
            return reject("no update arrays")
        shape_problem = _check_shapes(reply.update, self.model)
        if shape_problem:
            return reject(shape_problem)
        key = commitment.public_key
        observed = compute_update_hash(reply.update)
        if observed != commitment.update_hash:
            evidence = SlashingEvidence(
                BAD_COMMITMENT, key, round_, CommitmentMismatch(commitment, observed)
            )
            try:
                work = process_transaction(work, evidence, round_)
            except LedgerError:
                return reject("update does not match its commitment")
            txs.append(evidence)
            outcome.decisions.append(
                Decision(reply.node_id, key, False, "update does not match its signed commitment")
            )
            return work
        if reply.num_examples != commitment.num_examples:
            return reject(
                f"claims {reply.num_examples} examples but committed to {commitment.num_examples}"
            )
        if not all(np.isfinite(a).all() for a in reply.update.values()):
            return reject("update has NaN or infinite values")
        save_update(self.run_dir, reply.update)  # so anyone can recompute the round's scores
        txs.append(commitment)
        accepted.append((commitment, reply.update))
        outcome.decisions.append(Decision(reply.node_id, key, True))
        return checked

    def _sender(
        self, work: LedgerState, node_id: int, commitment: UpdateCommitment | None, round_: int
    ) -> bytes | None:
        """The key a reply comes from: the node's established key (registered, or proven by an
        earlier fresh commitment), else the key of a fresh commitment in this reply, which
        from now on is the node's; else none (the reply is reported by node id only).

        A commitment signed for an earlier round or model is public on the ledger and proves
        nothing about who sends it; only :func:`is_fresh_commitment` binds a node to a key.
        """
        known = self.node_keys.get(node_id)
        if known is not None:
            return known
        if commitment is not None and is_fresh_commitment(work, commitment, round_):
            self.node_keys[node_id] = commitment.public_key
            return commitment.public_key
        return None

    # -- aggregation, contribution and registration ----------------------------------------------

    def _aggregate(
        self,
        accepted: list[tuple[UpdateCommitment, Arrays]],
        round_: int,
        txs: list[Transaction],
        outcome: RoundOutcome,
    ) -> AggregationResult:
        """Aggregate, register the new model; return the aggregation (its weights and, for
        rules that score the round to aggregate it, such as ``screened``, those scores)."""
        participants = self.state.participants
        keys = [c.public_key for c, _ in accepted]
        result = compute_aggregation(
            self.rule,
            self.params,
            self.model,
            [u for _, u in accepted],
            examples=[c.num_examples for c, _ in accepted],
            stakes=[participants[k].stake for k in keys],
            reputations=[participants[k].reputation_bps for k in keys],
            scorer=self.scorer,
            round_=round_,
        )
        new_model = {
            name: (self.model[name] + delta).astype(self.model[name].dtype, copy=False)
            for name, delta in result.arrays.items()
        }
        model_hash = save_model(self.run_dir, new_model)
        # a set: clients may send byte-identical updates (free riders sending zeros)
        used = tuple(sorted({accepted[i][0].update_hash for i in result.selected}))
        txs.append(ModelVersion(round_, model_hash, self.model_hash, used, self.rule))
        self.model, self.model_hash = new_model, model_hash
        shares = {keys[i]: float(result.weights[i]) for i in range(len(keys))}
        outcome.weights = shares
        return result

    def _update_finality(self) -> None:
        self.final_height = compute_finalized_height(
            self.validators_by_height, self.state.last_attested.items(), self.final_height
        )


def is_fresh_commitment(state: LedgerState, commitment: UpdateCommitment, round_: int) -> bool:
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
        and is_signed_by(commitment, commitment.public_key, state.genesis_hash)
    )


def compute_printable(text: str, limit: int, *, quoting: bool = False) -> str:
    """``text`` with each non-printable character escaped (``\\n``, ``\\x1b``, ``\\u202e``),
    cut to at most ``limit`` characters (an escape is never split; ``…`` marks a cut).
    ``quoting`` also escapes ``"`` and backslashes, for text put between double quotes.

    Reasons end up in logs, terminals and the ledger: nothing in them may move a cursor,
    colour a terminal, reorder text or be invalid UTF-8 (a lone surrogate).
    """
    pieces: list[str] = []
    size = 0
    for char in text:
        if quoting and char in '"\\':
            piece = "\\" + char
        elif char.isprintable():
            piece = char
        else:
            piece = char.encode("unicode_escape").decode("ascii")
        if size + len(piece) > limit - 1:
            pieces.append("…")
            break
        pieces.append(piece)
        size += len(piece)
    return "".join(pieces)


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
    last line, which in a Python or Ray traceback is the exception's message."""
    parts = [part.strip() for part in text.splitlines() if part.strip()]
    if len(parts) <= 1:
        return parts[0] if parts else text
    return f"{parts[0].split(':', 1)[0]}: … {parts[-1]}"


def quote_client_text(text: object, limit: int = MAX_CLIENT_TEXT_CHARS) -> str:
    """Text a client wrote, as a quotation a reader cannot mistake for the coordinator's own
    words: in double quotes, its own quotes and backslashes escaped, printable, capped."""
    raw = text if isinstance(text, str) else f"<{type(text).__name__}>"
    return '"' + compute_printable(raw, limit, quoting=True) + '"'


def _decode_commitment(data: bytes) -> UpdateCommitment | None:
    try:
        return decode(UpdateCommitment, data) if data else None
    except LedgerError:
        return None


def _reply_order(reply: ClientReply) -> tuple[bytes, int]:
    """Replies in the order of their committed public keys (unreadable ones first, by node):
    the same updates give the same block and the same floating-point sums however they
    arrived."""
    commitment = _decode_commitment(reply.commitment)
    return (b"" if commitment is None else commitment.public_key), reply.node_id


def _check_shapes(update: Mapping[str, np.ndarray], model: Mapping[str, np.ndarray]) -> str:
    if set(update) != set(model):
        return "update tensors do not match the model's names"
    for name, array in update.items():
        if array.shape != model[name].shape:
            return f"tensor {name} has shape {array.shape}, the model's is {model[name].shape}"
        if array.dtype != model[name].dtype:
            return f"tensor {name} has dtype {array.dtype}, the model's is {model[name].dtype}"
    return ""


def _reason(error: Exception) -> str:
    text = str(error)
    return text.split(": ", 1)[1] if text.startswith("transaction") and ": " in text else text
