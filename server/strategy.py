"""The coordinator's Flower strategy: FedAvg's round loop, fedchain's checks and ledger.

Only the phase hooks are overridden (``configure_train``, ``aggregate_train``); Flower's own
``start()`` drives the rounds. Each train message gets the client's ledger view; each round's
replies go to :class:`fedchain.coordinator.Coordinator`, which seals the previous block, admits
or rejects every reply on the record, aggregates by stake and registers the new model. Failed
replies are recorded and the round goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
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
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedchain.coordinator import MAX_SEAL_ATTEMPTS, ClientReply, Coordinator, RoundOutcome
from fedchain.errors import FedchainError


def parse_reply(message: Message, node_id: int | None = None) -> ClientReply:
    """A Flower reply as the coordinator sees it (never raises: defects become ``error``).

    ``node_id`` overrides the sender: an error the SuperLink made for a node (e.g. "Node
    Unavailable") comes from the SuperLink's own id, not the node's.
    """
    node_id = message.metadata.src_node_id if node_id is None else node_id
    if message.has_error():
        return ClientReply(node_id, error=message.error.reason or f"error {message.error.code}")
    try:
        content = message.content
        record = content["fedchain"] if "fedchain" in content else ConfigRecord()
        update = None
        if "arrays" in content:
            update = {name: array.numpy() for name, array in content["arrays"].items()}
        metrics = content["metrics"] if "metrics" in content else MetricRecord()
        return ClientReply(
            node_id,
            update=update,
            num_examples=int(metrics.get("num-examples", 0)),
            commitment=bytes(record.get("commitment", b"")),
            attestation=bytes(record.get("attestation", b"")),
            seal=bytes(record.get("seal", b"")),
            checkpoint=int(record.get("checkpoint", 0)),
        )
    except (KeyError, TypeError, ValueError) as e:
        return ClientReply(node_id, error=f"malformed reply: {e}")


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
        config = ConfigRecord({**config, "base-model-hash": coordinator.model_hash})
        server_round += self.round_offset  # what clients sign and the ledger records
        messages = list(super().configure_train(server_round, arrays, config, grid))
        sampled = {m.metadata.dst_node_id for m in messages}
        pending = coordinator.pending
        proposer_node = coordinator.node_for(pending.header.proposer) if pending else None
        if proposer_node is not None and proposer_node not in sampled:
            messages.append(Message(messages[0].content, proposer_node, MessageType.TRAIN))
        self.sent = [self._with_view(m, MessageType.TRAIN) for m in messages]
        return self.sent

    def _with_view(self, message: Message, message_type: str) -> Message:
        node_id = message.metadata.dst_node_id
        content = message.content
        config = ConfigRecord({**content["config"], **self.coordinator.ledger_view(node_id)})
        records = {"config": config}
        if "arrays" in content:
            records["arrays"] = content["arrays"]
        return Message(RecordDict(records), node_id, message_type)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset
        # The grid gave each sent message its id; replies name it in reply_to_message_id.
        asked = {m.metadata.message_id: m.metadata.dst_node_id for m in self.sent}
        parsed = [
            parse_reply(m, asked.get(m.metadata.reply_to_message_id) if m.has_error() else None)
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
        metrics = MetricRecord({"accepted": outcome.accepted, "rejected": len(outcome.rejected)})
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
                Message(RecordDict({"config": base or self.settings}), node_id, MessageType.QUERY),
                MessageType.QUERY,
            )
            for node_id in node_ids
        ]
        return [parse_reply(m) for m in self.grid.send_and_receive(messages, timeout=self.timeout)]

    def close_ledger(self, base: ConfigRecord) -> None:
        """After the last round: seal its block, then record the attestations that finalise it."""
        if self.grid is None or self.coordinator.pending is None:
            return
        nodes = list(self.grid.get_node_ids())
        replies = self.query(nodes, base)
        self.seal_pending(replies)
        self.coordinator.close(replies)
        self.seal_pending(self.query(nodes, base))
