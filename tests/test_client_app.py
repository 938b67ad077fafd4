"""clients.client_app: a Flower Message -> decode, check, train, sign -> the reply Message.

Pre -> op -> post: a prepared run of two clients at genesis (its data, keys and initial model);
a train or query Message as the coordinator words it (:mod:`fedchain.rounds.messages`), delivered
to the real ClientApp on an in-process grid; then the reply's records, as the coordinator reads
them (:func:`server.strategy.parse_reply`), and the client's saved checkpoint.
Negative cases are named ``test_invalid_*``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common.logger import FLOWER_LOGGER

from clients import client_app
from fedchain.config import RunConfig
from fedchain.crypto.hashing import compute_update_hash
from fedchain.ledger.builder import prepare_block
from fedchain.ledger.codec import decode
from fedchain.ledger.genesis import compute_genesis_block, compute_genesis_state
from fedchain.ledger.lightclient import Checkpoint
from fedchain.ledger.objects import Attestation, BlockHeader, UpdateCommitment
from fedchain.rounds import messages as m
from fedchain.runs.prepare import RunSetup, prepare_run
from fedchain.runs.registry import load_model
from server.inprocess_grid import NODE_BASE, InProcessGrid
from server.strategy import parse_reply, to_array_record

Arrays = dict[str, np.ndarray]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> RunSetup:
    out = tmp_path_factory.mktemp("client")
    return prepare_run(RunConfig(run_id="client", out=str(out), clients=2, rounds=1, model="mlp"))


@pytest.fixture(scope="module")
def model(setup: RunSetup) -> Arrays:
    return load_model(setup.run_dir, setup.genesis.initial_model_hash)


def config(setup: RunSetup, pending: BlockHeader | None = None, **settings: Any) -> ConfigRecord:
    """Round 1's config: the run settings, the base model and the ledger view at genesis."""
    genesis = compute_genesis_block(setup.genesis)
    state = compute_genesis_state(setup.genesis)
    view = m.encode_ledger_view(state.genesis_hash, setup.genesis.run_id, [genesis], 0, pending)
    return ConfigRecord(
        {
            **m.encode_train_settings(setup.config, setup.run_dir),
            m.SERVER_ROUND: 1,
            m.BASE_MODEL_HASH: setup.genesis.initial_model_hash,
            **view,
            **settings,
        }
    )


def deliver(grid: InProcessGrid, client: int, content: RecordDict, kind: str) -> Message:
    (reply,) = grid.send_and_receive([Message(content, NODE_BASE + client, kind)])
    return reply


def train(grid: InProcessGrid, client: int, record: ConfigRecord, model: Arrays) -> Message:
    content = RecordDict({m.CONFIG: record, m.ARRAYS: to_array_record(model)})
    return deliver(grid, client, content, MessageType.TRAIN)


def test_a_train_message_is_answered_with_an_update_and_its_signed_commitment(setup, model):
    grid = InProcessGrid(client_app.app, 2)
    reply = train(grid, 0, config(setup), model)
    assert not reply.has_error() and set(reply.content) == {m.ARRAYS, m.METRICS, m.DUTIES}
    read = parse_reply(reply, model=model)  # as the coordinator reads it: nothing wrong
    assert read.error == "" and read.update is not None and read.seal == read.attestation == b""
    assert read.num_examples == setup.num_examples[0] and read.checkpoint == 0
    commitment = decode(UpdateCommitment, read.commitment)
    assert commitment.public_key == setup.public_keys[0] and commitment.round == 1
    assert commitment.run_id == "client"
    assert commitment.base_model_hash == setup.genesis.initial_model_hash
    assert commitment.update_hash == compute_update_hash(read.update)
    assert commitment.num_examples == read.num_examples
    saved = grid.contexts[NODE_BASE].state[m.DUTIES]
    assert m.decode_checkpoint(saved).height == 0  # the checkpoint it now holds


def test_ledger_off_sends_the_trained_weights_and_signs_nothing(setup, model):
    on = parse_reply(train(InProcessGrid(client_app.app, 2), 0, config(setup), model), model=model)
    grid = InProcessGrid(client_app.app, 2)
    reply = train(grid, 0, config(setup, ledger=False), model)
    assert not reply.has_error() and set(reply.content) == {m.ARRAYS, m.METRICS}
    assert m.DUTIES not in grid.contexts[NODE_BASE].state
    assert on.update is not None
    for name, array in reply.content[m.ARRAYS].items():  # the same training, sent as weights
        np.testing.assert_allclose(array.numpy(), model[name] + on.update[name], atol=1e-6)


