"""The Flower ClientApp run by each data holder: decode the message, call fedchain, encode a reply.

Each train message carries the global model and a view of the ledger. The client checks that the
ledger extends the last final block it saw, replays the new blocks on its own replica of the
ledger and re-derives the pending block from its transactions (:mod:`fedchain.rounds.replica`;
a view that fails is refused: logged, and answered with an error that the coordinator's round
log shows, with no attestation and no seal), checks that the global model it was sent is the one
the ledger names (:func:`fedchain.rounds.participant.check_base_model`; refused the same way if
not), trains on its decrypted data, and replies with its
update and its ledger duties (:mod:`fedchain.rounds.participant`: the signed commitment, the
attestation to the pending block, and its seal if the stake draw chose this client as its
proposer).

The checkpoint is the last block the client's own replica makes final (the ledger's finality rule
applied to what it replayed); a view claiming a higher final height is refused, a lower claim is
ignored, so a coordinator can neither hold a holder's checkpoint back nor push it past finality.

The replica, the checkpoint and what the client signed are kept by
:mod:`clients.replica_store` (``context.state``, and a deployed holder's own disk), with the
memos that let the clients of one process (a simulation's) check each block once.

With the ledger off the client behaves as a plain Flower FedAvg client (sends trained weights,
signs nothing, keeps no replica) for comparison runs. The keys of every record are
:mod:`fedchain.rounds.messages`'.

With differential privacy in the genesis rules, a client with no participation left in its
privacy budget refuses to train (its error reply is the coordinator's rejection); otherwise, at
client level it clips and noises its update before it hashes and signs it (:func:`privatise`),
at example level it trains with DP-SGD (:mod:`fedchain.privacy.dpsgd`), and its commitment
claims the rules' mechanism.

For robustness experiments a client can be told to attack (:func:`configured_attack`): it then
sends what :mod:`fedchain.learning.attacks` makes of its honest reply, and the honest path is
untouched.
"""

from __future__ import annotations

from collections.abc import Mapping
from logging import WARNING
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import log
from torch import nn

from clients import replica_store as store
from fedchain.crypto.identity import public_key_bytes
from fedchain.data.holder import DataHolder, load_configured_holder, load_simulated_holder
from fedchain.data.sources import ArrayDataset
from fedchain.errors import ConfigError, LedgerError, TrainingRefused
from fedchain.learning.architectures import load_numpy_state, state_to_numpy
from fedchain.learning.attacks import (
    Attack,
    compute_attacked_reply,
    compute_sent_weights,
    compute_zero_update,
    flip_labels,
)
from fedchain.learning.record import build_from_file, model_from_record
from fedchain.learning.task import Task, load_task
from fedchain.learning.training import (
    TrainConfig,
    TrainResult,
    compute_update,
    configure_threads,
    derive_seed,
    train_local,
)
from fedchain.ledger.builder import sign_refusal
from fedchain.ledger.codec import encode
from fedchain.ledger.containers import LedgerState
from fedchain.ledger.derived import compute_dp_mechanism
from fedchain.ledger.objects import (
    MAX_REFUSAL_DETAIL_CHARS,
    Rules,
)
from fedchain.privacy.mechanism import privatise_update
from fedchain.privacy.tally import read_released, record_released
from fedchain.rounds import messages as m
from fedchain.rounds.participant import (
    check_agreed_training,
    check_base_model,
    check_outgoing_update,
    check_privacy_budget,
    compute_duties,
    plan_signing,
    sign_update_commitment,
)
from fedchain.rounds.replica import (
    GenesisPin,
)
from fedchain.runs.layout import holder_ledger_dir
from fedchain.runs.registration import parse_federation_id

Arrays = dict[str, np.ndarray]
app = ClientApp()
_threads_set = False
FEDERATION_ID_KEY = "federation-id"
"""The node config key of the federation id a deployed holder registered under (hex)."""


