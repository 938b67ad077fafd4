"""Registrations on the ledger: each genesis participant's registration is signed for one
federation, and a genesis, a stored ledger or a coordinator refuses one that is not."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from click.testing import Result
from typer.testing import CliRunner

from fedchain.cli import app
from fedchain.crypto import identity
from fedchain.data import datafile, keys
from fedchain.data.sources import load_source
from fedchain.deploy.app import app_digest
from fedchain.errors import ConfigError, InvalidBlock, SignatureError
from fedchain.ledger.builder import make_genesis, make_rules, sign_genesis_participant
from fedchain.ledger.chain import Chain
from fedchain.ledger.codec import compute_hash, encode
from fedchain.ledger.containers import (
    INITIAL_REPUTATION_BPS,
    ParticipantState,
    compute_state_root_of,
)
from fedchain.ledger.derived import compute_block_hash, compute_federation_id, compute_tx_root
from fedchain.ledger.genesis import compute_genesis_block, compute_genesis_state
from fedchain.ledger.objects import (
    EMPTY_HASH,
    Block,
    BlockHeader,
    Genesis,
    GenesisParticipant,
    SignedHeader,
)
from fedchain.ledger.synthetic import SyntheticFederation, derive_key
from fedchain.ledger.verify import verify_ledger
from fedchain.runs import federation as fed
from fedchain.runs import layout
from fedchain.runs.registration import (
    ParticipantEntry,
    decode_registration_file,
    encode_registration_file,
    verify_registration,
)

RULES = make_rules()
RUN_ID = "reg-test"
runner = CliRunner()


def signed(
    i: int, federation_id: bytes | None = None, *, stake: int = 10_000
) -> GenesisParticipant:
    return sign_genesis_participant(
        derive_key(5, i),
        compute_federation_id(RUN_ID, RULES) if federation_id is None else federation_id,
        stake=stake,
        dataset_hash=compute_hash(RULES)[:-1] + bytes([i]),
        num_examples=100 + i,
        name=f"holder-{i}",
        app_digest=app_digest(),
    )


def genesis_with(first: GenesisParticipant) -> Genesis:
    """A genesis of three honest participants, the first replaced by ``first``."""
    participants = [first, signed(1), signed(2)]
    return make_genesis(RUN_ID, participants, initial_model_hash=bytes(32), rules=RULES)


def forged_genesis_block(genesis: Genesis) -> Block:
    """Block 0 of ``genesis``, built the way the spec derives it, with no check at all: what an
    attacker writes into a ledger file."""
    people = [
        ParticipantState(
            *(p.public_key, p.stake, INITIAL_REPUTATION_BPS, p.dataset_hash, p.num_examples),
            active=True,
            app_digest=p.app_digest,
        )
        for p in genesis.participants
    ]
    header = BlockHeader(
        height=0,
        round=0,
        parent_hash=EMPTY_HASH,
        tx_root=compute_tx_root((genesis,)),
        state_root=compute_state_root_of(people, genesis.initial_model_hash, 0),
        proposer=EMPTY_HASH,
        attempt=0,
    )
    return Block(SignedHeader(header, b""), (genesis,))


def _other_key_signature() -> bytes:
    return sign_genesis_participant(
        derive_key(5, 99),
        compute_federation_id(RUN_ID, RULES),
        stake=10_000,
        dataset_hash=signed(0).dataset_hash,
        num_examples=100,
        name="holder-0",
        app_digest=app_digest(),
    ).signature


ATTACKS: dict[str, Callable[[], GenesisParticipant]] = {
    "missing signature": lambda: dataclasses.replace(signed(0), signature=b""),
    "zero signature": lambda: dataclasses.replace(signed(0), signature=bytes(64)),
    "signed by another key": lambda: dataclasses.replace(
        signed(0), signature=_other_key_signature()
    ),
    "signed for another federation": lambda: signed(0, compute_federation_id("other", RULES)),
    "signed for other rules": lambda: signed(
        0, compute_federation_id(RUN_ID, make_rules(min_stake=1))
    ),
    "signed for no federation": lambda: signed(0, identity.NO_FEDERATION),
    "stake raised after signing": lambda: dataclasses.replace(signed(0), stake=10**9),
    "stake lowered after signing": lambda: dataclasses.replace(signed(0), stake=100),
    "examples changed": lambda: dataclasses.replace(signed(0), num_examples=10**6),
    "name changed": lambda: dataclasses.replace(signed(0), name="mallory"),
    "supernode key swapped": lambda: dataclasses.replace(signed(0), supernode_key="ssh x"),
    # a coordinator swapping the app the holder approved for one of its own choosing
    "approved app swapped": lambda: dataclasses.replace(signed(0), app_digest=bytes(32)),
    "fedchain version changed": lambda: dataclasses.replace(signed(0), fedchain_version="9"),
}


def test_invalid_a_registration_approving_another_app_is_refused_before_the_genesis(
    tmp_path: Path,
) -> None:
    """A holder who approved another app (another fedchain or Flower release, or a coordinator
    that wants to submit its own app): `federation add` refuses it, naming both digests, since
    the holder's node would refuse every round; a genesis holding it is refused too."""
    fed_dir = tmp_path / "fed"
    fed_id = fed.init_federation(fed_dir, name="f", settings={"model": "mlp"}).federation_id
    participant = sign_genesis_participant(
        derive_key(6, 0),
        fed_id,
        stake=10**6,
        dataset_hash=bytes([1]) * 32,
        num_examples=50,
        name="h0",
        app_digest=bytes([7]) * 32,
        fedchain_version="0.0.9",
    )
    entry = ParticipantEntry(participant, fed_id)
    with pytest.raises(ConfigError, match=f"approves app {'07' * 32} \\(fedchain 0.0.9\\)") as e:
        fed.add_participant(fed_dir, entry)
    assert f"this coordinator submits app {app_digest().hex()}" in str(e.value)
    assert fed.load_federation(fed_dir).participants == ()


