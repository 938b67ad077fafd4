"""The coordinator's Flower strategy: FedAvg's round loop, fedchain's checks and ledger.

Only the phase hooks are overridden (``configure_train``, ``aggregate_train``); Flower's own
``start()`` drives the rounds. Each train message gets the client's ledger view; each round's
replies go to :class:`fedchain.rounds.coordinator.Coordinator`, which seals the previous block,
admits or rejects every reply on the record, aggregates by stake and registers the new model. Failed
replies are recorded and the round goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from logging import WARNING

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common.constant import SType
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from numpy.lib import format as npy_format

from fedchain.errors import FedchainError
from fedchain.rounds import messages as m
from fedchain.rounds.admission import ClientReply, compute_gist, quote_client_text
from fedchain.rounds.coordinator import MAX_SEAL_ATTEMPTS, Coordinator, RoundOutcome

MAX_NPY_HEADER_BYTES = 10_000
"""The largest ``.npy`` header accepted (numpy's own default limit for loading one)."""
TRAIN_RECORDS = frozenset({m.ARRAYS, m.METRICS, m.DUTIES})
REFUSAL_RECORDS = frozenset({m.REFUSAL, m.DUTIES})
QUERY_RECORDS = frozenset({m.DUTIES})


def parse_reply(
    message: Message, node_id: int | None = None, model: Mapping[str, np.ndarray] | None = None
) -> ClientReply:
    """A Flower reply as the coordinator sees it (never raises: defects become ``error``).

    ``model``: the round's global model when this is a train reply (its update must match it),
    ``None`` for a ledger query. ``node_id`` overrides the sender: an error the SuperLink made
    for a node (e.g. "Node Unavailable") comes from the SuperLink's own id, not the node's.
    """
    node_id = message.metadata.src_node_id if node_id is None else node_id
    if message.has_error():
        reason = message.error.reason
        reason, signed = (
            m.split_signed_refusal(reason) if isinstance(reason, str) else (reason, b"")
        )
        return ClientReply(node_id, refusal=signed, error=compute_error_reason(reason))
    return compute_client_reply(node_id, message.content, model)


def compute_error_reason(text: object) -> str:
    """An error reply's reason: the text comes from the client (or its runtime), so it is
    quoted, escaped and capped, never taken for the coordinator's own words."""
    if text is None or (isinstance(text, str) and not text):
        return "client error with no message"
    if isinstance(text, str):
        text = compute_gist(text)  # a Ray traceback: its kind and the exception's message
    return f"client error, in its own words: {quote_client_text(text)}"


def compute_client_reply(
    node_id: int, content: object, model: Mapping[str, np.ndarray] | None
) -> ClientReply:
    """The one parser of what a client sends: records -> :class:`ClientReply`, total.

    Every field is checked for type, range and size before anything is converted or
    allocated from it; the update's tensors must have the model's names, dtypes and shapes
    (``model``; ``None``: a ledger query, which carries no update). Any problem becomes the
    reply's ``error`` (the first three are named). The fields that did read well are kept
    even then (see :class:`~fedchain.rounds.admission.ClientReply`), except the update.
    """
    if not isinstance(content, Mapping):
        return ClientReply(node_id, error="malformed reply: its content is not a record dict")
    problems: list[str] = []
    if model is not None and m.REFUSAL in content:
        return _refusal(node_id, content, problems)
    expected = QUERY_RECORDS if model is None else TRAIN_RECORDS
    extra = [name for name in content if not (type(name) is str and name in expected)]
    if extra:
        problems.append(f"unexpected record {quote_client_text(extra[0])}")
    duties = m.decode_duties(content.get(m.DUTIES), problems)
    update, examples = None, 0
    if model is not None:
        examples = m.decode_num_examples(content.get(m.METRICS), problems)
        update = _update(content.get(m.ARRAYS), model, problems)
    return ClientReply(
        node_id,
        update=None if problems else update,
        num_examples=examples,
        commitment=duties.commitment,
        attestation=duties.attestation,
        seal=duties.seal,
        checkpoint=duties.checkpoint,
        error="malformed reply: " + "; ".join(problems[:3]) if problems else "",
    )


def _refusal(node_id: int, content: Mapping[str, object], problems: list[str]) -> ClientReply:
    """A train reply in which the client declines to train (its privacy budget is spent, or the
    message asks more than the contract allows) but still does its ledger duties: its
    attestation and seal count; it sends no update, and may send its signed refusal."""
    extra = [name for name in content if not (type(name) is str and name in REFUSAL_RECORDS)]
    if extra:
        problems.append(f"unexpected record {quote_client_text(extra[0])}")
    reason, signed = m.decode_refusal(content.get(m.REFUSAL), problems)
    duties = m.decode_duties(content.get(m.DUTIES), problems)
    error = (
        "malformed reply: " + "; ".join(problems[:3])
        if problems
        else f"client refused to train, in its own words: {quote_client_text(reason)}"
    )
    return ClientReply(
        node_id,
        attestation=duties.attestation,
        seal=duties.seal,
        checkpoint=duties.checkpoint,
        refusal=b"" if problems else signed,
        error=error,
    )


def _update(
    record: object, model: Mapping[str, np.ndarray], problems: list[str]
) -> dict[str, np.ndarray] | None:
    """The update's tensors, checked against ``model`` before any is converted."""
    if not isinstance(record, Mapping):
        problems.append("no arrays record" if record is None else "arrays is not a record")
        return None
    names = list(record)
    if len(names) != len(model) or not all(type(n) is str and n in model for n in names):
        problems.append("update tensors do not match the model's names")
        return None
    update = {}
    for name in names:  # in the sender's order, as sums over the tensors have always run
        like = model[name]
        array, problem = _tensor(record[name], like)
        if array is None:
            problems.append(f"tensor {name}: {problem}")
            return None
        update[name] = array
    return update


def _tensor(value: object, like: np.ndarray) -> tuple[np.ndarray | None, str]:
    """One Flower ``Array`` as a tensor of ``like``'s dtype and shape, or why not.

    The declared dtype and shape, the ``.npy`` header inside the data and the data's length
    must all agree with the model before one byte is copied: numpy's own loader would
    allocate whatever a header claims, and a malformed header can make it raise anything.
    """
    stype, dtype, shape, data = (
        getattr(value, a, None) for a in ("stype", "dtype", "shape", "data")
    )
    if stype != SType.NUMPY or not isinstance(data, bytes):
        return None, "not a serialised numpy array"
    if dtype != str(like.dtype):
        return None, f"dtype is {m.describe_value(dtype)}, the model's is {like.dtype}"
    if (
        not isinstance(shape, (tuple, list))
        or len(shape) != like.ndim
        or any(type(d) is not int for d in shape)
        or tuple(shape) != like.shape
    ):
        return None, f"shape is not the model's {like.shape}"
    offset, fortran = _npy_layout(data, like)
    if offset < 0:
        return None, "its data is not a .npy array of that dtype and shape"
    flat = np.frombuffer(data, dtype=like.dtype, count=like.size, offset=offset)
    return np.array(flat.reshape(like.shape, order="F" if fortran else "C"), order="C"), ""


def _npy_layout(data: bytes, like: np.ndarray) -> tuple[int, bool]:
    """(where the values start, Fortran order) if ``data`` is exactly a ``.npy`` file of
    ``like``'s dtype and shape, else (-1, False). The header is compared with the text numpy
    writes for that array, never evaluated."""
    version = data[6:8]
    if data[:6] != npy_format.MAGIC_PREFIX or version not in _NPY_LENGTH_BYTES:
        return -1, False
    start = 8 + _NPY_LENGTH_BYTES[version]
    end = start + int.from_bytes(data[8:start], "little")
    if len(data) < start or end - start > MAX_NPY_HEADER_BYTES or len(data) - end != like.nbytes:
        return -1, False
    header = data[start:end].rstrip(b" \n")
    descr = npy_format.dtype_to_descr(like.dtype)
    for fortran in (False, True):
        text = f"{{'descr': {descr!r}, 'fortran_order': {fortran!r}, 'shape': {like.shape!r}, }}"
        if header == text.encode("latin1"):
            return end, fortran
    return -1, False


_NPY_LENGTH_BYTES = {b"\x01\x00": 2, b"\x02\x00": 4, b"\x03\x00": 4}  # format version -> size


def compute_round_metrics(outcome: RoundOutcome) -> dict[str, int]:
    """The round's metrics for Flower: ``accepted`` (updates averaged into the model),
    ``left_out`` (admitted, not used by the aggregation rule), ``refused`` (by the ledger's
    admission), ``moved`` (1 if the model changed), and the units of the reward pool
    ``rewards_paid`` and ``pool_carried`` to the next round by the payout rule."""
    explained = outcome.aggregation
    return {
        "accepted": 0 if explained is None else len(explained.averaged),
        "left_out": 0 if explained is None else len(explained.left_out),
        "refused": len(outcome.rejected),
        "moved": int(explained is not None and explained.moved),
        "rewards_paid": 0 if outcome.payout is None else outcome.payout.paid,
        "pool_carried": 0 if outcome.payout is None else outcome.payout.carried,
    }


def to_array_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(a) for name, a in arrays.items()})


