"""Registration, the federation file, and the deployment ServerApp (in process) with resume."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from flwr.common.logger import FLOWER_LOGGER

from clients import client_app as real_client
from fedchain import datafile, federation, identity
from fedchain.errors import ConfigError, SignatureError
from fedchain.ledger.codec import decode
from fedchain.ledger.objects import Block, Registration
from fedchain.ledger.store import LedgerStore
from fedchain.ledger.verify import verify_ledger
from fedchain.partition import partition
from fedchain.registry import MODELS_DIRNAME, find_unregistered_files
from fedchain.sources import load_source
from server.deployment import run_deployment
from server.inprocess_grid import NODE_BASE, InProcessGrid

FLOWER_LOGGER.setLevel(logging.ERROR)
SETTINGS = {
    "rounds": 3,
    "model": "mlp",
    "local-epochs": 1,
    "contribution": "leave-one-out",
    "round-timeout": 30.0,
}


def make_holders(tmp_path: Path, count: int) -> list[dict[str, str]]:
    """``count`` data holders' files and the node config each one's SuperNode would get."""
    train = load_source("digits", split="train")
    parts = partition(train.y, count, "iid", seed=0)
    key = datafile.create_key_file(tmp_path / "data.key")
    nodes = []
    for i, indices in enumerate(parts):
        data = tmp_path / f"h{i}.fcd"
        datafile.write_dataset(data, train.subset(indices), key, partition={"client": i})
        identity.save_identity(identity.generate_identity(), tmp_path / f"h{i}.key", None)
        nodes.append(
            {
                "data-path": str(data),
                "identity-path": str(tmp_path / f"h{i}.key"),
                "data-key-path": str(tmp_path / "data.key"),
                "index": i,
            }
        )
    return nodes


def make_federation(tmp_path: Path, nodes: list[dict[str, str]]) -> Path:
    fed_dir = tmp_path / "fed"
    federation.init_federation(fed_dir, name="fed-test", settings=SETTINGS)
    for i, node in enumerate(nodes):
        key = identity.load_identity(Path(node["identity-path"]), None)
        entry = federation.create_registration(
            key, Path(node["data-path"]), stake=1_000_000, name=f"h{i}"
        )
        federation.add_participant(fed_dir, entry)
    return fed_dir


def deployed_grid(nodes: list[dict[str, str]]) -> InProcessGrid:
    grid = InProcessGrid(real_client.app, len(nodes))
    for i, node in enumerate(nodes):
        grid.contexts[NODE_BASE + i].node_config = dict(node)
    return grid


class CrashingGrid(InProcessGrid):
    """Dies (like a killed coordinator) at its ``crash_at``-th message exchange."""

    crash_at = 3

    def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
        messages = list(messages)
        self.crash_at -= bool(messages)  # the empty evaluate phase does not count
        if self.crash_at == 0:
            raise KeyboardInterrupt("coordinator killed")
        return super().send_and_receive(messages, timeout=timeout)


def test_registration_round_trip_and_refusals(tmp_path):
    nodes = make_holders(tmp_path, 2)
    fed_dir = make_federation(tmp_path, nodes)
    loaded = federation.load_federation(fed_dir)
    assert [p.name for p in loaded.participants] == ["h0", "h1"]
    entry = loaded.participants[0]
    text = federation.encode_registration_file(entry)
    (tmp_path / "r.toml").write_text(text)
    assert federation.decode_registration_file(tmp_path / "r.toml") == entry
    commitment = datafile.compute_dataset_commitment(Path(nodes[0]["data-path"]))
    assert entry.registration.dataset_hash == commitment.file_hash
    with pytest.raises(ConfigError, match="already registered"):
        federation.add_participant(fed_dir, entry)


def test_invalid_registration_signature_refused(tmp_path):
    nodes = make_holders(tmp_path, 1)
    fed_dir = tmp_path / "fed"
    federation.init_federation(fed_dir, name="f", settings={})
    key = identity.load_identity(Path(nodes[0]["identity-path"]), None)
    entry = federation.create_registration(key, Path(nodes[0]["data-path"]), stake=10**6, name="a")
    reg = entry.registration
    forged = federation.ParticipantEntry(
        "a", Registration(reg.public_key, 10**7, reg.dataset_hash, reg.num_examples, reg.signature)
    )
    with pytest.raises(SignatureError, match="not validly signed"):
        federation.add_participant(fed_dir, forged)


def test_invalid_simulation_setting_refused(tmp_path):
    with pytest.raises(ConfigError, match="simulation setting"):
        federation.init_federation(tmp_path / "f", name="f", settings={"clients": 3})


def test_deployment_runs_and_resumes_after_a_crash(tmp_path):
    nodes = make_holders(tmp_path, 3)
    fed_dir = make_federation(tmp_path, nodes)
    run_dir = federation.run_dir_of(fed_dir)

    crashing = CrashingGrid(real_client.app, 3)
    for i, node in enumerate(nodes):
        crashing.contexts[NODE_BASE + i].node_config = dict(node)
    with pytest.raises(KeyboardInterrupt):
        run_deployment(crashing, fed_dir)  # killed in round 3: block 2 was still pending
    before = verify_ledger(run_dir)
    assert before.ok and before.rounds == 1 and before.head_height == 1
    with LedgerStore.open(run_dir / "ledger.db", readonly=True) as store:
        prefix = [s.block_hash for s in store.iter_blocks()]
    models_before = set((run_dir / MODELS_DIRNAME).iterdir())
    assert len(models_before) == 3  # initial, round 1, and round 2's model no block registers

    with pytest.raises(ConfigError, match="ledger already exists"):
        federation.add_participant(fed_dir, federation.load_federation(fed_dir).participants[0])

    stray = run_dir / MODELS_DIRNAME / f"{'ab' * 32}.safetensors"
    stray.write_bytes(b"saved by a round the ledger never recorded")

    run_deployment(deployed_grid(nodes), fed_dir)  # a restarted coordinator
    assert not stray.exists()
    after = verify_ledger(run_dir)
    assert after.ok, after.failure
    assert after.rounds == 3 and after.final_height >= 3
    with LedgerStore.open(run_dir / "ledger.db", readonly=True) as store:
        blocks = list(store.iter_blocks())
    assert [s.block_hash for s in blocks[: len(prefix)]] == prefix  # nothing lost
    rounds = [decode(Block, s.data).header.round for s in blocks]
    assert rounds[:2] == [0, 1] and rounds[-1] == 3 and sorted(rounds) == rounds
    assert [v.round for _, v in after.model_versions] == [1, 2, 3]
    assert find_unregistered_files(run_dir, after) == []

    run_deployment(deployed_grid(nodes), fed_dir)  # all rounds done: nothing happens
    assert verify_ledger(run_dir).head_height == after.head_height


def test_cli_register_add_show_and_join_checks(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from fedchain.cli import app

    runner = CliRunner()
    monkeypatch.setenv("FEDCHAIN_PASSPHRASE", "pass phrase")
    nodes = make_holders(tmp_path, 2)
    fed_dir = tmp_path / "fed"

    def cli(*args: object) -> object:
        return runner.invoke(app, [str(a) for a in args])

    assert cli("keygen", tmp_path / "enc.key").exit_code == 0  # passphrase from the environment
    assert cli("keygen", tmp_path / "node.key", "--supernode").exit_code == 0
    result = cli(
        "register", "--identity", tmp_path / "enc.key", "--data", nodes[0]["data-path"],
        "--stake", 500_000, "--supernode-key", tmp_path / "node.pub", "--name", "alice",
        "--out", tmp_path / "alice.reg",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (
        cli("federation", "init", fed_dir, "--rounds", 2, "--set", "local-epochs=1").exit_code == 0
    )
    assert cli("federation", "add", fed_dir, tmp_path / "alice.reg").exit_code == 0
    again = cli("federation", "add", fed_dir, tmp_path / "alice.reg")
    assert again.exit_code == 1 and "already registered" in again.output
    shown = cli("federation", "show", fed_dir)
    assert "alice" in shown.output and "500000" in shown.output
    # A tampered registration (stake raised after signing) is refused.
    text = (tmp_path / "alice.reg").read_text().replace("500000", "900000")
    (tmp_path / "forged.reg").write_text(text.replace('"alice"', '"mallory"'))
    forged = cli("federation", "add", fed_dir, tmp_path / "forged.reg")
    assert forged.exit_code == 1 and "not validly signed" in forged.output
    # join checks the data and the identity before starting anything.
    monkeypatch.setenv("FEDCHAIN_PASSPHRASE", "wrong")
    bad = cli(
        "join", "--coordinator", "127.0.0.1:1", "--data", nodes[0]["data-path"],
        "--identity", tmp_path / "enc.key", "--data-key", nodes[0]["data-key-path"],
        "--insecure",
    )  # fmt: skip
    assert bad.exit_code == 1 and "enc.key" in bad.output
    no_tls = cli(
        "join", "--coordinator", "127.0.0.1:1", "--data", nodes[0]["data-path"],
        "--identity", tmp_path / "enc.key",
    )  # fmt: skip
    assert no_tls.exit_code == 1 and "--root-cert" in no_tls.output
    # The coordinator will not start without certificates (TLS is the default).
    started = cli("coordinator", "start", fed_dir)
    assert started.exit_code == 1 and "coordinator certs" in started.output


def test_registered_node_keys_map_flower_node_ids_to_participants(tmp_path):
    nodes = make_holders(tmp_path, 2)
    fed_dir = make_federation(tmp_path, nodes)
    loaded = federation.load_federation(fed_dir)
    assert federation.registered_node_keys(loaded) == {}  # never started: nothing registered
    state = {"nodes": {"h0": 11, "h1": 22, "gone": 33, "h2": "x"}}
    (fed_dir / federation.COORDINATOR_STATE_FILE).write_text(json.dumps(state))
    keys = {p.name: p.public_key for p in loaded.participants}
    assert federation.registered_node_keys(loaded) == {11: keys["h0"], 22: keys["h1"]}
    (fed_dir / federation.COORDINATOR_STATE_FILE).write_text("{not json")
    assert federation.registered_node_keys(loaded) == {}