def _holder(context: Context, config: ConfigRecord) -> DataHolder:
    global _threads_set
    if not _threads_set:
        configure_threads(m.decode_threads(config))
        _threads_set = True
    run_dir = m.decode_run_dir(config)
    if run_dir is not None and _is_simulated(context, config):
        return load_simulated_holder(run_dir, int(context.node_config["partition-id"]))
    return load_configured_holder(context.node_config)


def _is_simulated(context: Context, config: ConfigRecord) -> bool:
    """A simulated client (a partition of a run directory), not a deployed data holder."""
    return "partition-id" in context.node_config and m.decode_run_dir(config) is not None


def ledger_duties(
    context: Context,
    key: Ed25519PrivateKey,
    config: ConfigRecord,
    replica_dir: Path | None = None,
    model: Mapping[str, np.ndarray] | None = None,
    pin: GenesisPin | None = None,
) -> m.Duties:
    """:func:`checked_ledger_duties`' duties."""
    return checked_ledger_duties(context, key, config, replica_dir, model, pin)[0]


def checked_ledger_duties(
    context: Context,
    key: Ed25519PrivateKey,
    config: ConfigRecord,
    replica_dir: Path | None = None,
    model: Mapping[str, np.ndarray] | None = None,
    pin: GenesisPin | None = None,
) -> tuple[m.Duties, LedgerState]:
    """Check the ledger view against the client's replica, save the replica and checkpoint,
    then attest to and maybe seal the pending block. A view that fails any check is refused
    (logged, and raised: Flower answers with an error reply) and nothing is saved or signed.
    ``model``: a train message's global model, which must be the model the ledger names once
    the pending block is sealed, as must the message's ``base-model-hash``
    (:func:`~fedchain.rounds.participant.check_base_model`); otherwise the message is refused
    the same way, so no update is trained or sent. ``pin``: a deployed holder's federation
    (:func:`~fedchain.rounds.replica.check_genesis_pin`), checked on every view.
    A pending block at a height the client already attested or sealed for another block gets
    no second signature (logged; not an error): what it signs is recorded first. Returns the
    duties and the ledger state the checked view names (its rules and this client's privacy
    budget)."""
    try:
        view, checked = store.check_view(context, config, replica_dir, pin)
        if model is not None:
            check_base_model(checked, m.decode_base_model_hash(config), model)
    except LedgerError as e:
        log(WARNING, "refusing to attest, seal or train: %s", e)
        raise
    finally:
        store.forget_oldest()
    store.save_replica(context, checked, replica_dir)
    public_key = public_key_bytes(key)
    plan = plan_signing(store.load_signed(context, replica_dir), public_key, view)
    for refusal in plan.refusals:
        log(WARNING, "not signing block %s again: %s", _pending_height(view), refusal)
    store.save_signed(context, plan.record, replica_dir)
    return compute_duties(key, public_key, view, checked.checkpoint, plan), checked.state


def _pending_height(view: m.LedgerView) -> int | None:
    return view.pending.height if view.pending is not None else None


def _ledger_duties(
    context: Context, holder: DataHolder, config: ConfigRecord, model: Arrays | None = None
) -> tuple[m.Duties, LedgerState]:
    if _is_simulated(context, config):
        return checked_ledger_duties(context, holder.key, config, holder.replica_dir, model)
    replica_dir, pin = deployed_ledger_settings(context.node_config, holder)
    return checked_ledger_duties(context, holder.key, config, replica_dir, model, pin)


