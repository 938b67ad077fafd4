"""The client-coordinator wire contract: every message key, spelled once, and its encode/decode.

Plain dicts of plain values (no Flower import): the server adapter wraps them in Flower's
``ConfigRecord``/``RecordDict`` and the ClientApp unwraps them, and nothing else. A train
message's ``config`` record carries the train settings (:func:`encode_train_settings`) and the
receiving node's ledger view (:func:`encode_ledger_view`: whole blocks, bodies included, so
that the client can replay them, and the pending block's transactions); every reply carries a
``fedchain`` record of the client's ledger duties (:func:`encode_duties`), which the coordinator
reads with the total parser :func:`decode_duties` (a client chooses these bytes: every field is
checked for type, range and size before anything is decoded from it). The client reads its view
the same way (:func:`decode_ledger_view`): the coordinator chooses those bytes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedchain.config import RunConfig
from fedchain.errors import DecodeError
from fedchain.learning.attacks import NO_ATTACK, Attack, attacker_indices
from fedchain.ledger.codec import decode, encode
from fedchain.ledger.lightclient import Checkpoint
from fedchain.ledger.objects import Block, BlockHeader, SignedHeader, Transaction
from fedchain.rounds.admission import quote_client_text

# -- records of a message ------------------------------------------------------------------------
CONFIG = "config"
ARRAYS = "arrays"
METRICS = "metrics"
DUTIES = "fedchain"
REFUSAL = "refusal"  # a train reply that trained nothing: {"reason": text}, beside its duties
REFUSAL_REASON = "reason"
REFUSAL_SIGNED = "signed"  # and, where the holder signed it, its encoded ledger Refusal
SIGNED_REFUSAL_MARK = " | signed refusal: "
"""How a holder's node appends its signed refusal (hex) to a Flower error reply's reason (an
``Error`` carries text only): :func:`append_signed_refusal`, :func:`split_signed_refusal`."""
"""The reply's record of ledger duties (and the client's own state record's name)."""

# -- ledger view, coordinator -> client (in ``config``) -------------------------------------------
GENESIS_HASH = "genesis-hash"
RUN_ID = "run-id"
BLOCKS = "blocks"
FINAL_HEIGHT = "final-height"
PENDING = "pending"
PENDING_TRANSACTIONS = "pending-transactions"
BASE_MODEL_HASH = "base-model-hash"
SERVER_ROUND = "server-round"  # Flower's own: the round of a train message

# -- duties, client -> coordinator (the ``fedchain`` record) ------------------------------------
COMMITMENT = "commitment"
ATTESTATION = "attestation"
SEAL = "seal"
CHECKPOINT = "checkpoint"
DUTY_FIELDS = frozenset({COMMITMENT, ATTESTATION, SEAL, CHECKPOINT})

# -- metrics of a train reply -----------------------------------------------------------------
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"

# -- train settings, coordinator -> client (in ``config``) ----------------------------------------
RUN_DIR = "run-dir"
MODEL = "model"
FINETUNE = "finetune"
LORA_RANK = "lora-rank"
LOCAL_EPOCHS = "local-epochs"
BATCH_SIZE = "batch-size"
LR = "lr"
SEED = "seed"
LEDGER = "ledger"
THREADS = "threads"
ATTACK = "attack"
ATTACK_SCALE = "attack-scale"
ATTACKERS = "attackers"

# -- the client's own state between messages --------------------------------------------------
FINAL_HASH = "final-hash"
REPLICA = "fedchain-replica"
"""The client's state record holding its replica of the ledger (:data:`BLOCKS`: every block it
has replayed, genesis first, each encoded)."""

MAX_LEDGER_FIELD_BYTES = 4096
"""Most bytes a reply's commitment, attestation or seal may hold (each is at most a few hundred
bytes); a longer one is refused before anything is decoded from it."""
COUNT_LIMIT = 2**63
"""Counts (examples, heights) are integers in ``[0, COUNT_LIMIT)``: the ledger's i64."""
MAX_VIEW_BLOCK_BYTES = 16 * 2**20
"""Most bytes one block of a ledger view may hold (a block of 1,000 participants' commitments,
scores, rewards and attestations is about 0.5 MiB; blocks carry no tensors)."""
MAX_VIEW_BLOCKS = 100_000
"""Most blocks one ledger view may carry (a first view carries the chain from genesis)."""
MAX_VIEW_TRANSACTIONS = 100_000
"""Most transactions a view's pending block may carry."""
MAX_VIEW_BYTES = 256 * 2**20
"""Most bytes a view's ``blocks``, ``pending`` and ``pending-transactions`` may hold in all (a
first view carries the chain from genesis: the default run's whole ledger, 22 blocks, is 93 KiB;
at 0.5 MiB a block, 256 MiB is about 500 rounds of 1,000 participants). A longer view is refused
before anything is decoded from it."""


