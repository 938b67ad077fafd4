"""The Flower ClientApp run by each data holder.

Each train message carries the global model and a view of the ledger. The client checks that the
ledger extends the last final block it saw (kept in ``context.state``), trains on its decrypted
data, hashes its update canonically, signs the commitment, attests to the pending block, and
seals it if the stake draw chose this client as its proposer. With the ledger off it behaves as a
plain Flower FedAvg client (sends trained weights, signs nothing) for comparison runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedchain.hashing import compute_update_hash
from fedchain.holder import DataHolder, load_configured_holder, load_simulated_holder
from fedchain.ledger.builder import sign_attestation, sign_commitment, sign_header
from fedchain.ledger.codec import decode, encode
from fedchain.ledger.objects import BlockHeader, SignedHeader, compute_block_hash
from fedchain.lightclient import Checkpoint, check_head
from fedchain.models import build_model, load_numpy_state, state_to_numpy
from fedchain.training import (
    TrainConfig,
    compute_update,
    configure_threads,
    derive_seed,
    train_local,
)

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
    data = holder.dataset
    model = build_model(str(config["model"]), tuple(data.x.shape[1:]), len(data.classes), seed=0)
    load_numpy_state(model, base)
    round_ = int(config["server-round"])
    cfg = TrainConfig(
        epochs=int(config["local-epochs"]),
        batch_size=int(config["batch-size"]),
        lr=float(config["lr"]),
        seed=derive_seed(int(config["seed"]), round_, holder.index),
    )
    result = train_local(model, data, cfg)
    trained = state_to_numpy(model)
    metrics = MetricRecord({"num-examples": result.num_examples, "train-loss": result.loss})
    if not ledger:
        arrays = ArrayRecord({name: Array(a) for name, a in trained.items()})
        return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)
    update = compute_update(base, trained)
    commitment = sign_commitment(
        holder.key,
        bytes(config["genesis-hash"]),
        run_id=str(config["run-id"]),
        round=round_,
        base_model_hash=bytes(config["base-model-hash"]),
        update_hash=compute_update_hash(update),
        num_examples=result.num_examples,
    )
    record = ConfigRecord({**duties, "commitment": encode(commitment)})
    arrays = ArrayRecord({name: Array(a) for name, a in update.items()})
    content = RecordDict({"arrays": arrays, "metrics": metrics, "fedchain": record})
    return Message(content, reply_to=msg)


@app.query()
def seal_and_attest(msg: Message, context: Context) -> Message:
    """Outside training (a fallback proposer, or the closing exchange): ledger duties only."""
    config = msg.content["config"]
    holder = _holder(context, config)
    duties = _ledger_duties(context, holder, config)
    return Message(RecordDict({"fedchain": ConfigRecord(duties)}), reply_to=msg)