def deployed_ledger_settings(
    node_config: Mapping[str, Any], holder: DataHolder
) -> tuple[Path, GenesisPin]:
    """A deployed holder's replica folder (``replica-dir``; absent or empty: the default beside
    its dataset, :func:`fedchain.runs.layout.holder_ledger_dir`, so that a restarted SuperNode
    never starts over trusting whatever genesis it is shown) and its genesis pin: the
    ``federation-id`` it registered under (required) and its own key."""
    text = node_config.get(FEDERATION_ID_KEY)
    if not text:
        raise ConfigError(
            f"node config lacks {FEDERATION_ID_KEY!r}: the id of the federation this holder "
            "registered for (`fedchain join --federation-id ID` sets it)"
        )
    federation_id = parse_federation_id(str(text), f"node config {FEDERATION_ID_KEY}")
    default = holder_ledger_dir(Path(str(node_config["data-path"])).resolve())
    return holder.replica_dir or default, GenesisPin(federation_id, holder.public_key)


MAX_ROUNDS_KEY = "max-rounds"  # node config keys `fedchain join` sets (fedchain/cli/join.py)
MAX_LOCAL_EPOCHS_KEY = "max-local-epochs"


def check_agreed_use(node_config: Mapping[str, Any], config: Mapping[str, Any]) -> None:
    """Refuse a train message over the limits the holder set when it joined (node config
    ``max-rounds`` and ``max-local-epochs``, from ``fedchain join``; the coordinator cannot
    change them), before its data is loaded. No limit set: none checked."""
    asked = {
        MAX_ROUNDS_KEY: ("round", int(config[m.SERVER_ROUND])),
        MAX_LOCAL_EPOCHS_KEY: ("local epochs", int(config[m.LOCAL_EPOCHS])),
    }
    for key, (what, value) in asked.items():
        limit = node_config.get(key)
        if limit is not None and value > int(limit):
            raise PermissionError(
                f"refused by the data holder: {what} {value} is over the {int(limit)} it agreed to"
            )


@app.train()
def train(msg: Message, context: Context) -> Message:
    config = msg.content[m.CONFIG]
    check_agreed_use(context.node_config, config)
    holder = _holder(context, config)
    ledger = m.is_ledger_on(config)
    base = {name: array.numpy() for name, array in msg.content[m.ARRAYS].items()}
    duties, rules = None, None
    if ledger:
        duties, state = _ledger_duties(context, holder, config, base)
        tally = _tally_dir(context, holder, config)
        released = _released(context, state, tally)
        try:
            settings = m.decode_train_settings(config)
            check_agreed_training(
                state.genesis.rules, int(config[m.SERVER_ROUND]), settings.local_epochs
            )
            check_privacy_budget(state, holder.public_key, released)
        except TrainingRefused as exc:  # nothing leaves; the ledger duties are still done
            log(WARNING, "fedchain client %d: %s", holder.index, exc)
            refusal = sign_refusal(
                holder.key,
                state.genesis_hash,
                round=int(config[m.SERVER_ROUND]),
                code=exc.code,
                detail=str(exc)[:MAX_REFUSAL_DETAIL_CHARS],
            )
            return _refusal_reply(msg, duties, str(exc), encode(refusal) if exc.code else b"")
        rules = state.genesis.rules
        if rules.dp_mode != "off":  # counted before the update leaves (a retry counts again)
            context.state[m.RELEASED] = ConfigRecord(
                {"genesis-hash": state.genesis_hash, "count": released + 1}
            )
            if tally is not None:
                record_released(tally, state.genesis_hash, released + 1)
    attack = configured_attack(context, config, holder.index)
    if attack is not None:
        return _attacked_reply(msg, holder, base, duties, attack, rules)
    trained, result = _train(config, holder, base, holder.dataset, rules)
    if duties is None or rules is None:
        return _reply(msg, trained, result.num_examples, result.loss)
    update = privatise(compute_update(base, trained), rules)
    return _signed_reply(
        msg, holder, duties, update, update, result.num_examples, result.loss, rules
    )


def _refusal_reply(msg: Message, duties: m.Duties, reason: str, signed: bytes) -> Message:
    """A train reply that trains nothing: the reason, the holder's signed refusal (an encoded
    :class:`~fedchain.ledger.objects.Refusal`, for the ledger) and the ledger duties
    (attestation, seal, checkpoint), with no update and no commitment."""
    records = {
        m.REFUSAL: ConfigRecord({m.REFUSAL_REASON: reason, m.REFUSAL_SIGNED: signed}),
        m.DUTIES: ConfigRecord(m.encode_duties(duties)),
    }
    return Message(RecordDict(records), reply_to=msg)


