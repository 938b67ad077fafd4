"""Run directories: what a simulated federation is set up with before its first round.

``runs/<run-id>/`` (DESIGN.md §4) holds the resolved configuration, the ledger (absent with
--ledger off), the initial model, each simulated data holder's encrypted split and identity,
their data key and, with an attack, ``attackers.json``; :mod:`fedchain.runs.layout` names every
file and draws the tree.

In a real federation every data holder keeps its own files; a simulation keeps them together so
one machine can play every part, but each client still only ever opens its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedchain.aggregation.rules import RULES
from fedchain.config import FLOWER_RULES, RUN_ID_PATTERN, RunConfig, write_config
from fedchain.crypto import identity
from fedchain.data import datafile, keys
from fedchain.data.labelled_text import TextOptions
from fedchain.data.partition import PARTITIONERS, holdout_indices, partition, subsample_indices
from fedchain.data.sources import SOURCES, ArrayDataset, load_source
from fedchain.errors import ConfigError
from fedchain.learning.attacks import ATTACKS, NO_ATTACK, Attack, attacker_indices
from fedchain.learning.catalog import check_model_name
from fedchain.ledger.builder import make_genesis, make_rules, sign_genesis_participant
from fedchain.ledger.chain import Chain
from fedchain.ledger.derived import compute_federation_id
from fedchain.ledger.objects import DOUBLE_SIGN, HASH_SIZE, SCORE_SCALE, Genesis, ModelRecord, Rules
from fedchain.rounds.contribution import METHODS
from fedchain.runs.layout import (
    ATTACKERS_FILENAME,
    CLIENTS_DIRNAME,
    CONFIG_FILENAME,
    LEDGER_FILENAME,
    client_data_path,
    client_key_path,
    data_key_path,
)
from fedchain.runs.registry import save_model

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class RunSetup:
    run_dir: Path
    config: RunConfig
    genesis: Genesis
    public_keys: tuple[bytes, ...]  # by client index
    num_examples: tuple[int, ...]  # by client index


def new_run_id(config: RunConfig, now: float | None = None) -> str:
    """``YYYYmmdd-HHMMSS-s<seed>``: sortable, readable, unique enough for one machine."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() if now is None else now))
    return f"{stamp}-s{config.seed}"


def load_run_source(config: RunConfig, split: str) -> ArrayDataset:
    """Split ``split`` of the run's data source, as its settings say (root, text options), cut
    to its ``train-examples``/``test-examples`` subsample when one is set (seeded by the run's
    seed, so the clients' data, the validation split and the test split are each the same
    wherever the configuration is replayed: ``fedchain verify --scores``, export)."""
    text = None
    if config.dataset == "text":
        text = TextOptions(
            tokenizer=Path(config.tokenizer) if config.tokenizer else None,
            text_column=config.text_column,
            label_column=config.label_column,
            max_length=config.max_length,
        )
    data = load_source(config.dataset, root=config.data_root or None, split=split, text=text)
    count = {"train": config.train_examples, "test": config.test_examples}.get(split, 0)
    if not count:
        return data
    if count > len(data):
        raise ConfigError(
            f"{split}-examples {count} is more than the {len(data)} examples of {config.dataset}'s "
            f"{split} split"
        )
    return data.subset(subsample_indices(data.y, count, seed=config.seed))


def load_split(config: RunConfig) -> tuple[ArrayDataset, ArrayDataset]:
    """(the clients' share, the coordinator's validation split) of the training data.

    Deterministic from the configuration (source and seed), so the coordinator and anyone
    re-checking its contribution scores derive the same validation split.
    """
    train = load_run_source(config, "train")
    kept, held = holdout_indices(train.y, config.validation_fraction, seed=config.seed)
    return train.subset(kept), train.subset(held)


def make_model_and_rules(
    config: RunConfig, input_shape: tuple[int, ...], num_classes: int
) -> tuple[nn.Module, Rules]:
    """The initial model of a run with ``config`` on examples of ``input_shape`` and its
    genesis rules, whose model record describes that model (and its base)."""
    # torch (about 3 s): only when a run or a federation id is made, not for `fedchain --help`
    from fedchain.learning.record import model_for_config

    model, record = model_for_config(config, input_shape, num_classes, seed=config.seed)
    return model, make_rules_for(config, record)