def test_honest_genesis_and_the_forger_helper_agree() -> None:
    genesis = genesis_with(signed(0))
    compute_genesis_state(genesis)  # accepted
    assert forged_genesis_block(genesis) == compute_genesis_block(genesis)


def test_simulation_genesis_participants_are_signed_by_their_keys() -> None:
    federation = SyntheticFederation(4, seed=3)
    genesis = federation.genesis
    fed_id = compute_federation_id(genesis.run_id, genesis.rules)
    for participant in genesis.participants:
        unsigned = dataclasses.replace(participant, signature=b"")
        identity.verify_signature(
            participant.public_key,
            participant.signature,
            identity.Domain.REGISTRATION,
            encode(unsigned),
            fed_id,
        )


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_invalid_genesis_participant_registration_is_refused(attack: str, tmp_path: Path) -> None:
    genesis = genesis_with(ATTACKS[attack]())
    with pytest.raises(InvalidBlock, match="not signed by its key for this federation"):
        compute_genesis_state(genesis)
    with pytest.raises(InvalidBlock, match="not signed"):
        Chain.create(tmp_path / "ledger.db", genesis)
    assert not (tmp_path / "ledger.db").exists()


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_invalid_stored_genesis_fails_verify(attack: str, tmp_path: Path) -> None:
    """A ledger file rewritten consistently (block 0, its hash, the stored genesis hash) around a
    bad registration: only the registration's signature can tell, and verify checks it."""
    path = tmp_path / "ledger.db"
    Chain.create(path, genesis_with(signed(0))).close()
    genesis = genesis_with(ATTACKS[attack]())
    block = forged_genesis_block(genesis)
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "UPDATE blocks SET data=?, hash=? WHERE height=0",
            (encode(block), compute_block_hash(block)),
        )
        db.execute("UPDATE meta SET value=? WHERE key='genesis_hash'", (compute_hash(genesis),))
    report = verify_ledger(path)
    assert report.failure is not None and report.failure.height == 0, report
    assert "not signed by its key for this federation" in str(report.failure)
    result = runner.invoke(app, ["verify", str(path)], env={"COLUMNS": "200"})
    assert result.exit_code == 1 and "FAILED block 0" in result.output


