"""A deployed holder pins the federation it registered for: no coordinator can swap it for another.

The coordinator plays the liar against the real ClientApp (deployed holders, configured by their
node config as ``fedchain join`` writes it): on first contact, and after a restart, it shows a
genesis of other rules, or one without the holder, or the holder's own genesis swapped for
another that passes the pin. Each is refused with no attestation; the honest genesis is accepted.
The coordinator here holds the simulated run's keys, so it can sign every registration in the
genesis it forges (a deployment's coordinator could not even do that).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Message

from fedchain.config import RunConfig
from fedchain.crypto.identity import load_identity
from fedchain.ledger.builder import make_genesis, sign_genesis_participant
from fedchain.ledger.codec import compute_hash
from fedchain.ledger.derived import compute_federation_id
from fedchain.ledger.genesis import compute_genesis_block
from fedchain.ledger.objects import Genesis
from fedchain.rounds import messages as m
from fedchain.runs.layout import client_data_path, client_key_path, holder_ledger_dir
from fedchain.runs.prepare import RunSetup, prepare_run
from server.inprocess_grid import NODE_BASE
from tests.test_validators import deployed_grid, query


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> RunSetup:
    out = tmp_path_factory.mktemp("pin")
    return prepare_run(RunConfig(run_id="pin", out=str(out), clients=3, rounds=1, model="mlp"))


def re_signed(setup: RunSetup, genesis: Genesis, keep: list[int] | None = None) -> Genesis:
    """``genesis`` with its participants (those at ``keep``, by client index) re-signed for its
    own federation id, as a coordinator holding every key would make it."""
    federation_id = compute_federation_id(genesis.run_id, genesis.rules)
    keys = [load_identity(client_key_path(setup.run_dir, i), None) for i in range(3)]
    by_key = {p.public_key: p for p in setup.genesis.participants}
    participants = []
    for index in keep if keep is not None else range(3):
        p = by_key[setup.public_keys[index]]
        participants.append(
            sign_genesis_participant(
                keys[index],
                federation_id,
                stake=p.stake,
                dataset_hash=p.dataset_hash,
                num_examples=p.num_examples,
                name=p.name,
                supernode_key=p.supernode_key,
            )
        )
    return make_genesis(
        genesis.run_id,
        participants,
        initial_model_hash=genesis.initial_model_hash,
        rules=genesis.rules,
    )


def first_view(genesis: Genesis) -> dict[str, object]:
    block = compute_genesis_block(genesis)
    return m.encode_ledger_view(compute_hash(genesis), genesis.run_id, [block], 0, None)


def refused(reply: Message) -> str:
    assert reply.has_error() and not reply.has_content()  # no attestation, nothing signed
    return reply.error.reason


def test_the_honest_genesis_is_accepted_on_first_contact(setup, tmp_path: Path) -> None:
    reply = query(deployed_grid(setup, tmp_path), setup, first_view(setup.genesis))
    assert not reply.has_error(), reply.error.reason


@pytest.mark.parametrize(
    ("forge", "reason"),
    [
        (
            lambda s: re_signed(
                s,
                dataclasses.replace(
                    s.genesis, rules=dataclasses.replace(s.genesis.rules, reward_per_round=10**9)
                ),
            ),
            "the one this holder registered for",
        ),
        (
            lambda s: re_signed(s, dataclasses.replace(s.genesis, run_id="pin-other")),
            "the one this holder registered for",
        ),
        (lambda s: re_signed(s, s.genesis, keep=[1, 2]), "is not a participant"),
    ],
    ids=["other rules", "other run id", "holder missing"],
)
def test_invalid_a_first_contact_genesis_other_than_the_registered_one(
    setup, tmp_path: Path, forge: Any, reason: str
) -> None:
    """A holder with nothing on disk is shown a valid genesis (every registration signed) of
    another federation, or of its own without it: refused before any block is replayed."""
    forged = forge(setup)
    assert compute_hash(forged) != compute_hash(setup.genesis)
    assert reason in refused(query(deployed_grid(setup, tmp_path), setup, first_view(forged)))
    assert not (tmp_path / "holder-0").exists()  # nothing saved


def test_invalid_a_restarted_holder_without_replica_dir_keeps_its_genesis(
    setup, tmp_path: Path
) -> None:
    """A SuperNode started without ``replica-dir`` still keeps its copy beside its dataset: after
    a restart, a genesis that passes the pin (same run id and rules, the holder in it, another
    participant set) is refused as another federation. Before, the copy lived only in memory and
    the restarted holder accepted it."""
    grid = deployed_grid(setup, tmp_path)
    for context in grid.contexts.values():
        del context.node_config["replica-dir"]
    assert not query(grid, setup, first_view(setup.genesis)).has_error()
    default = holder_ledger_dir(client_data_path(setup.run_dir, 0).resolve())
    assert (default / "ledger.db").exists()
    pinned_but_other = re_signed(setup, setup.genesis, keep=[0, 1])  # holder 2 dropped
    restarted = deployed_grid(setup, tmp_path)  # a new process: nothing in memory
    for context in restarted.contexts.values():
        del context.node_config["replica-dir"]
    reason = refused(query(restarted, setup, first_view(pinned_but_other)))
    assert "this client's replica of" in reason


def test_invalid_a_deployed_holder_without_a_federation_id_refuses_to_start(
    setup, tmp_path: Path
) -> None:
    """A hand-started SuperNode whose node config names no federation (or garbage) signs
    nothing: it cannot tell its federation from another."""
    for value, reason in ((None, "lacks 'federation-id'"), ("zz", "not a federation id")):
        grid = deployed_grid(setup, tmp_path)
        node_config = grid.contexts[NODE_BASE].node_config
        del node_config["federation-id"]
        if value is not None:
            node_config["federation-id"] = value
        assert reason in refused(query(grid, setup, first_view(setup.genesis)))
