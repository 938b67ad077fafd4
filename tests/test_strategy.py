"""server.strategy.FedchainStrategy: Flower's hooks -> real Messages and RecordDicts -> the ledger.

Pre -> op -> post on an in-process grid: a coordinator at genesis (test_coordinator's synthetic
federation of three and its small model), clients that do a participant's real duties
(:func:`clients.client_app.ledger_duties`: replica, attestation, seal) but send a fixed update
instead of training, then one hook:
``configure_train`` (what each node is sent), ``aggregate_train`` (what the coordinator makes of
the replies), ``close_ledger``. The parser of replies is test_replies'.
Negative cases are named ``test_invalid_*``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.client_app import ledger_duties
from fedchain.crypto.hashing import compute_update_hash
from fedchain.crypto.identity import public_key_bytes
from fedchain.errors import FedchainError
from fedchain.ledger.synthetic import SyntheticFederation
from fedchain.rounds import messages as m
from fedchain.rounds.coordinator import Coordinator, RoundOutcome
from fedchain.rounds.participant import sign_update_commitment
from server.inprocess_grid import NODE_BASE, InProcessGrid
from server.strategy import FedchainStrategy, to_array_record
from tests.test_coordinator import CLIENTS, MODEL, RUN_ID, open_coordinator, update

SETTINGS = ConfigRecord({"lr": 0.1})  # the run settings every message carries


def participant(federation: SyntheticFederation, i: int) -> ClientApp:
    """Client ``i``: checks its view on its replica, attests, seals when drawn, commits to
    ``update(i)``."""
    app = ClientApp()
    key = federation.keys[i]

    def duties(msg: Message, context: Context) -> m.Duties:  # the real client's ledger duties
        return ledger_duties(context, key, msg.content[m.CONFIG])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        config = msg.content[m.CONFIG]
        done = duties(msg, context)
        commitment = sign_update_commitment(
            key,
            m.decode_ledger_view(config),
            round_=int(config[m.SERVER_ROUND]),
            base_model_hash=bytes(config[m.BASE_MODEL_HASH]),
            update=update(i),
            num_examples=50,
        )
        signed = m.Duties(done.checkpoint, done.attestation, done.seal, commitment)
        records = {
            m.ARRAYS: to_array_record(update(i)),
            m.METRICS: MetricRecord(m.encode_metrics(50, 0.0)),
            m.DUTIES: ConfigRecord(m.encode_duties(signed)),
        }
        return Message(RecordDict(records), reply_to=msg)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        records = {m.DUTIES: ConfigRecord(m.encode_duties(duties(msg, context)))}
        return Message(RecordDict(records), reply_to=msg)

    return app


@pytest.fixture(scope="module")
def federation() -> SyntheticFederation:
    return SyntheticFederation(
        CLIENTS, initial_model_hash=compute_update_hash(MODEL), run_id=RUN_ID
    )


class World:
    def __init__(self, run_dir: Path, federation: SyntheticFederation, **kw: object) -> None:
        self.coordinator: Coordinator = open_coordinator(run_dir, federation)
        self.grid = InProcessGrid(lambda i: participant(federation, i), CLIENTS)
        self.outcomes: list[RoundOutcome] = []
        options: dict = {"fraction_train": 1.0, "min_nodes": CLIENTS, "timeout": 5.0, **kw}
        self.strategy = FedchainStrategy(self.coordinator, on_round=self.outcomes.append, **options)

    def configure(self, round_: int) -> list[Message]:
        model = to_array_record(self.coordinator.model)
        return list(self.strategy.configure_train(round_, model, SETTINGS, self.grid))

    def train(self, round_: int):  # type: ignore[no-untyped-def]
        replies = self.grid.send_and_receive(self.configure(round_))
        return self.strategy.aggregate_train(round_, replies)


@pytest.fixture
def world(tmp_path: Path, federation: SyntheticFederation) -> Iterator[World]:
    world = World(tmp_path, federation)
    yield world
    world.coordinator.chain.close()


def test_train_messages_carry_the_view_the_base_model_and_the_ledger_round(
    tmp_path: Path, federation: SyntheticFederation
) -> None:
    world = World(tmp_path, federation, round_offset=2)  # a resumed ledger at round 2
    try:
        messages = world.configure(1)
        coordinator = world.coordinator
        assert sorted(msg.metadata.dst_node_id for msg in messages) == sorted(world.grid.apps)
        assert world.strategy.sent == messages
        for msg in messages:
            assert msg.metadata.message_type == MessageType.TRAIN
            assert msg.metadata.group_id == "3"  # the ledger's round, which clients sign
            config = msg.content[m.CONFIG]
            assert config["lr"] == 0.1 and config[m.SERVER_ROUND] == 3
            assert bytes(config[m.BASE_MODEL_HASH]) == coordinator.model_hash
            view = m.decode_ledger_view(config)
            assert view.genesis_hash == coordinator.state.genesis_hash and view.pending is None
            assert set(msg.content[m.ARRAYS]) == set(MODEL)
    finally:
        world.coordinator.chain.close()


def test_replies_are_admitted_and_the_new_model_is_returned(world: World) -> None:
    arrays, metrics = world.train(1)
    assert metrics is not None
    assert dict(metrics) == {
        "accepted": CLIENTS,
        "left_out": 0,
        "refused": 0,
        "moved": 1,
        "rewards_paid": world.coordinator.state.genesis.rules.reward_per_round,
        "pool_carried": 0,
    }
    assert arrays is not None
    for name, array in arrays.items():
        np.testing.assert_array_equal(array.numpy(), world.coordinator.model[name])
    assert [o.round for o in world.outcomes] == [1] and world.outcomes[0].accepted == CLIENTS
    assert world.coordinator.pending is not None  # round 1's block waits for its seal


def test_the_next_rounds_train_replies_seal_the_previous_block(world: World) -> None:
    world.train(1)
    pending = world.coordinator.pending
    assert pending is not None
    for msg in world.configure(2):  # every client is shown the block to attest to
        assert m.decode_ledger_view(msg.content[m.CONFIG]).pending == pending.header
    world.train(2)
    assert world.coordinator.state.height == 1 and world.outcomes[-1].accepted == CLIENTS


def test_a_node_that_never_replies_is_recorded_and_the_round_goes_on(world: World) -> None:
    world.grid.down = {NODE_BASE + 1}
    _, metrics = world.train(1)
    assert metrics is not None
    assert dict(metrics) == {
        "accepted": 2,
        "left_out": 0,
        "refused": 1,
        "moved": 1,
        "rewards_paid": 1_000,
        "pool_carried": 0,
    }
    (refused,) = world.outcomes[0].rejected
    assert refused.node_id == NODE_BASE + 1
    assert refused.reason == "no reply within the round timeout (5 s)"


def test_the_drawn_proposer_is_sent_the_round_even_when_not_sampled(
    tmp_path: Path, federation: SyntheticFederation
) -> None:
    world = World(tmp_path, federation, fraction_train=1 / CLIENTS, min_nodes=1)
    try:
        coordinator = world.coordinator
        coordinator.node_keys = {  # a deployment's registered nodes
            NODE_BASE + i: public_key_bytes(k) for i, k in enumerate(federation.keys)
        }
        world.train(1)
        pending = coordinator.pending
        assert pending is not None
        nodes = [msg.metadata.dst_node_id for msg in world.configure(2)]
        assert coordinator.node_for(pending.header.proposer) in nodes
        assert len(nodes) == len(set(nodes)) <= 2
    finally:
        world.coordinator.chain.close()


def test_closing_the_ledger_seals_the_last_block_and_finalises_it(world: World) -> None:
    world.train(1)
    world.strategy.close_ledger(SETTINGS)
    coordinator = world.coordinator
    assert coordinator.pending is None
    assert (coordinator.state.height, coordinator.final_height) == (2, 1)
    queries = [msg for msg in world.grid.sent if msg.metadata.message_type == MessageType.QUERY]
    assert queries and {msg.metadata.group_id for msg in queries} == {"1"}


def test_invalid_query_before_any_round(world: World) -> None:
    with pytest.raises(FedchainError, match="no grid yet"):
        world.strategy.query([NODE_BASE])