def test_stake_differing_from_the_signed_one_fails_at_first_start(tmp_path: Path) -> None:
    """A coordinator editing a participant's stake in federation.toml after adding it: the
    genesis is refused, and no ledger is made."""
    fed_dir = tmp_path / "fed"
    fed_id = fed.init_federation(fed_dir, name="f", settings={"model": "mlp"}).federation_id
    for i in range(2):
        participant = sign_genesis_participant(
            derive_key(6, i),
            fed_id,
            stake=10**6,
            dataset_hash=bytes([i + 1]) * 32,
            num_examples=50,
            name=f"h{i}",
            app_digest=app_digest(),
        )
        fed.add_participant(fed_dir, ParticipantEntry(participant, fed_id))
    path = fed_dir / layout.FEDERATION_FILENAME
    path.write_text(path.read_text().replace("stake = 1000000", "stake = 9000000", 1))
    federation = fed.load_federation(fed_dir)
    assert federation.participants[0].registration.stake == 9_000_000
    with pytest.raises(InvalidBlock, match="not signed by its key for this federation"):
        fed.prepare_federation_run(federation)
    assert not fed.has_ledger(fed_dir)


def test_federation_settings_changed_after_init_are_refused(tmp_path: Path) -> None:
    fed_dir = tmp_path / "fed"
    fed.init_federation(fed_dir, name="f", settings={"min-stake": 1_000})
    path = fed_dir / layout.FEDERATION_FILENAME
    path.write_text(path.read_text().replace("min-stake = 1000", "min-stake = 1"))
    with pytest.raises(ConfigError, match="changed since `fedchain federation init`"):
        fed.load_federation(fed_dir)


def test_federation_id_binds_name_salt_and_rules(tmp_path: Path) -> None:
    salt = "0123456789abcdef" * 2
    a = fed.init_federation(tmp_path / "a", name="a", settings={}, salt=salt)
    b = fed.init_federation(tmp_path / "b", name="b", settings={}, salt=salt).federation_id
    c = fed.init_federation(tmp_path / "c", name="a", settings={"min-stake": 7}, salt=salt)
    d = fed.init_federation(tmp_path / "d", name="a", settings={}, salt=salt[::-1]).federation_id
    assert len({a.federation_id, b, c.federation_id, d}) == 4
    assert a.run_id == f"a-{salt}" and fed.load_federation(tmp_path / "a") == a
    config = fed.compute_run_config(a, check_participants=False)
    assert config.run_id == a.run_id
    assert a.federation_id == compute_federation_id(f"a-{salt}", fed.make_federation_rules(config))


def test_invalid_a_registration_replayed_into_a_federation_of_the_same_name_and_rules(
    tmp_path: Path,
) -> None:
    """Two coordinators run `federation init` with the same name and settings: each draws its
    own salt, so the ids differ, and a registration signed for the first is refused by the
    second (before the salt, both ids were H(name, rules) and it was accepted)."""
    first = fed.init_federation(tmp_path / "one", name="same", settings={})
    second = fed.init_federation(tmp_path / "two", name="same", settings={})
    assert first.name == second.name and first.settings == second.settings
    assert first.run_id != second.run_id and first.federation_id != second.federation_id
    participant = sign_genesis_participant(
        derive_key(7, 0),
        first.federation_id,
        stake=10**6,
        dataset_hash=b"\x05" * 32,
        num_examples=50,
        name="holder",
        app_digest=app_digest(),
    )
    fed.add_participant(tmp_path / "one", ParticipantEntry(participant, first.federation_id))
    with pytest.raises(ConfigError, match="made for another federation"):
        fed.add_participant(tmp_path / "two", ParticipantEntry(participant, first.federation_id))
    # claiming the second federation's id in the file does not help: the signature binds the first
    with pytest.raises(SignatureError, match="not validly signed"):
        fed.add_participant(tmp_path / "two", ParticipantEntry(participant, second.federation_id))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda t: t.replace('run-id = "f-', 'run-id = "g-'), "is not the name 'f' and a salt"),
        (lambda t: t.replace('run-id = "f-', 'run-id = "f-0'), "32 lowercase hex digits"),
        (lambda t: t.replace('run-id = "f-0', 'run-id = "f-1'), "run id or rule settings changed"),
        (
            lambda t: "\n".join(x for x in t.split("\n") if "run-id" not in x),
            "lacks the federation",
        ),
    ],
)
def test_invalid_a_federation_whose_run_id_was_edited(tmp_path: Path, edit, match) -> None:
    fed_dir = tmp_path / "fed"
    fed.init_federation(fed_dir, name="f", settings={}, salt="0" * 32)
    path = fed_dir / layout.FEDERATION_FILENAME
    path.write_text(edit(path.read_text()))
    with pytest.raises(ConfigError, match=match):
        fed.load_federation(fed_dir)