@dataclass(frozen=True)
class LedgerView:
    """What a client is shown of the ledger: the blocks (bodies included) from its checkpoint to
    the head, the final height, and the block waiting for its seal (if any): its header and its
    transactions."""

    genesis_hash: bytes
    run_id: str
    blocks: tuple[Block, ...]
    final_height: int
    pending: BlockHeader | None
    pending_transactions: tuple[Transaction, ...] = ()

    @property
    def headers(self) -> tuple[SignedHeader, ...]:
        """The blocks' signed headers (what a light client checks)."""
        return tuple(block.signed_header for block in self.blocks)


@dataclass(frozen=True)
class Duties:
    """A client's ledger duties in one reply: its new checkpoint, its attestation to the
    pending block, the pending block's seal (from its proposer only), and the commitment to
    its update (train replies only). Empty bytes: none."""

    checkpoint: int = 0
    attestation: bytes = b""
    seal: bytes = b""
    commitment: bytes = b""


@dataclass(frozen=True)
class SignedHeights:
    """What a validator last signed in federation ``genesis_hash``, so that it never signs two
    different blocks at one height: the (height, block hash) it last attested and the (height,
    header hash) it last sealed; None: nothing yet."""

    genesis_hash: bytes
    attested: tuple[int, bytes] | None = None
    sealed: tuple[int, bytes] | None = None


@dataclass(frozen=True)
class TrainSettings:
    """What every client is told each round besides the model and its ledger view."""

    model: str
    local_epochs: int
    batch_size: int
    lr: float
    seed: int
    finetune: str = "full"
    lora_rank: int = 0


def encode_ledger_view(
    genesis_hash: bytes,
    run_id: str,
    blocks: Sequence[Block | bytes],
    final_height: int,
    pending: BlockHeader | None,
    pending_transactions: Sequence[Transaction] = (),
) -> dict[str, object]:
    """``blocks``: the blocks themselves, or their encodings (``encode(block)``, as stored)."""
    return {
        GENESIS_HASH: genesis_hash,
        RUN_ID: run_id,
        BLOCKS: [b if isinstance(b, bytes) else encode(b) for b in blocks],
        FINAL_HEIGHT: final_height,
        PENDING: b"" if pending is None else encode(pending),
        PENDING_TRANSACTIONS: [encode(tx) for tx in pending_transactions],
    }


def decode_ledger_view(
    config: Mapping[str, Any],
    held: Mapping[bytes, Block] | None = None,
    decoded: MutableMapping[bytes, Block | Transaction] | None = None,
) -> LedgerView:
    """The ledger view in a message's ``config``; raises :class:`DecodeError` (a LedgerError)
    if it does not decode. Sizes and types are checked before anything is decoded, the total
    included (:data:`MAX_VIEW_BYTES`).

    ``held``: the client's own blocks by the exact bytes a coordinator may re-send them as
    (:func:`fedchain.rounds.replica.compute_held_forms`). An item of ``blocks`` with those
    bytes is that block, taken without decoding it; any other item is decoded, and one at a
    height the client holds is then refused by the replica (its bytes are not the block held).
    ``decoded``: a mapping the caller owns (read and added to) of blocks and pending
    transactions by the exact bytes they were decoded from, so that the clients of one process
    decode a view's bytes once, and share the very objects (the replica then compares them by
    identity first). Decoding is a pure function of the bytes; a hit is what decoding would give.
    """
    genesis_hash = _field(config, GENESIS_HASH, bytes)
    run_id = _field(config, RUN_ID, str)
    final_height = _field(config, FINAL_HEIGHT, int)
    if isinstance(final_height, bool) or not 0 <= final_height < COUNT_LIMIT:
        raise DecodeError(f"ledger view: {FINAL_HEIGHT} is not a height")
    pending = _field(config, PENDING, bytes)
    _check_size(PENDING, pending, MAX_LEDGER_FIELD_BYTES)
    blocks = _byte_list(config, BLOCKS, MAX_VIEW_BLOCKS, MAX_VIEW_BLOCK_BYTES)
    txs = _byte_list(config, PENDING_TRANSACTIONS, MAX_VIEW_TRANSACTIONS, MAX_VIEW_BLOCK_BYTES)
    if sum(map(len, txs)) > MAX_VIEW_BLOCK_BYTES:
        raise DecodeError(f"ledger view: the pending block is over {MAX_VIEW_BLOCK_BYTES} bytes")
    total = sum(map(len, blocks)) + sum(map(len, txs)) + len(pending)
    if total > MAX_VIEW_BYTES:
        raise DecodeError(f"ledger view: {total} bytes of blocks (at most {MAX_VIEW_BYTES})")
    if txs and not pending:
        raise DecodeError("ledger view: pending transactions without a pending block")
    held = held or {}
    return LedgerView(
        genesis_hash=genesis_hash,
        run_id=run_id,
        blocks=tuple(held[b] if b in held else _decoded(Block, b, decoded) for b in blocks),
        final_height=final_height,
        pending=decode(BlockHeader, pending) if pending else None,
        pending_transactions=tuple(_decoded(Transaction, tx, decoded) for tx in txs),
    )