def make_rules_for(config: RunConfig, model: ModelRecord | None = None) -> Rules:
    """The genesis rules of ``config`` with the model record ``model`` (none: the empty record);
    with DP on, its privacy and the participation cap the accountant derives from them
    (:func:`fedchain.privacy.accountant.compute_dp_rules`)."""
    dp = None
    if config.dp != "off":
        # Opacus (the dp extra, seconds to import): only for a run with differential privacy
        from fedchain.privacy.accountant import compute_dp_rules

        dp = compute_dp_rules(
            config.dp,
            noise_multiplier=config.dp_noise,
            clip_norm=config.dp_clip,
            delta=config.dp_delta,
            max_epsilon=config.dp_max_epsilon,
            sample_rate=config.dp_sample_rate,
            steps_per_round=config.dp_steps_per_round,
        )
        if dp["dp_max_participations"] == 0:
            raise ConfigError(
                f"with dp {config.dp}, noise {config.dp_noise:g} and delta {config.dp_delta:g}, "
                f"one round already spends more than dp-max-epsilon {config.dp_max_epsilon:g}: "
                "no client could ever take part; raise --dp-noise or --dp-max-epsilon"
            )
    return make_rules(
        min_stake=config.min_stake,
        reward_per_round=config.reward_per_round,
        slash_bps={DOUBLE_SIGN: config.slash_double_sign_bps},
        aggregation_rule=config.aggregation,
        aggregation_params={"beta": repr(config.beta)},
        contribution_method=config.contribution,
        weight_cap_bps=round(config.weight_cap * 10_000),
        reputation_penalty_bps=config.reputation_penalty_bps,
        payout_min_score=round(config.payout_min_score * SCORE_SCALE),
        score_debt_decay_bps=round(config.score_debt_decay * 10_000),
        harm_debt_decay_bps=round(min(config.harm_debt_decay, config.score_debt_decay) * 10_000),
        contribution_budget=config.contribution_budget,
        contribution_min_evaluations=config.contribution_min_evaluations,
        update_archive_rounds=config.archive_rounds,
        dp=dp,
        model=model,
        max_rounds=config.rounds,
        max_local_epochs=config.local_epochs,
        model_access=parse_model_access(config.model_access),
    )


def parse_model_access(text: str) -> tuple[bytes, ...]:
    """``model-access``: comma-separated hex public keys (64 hex digits each), sorted and made
    unique; empty: none (the participants alone)."""
    keys = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            key = bytes.fromhex(item)
        except ValueError:
            key = b""
        if len(key) != HASH_SIZE:
            raise ConfigError(
                f"model-access: {item!r} is not a public key (64 hex digits: a `fedchain keygen` "
                "KEY.pub)"
            )
        keys.append(key)
    return tuple(sorted(set(keys)))


def prepare_run(config: RunConfig) -> RunSetup:
    """Create the run directory ``out/<run-id>``: data splits, identities, initial model,
    genesis, ledger.

    Settings are checked before anything is written. The run is built in a fresh temporary
    sibling, ``out/.<run-id>.partial-<random>`` (made by us alone: :func:`_make_scratch`), and
    renamed into place at the end: ``os.rename`` replaces nothing but an empty
    directory, so an existing run is never overwritten, even by a second ``simulate`` racing
    this one. A failure removes only that temporary folder (and the ``out`` folders this call
    created, if still empty); a killed set-up leaves at most a hidden ``.partial`` folder, which
    blocks no run id. The run id is a plain name (:data:`fedchain.config.RUN_ID_PATTERN`, checked
    by :class:`RunConfig` and again here), so nothing outside ``out`` is ever touched.
    """
    for name, value, known in (
        ("aggregation", config.aggregation, RULES + FLOWER_RULES),
        ("attack", config.attack, (NO_ATTACK, *ATTACKS)),
        ("partitioner", config.partitioner, PARTITIONERS),
        ("dataset", config.dataset, SOURCES),
        ("contribution method", config.contribution, METHODS),
    ):
        if value not in known:
            raise ConfigError(f"unknown {name} {value!r}; choose one of {', '.join(known)}")
    check_model_name(config.model)
    if not RUN_ID_PATTERN.fullmatch(config.run_id):
        raise ConfigError(f"run-id {config.run_id!r} must be a name, not a path")
    out = Path(config.out)
    run_dir = out / config.run_id
    _refuse_existing(run_dir)
    made = _make_folders(out)
    scratch: Path | None = None
    try:
        scratch = _make_scratch(out, config.run_id)
        setup = _populate(scratch, config)
        try:
            os.rename(scratch, run_dir)
        except OSError as e:  # appeared meanwhile, not empty, or not a directory
            raise ConfigError(
                f"{run_dir}: already exists and is not empty; pick another --run-id"
            ) from e
    except BaseException:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)  # ours alone, and half made
        for folder in reversed(made):
            with contextlib.suppress(OSError):  # only while still empty
                folder.rmdir()
        raise
    return dataclasses.replace(setup, run_dir=run_dir)


