"""The Flower ClientApp run by each data holder.

Each train message carries the global model and a view of the ledger. The client checks that the
ledger extends the last final block it saw (kept in ``context.state``), trains on its decrypted
data, hashes its update canonically, signs the commitment, attests to the pending block, and
seals it if the stake draw chose this client as its proposer. With the ledger off it behaves as a
plain Flower FedAvg client (sends trained weights, signs nothing) for comparison runs.

For robustness experiments a client can be told to attack (:func:`configured_attack`): it then
sends what :mod:`fedchain.learning.attacks` makes of its honest reply, and the honest path is
untouched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedchain.crypto.hashing import compute_update_hash
from fedchain.data.holder import DataHolder, load_configured_holder, load_simulated_holder
from fedchain.data.sources import ArrayDataset
from fedchain.learning.architectures import build_model, load_numpy_state, state_to_numpy
from fedchain.learning.attacks import (
    NO_ATTACK,
    Attack,
    compute_attacked_update,
    compute_claimed_examples,
    flip_labels,
)
from fedchain.learning.training import (
    TrainConfig,
    TrainResult,
    compute_update,
    configure_threads,
    derive_seed,
    train_local,
)
from fedchain.ledger.builder import sign_attestation, sign_commitment, sign_header
from fedchain.ledger.codec import decode, encode
from fedchain.ledger.lightclient import Checkpoint, check_head
from fedchain.ledger.objects import BlockHeader, SignedHeader, compute_block_hash

Arrays = dict[str, np.ndarray]
app = ClientApp()
_STATE_KEY = "fedchain"
_threads_set = False


def _holder(context: Context, config: ConfigRecord) -> DataHolder:
    global _threads_set
    if not _threads_set:
        configure_threads(int(config.get("threads", 1)))
        _threads_set = True
    if "partition-id" in context.node_config and config.get("run-dir"):
        return load_simulated_holder(
            Path(str(config["run-dir"])), int(context.node_config["partition-id"])
        )
    return load_configured_holder(context.node_config)


def _saved_checkpoint(context: Context) -> Checkpoint | None:
    if _STATE_KEY not in context.state:
        return None
    record = context.state[_STATE_KEY]
    return Checkpoint(int(record["final-height"]), bytes(record["final-hash"]))


def _ledger_duties(context: Context, holder: DataHolder, config: ConfigRecord) -> dict[str, Any]:
    """Check the ledger view, move the checkpoint, attest to and maybe seal the pending block."""
    genesis_hash = bytes(config["genesis-hash"])
    headers = [decode(SignedHeader, h) for h in config["headers"]]
    pending = decode(BlockHeader, bytes(config["pending"])) if config["pending"] else None
    checkpoint = check_head(
        _saved_checkpoint(context), headers, int(config["final-height"]), pending, genesis_hash
    )
    context.state[_STATE_KEY] = ConfigRecord(
        {"final-height": checkpoint.height, "final-hash": checkpoint.block_hash}
    )
    duties: dict[str, Any] = {"checkpoint": checkpoint.height, "attestation": b"", "seal": b""}
    if pending is not None:
        attestation = sign_attestation(
            holder.key, genesis_hash, height=pending.height, block_hash=compute_block_hash(pending)
        )
        duties["attestation"] = encode(attestation)
        if pending.proposer == holder.public_key:
            duties["seal"] = sign_header(holder.key, genesis_hash, pending).signature
    return duties


@app.train()
def train(msg: Message, context: Context) -> Message:
    config = msg.content["config"]
    holder = _holder(context, config)
    ledger = bool(config.get("ledger", True))
    duties = _ledger_duties(context, holder, config) if ledger else {}
    base = {name: array.numpy() for name, array in msg.content["arrays"].items()}
    attack = configured_attack(context, config, holder.index)
    if attack is not None:
        return _attacked_reply(msg, holder, base, duties, attack)
    trained, result = _train(config, holder, base, holder.dataset)
    metrics = MetricRecord({"num-examples": result.num_examples, "train-loss": result.loss})
    if not ledger:
        arrays = ArrayRecord({name: Array(a) for name, a in trained.items()})
        return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)
    update = compute_update(base, trained)
    return _signed_reply(msg, holder, duties, update, update, metrics)


def _train(
    config: ConfigRecord, holder: DataHolder, base: Arrays, data: ArrayDataset
) -> tuple[Arrays, TrainResult]:
    """Local training from the global model ``base``: (trained weights, result)."""
    model = build_model(str(config["model"]), tuple(data.x.shape[1:]), len(data.classes), seed=0)
    load_numpy_state(model, base)
    cfg = TrainConfig(
        epochs=int(config["local-epochs"]),
        batch_size=int(config["batch-size"]),
        lr=float(config["lr"]),
        seed=derive_seed(int(config["seed"]), int(config["server-round"]), holder.index),
    )
    result = train_local(model, data, cfg)
    return state_to_numpy(model), result


def _signed_reply(
    msg: Message,
    holder: DataHolder,
    duties: dict[str, Any],
    sent: Arrays,
    committed: Arrays,
    metrics: MetricRecord,
) -> Message:
    """The ledger-on reply: ``sent`` with a signed commitment to ``committed`` (the same update
    for every client but a commit-mismatch attacker) and the claimed example count."""
    config = msg.content["config"]
    commitment = sign_commitment(
        holder.key,
        bytes(config["genesis-hash"]),
        run_id=str(config["run-id"]),
        round=int(config["server-round"]),
        base_model_hash=bytes(config["base-model-hash"]),
        update_hash=compute_update_hash(committed),
        num_examples=int(metrics["num-examples"]),
    )
    record = ConfigRecord({**duties, "commitment": encode(commitment)})
    arrays = ArrayRecord({name: Array(a) for name, a in sent.items()})
    content = RecordDict({"arrays": arrays, "metrics": metrics, "fedchain": record})
    return Message(content, reply_to=msg)


# -- attackers (robustness experiments; see fedchain.learning.attacks) -----------------------------


def configured_attack(context: Context, config: ConfigRecord, index: int) -> Attack | None:
    """This client's attack, if it is an attacker: a deployed SuperNode's node config says so
    (``attack``, optional ``attack-scale``); in simulation, the server's train settings name the
    attackers' partition ids (``attackers``) with ``attack`` and ``attack-scale``."""
    node_config = context.node_config
    if "attack" in node_config:
        name = str(node_config["attack"])
        if name == NO_ATTACK:
            return None
        return Attack(name, float(str(node_config.get("attack-scale", 0.0))))
    if "attack" not in config or "partition-id" not in node_config:
        return None
    if int(node_config["partition-id"]) not in [int(i) for i in config["attackers"]]:
        return None
    return Attack(str(config["attack"]), float(config.get("attack-scale", 0.0)))