def _decoded(cls: Any, data: bytes, memo: MutableMapping[bytes, Block | Transaction] | None) -> Any:
    """``decode(cls, data)``, or the object ``memo`` holds for those bytes if it is a ``cls``."""
    obj = None if memo is None else memo.get(data)
    if obj is None or not isinstance(obj, cls):
        obj = decode(cls, data)
        if memo is not None:
            memo[data] = obj
    return obj


def decode_view_federation(config: Mapping[str, Any]) -> LedgerView:
    """The view's genesis hash and run id alone (what a commitment signs), with no blocks and no
    pending block: for a client that has already checked the whole view."""
    return LedgerView(
        genesis_hash=_field(config, GENESIS_HASH, bytes),
        run_id=_field(config, RUN_ID, str),
        blocks=(),
        final_height=0,
        pending=None,
    )


def decode_base_model_hash(config: Mapping[str, Any]) -> bytes:
    """A train message's ``base-model-hash`` (raises :class:`DecodeError` if it is not bytes)."""
    value: bytes = _field(config, BASE_MODEL_HASH, bytes)
    return value


def _field(config: Mapping[str, Any], key: str, kind: type) -> Any:
    value = config.get(key)
    if not isinstance(value, kind):
        raise DecodeError(f"ledger view: {key} is {describe_value(value)}, not {kind.__name__}")
    return value


def _check_size(key: str, value: bytes, limit: int) -> None:
    if len(value) > limit:
        raise DecodeError(f"ledger view: {key} is {len(value)} bytes (at most {limit})")


def _byte_list(config: Mapping[str, Any], key: str, count: int, size: int) -> list[bytes]:
    """A list of at most ``count`` byte strings of at most ``size`` bytes each."""
    values: list[bytes] = _field(config, key, list)
    if len(values) > count:
        raise DecodeError(f"ledger view: {key} has {len(values)} items (at most {count})")
    for value in values:
        if not isinstance(value, bytes):
            raise DecodeError(f"ledger view: an item of {key} is {describe_value(value)}")
        _check_size(key, value, size)
    return values


def encode_duties(duties: Duties) -> dict[str, object]:
    """The ``fedchain`` record: a query reply has no commitment field."""
    record: dict[str, object] = {
        CHECKPOINT: duties.checkpoint,
        ATTESTATION: duties.attestation,
        SEAL: duties.seal,
    }
    if duties.commitment:
        record[COMMITMENT] = duties.commitment
    return record


def decode_duties(record: object, problems: list[str]) -> Duties:
    """The ``fedchain`` record's fields; each unreadable one is a problem and left empty."""
    if not isinstance(record, Mapping):
        problems.append("no fedchain record" if record is None else "fedchain is not a record")
        return Duties()
    extra = [key for key in record if not (type(key) is str and key in DUTY_FIELDS)]
    if extra:
        problems.append(f"unexpected field {quote_client_text(extra[0])}")
    fields: dict[str, bytes] = {}
    for name in (COMMITMENT, ATTESTATION, SEAL):
        value = record.get(name, b"")
        if not isinstance(value, bytes):
            problems.append(f"{name} is {describe_value(value)}, not bytes")
        elif len(value) > MAX_LEDGER_FIELD_BYTES:
            problems.append(f"{name} is {len(value)} bytes (at most {MAX_LEDGER_FIELD_BYTES})")
        else:
            fields[name] = value
    checkpoint = decode_count(record.get(CHECKPOINT, 0), CHECKPOINT, problems)
    return Duties(
        checkpoint=0 if checkpoint is None else checkpoint,
        attestation=fields.get(ATTESTATION, b""),
        seal=fields.get(SEAL, b""),
        commitment=fields.get(COMMITMENT, b""),
    )