def _refuse_existing(run_dir: Path) -> None:
    """Refuse a run id whose directory exists and is anything but an empty directory."""
    if not os.path.lexists(run_dir):
        return
    if run_dir.is_symlink() or not run_dir.is_dir() or any(run_dir.iterdir()):
        raise ConfigError(f"{run_dir}: already exists and is not empty; pick another --run-id")


def _make_scratch(out: Path, run_id: str) -> Path:
    """A new, empty ``out/.<run-id>.partial-<random>``: ``mkdir`` fails rather than reuse one,
    so the folder is ours alone. (Not :func:`tempfile.mkdtemp`: its mode 0700 would become the
    run directory's; ``mkdir`` gives the user's umask, as any folder they make.)"""
    while True:
        scratch = out / f".{run_id}.partial-{secrets.token_hex(6)}"
        with contextlib.suppress(FileExistsError):
            scratch.mkdir()
            return scratch


def _make_folders(out: Path) -> list[Path]:
    """Create ``out`` and its missing parents; return the folders this call made, outermost
    first (only those: ``mkdir`` says which, even for an ``out`` spelled with ``..``)."""
    made = []
    for folder in reversed((out, *out.parents)):
        if os.path.lexists(folder):
            continue
        with contextlib.suppress(FileExistsError):
            folder.mkdir()
            made.append(folder)
    if not out.is_dir():
        raise ConfigError(f"{out}: not a directory (--out names the folder for run directories)")
    return made


def _populate(run_dir: Path, config: RunConfig) -> RunSetup:
    # torch (about 3 s): only when a run is made, not for `fedchain --help` or any other command
    from fedchain.learning.architectures import state_to_numpy

    (run_dir / CLIENTS_DIRNAME).mkdir(parents=True, exist_ok=True)
    write_config(config, run_dir / CONFIG_FILENAME)

    train, _ = load_split(config)
    if config.test_examples:  # a test subsample larger than its split fails here, not mid-run
        load_run_source(config, "test")
    parts = partition(
        train.y,
        config.clients,
        config.partitioner,
        seed=config.seed,
        alpha=config.alpha,
        shards_per_client=config.shards_per_client,
    )
    data_key = keys.create_key_file(data_key_path(run_dir))
    model, rules = make_model_and_rules(config, tuple(train.x.shape[1:]), len(train.classes))
    # each simulated client signs its registration, as a data holder does (runs.registration)
    federation_id = compute_federation_id(config.run_id, rules)
    participants, public_keys, sizes = [], [], []
    for index, indices in enumerate(parts):
        path = client_data_path(run_dir, index)
        info = {"method": config.partitioner, "client": index, "num_clients": config.clients}
        datafile.write_dataset(path, train.subset(indices), data_key, partition=info)
        commitment = datafile.compute_dataset_commitment(path)
        key = identity.derive_simulated_identity(config.seed, index)
        identity.save_identity(key, client_key_path(run_dir, index), None)
        public = identity.public_key_bytes(key)
        participants.append(
            sign_genesis_participant(
                key,
                federation_id,
                stake=config.stake,
                dataset_hash=commitment.file_hash,
                num_examples=commitment.num_examples,
            )
        )
        public_keys.append(public)
        sizes.append(commitment.num_examples)

    initial_hash = save_model(run_dir, state_to_numpy(model))
    genesis = make_genesis(
        config.run_id,
        participants,
        initial_model_hash=initial_hash,
        rules=rules,
    )
    if config.ledger:
        Chain.create(run_dir / LEDGER_FILENAME, genesis).close()
    _write_attackers(run_dir, config, public_keys)
    return RunSetup(run_dir, config, genesis, tuple(public_keys), tuple(sizes))


def _write_attackers(run_dir: Path, config: RunConfig, public_keys: list[bytes]) -> None:
    indices = attacker_indices(config)
    if not indices:
        return
    doc = {
        "attack": config.attack,
        "scale": Attack(config.attack, config.attack_scale).scale,
        "clients": indices,
        "public_keys": [public_keys[i].hex() for i in indices],
    }
    (run_dir / ATTACKERS_FILENAME).write_text(json.dumps(doc, indent=1) + "\n")