def _attacked_reply(
    msg: Message, holder: DataHolder, base: Arrays, duties: dict[str, Any], attack: Attack
) -> Message:
    """What the attacker sends in place of :func:`train`'s honest reply."""
    config = msg.content["config"]
    data = holder.dataset
    if attack.trains:
        trained, result = _train(
            config, holder, base, flip_labels(data) if attack.flips_labels else data
        )
        honest, examples, loss = compute_update(base, trained), result.num_examples, result.loss
    else:
        honest, examples, loss = {k: np.zeros_like(a) for k, a in base.items()}, len(data), 0.0
    sent = compute_attacked_update(
        attack,
        honest,
        seed=int(config["seed"]),
        round=int(config["server-round"]),
        client=holder.index,
    )
    claimed = compute_claimed_examples(attack, examples)
    metrics = MetricRecord({"num-examples": claimed, "train-loss": loss})
    if not bool(config.get("ledger", True)):  # a FedAvg client sends weights
        weights = {k: (base[k] + d).astype(base[k].dtype, copy=False) for k, d in sent.items()}
        arrays = ArrayRecord({name: Array(a) for name, a in weights.items()})
        return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)
    committed = honest if attack.commits_honest_update else sent
    return _signed_reply(msg, holder, duties, sent, committed, metrics)


@app.query()
def seal_and_attest(msg: Message, context: Context) -> Message:
    """Outside training (a fallback proposer, or the closing exchange): ledger duties only."""
    config = msg.content["config"]
    holder = _holder(context, config)
    duties = _ledger_duties(context, holder, config)
    return Message(RecordDict({"fedchain": ConfigRecord(duties)}), reply_to=msg)