def decode_refusal(record: object, problems: list[str]) -> tuple[str, bytes]:
    """The reason in a ``refusal`` record (a client's words: capped when shown) and the
    holder's signed :class:`~fedchain.ledger.objects.Refusal`, encoded (``b""``: none; the
    ledger checks it); a malformed record is a problem."""
    keys = set(record) if isinstance(record, Mapping) else set()
    if not isinstance(record, Mapping) or keys not in (
        {REFUSAL_REASON},
        {REFUSAL_REASON, REFUSAL_SIGNED},
    ):
        problems.append("refusal is not a record with one reason (and its signed refusal)")
        return "", b""
    reason, signed = record[REFUSAL_REASON], record.get(REFUSAL_SIGNED, b"")
    if not isinstance(reason, str) or not reason:
        problems.append(f"refusal reason is {describe_value(reason)}, not text")
        return "", b""
    if not isinstance(signed, bytes) or len(signed) > MAX_LEDGER_FIELD_BYTES:
        problems.append(f"signed refusal is {describe_value(signed)}, not its encoding")
        return "", b""
    return reason, signed


def append_signed_refusal(reason: str, signed: bytes) -> str:
    """``reason`` with the encoded :class:`~fedchain.ledger.objects.Refusal` ``signed`` after
    :data:`SIGNED_REFUSAL_MARK` (none: ``reason`` unchanged)."""
    return reason + SIGNED_REFUSAL_MARK + signed.hex() if signed else reason


def split_signed_refusal(text: str) -> tuple[str, bytes]:
    """An error reason and the signed refusal at its end (``b""``: none, or not hex of at most
    :data:`MAX_LEDGER_FIELD_BYTES`; the ledger checks what it decodes to)."""
    head, mark, tail = text.rpartition(SIGNED_REFUSAL_MARK)
    if not mark or len(tail) > 2 * MAX_LEDGER_FIELD_BYTES:
        return text, b""
    try:
        return head, bytes.fromhex(tail)
    except ValueError:
        return text, b""


def encode_metrics(num_examples: int, loss: float) -> dict[str, int | float]:
    return {NUM_EXAMPLES: num_examples, TRAIN_LOSS: loss}


def decode_num_examples(metrics: object, problems: list[str]) -> int:
    """A train reply's example count (0 and a problem if missing or not a count)."""
    if not isinstance(metrics, Mapping) or NUM_EXAMPLES not in metrics:
        problems.append("no num-examples metric")
        return 0
    count = decode_count(metrics[NUM_EXAMPLES], NUM_EXAMPLES, problems)
    return 0 if count is None else count


def decode_count(value: object, what: str, problems: list[str]) -> int | None:
    """A whole number in ``[0, COUNT_LIMIT)`` (a float only if finite and integral)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (isinstance(value, float) and not (math.isfinite(value) and value.is_integer()))
    ):
        count = -1
    else:
        count = int(value)
    if not 0 <= count < COUNT_LIMIT:
        problems.append(f"{what} is {describe_value(value)}, not a whole number in [0, 2**63)")
        return None
    return count


def describe_value(value: object) -> str:
    """A short, safe description of a value a client sent (never its full text)."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return (
            str(int(value)) if abs(value) < 10**18 else f"a {int(value).bit_length()}-bit integer"
        )
    if isinstance(value, str):
        return f"text {quote_client_text(value, 24)}"
    return f"a {type(value).__name__}"


def encode_train_settings(config: RunConfig, run_dir: Path) -> dict[str, Any]:
    """What every client is told each round besides the model and its ledger view.

    With an attack configured, also the attack and the attackers' partition ids (simulation:
    each simulated client finds out from these whether it attacks; deployed SuperNodes have no
    partition id and attack only when their own node config says so).
    """
    settings: dict[str, Any] = {
        RUN_DIR: str(run_dir.resolve()),
        MODEL: config.model,
        FINETUNE: config.finetune,
        LORA_RANK: config.lora_rank if config.finetune == "lora" else 0,
        LOCAL_EPOCHS: config.local_epochs,
        BATCH_SIZE: config.batch_size,
        LR: config.lr,
        SEED: config.seed,
        LEDGER: config.ledger,
        THREADS: 1,
    }
    settings.update(encode_attack_settings(config))
    return settings