def test_a_query_is_answered_with_ledger_duties_and_only_the_proposer_seals(setup, model):
    state = compute_genesis_state(setup.genesis)
    pending, _ = prepare_block(state, [], round=1)
    grid = InProcessGrid(client_app.app, 2)
    seals = []
    for client in range(2):
        content = RecordDict({m.CONFIG: config(setup, pending)})
        reply = deliver(grid, client, content, MessageType.QUERY)
        assert not reply.has_error() and set(reply.content) == {m.DUTIES}
        read = parse_reply(reply)
        attestation = decode(Attestation, read.attestation)
        assert attestation.validator == setup.public_keys[client] and attestation.height == 1
        seals.append(bool(read.seal))
        assert bool(read.seal) == (pending.proposer == setup.public_keys[client])
    assert sum(seals) == 1


def test_invalid_a_view_that_rewrites_the_clients_final_block_is_refused(setup, model):
    grid = InProcessGrid(client_app.app, 2)
    context = grid.contexts[NODE_BASE]
    forged = Checkpoint(0, b"\x07" * 32)  # it saw another block 0 final
    context.state[m.DUTIES] = ConfigRecord(m.encode_checkpoint(forged))
    reply = train(grid, 0, config(setup), model)
    assert reply.has_error() and "does not extend the last final block" in reply.error.reason
    assert m.decode_checkpoint(context.state[m.DUTIES]) == forged  # kept, not moved


def tampered(model: Arrays) -> Arrays:
    """``model`` with one weight moved by 1e-3: another model, one a coordinator might push."""
    name = sorted(model)[0]
    changed = model[name].copy()
    changed.flat[0] += np.float32(1e-3)
    return {**model, name: changed}


@pytest.mark.parametrize("claim", ["the ledger's model", "the tampered model"])
def test_invalid_a_model_other_than_the_one_the_ledger_names_is_not_trained(
    setup, model, claim, caplog
):
    """The coordinator sends another model than genesis's (the ledger's model head at round
    1), claiming either the ledger's hash or the tampered model's own: refused with a logged
    reason, no update, no commitment, nothing signed."""
    other = tampered(model)
    assert compute_update_hash(other) != setup.genesis.initial_model_hash
    claimed = setup.genesis.initial_model_hash
    if claim == "the tampered model":
        claimed = compute_update_hash(other)
    grid = InProcessGrid(client_app.app, 2)
    with caplog.at_level(logging.WARNING, logger=FLOWER_LOGGER.name):
        reply = train(grid, 0, config(setup, **{m.BASE_MODEL_HASH: claimed}), other)
    assert reply.has_error() and "is not the model the ledger names" in reply.error.reason
    assert not reply.has_content()  # no update, no commitment
    assert "refusing to attest, seal or train" in caplog.text
    assert m.DUTIES not in grid.contexts[NODE_BASE].state  # nothing saved either


def test_invalid_a_base_model_hash_claim_other_than_the_ledgers_is_not_trained(setup, model):
    """The right model, but a commitment would sign another base-model-hash: refused."""
    grid = InProcessGrid(client_app.app, 2)
    for claimed, reason in ((b"\x01" * 32, "base-model-hash 0101"), (7, "base-model-hash is 7")):
        reply = train(grid, 0, config(setup, **{m.BASE_MODEL_HASH: claimed}), model)
        assert reply.has_error() and reason in reply.error.reason


@pytest.mark.parametrize(
    ("limits", "refused"),
    [
        ({"max-rounds": 2}, "round 3 is over the 2 it agreed to"),
        ({"max-local-epochs": 1}, "local epochs 2 is over the 1 it agreed to"),
    ],
)
def test_invalid_a_train_message_over_the_holders_limits_is_refused_unread(
    limits: dict[str, int], refused: str
) -> None:
    """A coordinator asking for more than the holder agreed to when it joined (`fedchain join
    --max-rounds/--max-local-epochs`, in its node config, which the coordinator cannot change):
    the holder's ClientApp refuses before it loads its data (the data path here does not exist,
    so reading it would fail otherwise)."""
    from types import SimpleNamespace

    from fedchain.cli import join

    assert (join.MAX_ROUNDS_KEY, join.MAX_LOCAL_EPOCHS_KEY) == (
        client_app.MAX_ROUNDS_KEY,
        client_app.MAX_LOCAL_EPOCHS_KEY,
    )
    config = ConfigRecord({m.SERVER_ROUND: 3, m.LOCAL_EPOCHS: 2})
    message = SimpleNamespace(content={m.CONFIG: config})  # what train reads of a Message
    node_config = {"data-path": "/nonexistent/holder.fcd", "identity-path": "/x", **limits}
    context = SimpleNamespace(node_config=node_config, state=RecordDict())
    with pytest.raises(PermissionError, match=f"refused by the data holder: {refused}"):
        client_app.train(message, context)
    client_app.check_agreed_use({"max-rounds": 3, "max-local-epochs": 2}, config)  # within
    client_app.check_agreed_use({}, config)  # no limits set: none checked