class FedchainStrategy(FedAvg):
    """FedAvg's loop with fedchain's admission, stake-weighted aggregation and ledger."""

    def __init__(
        self,
        coordinator: Coordinator,
        *,
        fraction_train: float,
        min_nodes: int,
        timeout: float,
        on_round: Callable[[RoundOutcome], None] | None = None,
        round_offset: int = 0,
    ) -> None:
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=0.0,
            min_train_nodes=min_nodes,
            min_available_nodes=min_nodes,
        )
        self.coordinator = coordinator
        self.timeout = timeout
        self.on_round = on_round
        # Flower numbers a run's rounds from 1; a coordinator resuming a ledger whose head is at
        # round k runs ledger rounds k+1, k+2, ...: Flower round r is ledger round r + offset.
        self.round_offset = round_offset
        self.grid: Grid | None = None
        self.settings = ConfigRecord()  # the run settings every message carries
        self.sent: list[Message] = []  # this round's train messages

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.grid, self.settings = grid, config
        coordinator = self.coordinator
        config = ConfigRecord({**config, m.BASE_MODEL_HASH: coordinator.model_hash})
        server_round += self.round_offset  # what clients sign and the ledger records
        messages = list(super().configure_train(server_round, arrays, config, grid))
        sampled = {m.metadata.dst_node_id for m in messages}
        pending = coordinator.pending
        proposer_node = coordinator.node_for(pending.header.proposer) if pending else None
        if proposer_node is not None and proposer_node not in sampled:
            messages.append(Message(messages[0].content, proposer_node, MessageType.TRAIN))
        self.sent = [self._with_view(m, MessageType.TRAIN, server_round) for m in messages]
        return self.sent

    def _with_view(self, message: Message, message_type: str, round_: int) -> Message:
        """``message`` with the node's ledger view, in group ``round_`` (the ledger round: a
        SuperNode logs it, so a data holder's ``fedchain join`` names the round it served)."""
        node_id = message.metadata.dst_node_id
        content = message.content
        config = ConfigRecord({**content[m.CONFIG], **self.coordinator.ledger_view(node_id)})
        records = {m.CONFIG: config}
        if m.ARRAYS in content:
            records[m.ARRAYS] = content[m.ARRAYS]
        return Message(RecordDict(records), node_id, message_type, group_id=str(round_))

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset
        # The grid gave each sent message its id; replies name it in reply_to_message_id.
        asked = {m.metadata.message_id: m.metadata.dst_node_id for m in self.sent}
        model = self.coordinator.model  # the round's base: each update must match it
        parsed = [
            parse_reply(
                m, asked.get(m.metadata.reply_to_message_id) if m.has_error() else None, model
            )
            for m in replies
        ]
        answered = {reply.node_id for reply in parsed}
        parsed += [  # Flower drops what did not come back in time; the ledger records it
            ClientReply(node_id, error=f"no reply within the round timeout ({self.timeout:g} s)")
            for node_id in asked.values()
            if node_id not in answered
        ]
        for reply in parsed:
            if reply.error:
                log(
                    WARNING,
                    "round %s: node %s failed: %s",
                    server_round,
                    reply.node_id,
                    reply.error,
                )
        self.seal_pending(parsed)
        outcome = self.coordinator.run_round(server_round, parsed)
        if self.on_round is not None:
            self.on_round(outcome)
        metrics = MetricRecord(compute_round_metrics(outcome))
        return to_array_record(self.coordinator.model), metrics

    def seal_pending(self, replies: list[ClientReply]) -> None:
        """Append the pending block: with a seal from the replies, else ask for one.

        The drawn proposer is asked directly when its node is known, else every node is (only
        the proposer can answer with a seal). If it cannot seal, the next draw (``attempt``) is
        asked. Normal rounds never get here: the seal comes with the train replies.
        """
        coordinator = self.coordinator
        if coordinator.seal_from(replies):
            return
        for attempt in range(MAX_SEAL_ATTEMPTS):
            header = coordinator.reattempt(attempt) if attempt else coordinator.pending.header  # type: ignore[union-attr]
            node_id = coordinator.node_for(header.proposer)
            targets = [node_id] if node_id is not None else list(self.grid.get_node_ids())  # type: ignore[union-attr]
            if coordinator.seal_from(self.query(targets)):
                return
        pending = coordinator.pending
        height = pending.header.height if pending else "?"
        raise FedchainError(f"no validator sealed block {height} after {MAX_SEAL_ATTEMPTS} draws")

    def query(self, node_ids: Iterable[int], base: ConfigRecord | None = None) -> list[ClientReply]:
        """Ledger duties only (seal and attest), outside a train phase."""
        if self.grid is None:
            raise FedchainError("no grid yet")
        messages = [
            self._with_view(
                Message(RecordDict({m.CONFIG: base or self.settings}), node_id, MessageType.QUERY),
                MessageType.QUERY,
                self._ledger_round(),
            )
            for node_id in node_ids
        ]
        return [parse_reply(m) for m in self.grid.send_and_receive(messages, timeout=self.timeout)]

    def _ledger_round(self) -> int:
        """The round a ledger query serves: the pending block's, else the head's."""
        pending = self.coordinator.pending
        return pending.header.round if pending is not None else self.coordinator.state.round

    def close_ledger(self, base: ConfigRecord) -> None:
        """After the last round: seal its block, then record the attestations that finalise it."""
        if self.grid is None or self.coordinator.pending is None:
            return
        nodes = list(self.grid.get_node_ids())
        replies = self.query(nodes, base)
        self.seal_pending(replies)
        self.coordinator.close(replies)
        self.seal_pending(self.query(nodes, base))