def encode_attack_settings(config: RunConfig) -> dict[str, Any]:
    """``attack``, ``attack-scale`` (the effective one) and ``attackers`` (client indices =
    simulation partition ids), or nothing when no client attacks."""
    attackers = attacker_indices(config)
    if not attackers:
        return {}
    scale = Attack(config.attack, config.attack_scale).scale
    return {ATTACK: config.attack, ATTACK_SCALE: scale, ATTACKERS: attackers}


def decode_train_settings(config: Mapping[str, Any]) -> TrainSettings:
    return TrainSettings(
        model=str(config[MODEL]),
        local_epochs=int(config[LOCAL_EPOCHS]),
        batch_size=int(config[BATCH_SIZE]),
        lr=float(config[LR]),
        seed=int(config[SEED]),
        finetune=str(config.get(FINETUNE, "full")),
        lora_rank=int(config.get(LORA_RANK, 0)),
    )


def is_ledger_on(config: Mapping[str, Any]) -> bool:
    return bool(config.get(LEDGER, True))


def decode_threads(config: Mapping[str, Any]) -> int:
    return int(config.get(THREADS, 1))


def decode_run_dir(config: Mapping[str, Any]) -> Path | None:
    """The simulated run's directory (deployed clients get none: their data is their own)."""
    value = config.get(RUN_DIR)
    return Path(str(value)) if value else None


def decode_attack(
    node_config: Mapping[str, Any], config: Mapping[str, Any], partition_id: int | None
) -> Attack | None:
    """This client's attack, if it is an attacker: a deployed SuperNode's node config says so
    (``attack``, optional ``attack-scale``); in simulation, the server's train settings name the
    attackers' partition ids (``attackers``) with ``attack`` and ``attack-scale``."""
    if ATTACK in node_config:
        name = str(node_config[ATTACK])
        if name == NO_ATTACK:
            return None
        return Attack(name, float(str(node_config.get(ATTACK_SCALE, 0.0))))
    if ATTACK not in config or partition_id is None:
        return None
    if partition_id not in [int(i) for i in config[ATTACKERS]]:
        return None
    return Attack(str(config[ATTACK]), float(config.get(ATTACK_SCALE, 0.0)))


def encode_checkpoint(checkpoint: Checkpoint) -> dict[str, object]:
    """The client's own state between messages: the last final block it saw."""
    return {FINAL_HEIGHT: checkpoint.height, FINAL_HASH: checkpoint.block_hash}


def decode_checkpoint(record: Mapping[str, Any]) -> Checkpoint:
    return Checkpoint(int(record[FINAL_HEIGHT]), bytes(record[FINAL_HASH]))


SIGNED = "fedchain-signed"
"""The client's state record of what it last signed (:class:`SignedHeights`)."""
RELEASED = "fedchain-released"
"""The client's state record of how many privatised updates it has sent in a federation:
``{"genesis-hash": bytes, "count": int}``."""


def encode_signed(signed: SignedHeights) -> dict[str, object]:
    """:class:`SignedHeights` as plain values (a state record, or JSON once bytes are hex)."""
    record: dict[str, object] = {"genesis-hash": signed.genesis_hash}
    for name, entry in (("attested", signed.attested), ("sealed", signed.sealed)):
        if entry is not None:
            record[f"{name}-height"], record[f"{name}-hash"] = entry
    return record


def decode_signed(record: Mapping[str, Any]) -> SignedHeights:
    """The inverse of :func:`encode_signed` (raises DecodeError on a malformed record)."""
    try:
        entries = [
            (int(record[f"{name}-height"]), bytes(record[f"{name}-hash"]))
            if f"{name}-height" in record
            else None
            for name in ("attested", "sealed")
        ]
        return SignedHeights(bytes(record["genesis-hash"]), entries[0], entries[1])
    except (KeyError, TypeError, ValueError) as e:
        raise DecodeError(f"malformed record of signed heights: {e}") from None


def encode_replica(encodings: Sequence[bytes]) -> dict[str, object]:
    """The client's own state record of its replica: its blocks' encodings, genesis first."""
    return {BLOCKS: list(encodings)}


def decode_replica(record: Mapping[str, Any]) -> tuple[bytes, ...]:
    return tuple(bytes(b) for b in record[BLOCKS])
