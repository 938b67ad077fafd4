"""Genesis: the state after block 0, the canonical block 0, and the checks a Genesis must pass.

Every participant's registration must carry its own signature under the registration domain
with the federation id (:func:`~fedchain.ledger.derived.compute_federation_id`, recomputed from
the genesis's run id and rules), so the genesis alone proves who registered what.

Block 0 is fully determined by its :class:`~fedchain.ledger.objects.Genesis` (zero parent and
proposer, no signature), so a stored block 0 is accepted only if it is exactly
:func:`compute_genesis_block` of the genesis it holds.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import MappingProxyType

from fedchain.errors import InvalidBlock, InvalidTransaction, LedgerError
from fedchain.ledger.checks import (
    check_participant_key,
    check_size,
    describe_key,
    is_strictly_sorted,
)
from fedchain.ledger.codec import compute_hash, encode
from fedchain.ledger.containers import (
    BPS_DENOMINATOR,
    INITIAL_REPUTATION_BPS,
    BlockHashes,
    LedgerState,
    ParticipantState,
    compute_state_root_of,
)
from fedchain.ledger.derived import compute_federation_id, compute_tx_root
from fedchain.ledger.objects import (
    ARCHIVE_ALL_ROUNDS,
    DP_MODES,
    DP_OFF,
    EMPTY_HASH,
    FINETUNE_MODES,
    HASH_SIZE,
    SLASHING_KINDS,
    Block,
    BlockHeader,
    Genesis,
    ModelRecord,
    Rules,
    SignedHeader,
)
from fedchain.ledger.signatures import is_signed_by

__all__ = ["compute_genesis_block", "compute_genesis_state", "process_genesis_block"]


def compute_genesis_state(genesis: Genesis) -> LedgerState:
    """The state after block 0. Raises :class:`InvalidBlock` if the genesis is malformed."""
    _check_genesis(genesis)
    participants = {
        entry.public_key: ParticipantState(
            entry.public_key,
            entry.stake,
            INITIAL_REPUTATION_BPS,
            entry.dataset_hash,
            entry.num_examples,
            True,
            app_digest=entry.app_digest,
        )
        for entry in genesis.participants
    }
    block_hash = compute_hash(_genesis_header(genesis, participants.values()))
    return LedgerState(
        genesis_hash=compute_hash(genesis),
        genesis=genesis,
        height=0,
        round=0,
        head_hash=block_hash,
        model_head=genesis.initial_model_hash,
        participants=MappingProxyType(participants),
        round_commits=frozenset(),
        last_attested=MappingProxyType({}),
        evidence_seen=frozenset(),
        round_update_hashes=frozenset(),
        scores_round=0,
        model_round=0,
        block_hashes=BlockHashes([block_hash]),
    )


def compute_genesis_block(genesis: Genesis) -> Block:
    """Block 0: the genesis as its one transaction, zero parent and proposer, no signature."""
    return _genesis_block(genesis, compute_genesis_state(genesis))


def process_genesis_block(block: Block) -> LedgerState:
    """Check a stored block 0 (it must be exactly :func:`compute_genesis_block` of its genesis)
    and return the genesis state."""
    if len(block.transactions) != 1 or not isinstance(block.transactions[0], Genesis):
        raise InvalidBlock("block 0 must hold exactly one transaction, the Genesis")
    genesis = block.transactions[0]
    state = compute_genesis_state(genesis)  # checked once: every registration's signature
    if block != _genesis_block(genesis, state):
        raise InvalidBlock(
            "block 0 is not the canonical genesis block of its Genesis "
            "(height, round, parent, roots, proposer, attempt or signature differ)"
        )
    return state


def _genesis_block(genesis: Genesis, state: LedgerState) -> Block:
    header = _genesis_header(genesis, state.participants.values())
    return Block(SignedHeader(header, b""), (genesis,))


def _genesis_header(genesis: Genesis, participants: Iterable[ParticipantState]) -> BlockHeader:
    return BlockHeader(
        height=0,
        round=0,
        parent_hash=EMPTY_HASH,
        tx_root=compute_tx_root((genesis,)),
        state_root=compute_state_root_of(participants, genesis.initial_model_hash, 0),
        proposer=EMPTY_HASH,
        attempt=0,
    )


def _check_genesis(genesis: Genesis) -> None:
    def fail(reason: str) -> InvalidBlock:
        return InvalidBlock(f"genesis: {reason}")

    if not isinstance(genesis, Genesis):
        raise fail(f"expected a Genesis, got {type(genesis).__name__}")
    try:
        encode(genesis)
    except LedgerError as exc:
        raise fail(str(exc)) from exc
    rules = genesis.rules
    if not genesis.run_id:
        raise fail("run_id must not be empty")
    if rules.min_stake < 1:
        raise fail(f"min_stake must be at least 1 base unit, got {rules.min_stake}")
    if rules.reward_per_round < 0:
        raise fail(f"reward_per_round must not be negative, got {rules.reward_per_round}")
    if rules.payout_min_score < 0:
        raise fail(f"payout_min_score must not be negative, got {rules.payout_min_score}")
    if not 0 <= rules.harm_debt_decay_bps <= rules.score_debt_decay_bps <= BPS_DENOMINATOR:
        raise fail(  # harm is forgiven no faster than noise (and a debt moves by at most a nudge)
            f"need 0 <= harm_debt_decay_bps ({rules.harm_debt_decay_bps}) <= score_debt_decay_bps "
            f"({rules.score_debt_decay_bps}) <= {BPS_DENOMINATOR}"
        )
    if rules.contribution_budget < 0:
        raise fail(f"contribution_budget must not be negative, got {rules.contribution_budget}")
    if rules.contribution_min_evaluations < 0:
        raise fail(
            "contribution_min_evaluations must not be negative, got "
            f"{rules.contribution_min_evaluations}"
        )
    kinds = [kind for kind, _ in rules.slash_bps]
    if not is_strictly_sorted(kinds):
        raise fail("slash_bps must be sorted by kind, each kind once")
    for kind, bps in rules.slash_bps:
        if kind not in SLASHING_KINDS:
            raise fail(f"unknown slashing kind {kind!r} (known: {sorted(SLASHING_KINDS)})")
        if not 0 <= bps <= BPS_DENOMINATOR:
            raise fail(f"slash_bps[{kind!r}] = {bps} is outside 0..{BPS_DENOMINATOR}")
    if not is_strictly_sorted([name for name, _ in rules.aggregation_params]):
        raise fail("aggregation_params must be sorted by name, each name once")
    if not 1 <= rules.weight_cap_bps <= BPS_DENOMINATOR:
        raise fail(f"weight_cap_bps = {rules.weight_cap_bps} is outside 1..{BPS_DENOMINATOR}")
    if not 0 <= rules.reputation_penalty_bps <= BPS_DENOMINATOR:
        raise fail(
            f"reputation_penalty_bps = {rules.reputation_penalty_bps} is outside "
            f"0..{BPS_DENOMINATOR}"
        )
    if rules.max_rounds < 0 or rules.max_local_epochs < 0:
        raise fail("max_rounds and max_local_epochs must be >= 0 (0: no limit)")
    access = rules.model_access
    if any(len(key) != HASH_SIZE for key in access) or list(access) != sorted(set(access)):
        raise fail("model_access must list 32-byte public keys, sorted, each once")
    if rules.update_archive_rounds < ARCHIVE_ALL_ROUNDS:
        raise fail(
            f"update_archive_rounds = {rules.update_archive_rounds}: {ARCHIVE_ALL_ROUNDS} (every "
            "round), 0 (none) or K >= 1 (the last K rounds)"
        )
    reason = _check_privacy_rules(rules) or _check_model_record(rules.model)
    if reason:
        raise fail(reason)
    if len(genesis.initial_model_hash) != HASH_SIZE:
        raise fail(f"initial_model_hash must be {HASH_SIZE} bytes")
    if not genesis.participants:
        raise fail("needs at least one participant: someone must propose block 1")
    if not is_strictly_sorted([entry.public_key for entry in genesis.participants]):
        raise fail("participants must be sorted by public key, each key once")
    federation_id = compute_federation_id(genesis.run_id, rules)
    for entry in genesis.participants:
        try:
            check_participant_key(entry.public_key)
            check_size(entry.dataset_hash, "dataset hash")
            if entry.app_digest:  # empty: a simulation, which runs no app bundle
                check_size(entry.app_digest, "app digest")
        except InvalidTransaction as exc:
            raise fail(str(exc)) from None
        if entry.stake < rules.min_stake:
            raise fail(
                f"participant {describe_key(entry.public_key)} has stake {entry.stake}, below "
                f"min_stake {rules.min_stake}"
            )
        if entry.num_examples < 0:
            raise fail(f"participant {describe_key(entry.public_key)} has a negative example count")
        if not is_signed_by(entry, entry.public_key, federation_id):
            raise fail(
                f"participant {describe_key(entry.public_key)}'s registration is not signed by "
                f"its key for this federation (id {federation_id.hex()[:16]}…): missing, forged, "
                "made for another federation, or its fields changed since it was signed"
            )


_DP_FIELDS = (
    "dp_noise_micro",
    "dp_clip_micro",
    "dp_sample_rate_micro",
    "dp_steps_per_round",
    "dp_delta_pico",
    "dp_max_epsilon_micro",
    "dp_max_participations",
)


def _check_privacy_rules(rules: Rules) -> str:
    """Why the rules' differential privacy settings are malformed, or ``""``: a known mode;
    off, every ``dp_*`` number 0; on, noise, clip, steps, delta and epsilon positive, a
    sampling rate in (0, 1] and delta below 1 (the participation cap may be 0)."""
    values = {name: getattr(rules, name) for name in _DP_FIELDS}
    if rules.dp_mode not in DP_MODES:
        return f"unknown dp_mode {rules.dp_mode!r} (known: {', '.join(sorted(DP_MODES))})"
    if rules.dp_mode == DP_OFF:
        nonzero = [name for name, value in values.items() if value != 0]
        return f"with dp_mode off, {nonzero[0]} must be 0" if nonzero else ""
    for name, value in values.items():
        if value < (0 if name == "dp_max_participations" else 1):
            return f"with dp_mode {rules.dp_mode}, {name} = {value} must be positive"
    if rules.dp_sample_rate_micro > 10**6:
        return f"dp_sample_rate_micro = {rules.dp_sample_rate_micro} is above 1 (10**6)"
    if rules.dp_delta_pico >= 10**12:
        return f"dp_delta_pico = {rules.dp_delta_pico} is not below 1 (10**12)"
    return ""


def _check_model_record(model: ModelRecord) -> str:
    """Why the rules' model record is malformed, or ``""``: a known fine-tuning mode, a LoRA rank
    exactly when the mode is ``lora``, a 32-byte base hash (a base is required unless every
    parameter is trained), the trainable tensors named once each, none empty, and an update
    size exactly when tensors are named."""
    if model.finetune not in FINETUNE_MODES:
        return f"unknown fine-tuning mode {model.finetune!r} (known: {', '.join(FINETUNE_MODES)})"
    if (model.lora_rank > 0) != (model.finetune == "lora") or model.lora_rank < 0:
        return f"lora_rank = {model.lora_rank}: positive with finetune lora, else 0"
    if len(model.base_hash) != HASH_SIZE:
        return f"the model's base_hash must be {HASH_SIZE} bytes"
    if model.finetune != "full" and model.base_hash == EMPTY_HASH:
        return f"finetune {model.finetune} trains part of a base model, but names no base"
    if len(set(model.trainable)) != len(model.trainable) or "" in model.trainable:
        return "the model's trainable tensors must be named once each, none empty"
    if model.architecture and not model.trainable:
        return f"model {model.architecture!r} names no trainable tensor"
    if model.update_bytes < 0 or (model.update_bytes > 0) != bool(model.trainable):
        return "the model's update_bytes must be positive when it names tensors, else 0"
    return ""