def _tally_dir(context: Context, holder: DataHolder, config: ConfigRecord) -> Path | None:
    """Where a deployed holder keeps its privacy tally (its replica folder); None for a
    simulated client, whose count lives in ``context.state`` for the run."""
    if _is_simulated(context, config):
        return holder.replica_dir
    return deployed_ledger_settings(context.node_config, holder)[0]


def _released(context: Context, state: LedgerState, tally: Path | None) -> int:
    """How many privatised updates this client has sent in ``state``'s federation: its own
    count, kept in ``context.state`` and, for a holder with a replica folder, on disk
    (:mod:`fedchain.privacy.tally`), so a restarted SuperNode does not start again from the
    ledger's count."""
    stored = 0 if tally is None else read_released(tally, state.genesis_hash)
    if m.RELEASED not in context.state:
        return stored
    record = context.state[m.RELEASED]
    if bytes(record["genesis-hash"]) != state.genesis_hash:
        return stored
    return max(stored, int(record["count"]))


def privatise(update: Arrays, rules: Rules) -> Arrays:
    """``update`` as the federation's rules say it leaves the holder: with client-level DP,
    clipped and noised (:mod:`fedchain.privacy.mechanism`), before it is hashed and signed."""
    if rules.dp_mode != "client":
        return update
    clip, noise = rules.dp_clip_micro / 10**6, rules.dp_noise_micro / 10**6
    return privatise_update(update, clip=clip, noise_multiplier=noise)


def _train(
    config: ConfigRecord,
    holder: DataHolder,
    base: Arrays,
    data: ArrayDataset,
    rules: Rules | None = None,
) -> tuple[Arrays, TrainResult]:
    """Local training from the global model ``base``: (trained weights, result); DP-SGD
    (:func:`fedchain.privacy.dpsgd.train_dpsgd`) where the ``rules`` say example level."""
    settings = m.decode_train_settings(config)
    model, task = _model(settings, holder, data, rules)
    load_numpy_state(model, base)
    if rules is not None and rules.dp_mode == "example":
        # Opacus (the dp extra, seconds to import): only in a federation with DP-SGD
        from fedchain.privacy.dpsgd import train_dpsgd

        result = train_dpsgd(
            model,
            data,
            lr=settings.lr,
            momentum=TrainConfig.momentum,  # as plain local training (post-processing)
            noise_multiplier=rules.dp_noise_micro / 10**6,
            clip=rules.dp_clip_micro / 10**6,
            sample_rate=rules.dp_sample_rate_micro / 10**6,
            steps=rules.dp_steps_per_round,
        )
        return state_to_numpy(model), result
    cfg = TrainConfig(
        epochs=settings.local_epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        seed=derive_seed(settings.seed, int(config[m.SERVER_ROUND]), holder.index),
    )
    result = (task.train or train_local)(model, data, cfg)
    return state_to_numpy(model), result


def _model(
    settings: m.TrainSettings, holder: DataHolder, data: ArrayDataset, rules: Rules | None
) -> tuple[nn.Module, Task]:
    """The model to train and its task: with the ledger on, the model the genesis in the
    client's own replica records, from the holder's base file checked against the genesis's
    base hash (a mismatch is refused: nothing is trained); with it off, the one the settings
    name."""
    shape, classes = tuple(data.x.shape[1:]), len(data.classes)
    if rules is not None and rules.model.architecture:
        record = rules.model
        model = model_from_record(record, shape, classes, holder.base_weights or None)
        return model, load_task(record.architecture)
    model, _ = build_from_file(
        settings.model,
        shape,
        classes,
        seed=0,
        finetune=settings.finetune,
        lora_rank=settings.lora_rank,
        base_weights=holder.base_weights or None,
    )
    return model, load_task(settings.model)


