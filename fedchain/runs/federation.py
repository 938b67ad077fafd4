"""A deployed federation: its settings, its registered participants, and its run directory.

A coordinator keeps one folder per federation (``FED_DIR``): ``federation.toml`` (settings,
[federation] and [fedchain], and the registered [[participants]]), the run directory ``run/``
(DESIGN.md §4) once the coordinator first starts, and what ``fedchain coordinator`` writes
(certificates, SuperNode keys, the SuperLink's state, the app bundle); :mod:`fedchain.runs.layout`
names every file and draws the tree.

A data holder's registration file (``fedchain register``) is
:mod:`fedchain.runs.registration`'s; this module checks one before adding it
(:func:`check_new_participant`) and keeps the participants in ``federation.toml``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fedchain.config import RunConfig, merge_config, write_config
from fedchain.crypto import identity
from fedchain.durable import write_atomically
from fedchain.errors import ConfigError, FedchainError, LedgerError, SignatureError
from fedchain.ledger.builder import make_genesis
from fedchain.ledger.chain import Chain
from fedchain.ledger.codec import MAX_INT, decode, encode
from fedchain.ledger.derived import compute_federation_id
from fedchain.ledger.objects import HASH_SIZE, Hash32, ModelRecord, Rules
from fedchain.ledger.verify import verify_ledger
from fedchain.runs.layout import (
    CONFIG_FILENAME,
    COORDINATOR_STATE_FILENAME,
    FEDERATION_FILENAME,
    LEDGER_FILENAME,
    run_dir_of,
)
from fedchain.runs.prepare import load_run_source, make_model_and_rules, make_rules_for
from fedchain.runs.registration import (
    MAX_REGISTERED_EXAMPLES,
    ParticipantEntry,
    check_int,
    check_name,
    compute_supernode_key_bytes,
    entry_from_toml,
    entry_to_toml,
    parse_federation_id,
    read_toml,
    verify_registration,
)
from fedchain.runs.registry import find_unregistered_files, save_model

__all__ = [
    "Federation",
    "add_participant",
    "compute_federation_id_of",
    "compute_rules_of",
    "compute_run_config",
    "compute_run_id_of",
    "has_ledger",
    "init_federation",
    "load_federation",
    "make_federation_rules",
    "prepare_federation_run",
    "remove_unregistered_models",
]

MAX_JOIN_TIMEOUT = 30 * 24 * 3600  # seconds: a month
SALT_HEX_CHARS = 32
"""A federation's salt: 128 random bits, as hex (:func:`compute_run_id_of`)."""
# Settings that describe a simulation only; a federation's data stay with its participants.
_SIMULATION_ONLY = (
    "run-id",
    "clients",
    "partitioner",
    "alpha",
    "shards-per-client",
    "out",
    "ledger",
)


@dataclass(frozen=True)
class Federation:
    """What ``federation.toml`` holds."""

    path: Path  # FED_DIR
    name: str  # what people call it
    run_id: str  # the genesis run id: the name and the salt drawn at init (compute_run_id_of)
    min_clients: int  # connected SuperNodes needed before a round starts
    join_timeout: float  # seconds the ServerApp waits for min_clients to connect
    settings: Mapping[str, Any]  # kebab-case RunConfig settings
    participants: tuple[ParticipantEntry, ...]
    federation_id: Hash32  # what registrations sign: compute_federation_id_of(...)
    model: ModelRecord  # the model record the settings gave at init (the rules' model)


def has_ledger(fed_dir: Path) -> bool:
    return (run_dir_of(fed_dir) / LEDGER_FILENAME).exists()


# --------------------------------------------------------------------------------------------------
# federation.toml (kept by the coordinator)


