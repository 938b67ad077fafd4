"""Registration, the federation file, and the deployment ServerApp (in process) with resume."""

from __future__ import annotations

import json
import logging
import math
import os
import struct
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import Result
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from flwr.common.logger import FLOWER_LOGGER
from typer.testing import CliRunner

from clients import client_app as real_client
from fedchain.cli import app
from fedchain.config import RunConfig
from fedchain.crypto import identity
from fedchain.data import datafile, keys
from fedchain.data.partition import partition
from fedchain.data.sources import load_source
from fedchain.deploy.app import app_digest
from fedchain.errors import ConfigError, DatasetFileError, SignatureError
from fedchain.ledger.builder import sign_genesis_participant
from fedchain.ledger.codec import decode
from fedchain.ledger.objects import Block
from fedchain.ledger.store import LedgerStore
from fedchain.ledger.verify import verify_ledger
from fedchain.runs import federation, layout
from fedchain.runs.archive import check_update_files, find_unnamed_update_files
from fedchain.runs.layout import MODELS_DIRNAME, UPDATES_DIRNAME, update_pack_name
from fedchain.runs.registration import (
    MAX_TOML_SIZE,
    ParticipantEntry,
    check_supernode_key,
    create_registration,
    decode_registration_file,
    encode_registration_file,
)
from fedchain.runs.registry import find_unregistered_files
from server.deployment import run_deployment
from server.inprocess_grid import NODE_BASE, InProcessGrid

FLOWER_LOGGER.setLevel(logging.ERROR)
FED_ID = bytes.fromhex("5e" * 32)  # a federation id for registrations no federation adds
FED_ARGS = ("--federation-id", FED_ID.hex())
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
    key = keys.create_key_file(tmp_path / "data.key")
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


def make_federation(
    tmp_path: Path,
    nodes: list[dict[str, str]],
    name: str = "fed-test",
    settings: dict[str, Any] | None = None,
) -> Path:
    """A federation in ``tmp_path / "fed"`` with every node registered (each node's
    ``federation-id`` set)."""
    fed_dir = tmp_path / "fed"
    settings = SETTINGS if settings is None else settings
    fed_id = federation.init_federation(fed_dir, name=name, settings=settings).federation_id
    for i, node in enumerate(nodes):
        key = identity.load_identity(Path(node["identity-path"]), None)
        entry = create_registration(
            key,
            Path(node["data-path"]),
            federation_id=fed_id,
            unlock=data_key(node),
            stake=1_000_000,
            name=f"h{i}",
        )
        federation.add_participant(fed_dir, entry)
        node["federation-id"] = fed_id.hex()  # what `fedchain join --federation-id` sets
    return fed_dir


def data_key(node: dict[str, str]) -> keys.DataKey:
    return keys.load_key_file(Path(node["data-key-path"]))


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
    text = encode_registration_file(entry)
    (tmp_path / "r.toml").write_text(text)
    assert decode_registration_file(tmp_path / "r.toml") == entry
    commitment = datafile.compute_dataset_commitment(Path(nodes[0]["data-path"]))
    assert entry.registration.dataset_hash == commitment.file_hash
    with pytest.raises(ConfigError, match="already registered"):
        federation.add_participant(fed_dir, entry)


def test_invalid_registration_signature_refused(tmp_path):
    nodes = make_holders(tmp_path, 1)
    fed_dir = tmp_path / "fed"
    fed_id = federation.init_federation(fed_dir, name="f", settings={}).federation_id
    key = identity.load_identity(Path(nodes[0]["identity-path"]), None)
    entry = create_registration(
        key,
        Path(nodes[0]["data-path"]),
        federation_id=fed_id,
        unlock=data_key(nodes[0]),
        stake=10**6,
        name="a",
    )
    forged = ParticipantEntry(replace(entry.participant, stake=10**7), fed_id)
    with pytest.raises(SignatureError, match="not validly signed"):
        federation.add_participant(fed_dir, forged)


def test_invalid_simulation_setting_refused(tmp_path):
    with pytest.raises(ConfigError, match="simulation setting"):
        federation.init_federation(tmp_path / "f", name="f", settings={"clients": 3})