def _reply(
    msg: Message, sent: Arrays, num_examples: int, loss: float, duties: dict[str, Any] | None = None
) -> Message:
    """``sent`` (weights or an update), the metrics and, with the ledger on, the duties."""
    records: dict[str, Any] = {
        m.ARRAYS: ArrayRecord({name: Array(a) for name, a in sent.items()}),
        m.METRICS: MetricRecord(m.encode_metrics(num_examples, loss)),
    }
    if duties is not None:
        records[m.DUTIES] = ConfigRecord(duties)
    return Message(RecordDict(records), reply_to=msg)


def _signed_reply(
    msg: Message,
    holder: DataHolder,
    duties: m.Duties,
    sent: Arrays,
    committed: Arrays,
    num_examples: int,
    loss: float,
    rules: Rules,
) -> Message:
    """The ledger-on reply: ``sent`` with a signed commitment to ``committed`` (the same update
    for every client but a commit-mismatch attacker), the claimed example count and the rules'
    privacy mechanism. Nothing is sent that the genesis does not list (its model record's
    tensors, of its update size): :func:`check_outgoing_update` is the last check."""
    check_outgoing_update(sent, rules.model)
    config = msg.content[m.CONFIG]
    commitment = sign_update_commitment(
        holder.key,
        m.decode_view_federation(config),
        round_=int(config[m.SERVER_ROUND]),
        base_model_hash=bytes(config[m.BASE_MODEL_HASH]),
        update=committed,
        num_examples=num_examples,
        dp_mechanism=compute_dp_mechanism(rules),
    )
    signed = m.Duties(duties.checkpoint, duties.attestation, duties.seal, commitment)
    return _reply(msg, sent, num_examples, loss, m.encode_duties(signed))


# -- attackers (robustness experiments; see fedchain.learning.attacks) -----------------------------


def configured_attack(context: Context, config: ConfigRecord, index: int) -> Attack | None:
    """This client's attack, if it is an attacker (:func:`fedchain.rounds.messages.decode_attack`:
    a deployed SuperNode's node config, or in simulation the server's train settings)."""
    node_config = context.node_config
    partition = node_config.get("partition-id")
    return m.decode_attack(node_config, config, None if partition is None else int(partition))


def _attacked_reply(
    msg: Message,
    holder: DataHolder,
    base: Arrays,
    duties: m.Duties | None,
    attack: Attack,
    rules: Rules | None,
) -> Message:
    """What the attacker sends in place of :func:`train`'s honest reply."""
    config = msg.content[m.CONFIG]
    data = holder.dataset
    if attack.trains:
        trained, result = _train(
            config, holder, base, flip_labels(data) if attack.flips_labels else data, rules
        )
        honest, examples, loss = compute_update(base, trained), result.num_examples, result.loss
    else:
        honest, examples, loss = compute_zero_update(base), len(data), 0.0
    attacked = compute_attacked_reply(
        attack,
        honest,
        examples,
        seed=int(config[m.SEED]),
        round=int(config[m.SERVER_ROUND]),
        client=holder.index,
    )
    if duties is None or rules is None:  # a FedAvg client sends weights
        weights = compute_sent_weights(base, attacked.sent)
        return _reply(msg, weights, attacked.num_examples, loss)
    return _signed_reply(
        msg, holder, duties, attacked.sent, attacked.committed, attacked.num_examples, loss, rules
    )


@app.query()
def seal_and_attest(msg: Message, context: Context) -> Message:
    """Outside training (a fallback proposer, or the closing exchange): ledger duties only."""
    config = msg.content[m.CONFIG]
    holder = _holder(context, config)
    duties = m.encode_duties(_ledger_duties(context, holder, config)[0])
    return Message(RecordDict({m.DUTIES: ConfigRecord(duties)}), reply_to=msg)