def init_federation(
    fed_dir: Path,
    *,
    name: str,
    settings: Mapping[str, Any],
    min_clients: int = 0,
    join_timeout: float = 3600.0,
    salt: str | None = None,
) -> Federation:
    """Create ``fed_dir/federation.toml`` with no participants; refuse to overwrite one.

    ``salt``: :data:`SALT_HEX_CHARS` hex digits, drawn from the system's random source when
    None (a test may pin it). It makes the genesis run id (:func:`compute_run_id_of`), hence
    the federation id, differ between two federations of the same name and rules, so that a
    registration signed for one is refused by the other."""
    fed_dir = Path(fed_dir)
    if (fed_dir / FEDERATION_FILENAME).exists():
        raise ConfigError(f"{fed_dir / FEDERATION_FILENAME}: already exists")
    check_name(name)
    run_id = compute_run_id_of(
        name, secrets.token_hex(SALT_HEX_CHARS // 2) if salt is None else salt
    )
    checked = _check_settings(settings, str(fed_dir))
    # the model record: the model built once, here, for the coordinator's test data (torch, the
    # data source and the base file); later loads check the id from the record kept
    model = make_federation_rules(_settings_config(fed_dir, run_id, checked)).model
    federation = Federation(
        fed_dir,
        name,
        run_id,
        _check_min_clients(min_clients, str(fed_dir)),
        _check_join_timeout(join_timeout, str(fed_dir)),
        checked,
        (),
        compute_federation_id_of(fed_dir, run_id, checked, model),
        model,
    )
    fed_dir.mkdir(parents=True, exist_ok=True)
    _write_federation(federation)
    return federation


def load_federation(fed_dir: Path) -> Federation:
    fed_dir = Path(fed_dir)
    path = fed_dir / FEDERATION_FILENAME
    if not path.exists():
        raise ConfigError(f"{path}: not found; create it with `fedchain federation init {fed_dir}`")
    doc = read_toml(path)
    meta = doc.get("federation", {})
    if not isinstance(meta, dict) or "name" not in meta:
        raise ConfigError(f"{path}: lacks a [federation] table with a name")
    tables = doc.get("participants", [])
    if not isinstance(tables, list):
        raise ConfigError(f"{path}: participants must be an array of tables ([[participants]])")
    participants = tuple(
        entry_from_toml(table, f"{path}: participant {i + 1}") for i, table in enumerate(tables)
    )
    name, settings = str(meta["name"]), _check_settings(doc.get("fedchain", {}), str(path))
    min_clients = _check_min_clients(meta.get("min-clients", 0), str(path))
    join_timeout = _check_join_timeout(meta.get("join-timeout", 3600.0), str(path))
    if "id" not in meta or "run-id" not in meta:
        raise ConfigError(
            f"{path}: lacks the federation id or run id (made by an older fedchain); create the "
            "federation again with `fedchain federation init` and have its participants "
            "register for it"
        )
    federation_id = parse_federation_id(str(meta["id"]), f"{path}: [federation] id")
    model = _decode_model(meta.get("model"), path)
    run_id = str(meta["run-id"])
    if not run_id.startswith(f"{name}-"):
        raise ConfigError(f"{path}: the run id {run_id!r} is not the name {name!r} and a salt")
    compute_run_id_of(name, run_id[len(name) + 1 :])  # the salt's form
    if compute_federation_id_of(fed_dir, run_id, settings, model) != federation_id:
        raise ConfigError(
            f"{path}: the run id or rule settings changed since `fedchain federation init`: the "
            f"registrations are signed for federation {federation_id.hex()}, which these settings "
            "no longer give; restore them, or create a new federation"
        )
    for entry in participants:
        if entry.federation_id != federation_id:
            raise ConfigError(
                f"{path}: the registration of {entry.name!r} is for another federation "
                f"({entry.federation_id.hex()[:16]}…)"
            )
    return Federation(
        path=fed_dir,
        name=name,
        run_id=run_id,
        min_clients=min_clients,
        join_timeout=join_timeout,
        settings=settings,
        participants=participants,
        federation_id=federation_id,
        model=model,
    )


def compute_run_id_of(name: str, salt: str) -> str:
    """A federation's genesis run id: ``NAME-SALT``, SALT being :data:`SALT_HEX_CHARS` lowercase
    hex digits drawn at ``fedchain federation init``. The run id is part of the federation id,
    so the salt gives each federation its own id even where name and rules are the same."""
    if len(salt) != SALT_HEX_CHARS or salt.strip("0123456789abcdef"):
        raise ConfigError(f"a federation's salt is {SALT_HEX_CHARS} lowercase hex digits")
    return f"{name}-{salt}"


def compute_federation_id_of(
    fed_dir: Path, run_id: str, settings: Mapping[str, Any], model: ModelRecord
) -> Hash32:
    """The federation id (:func:`~fedchain.ledger.derived.compute_federation_id`) of the genesis
    these settings make: ``run_id`` (:func:`compute_run_id_of`) is its run id, the settings and
    the model record made from them at init (``model``) fix its rules (the participants and the
    initial model, made at first start, are not part of it). Cheap: nothing is built."""
    return compute_federation_id(run_id, compute_rules_of(fed_dir, run_id, settings, model))


def compute_rules_of(
    fed_dir: Path, run_id: str, settings: Mapping[str, Any], model: ModelRecord
) -> Rules:
    """The genesis rules these settings and the model record made at init give: the contract
    every registration for the federation signs (through its id)."""
    return make_rules_for(_settings_config(fed_dir, run_id, settings), model)


def _settings_config(fed_dir: Path, run_id: str, settings: Mapping[str, Any]) -> RunConfig:
    base = RunConfig(run_id=run_id, out=str(fed_dir), clients=1)
    # RunConfig.stake only has to pass its stake >= min-stake check (as in compute_run_config)
    stake = settings.get("min-stake", RunConfig.min_stake)
    try:
        return merge_config(base, {**settings, "stake": stake})
    except ConfigError as e:
        raise ConfigError(f"{fed_dir}: {e}") from None


def _decode_model(value: object, path: Path) -> ModelRecord:
    """``[federation] model``: the hex encoding of the model record made at init."""
    try:
        return decode(ModelRecord, bytes.fromhex(str(value)))
    except (ValueError, LedgerError):
        raise ConfigError(
            f"{path}: lacks a readable [federation] model record (made by an older fedchain?); "
            "create the federation again with `fedchain federation init`"
        ) from None


def make_federation_rules(config: RunConfig) -> Rules:
    """A federation's genesis rules, whose model record describes the model made for the
    coordinator's test data (shape and classes) from ``config``."""
    test = load_run_source(config, "test")
    return make_model_and_rules(config, tuple(test.x.shape[1:]), len(test.classes))[1]


def add_participant(fed_dir: Path, entry: ParticipantEntry) -> Federation:
    """Check ``entry`` (:func:`check_new_participant`) and add it; refused once the ledger
    exists (the genesis is fixed)."""
    federation = load_federation(fed_dir)
    if has_ledger(fed_dir):
        raise ConfigError(
            f"{fed_dir}: the ledger already exists; its genesis fixes the participants, so "
            "new participants need a new federation"
        )
    config = compute_run_config(federation, check_participants=False)
    check_new_participant(
        federation.participants,
        entry,
        min_stake=config.min_stake,
        federation_id=federation.federation_id,
    )
    updated = replace(federation, participants=(*federation.participants, entry))
    _write_federation(updated)
    return updated


def check_new_participant(
    participants: Sequence[ParticipantEntry],
    entry: ParticipantEntry,
    *,
    min_stake: int,
    federation_id: Hash32,
) -> None:
    """Refuse a registration the coordinator can prove bad, before it reaches a genesis.

    Checked: that it was made for this federation (``federation_id``), field sizes, the stake
    (at least the federation's minimum, and the federation's total within the ledger's
    integers), the example count (at least 1, at most :data:`MAX_REGISTERED_EXAMPLES`), the
    signature (by the registration's own key, under the registration domain, for this
    federation: it covers the name and SuperNode key too), the SuperNode key's format, the app
    the holder approved (:func:`check_approved_app`), and that
    no other participant has the same identity, name, SuperNode key or dataset (one data set
    registered twice would be paid twice). What cannot be checked here is whether the count is
    true: the data stay with their holder. Raises :class:`ConfigError` or
    :class:`SignatureError` naming the entry.
    """
    reg, who = entry.registration, f"registration of {entry.name!r}"
    if entry.federation_id != federation_id:
        raise ConfigError(
            f"{who} was made for another federation (id {entry.federation_id.hex()}), not this "
            f"one ({federation_id.hex()}): its holder must register again with "
            f"`fedchain register --federation-id {federation_id.hex()} ...`"
        )
    check_name(entry.name)
    for field, value, size in (
        ("public-key", reg.public_key, identity.PUBLIC_KEY_SIZE),
        ("dataset-hash", reg.dataset_hash, HASH_SIZE),
        ("signature", reg.signature, identity.SIGNATURE_SIZE),
    ):
        if len(value) != size:
            raise ConfigError(f"{who}: {field} must be {size} bytes, got {len(value)}")
    if not min_stake <= reg.stake <= MAX_INT:
        raise ConfigError(
            f"{who}: stake {reg.stake} is outside the federation's bounds {min_stake}..{MAX_INT}"
        )
    if not 1 <= reg.num_examples <= MAX_REGISTERED_EXAMPLES:
        raise ConfigError(
            f"{who}: {reg.num_examples} examples is outside 1..{MAX_REGISTERED_EXAMPLES}"
        )
    try:
        verify_registration(entry)
    except SignatureError as e:
        raise SignatureError(f"{who} is not validly signed: {e}") from None
    try:
        supernode_key = compute_supernode_key_bytes(entry.supernode_key)
    except ConfigError as e:
        raise ConfigError(f"{who}: {e}") from None
    for other in participants:
        if other.public_key == entry.public_key:
            raise ConfigError(f"identity {_short(entry.public_key)} is already registered")
        if other.name == entry.name:
            raise ConfigError(f"the name {entry.name!r} is already taken")
        if supernode_key and _supernode_key_bytes(other) == supernode_key:
            raise ConfigError(f"{other.name!r} already registered this SuperNode key")
        if other.registration.dataset_hash == reg.dataset_hash:
            raise ConfigError(
                f"{who}: {other.name!r} already registered this data set "
                f"(sha256 {reg.dataset_hash.hex()[:16]}…)"
            )
    total = sum(p.registration.stake for p in participants) + reg.stake
    if total > MAX_INT:
        raise ConfigError(f"{who}: the federation's total stake would exceed {MAX_INT}")
    check_approved_app(entry)


def check_approved_app(entry: ParticipantEntry) -> None:
    """Refuse a registration whose holder approved another app than the one this coordinator
    submits (:func:`fedchain.deploy.app.app_digest`): its node would refuse every round."""
    from fedchain.deploy import app

    reg, expected = entry.registration, app.app_digest()
    if reg.app_digest != expected:
        raise ConfigError(
            f"registration of {entry.name!r} approves app {reg.app_digest.hex()} (fedchain "
            f"{reg.fedchain_version or '?'}), but this coordinator submits app {expected.hex()} "
            f"(fedchain {app.fedchain_version()}): its node would refuse every round. Use the "
            "same fedchain and Flower versions on both sides, and register again"
        )


def compute_run_config(federation: Federation, *, check_participants: bool = True) -> RunConfig:
    """The RunConfig the coordinator runs: the settings, one client per participant."""
    count = len(federation.participants)
    if check_participants and count == 0:
        raise ConfigError(
            f"{federation.path}: no participants yet; add registrations with "
            "`fedchain federation add`"
        )
    min_clients = federation.min_clients or count
    if check_participants and not 1 <= min_clients <= count:
        raise ConfigError(f"min-clients {min_clients} must be between 1 and {count}")
    # RunConfig.stake is a simulated client's deposit; here each registration carries its own,
    # so it only has to pass RunConfig's stake >= min-stake check.
    min_stake = federation.settings.get("min-stake", RunConfig.min_stake)
    stakes = [p.registration.stake for p in federation.participants]
    base = RunConfig(run_id=federation.run_id, out=str(federation.path), clients=max(count, 1))
    return merge_config(base, {**federation.settings, "stake": max([*stakes, min_stake])})


def _check_settings(settings: Any, where: str) -> dict[str, Any]:
    if not isinstance(settings, dict):
        raise ConfigError(f"{where}: [fedchain] must be a table")
    for key in settings:
        if key in _SIMULATION_ONLY or key.replace("_", "-") in _SIMULATION_ONLY:
            raise ConfigError(f"{where}: {key!r} is a simulation setting, not a federation's")
    try:
        merge_config(RunConfig(), settings)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return dict(settings)


def _write_federation(federation: Federation) -> None:
    import tomli_w

    doc: dict[str, Any] = {
        "federation": {
            "name": federation.name,
            "run-id": federation.run_id,
            "id": federation.federation_id.hex(),
            "model": encode(federation.model).hex(),
            "min-clients": federation.min_clients,
            "join-timeout": federation.join_timeout,
        },
        "fedchain": dict(federation.settings),
        "participants": [entry_to_toml(p) for p in federation.participants],
    }
    comment = (
        "# A fedchain federation (see `fedchain federation --help`).\n"
        "# [federation] id: what registrations sign (`fedchain register --federation-id`),\n"
        "# the hash of the run id (the name and a random salt) and the rules the settings\n"
        "# give: neither may change;\n"
        "# min-clients: connected SuperNodes a round waits for (0 = all);\n"
        "# [fedchain]: run settings (`fedchain simulate --help` lists them, kebab-case).\n"
        "# Participants are added with `fedchain federation add`, not by hand.\n"
    )
    write_atomically(federation.path / FEDERATION_FILENAME, (comment + tomli_w.dumps(doc)).encode())


# --------------------------------------------------------------------------------------------------
# The run directory


def prepare_federation_run(federation: Federation) -> tuple[Path, RunConfig, bool]:
    """Create the run directory and ledger on first start; return ``(run_dir, config, created)``.

    Creating: the resolved configuration (``config.toml``), the initial model (shaped for the
    coordinator's test data) and a ledger whose genesis holds every registered participant.
    """
    # torch (about 3 s): only when a federation's run is created, not for every CLI command
    from fedchain.learning.architectures import state_to_numpy

    config = compute_run_config(federation)
    run_dir = run_dir_of(federation.path)
    if has_ledger(federation.path):
        return run_dir, config, False
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(config, run_dir / CONFIG_FILENAME)
    for entry in federation.participants:  # the genesis seals what each holder approved
        check_approved_app(entry)
    test = load_run_source(config, "test")
    model, rules = make_model_and_rules(config, tuple(test.x.shape[1:]), len(test.classes))
    if rules.model != federation.model:
        raise ConfigError(
            f"{federation.path}: the model built now is not the one recorded at `fedchain "
            "federation init` (the task module, torchvision/peft, or the base weights file "
            "changed), so the registrations are signed for another model; restore it, or create "
            "a new federation"
        )
    initial_hash = save_model(run_dir, state_to_numpy(model))
    participants = [p.participant for p in federation.participants]
    genesis = make_genesis(
        federation.run_id,
        participants,
        initial_model_hash=initial_hash,
        rules=rules,
    )
    Chain.create(run_dir / LEDGER_FILENAME, genesis).close()
    return run_dir, config, True


def registered_node_keys(federation: Federation) -> dict[int, bytes]:
    """Flower node id -> participant public key, for the SuperNodes the coordinator registered
    (SuperNode authentication binds each id to that participant's key). Lets a resumed
    coordinator attribute a round to a participant who has not replied since the restart."""
    path = federation.path / COORDINATOR_STATE_FILENAME
    try:
        nodes = json.loads(path.read_text()).get("nodes", {})
    except (OSError, ValueError, AttributeError):
        return {}
    keys = {p.name: p.public_key for p in federation.participants}
    return {
        int(node_id): keys[name]
        for name, node_id in nodes.items()
        if name in keys and isinstance(node_id, int)
    }


def remove_unregistered_models(run_dir: Path) -> list[Path]:
    """Delete ``models/`` files that no block of the (verified) ledger registers.

    A coordinator saves a round's model before the block registering it is sealed; a crash in
    between leaves the file behind. On resume that round runs again, so the file is not part of
    the federation's history and is removed (``fedchain verify`` would only warn about it).
    """
    report = verify_ledger(Path(run_dir))
    if not report.ok:
        raise FedchainError(f"{run_dir}: the ledger does not verify: {report.failure}")
    stray = find_unregistered_files(Path(run_dir), report)
    for path in stray:
        path.unlink(missing_ok=True)
    return stray


# --------------------------------------------------------------------------------------------------
# Small checks


def _check_min_clients(value: Any, where: str) -> int:
    if check_int(value, "min-clients", where) < 0:
        raise ConfigError(f"{where}: min-clients must be 0 (every participant) or more")
    return int(value)


def _check_join_timeout(value: Any, where: str) -> float:
    """Seconds, positive and at most :data:`MAX_JOIN_TIMEOUT` (a NaN would make the
    coordinator's wait never end or never start; a huge one overflows timers)."""
    if type(value) not in (int, float) or not 0 < value <= MAX_JOIN_TIMEOUT:
        raise ConfigError(
            f"{where}: join-timeout must be a number of seconds in (0, {MAX_JOIN_TIMEOUT}]"
        )
    return float(value)


def _supernode_key_bytes(entry: ParticipantEntry) -> bytes:
    """``entry``'s SuperNode key as bytes; ``b""`` for none, or for a key text that no longer
    parses (an entry added before the key check was strict), which then matches no new key."""
    try:
        return compute_supernode_key_bytes(entry.supernode_key)
    except ConfigError:
        return b""


def _short(public_key: bytes) -> str:
    return identity.fingerprint(public_key)


def names_of(participants: Sequence[ParticipantEntry]) -> dict[bytes, str]:
    return {p.public_key: p.name for p in participants}