def test_deployment_runs_and_resumes_after_a_crash(tmp_path):
    nodes = make_holders(tmp_path, 3)
    fed_dir = make_federation(tmp_path, nodes)
    run_dir = layout.run_dir_of(fed_dir)

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
    packs = sorted(p.name for p in (run_dir / UPDATES_DIRNAME).iterdir())
    assert packs == [update_pack_name(1), update_pack_name(2)]  # round 2's: no block names it
    assert find_unnamed_update_files(run_dir, before) == [run_dir / UPDATES_DIRNAME / packs[1]]

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
    # The default rule (simulate's and `federation init`'s): screened, scored on the
    # coordinator's own validation split.
    assert {v.rule for _, v in after.model_versions} == {RunConfig().aggregation} == {"screened"}
    assert find_unregistered_files(run_dir, after) == []
    # round 2 ran again: its pack was replaced by the re-run's, which the ledger names
    assert find_unnamed_update_files(run_dir, after) == []
    archived = check_update_files(run_dir, after)
    assert archived.problems == () and archived.checked == len(after.update_hashes)

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
    created = cli("federation", "init", fed_dir, "--rounds", 2, "--set", "local-epochs=1")
    assert created.exit_code == 0
    fed_id = federation.load_federation(fed_dir).federation_id.hex()
    assert f"federation id: {fed_id}" in created.output  # what the coordinator hands out
    result = cli(
        "register", "--identity", tmp_path / "enc.key", "--data", nodes[0]["data-path"],
        "--data-key", nodes[0]["data-key-path"], "--stake", 500_000,
        "--supernode-key", tmp_path / "node.pub", "--name", "alice",
        "--out", tmp_path / "alice.reg", "--federation-id", fed_id,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert app_digest().hex() in result.output  # the app it approves, shown
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
    (fed_dir / layout.COORDINATOR_STATE_FILENAME).write_text(json.dumps(state))
    keys = {p.name: p.public_key for p in loaded.participants}
    assert federation.registered_node_keys(loaded) == {11: keys["h0"], 22: keys["h1"]}
    (fed_dir / layout.COORDINATOR_STATE_FILENAME).write_text("{not json")
    assert federation.registered_node_keys(loaded) == {}


# --------------------------------------------------------------------------------------------------
# Registration takes its count from the authenticated file; `federation add` refuses what it can
# prove bad.


def forge_count(path: Path, num_examples: int, *, cut: bool) -> None:
    """Edit a file's plain header to claim ``num_examples`` (and, with ``cut``, shorten the file
    to match, so that only the key can tell)."""
    raw = path.read_bytes()
    end = 8 + struct.unpack("<I", raw[4:8])[0]
    doc = json.loads(raw[8:end])
    doc["dataset"]["num_examples"] = num_examples
    body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    forged = raw[:4] + struct.pack("<I", len(body)) + body + raw[end:]
    if cut:
        meta = doc["dataset"]
        item = np.dtype(meta["x_dtype"]).itemsize
        plain = num_examples * (math.prod(meta["x_shape"]) * item + 8)  # features + labels
        chunk = doc["cipher"]["chunk_size"]
        forged = forged[: 8 + len(body) + plain + -(-plain // chunk) * 16]
    path.write_bytes(forged)


def test_registration_signs_the_authenticated_example_count(tmp_path):
    nodes = make_holders(tmp_path, 1)
    node = nodes[0]
    key = identity.load_identity(Path(node["identity-path"]), None)
    data = Path(node["data-path"])
    honest = len(datafile.load_dataset(data, data_key(node)))
    entry = create_registration(
        key, data, federation_id=FED_ID, unlock=data_key(node), stake=10**6, name="a"
    )
    assert entry.registration.num_examples == honest
    for count, cut, match in (
        (40_000_000, False, "truncated, or its header was altered"),
        (10**11, False, "truncated, or its header was altered"),
        (3, True, "chunk 0 failed authentication"),  # sizes agree: only the key tells
    ):
        forged = tmp_path / f"forged-{count}.fcd"
        forged.write_bytes(data.read_bytes())
        forge_count(forged, count, cut=cut)
        with pytest.raises(DatasetFileError, match=match):
            create_registration(
                key, forged, federation_id=FED_ID, unlock=data_key(node), stake=10**6, name="a"
            )


def signed_entry(
    name: str,
    federation_id: bytes,
    *,
    key: Ed25519PrivateKey | None = None,
    stake: int = 10**6,
    dataset_hash: bytes | None = None,
    num_examples: int = 100,
    supernode_key: str = "",
) -> ParticipantEntry:
    """A validly signed registration with whatever values an attacker chose."""
    participant = sign_genesis_participant(
        key or identity.generate_identity(),
        federation_id,
        stake=stake,
        dataset_hash=dataset_hash if dataset_hash is not None else os.urandom(32),
        num_examples=num_examples,
        name=name,
        supernode_key=supernode_key,
        app_digest=app_digest(),
    )
    return ParticipantEntry(participant, federation_id)


def altered(entry: ParticipantEntry, **fields: Any) -> ParticipantEntry:
    """``entry`` with fields changed after it was signed."""
    return ParticipantEntry(replace(entry.participant, **fields), entry.federation_id)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda f: signed_entry("z", f, num_examples=0), "0 examples is outside"),
        (lambda f: signed_entry("z", f, num_examples=2**41), "examples is outside"),
        (lambda f: signed_entry("z", f, stake=99_999), "stake 99999 is outside"),
        (lambda f: altered(signed_entry("z", f), stake=2**63), "stake 9223372036854775808 is"),
        (lambda f: signed_entry("z", f, dataset_hash=b"\x01" * 32), "already registered this"),
        (lambda f: signed_entry("z", f, stake=2**63 - 1), "total stake would exceed"),
        (lambda f: signed_entry("z", f, supernode_key="ssh-rsa garbage"), "not an OpenSSH"),
        (lambda f: altered(signed_entry("z", f), dataset_hash=b"\x02" * 8), "dataset-hash must"),
        (lambda f: altered(signed_entry("z", f), num_examples=7), "not validly signed"),
        (lambda f: altered(signed_entry("z", f), name="y"), "not validly signed"),
        (lambda f: signed_entry("z", bytes(32)), "made for another federation"),
    ],
)
def test_invalid_add_refuses_provably_bad_registrations(tmp_path, make, match):
    fed_dir = tmp_path / "fed"
    fed_id = federation.init_federation(fed_dir, name="f", settings={}).federation_id
    first = signed_entry("first", fed_id, dataset_hash=b"\x01" * 32)
    federation.add_participant(fed_dir, first)
    before = (fed_dir / layout.FEDERATION_FILENAME).read_text()
    with pytest.raises((ConfigError, SignatureError), match=match) as e:
        federation.add_participant(fed_dir, make(fed_id))
    assert "\n" not in str(e.value)
    assert (fed_dir / layout.FEDERATION_FILENAME).read_text() == before