def test_invalid_cli_add_refuses_a_registration_for_another_federation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A data holder registers (the real `fedchain register`) for federation A; federation B's
    coordinator refuses the file with one line, A's accepts it."""
    ds = load_source("digits", split="train").subset(np.arange(30))
    datafile.write_dataset(tmp_path / "p.fcd", ds, keys.Passphrase(b"data words"))
    identity.save_identity(identity.generate_identity(), tmp_path / "id.key", None)
    monkeypatch.setenv("FEDCHAIN_PASSPHRASE", "data words")

    def cli(*args: object) -> Result:
        return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "300"})

    ids = {}
    for name in ("fed-a", "fed-b"):
        created = cli("federation", "init", tmp_path / name)
        assert created.exit_code == 0, created.output
        ids[name] = fed.load_federation(tmp_path / name).federation_id.hex()
        assert ids[name] in created.output
        assert ids[name] in cli("federation", "show", tmp_path / name).output
    made = cli(
        "register", "--identity", tmp_path / "id.key", "--data", tmp_path / "p.fcd",
        "--stake", 10**6, "--out", tmp_path / "a.reg", "--federation-id", ids["fed-a"],
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    before = (tmp_path / "fed-b" / layout.FEDERATION_FILENAME).read_text()
    refused = cli("federation", "add", tmp_path / "fed-b", tmp_path / "a.reg")
    assert refused.exit_code == 1
    assert "made for another federation" in refused.output and ids["fed-b"] in refused.output
    assert (tmp_path / "fed-b" / layout.FEDERATION_FILENAME).read_text() == before
    # The id in the file rewritten to B's: the signature, made for A, no longer verifies.
    text = (tmp_path / "a.reg").read_text().replace(ids["fed-a"], ids["fed-b"])
    (tmp_path / "b.reg").write_text(text)
    relabelled = cli("federation", "add", tmp_path / "fed-b", tmp_path / "b.reg")
    assert relabelled.exit_code == 1 and "not validly signed" in relabelled.output
    accepted = cli("federation", "add", tmp_path / "fed-a", tmp_path / "a.reg")
    assert accepted.exit_code == 0, accepted.output
    bad_id = cli(
        "register", "--identity", tmp_path / "id.key", "--data", tmp_path / "p.fcd",
        "--stake", 10**6, "--out", tmp_path / "x.reg", "--federation-id", "abc",
    )  # fmt: skip
    assert bad_id.exit_code == 1 and "not a federation id" in bad_id.output


def test_invalid_old_registration_file_is_refused_with_a_hint(tmp_path: Path) -> None:
    fed_id = bytes(32)
    entry = ParticipantEntry(signed(0, fed_id), fed_id)
    for old, why in (("v1", "signed for no federation"), ("v2", "it approves no app")):
        text = encode_registration_file(entry).replace(
            "fedchain-registration/v3", f"fedchain-registration/{old}"
        )
        (tmp_path / "old.reg").write_text(text)
        with pytest.raises(ConfigError, match=f"{why}.*--federation-id"):
            decode_registration_file(tmp_path / "old.reg")


def test_invalid_registration_signature_is_a_signature_error() -> None:
    fed_id = compute_federation_id(RUN_ID, RULES)
    entry = ParticipantEntry(dataclasses.replace(signed(0), stake=1), fed_id)
    with pytest.raises(SignatureError):
        verify_registration(entry)
    verify_registration(ParticipantEntry(signed(0), fed_id))


def test_invalid_genesis_with_a_malformed_app_digest() -> None:
    """The ledger checks an approved app's digest is a hash (or empty: a simulated client)."""
    short = sign_genesis_participant(
        derive_key(5, 0),
        compute_federation_id(RUN_ID, RULES),
        stake=10_000,
        dataset_hash=signed(0).dataset_hash,
        num_examples=100,
        name="holder-0",
        app_digest=bytes(31),
    )
    with pytest.raises(InvalidBlock, match="app digest must be 32 bytes"):
        compute_genesis_state(genesis_with(short))
    simulated = sign_genesis_participant(
        derive_key(5, 0),
        compute_federation_id(RUN_ID, RULES),
        stake=10_000,
        dataset_hash=signed(0).dataset_hash,
        num_examples=100,
        name="holder-0",
    )
    assert simulated.app_digest == b""
    compute_genesis_state(genesis_with(simulated))