def supernode_public_line() -> str:
    """A fresh SuperNode public key in its canonical OpenSSH form (type and base64, no comment)."""
    key = ec.generate_private_key(ec.SECP384R1()).public_key()
    return key.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()


@pytest.mark.parametrize(
    "variant",
    [
        lambda k: k + " another-comment",
        lambda k: k + "  two spaces then a comment",
        lambda k: "  " + k + " fedchain-alice\n",
        lambda k: k,
    ],
)
def test_invalid_add_refuses_the_same_supernode_key_spelt_differently(tmp_path, variant):
    """The attacker re-registers a SuperNode key already in the federation, with another comment
    or spacing: the text differs, the key does not, so ``add`` refuses it (before, it passed and
    stopped the coordinator's start)."""
    fed_dir = tmp_path / "fed"
    fed_id = federation.init_federation(fed_dir, name="f", settings={}).federation_id
    key = supernode_public_line()
    federation.add_participant(fed_dir, signed_entry("first", fed_id, supernode_key=key + " a"))
    before = (fed_dir / layout.FEDERATION_FILENAME).read_text()
    with pytest.raises(ConfigError, match="'first' already registered this SuperNode key"):
        federation.add_participant(fed_dir, signed_entry("z", fed_id, supernode_key=variant(key)))
    assert (fed_dir / layout.FEDERATION_FILENAME).read_text() == before
    other = supernode_public_line() + " a"  # another key with the same comment is fine
    federation.add_participant(fed_dir, signed_entry("second", fed_id, supernode_key=other))


@pytest.mark.parametrize(
    ("variant", "match"),
    [
        (lambda k: k + "\nssh-ed25519 AAAA second-line", "one line of printable text"),
        (lambda k: k + " comment\nsecond line", "one line of printable text"),
        (lambda k: k + "\x00", "one line of printable text"),
        (lambda k: k.replace(" ", "\t"), "one line of printable text"),
        (lambda k: k + "==", "extra characters in its key fields"),
        (lambda k: k.replace(" ", "  ", 1), "extra characters in its key fields"),
        (lambda k: k + "é", "one line of printable text"),
    ],
)
def test_invalid_supernode_key_with_embedded_lines_or_trailing_garbage(tmp_path, variant, match):
    """Text OpenSSL's parser alone accepts (a second line, a NUL, extra padding) is refused by
    ``add`` and by ``register``, with a one-line error."""
    key = supernode_public_line()
    fed_dir = tmp_path / "fed"
    fed_id = federation.init_federation(fed_dir, name="f", settings={}).federation_id
    with pytest.raises(ConfigError, match=match) as e:
        federation.add_participant(fed_dir, signed_entry("z", fed_id, supernode_key=variant(key)))
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=match):
        check_supernode_key(variant(key))


# --------------------------------------------------------------------------------------------------
# The command line: register, federation init / add / show


runner = CliRunner()


def cli(*args: object, env: dict[str, str] | None = None) -> Result:
    return runner.invoke(app, [str(a) for a in args], env=env or {"COLUMNS": "300"})


def assert_one_line_error(result: Result, *needles: str) -> None:
    """Exit 1 with a FedchainError's one-line message in click's error box, no traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    inside = [line.strip("│ ") for line in result.output.splitlines() if line.startswith("│")]
    assert len(inside) == 1, result.output
    for needle in needles:
        assert needle in inside[0], inside[0]


def test_cli_register_needs_and_uses_the_data_key(tmp_path, monkeypatch):
    monkeypatch.delenv("FEDCHAIN_PASSPHRASE", raising=False)
    monkeypatch.delenv("FEDCHAIN_IDENTITY_PASSPHRASE", raising=False)
    node = make_holders(tmp_path, 1)[0]
    common = ("register", "--identity", node["identity-path"], "--stake", 10**6, *FED_ARGS)
    # No key and no passphrase: one line saying what to give (the dataset is decrypted).
    result = cli(*common, "--data", node["data-path"], "--out", tmp_path / "r.reg")
    assert_one_line_error(result, "no passphrase for", "key file")
    assert not (tmp_path / "r.reg").exists()
    # A header forged to claim 4e7 examples: one line naming the file, nothing signed.
    forged = tmp_path / "forged.fcd"
    forged.write_bytes(Path(node["data-path"]).read_bytes())
    forge_count(forged, 40_000_000, cut=False)
    result = cli(
        *common, "--data", forged, "--data-key", node["data-key-path"], "--out", tmp_path / "f.reg"
    )
    assert_one_line_error(result, str(forged), "40,000,000 examples")
    assert not (tmp_path / "f.reg").exists()
    result = cli(
        *common, "--data", node["data-path"], "--data-key", node["data-key-path"],
        "--out", tmp_path / "r.reg",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    entry = decode_registration_file(tmp_path / "r.reg")
    assert entry.registration.num_examples == len(
        datafile.load_dataset(Path(node["data-path"]), data_key(node))
    )


def test_cli_register_passphrase_dataset_and_identity(tmp_path, monkeypatch):
    """As `join`: $FEDCHAIN_PASSPHRASE opens the dataset, $FEDCHAIN_IDENTITY_PASSPHRASE the
    identity."""
    ds = load_source("digits", split="train").subset(np.arange(30))
    datafile.write_dataset(tmp_path / "p.fcd", ds, keys.Passphrase(b"data words"))
    identity.save_identity(identity.generate_identity(), tmp_path / "id.key", b"id words")
    monkeypatch.setenv("FEDCHAIN_PASSPHRASE", "data words")
    monkeypatch.setenv("FEDCHAIN_IDENTITY_PASSPHRASE", "id words")
    result = cli(
        "register", "--identity", tmp_path / "id.key", "--data", tmp_path / "p.fcd",
        "--stake", 10**6, "--out", tmp_path / "r.reg", *FED_ARGS,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert decode_registration_file(tmp_path / "r.reg").registration.num_examples == 30
    monkeypatch.setenv("FEDCHAIN_PASSPHRASE", "wrong words")
    result = cli(
        "register", "--identity", tmp_path / "id.key", "--data", tmp_path / "p.fcd",
        "--stake", 10**6, "--out", tmp_path / "r2.reg", *FED_ARGS,
    )  # fmt: skip
    assert_one_line_error(result, "p.fcd", "wrong passphrase")


def test_cli_register_binary_supernode_key_is_one_line(tmp_path):
    node = make_holders(tmp_path, 1)[0]
    binary = tmp_path / "node.pub"
    binary.write_bytes(bytes(range(256)) * 4)
    result = cli(
        "register", "--identity", node["identity-path"], "--data", node["data-path"],
        "--data-key", node["data-key-path"], "--stake", 10**6, "--supernode-key", binary,
        "--out", tmp_path / "r.reg", *FED_ARGS,
    )  # fmt: skip
    assert_one_line_error(result, str(binary), "not an OpenSSH public key")
    binary.write_text("ssh-ed25519 AAAA not-a-key\n")
    result = cli(
        "register", "--identity", node["identity-path"], "--data", node["data-path"],
        "--data-key", node["data-key-path"], "--stake", 10**6, "--supernode-key", binary,
        "--out", tmp_path / "r.reg", *FED_ARGS,
    )  # fmt: skip
    assert_one_line_error(result, "not an OpenSSH public key")


def test_cli_register_shows_the_contract_of_the_coordinators_file(tmp_path, monkeypatch):
    """`register --federation FILE`: the id is re-derived from the file's rules and the
    contract printed before anything is signed; an id that is not the file's, or a file whose
    rules were changed after init (so its id no longer follows from them), is refused and
    nothing is written."""
    monkeypatch.setenv("FEDCHAIN_PASSPHRASE", "pass phrase")
    node = make_holders(tmp_path, 1)[0]
    fed_dir = tmp_path / "fed"
    reader = identity.public_key_bytes(identity.generate_identity()).hex()
    created = cli(
        "federation", "init", fed_dir, "--rounds", 2, "--set", "local-epochs=1",
        "--set", f"model-access={reader}",
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    fed_id = federation.load_federation(fed_dir).federation_id
    common = (
        "register", "--identity", node["identity-path"], "--data", node["data-path"],
        "--data-key", node["data-key-path"], "--stake", 10**6,
    )  # fmt: skip
    toml = fed_dir / "federation.toml"
    result = cli(*common, "--federation", toml, "--out", tmp_path / "r.reg")
    assert result.exit_code == 0, result.output
    assert decode_registration_file(tmp_path / "r.reg").federation_id == fed_id
    for needle in (
        f"id {fed_id.hex()}: the contract you sign",
        "rounds: at most 2 (no update is accepted for a later round)",
        "local epochs a round may ask of you: at most 1",
        "what leaves your machine: one model update a round, ",
        "who may be given the models: the participants and 1 other key (",
        "differential privacy: off",
    ):
        assert needle in result.output, (needle, result.output)
    both = cli(
        *common, "--federation", fed_dir, "--federation-id", fed_id.hex(),
        "--out", tmp_path / "both.reg",
    )  # fmt: skip
    assert both.exit_code == 0, both.output
    other = cli(*common, "--federation", toml, *FED_ARGS, "--out", tmp_path / "other.reg")
    assert_one_line_error(other, "is not the id of")
    assert not (tmp_path / "other.reg").exists()
    # the coordinator edits the rounds after init (the id it hands out stays): refused
    toml.write_text(toml.read_text().replace("rounds = 2", "rounds = 200"))
    changed = cli(*common, "--federation", toml, "--out", tmp_path / "changed.reg")
    assert changed.exit_code == 1 and "rule settings changed" in changed.output  # long: wraps
    assert not (tmp_path / "changed.reg").exists()
    neither = cli(*common, "--out", tmp_path / "neither.reg")
    assert_one_line_error(neither, "--federation-id", "--federation")


def test_cli_register_help_names_only_real_commands():
    shown = cli("register", "--help", env={"COLUMNS": "200"}).output
    assert "--new-auth-key" not in shown
    assert "fedchain keygen NAME.key --supernode" in shown and "--data-key" in shown
    keygen = cli("keygen", "--help", env={"COLUMNS": "200"}).output
    assert "--supernode" in keygen
    join = cli("join", "--help", env={"COLUMNS": "200"}).output
    for option in ("--data-key", "--passphrase-env", "--identity-passphrase-env"):
        assert option in join and option in shown  # register opens the data set as join does


def test_cli_federation_init_defaults_to_simulates_rule(tmp_path):
    """`federation init` and `simulate` share RunConfig's defaults: screened, which a deployment
    scores on the coordinator's validation split (test_deployment_runs_and_resumes_after_a_crash
    runs it end to end)."""
    assert cli("federation", "init", tmp_path / "fed").exit_code == 0
    loaded = federation.load_federation(tmp_path / "fed")
    assert loaded.settings["aggregation"] == RunConfig().aggregation == "screened"
    assert loaded.settings["contribution"] == RunConfig().contribution
    assert federation.compute_run_config(loaded, check_participants=False).aggregation == (
        "screened"
    )


def test_cli_federation_show_is_readable_at_80_columns(tmp_path):
    fed_dir = tmp_path / "fed"
    fed_id = federation.init_federation(fed_dir, name="f", settings={}).federation_id
    long_name = "hospital-" + "n" * 50
    big = signed_entry(long_name, fed_id, stake=1_010_500_000_000, num_examples=987_654_321)
    small = signed_entry("bob", fed_id, stake=1_000_000, num_examples=42)
    widest = signed_entry(
        "carol", fed_id, stake=2**62, num_examples=2**40
    )  # the largest add allows
    for entry in (big, small, widest):
        federation.add_participant(fed_dir, entry)
    result = cli("federation", "show", fed_dir, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert all(len(line) <= 80 for line in lines), result.output
    assert "…" not in result.output
    header = next(line for line in lines if "identity" in line).split()
    assert header == ["name", "identity", "stake", "examples", "dataset", "node"]
    table = "\n".join(lines)
    for entry in (big, small, widest):
        reg = entry.registration
        for value in (
            str(reg.stake),
            str(reg.num_examples),
            identity.fingerprint(reg.public_key),
            reg.dataset_hash.hex()[:8],
        ):
            assert value in table, (value, result.output)
    assert long_name in "".join(line.split()[0] for line in lines if line.strip())


@pytest.mark.parametrize(
    ("federation_toml", "match"),
    [
        ('[federation]\nname = "x"\njoin-timeout = "b"\n', "join-timeout must be"),  # ValueError
        ('[federation]\nname = "x"\njoin-timeout = nan\n', "join-timeout must be"),
        ('[federation]\nname = "x"\njoin-timeout = -5.0\n', "join-timeout must be"),
        ('[federation]\nname = "x"\nmin-clients = -1\n', "min-clients must be"),
        ('participants = 3\n[federation]\nname = "x"\n', "array of tables"),  # TypeError
        ("[federation]\nname = " + "[" * 5000, "not a readable TOML"),
    ],
)
def test_invalid_federation_file_is_one_error(tmp_path, federation_toml, match):
    (tmp_path / layout.FEDERATION_FILENAME).write_text(federation_toml)
    with pytest.raises(ConfigError, match=match) as e:
        federation.load_federation(tmp_path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("timeout", [float("nan"), -5.0, 0.0, float("inf"), 1e300])
def test_invalid_init_join_timeout_leaves_nothing(tmp_path, timeout):
    with pytest.raises(ConfigError, match="join-timeout must be"):
        federation.init_federation(tmp_path / "fed", name="f", settings={}, join_timeout=timeout)
    assert not (tmp_path / "fed").exists()


def test_invalid_registration_file_that_is_a_fifo_does_not_block(tmp_path):
    os.mkfifo(tmp_path / "r.reg")
    with pytest.raises(ConfigError, match="not a regular file"):
        decode_registration_file(tmp_path / "r.reg")
    big = tmp_path / "big.reg"
    big.write_bytes(b"#" * (MAX_TOML_SIZE + 1))
    with pytest.raises(ConfigError, match="too big"):
        decode_registration_file(big)


def test_invalid_join_without_a_federation_id_or_a_replica_dir(tmp_path):
    """`fedchain join` pins the federation the holder registered for and always keeps its copy
    of the ledger: without --federation-id, or told to drop either, it starts nothing."""
    node = make_holders(tmp_path, 1)[0]
    common = (
        "join", "--coordinator", "127.0.0.1:1", "--data", node["data-path"],
        "--identity", node["identity-path"], "--data-key", node["data-key-path"], "--insecure",
        "--log", tmp_path / "sn.log",
    )  # fmt: skip
    fed_id = "ab" * 32
    for extra, shown in (
        ((), "give --federation-id ID"),
        (("--federation-id", "xyz"), "is not a federation id"),
        (("--federation-id", fed_id, "--node-config", "replica-dir="), "replica-dir may change"),
        (("--federation-id", fed_id, "--node-config", 'federation-id=""'), "federation-id may"),
        (("--federation-id", fed_id, "--node-config", f"federation-id={'cd' * 32}"), "differs"),
        (("--federation-id", fed_id, "--base-weights", tmp_path / "no.pth"), "no such base"),
    ):
        result = cli(*common, *extra)
        assert result.exit_code == 1 and shown in result.output, result.output
    assert not (tmp_path / "sn.log").exists()
