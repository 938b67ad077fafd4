"""Builds the ledger test vectors and the golden ledger of docs/ledger-spec.md from the code.

``vectors_document()`` and ``golden_document()`` return the JSON documents that
``tests/vectors/ledger-vectors.json`` and ``tests/vectors/golden-ledger.json`` hold;
``tests/test_ledger_spec.py`` checks the files against them byte for byte. Deterministic: keys
derive from fixed seeds and Ed25519 signatures are deterministic (RFC 8032). No Flower or torch.

Regenerate the files (after a deliberate format change; review the diff, update the spec)::

    .venv/bin/python -m tests.test_ledger_spec --regenerate
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from fedchain.crypto.hashing import compute_update_hash, iter_canonical_chunks
from fedchain.crypto.identity import Domain, compute_signing_root, public_key_bytes, sign
from fedchain.ledger.builder import (
    build_block,
    make_genesis,
    make_rules,
    sign_attestation,
    sign_commitment,
    sign_genesis_participant,
    sign_header,
    sign_refusal,
)
from fedchain.ledger.chain import Chain
from fedchain.ledger.codec import compute_hash, encode
from fedchain.ledger.consensus import (
    compute_finalized_height,
    compute_proposer,
    detect_double_sign,
    get_proposer,
)
from fedchain.ledger.containers import (
    LedgerState,
    StateRootBody,
    compute_evidence_id,
    compute_state_root,
)
from fedchain.ledger.derived import (
    SIGNING_DOMAINS,
    compute_block_hash,
    compute_dp_mechanism,
    compute_federation_id,
    compute_tx_root,
    signing_message,
)
from fedchain.ledger.genesis import compute_genesis_block, compute_genesis_state
from fedchain.ledger.objects import (
    AnchorReceipt,
    AnchorStatement,
    AppApproval,
    Attestation,
    Block,
    BlockTransaction,
    ContributionRecord,
    Genesis,
    ModelRecord,
    ModelVersion,
    Refusal,
    Registration,
    Rejection,
    RewardDeltas,
    SignedHeader,
    SlashingEvidence,
    Transaction,
    UpdateCommitment,
)
from fedchain.ledger.synthetic import derive_key
from fedchain.ledger.verify import verify_ledger
from fedchain.privacy.accountant import compute_dp_rules
from fedchain.rounds.admission import MISMATCH_REASON
from fedchain.rounds.rewards import compute_reward_split, compute_round_payout

VECTORS_DIR = Path(__file__).parent
VECTORS_FILE = VECTORS_DIR / "ledger-vectors.json"
GOLDEN_FILE = VECTORS_DIR / "golden-ledger.json"
SEED = 7
SUPERNODE_KEY = "ecdsa-sha2-nistp384 AAAA-golden-holder-0"
"""Genesis checks do not parse it (``federation add`` does): any text is a valid field."""
"""Keys are ``derive_key(SEED, i)``: Ed25519 secret seed ``sha256(f"fedchain/synthetic/7/{i}")``."""


# --------------------------------------------------------------------------------------------------
# JSON form of ledger objects


def to_json(value: Any) -> Any:
    """A ledger value as JSON: bytes as lowercase hex, tuples as lists, an object as its class
    name and tag followed by its fields in encoding order."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, tuple):
        return [to_json(item) for item in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {"_type": type(value).__name__, "_tag": type(value).TAG}  # type: ignore[attr-defined]
        for field in dataclasses.fields(value):
            out[field.name] = to_json(getattr(value, field.name))
        return out
    return value


def dump(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=1, ensure_ascii=True) + "\n"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _digest(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def _app_approval(federation_id: bytes) -> AppApproval:
    """holder-0's first approval: a new app in place of the one its registration signed."""
    key = derive_key(SEED, 0)
    fields = (public_key_bytes(key), _digest("app-2"), _digest("app"), 1, "0.2.0")
    unsigned = AppApproval(*fields, b"")
    signature = sign(key, Domain.APP_APPROVAL, signing_message(unsigned), federation_id)
    return AppApproval(*fields, signature)


def _model(*values: float) -> dict[str, np.ndarray]:
    return {"w": np.array(values, dtype=np.float32)}


# --------------------------------------------------------------------------------------------------
# The golden ledger


@dataclasses.dataclass
class Golden:
    blocks: list[Block]
    states: list[LedgerState]
    keys: dict[bytes, Any]
    double_sign: SlashingEvidence  # also used by the vectors
    attestation_pair: SlashingEvidence


GOLDEN_DP = compute_dp_rules(
    "client", noise_multiplier=4.0, clip_norm=1.0, delta=1e-5, max_epsilon=8.0
)
"""The golden federation's privacy: its cap (9 participations) is above its 3 rounds."""


GOLDEN_MODEL = ModelRecord(
    architecture="cnn",
    finetune="lora",
    lora_rank=4,
    base_hash=_digest("base-model"),
    base_source="golden-base.safetensors",
    base_licence="CC0-1.0",
    trainable=("features.0.lora_A.default.weight", "features.0.lora_B.default.weight"),
    update_bytes=656,  # stated (the golden ledger's updates are stand-in tensors)
)
"""The golden federation fine-tunes a base with LoRA adapters (spec §9.7)."""


def build_golden() -> Golden:
    """Genesis + 3 rounds + a closing block of attestations, as a coordinator would write them."""
    keys = [derive_key(SEED, i) for i in range(3)]
    pub = [public_key_bytes(k) for k in keys]
    by_public = dict(zip(pub, keys, strict=True))
    stakes, examples = (10_000, 6_000, 3_000), (100, 200, 300)
    # pays in part and carries (payout rule), and client-level differential privacy, so the
    # replay counts participations (spec §9.5, §9.6)
    rules = make_rules(
        payout_min_score=100_000,
        score_debt_decay_bps=5_000,  # round 2's negative score is a debt round 3 repays first,
        harm_debt_decay_bps=0,  # its harm (below -10 000) never forgiven, as by default
        dp=GOLDEN_DP,
        model=GOLDEN_MODEL,
        max_rounds=3,  # the golden federation's 3 rounds are all its participants agreed to
        max_local_epochs=2,
        model_access=[public_key_bytes(derive_key(SEED, 3))],  # one key beyond its participants
    )
    federation_id = compute_federation_id("golden", rules)
    genesis = make_genesis(
        "golden",
        [
            sign_genesis_participant(
                keys[i],
                federation_id,
                stake=stakes[i],
                dataset_hash=_digest(f"data/{i}"),
                num_examples=examples[i],
                name=f"holder-{i}",
                supernode_key=SUPERNODE_KEY if i == 0 else "",
                app_digest=_digest("app") if i < 2 else b"",  # holder-2: none (a simulation's)
                fedchain_version="0.1.0" if i < 2 else "",
            )
            for i in range(3)
        ],
        initial_model_hash=compute_update_hash(_model(0.0, 0.0)),
        rules=rules,
    )
    state = compute_genesis_state(genesis)
    gh = state.genesis_hash
    blocks, states = [compute_genesis_block(genesis)], [state]

    def commit(i: int, round_: int, update: float) -> Any:
        return sign_commitment(
            keys[i],
            gh,
            run_id="golden",
            round=round_,
            base_model_hash=states[-1].model_head,
            update_hash=compute_update_hash(_model(update, -update)),
            num_examples=examples[i],
            dp_mechanism=compute_dp_mechanism(rules),
        )

    def attest(i: int) -> Any:
        last = states[-1]
        return sign_attestation(keys[i], gh, height=last.height, block_hash=last.head_hash)

    def close_round(round_: int, commits: list[Any], scores: dict[int, int]) -> list[Transaction]:
        model = ModelVersion(
            round_,
            compute_update_hash(_model(float(round_), 0.5)),
            states[-1].model_head,
            tuple(sorted(c.update_hash for c in commits)),
            "fedavg",
        )
        record = ContributionRecord(round_, tuple(sorted((pub[i], s) for i, s in scores.items())))
        payout = compute_round_payout(
            states[-1].carried_reward,
            pool=rules.reward_per_round,
            scores=record.scores,
            moved=True,
            min_score=rules.payout_min_score,
            debts={k: states[-1].participants[k].score_debt for k, _ in record.scores},
        )
        return [model, record, RewardDeltas(round_, payout.rewards)]

    def add(txs: list[Transaction], round_: int, attempt: int = 0) -> None:
        proposer = by_public[get_proposer(states[-1], attempt)]
        block, post = build_block(states[-1], txs, proposer, attempt, round=round_)
        blocks.append(block)
        states.append(post)

    # Block 1, round 1: three commitments, the model, scores, rewards.
    commits = [commit(i, 1, 0.1 * (i + 1)) for i in range(3)]
    add([*commits, *close_round(1, commits, {0: 120_000, 1: 80_000, 2: 0})], 1)

    # Block 2, round 2: holder-0's approval of a new app; attestations to block 1; a
    # rejection; a harmful score (reputation).
    commits = [commit(i, 2, 0.2 * (i + 1)) for i in range(2)]
    rejection = Rejection(2, pub[2], "update has NaN or infinite values")
    add(
        [
            _app_approval(federation_id),
            *(attest(i) for i in range(3)),
            *commits,
            rejection,
            *close_round(2, commits, {0: 50_000, 1: -20_000}),
        ],
        2,
    )

    # Block 3, round 3, proposed at attempt 1: both kinds of double-sign
    # evidence (heights 2 and 1 of this chain), and the rejection of an update that did not
    # match its commitment (a record only: no stake moves on the coordinator's word).
    block2 = blocks[2].signed_header
    offender = by_public[block2.header.proposer]
    forged = dataclasses.replace(block2.header, tx_root=bytes(32))
    double_sign = _evidence_pair(block2, sign_header(offender, gh, forged), 3)
    real = sign_attestation(keys[1], gh, height=1, block_hash=blocks[1].header.parent_hash)
    other = sign_attestation(keys[1], gh, height=1, block_hash=compute_block_hash(blocks[1]))
    attestation_pair = _evidence_pair(real, other, 3)
    mismatch = Rejection(3, pub[2], MISMATCH_REASON)
    commits = [commit(i, 3, 0.3 * (i + 1)) for i in range(2)]
    add(
        [
            *(attest(i) for i in range(3)),
            mismatch,
            double_sign,
            attestation_pair,
            *commits,
            *close_round(3, commits, {0: 30_000, 1: 15_000}),  # 1 repays 10_000 of debt
        ],
        3,
        attempt=1,
    )

    # Block 4, round 3: the closing block, attestations to block 3.
    add([attest(i) for i in range(3)], 3)
    return Golden(blocks, states, by_public, double_sign, attestation_pair)


def _evidence_pair(first: Any, second: Any, round_: int) -> SlashingEvidence:
    evidence = detect_double_sign(first, second, round_)
    if evidence is None:
        raise AssertionError("the pair is not a double sign")
    return evidence


def _state_json(state: LedgerState) -> dict[str, Any]:
    return {
        "height": state.height,
        "round": state.round,
        "head_hash": state.head_hash.hex(),
        "state_root": compute_state_root(state).hex(),
        "model_head": state.model_head.hex(),
        "model_round": state.model_round,
        "carried_reward": state.carried_reward,
        "participants": [to_json(p) for p in state.participants.values()],
        "last_attested": {key.hex(): h for key, h in state.last_attested.items()},
        "evidence_seen": sorted(e.hex() for e in state.evidence_seen),
    }


def golden_document() -> dict[str, Any]:
    golden = build_golden()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ledger.db"
        with Chain.create(path, golden.states[0].genesis) as chain:
            for block in golden.blocks[1:]:
                chain.append(block)
        report = verify_ledger(path)
    if not report.ok:
        raise AssertionError(f"the golden ledger does not verify: {report.failure}")
    head = golden.states[-1]
    return {
        "about": "A tiny deterministic run (tests/vectors/generate.py build_golden): genesis, "
        "rounds 1-3, a closing block. Secret keys are Ed25519 seeds "
        f"sha256('fedchain/synthetic/{SEED}/<i>'). 'data' is the block's canonical encoding "
        "(the ledger.db data column).",
        "secret_seeds": [
            hashlib.sha256(f"fedchain/synthetic/{SEED}/{i}".encode()).hexdigest() for i in range(3)
        ],
        "public_keys": [public_key_bytes(derive_key(SEED, i)).hex() for i in range(3)],
        "genesis_hash": head.genesis_hash.hex(),
        "blocks": [
            {
                "height": block.header.height,
                "round": block.header.round,
                "attempt": block.header.attempt,
                "proposer": block.header.proposer.hex(),
                "block_hash": compute_block_hash(block).hex(),
                "tx_root": block.header.tx_root.hex(),
                "state_root": block.header.state_root.hex(),
                "transactions": [type(tx).__name__ for tx in block.transactions],
                "data": encode(block).hex(),
            }
            for block in golden.blocks
        ],
        "head_height": report.head_height,
        "head_hash": report.head_hash.hex(),
        "final_height": report.final_height,
        "total_stake": report.total_stake,
        "final_state": _state_json(head),
    }


# --------------------------------------------------------------------------------------------------
# Known-answer vectors


def _encoding_vector(name: str, obj: Any) -> dict[str, Any]:
    data = encode(obj)
    return {"name": name, "object": to_json(obj), "encoding": data.hex(), "sha256": _sha(data)}


def _signed_vector(name: str, obj: Any, federation: bytes) -> dict[str, Any]:
    domain = SIGNING_DOMAINS[type(obj)]
    message = signing_message(obj)
    if isinstance(obj, SignedHeader):
        signer = obj.header.proposer
    elif isinstance(obj, Attestation):
        signer = obj.validator
    else:
        signer = obj.public_key
    return {
        "name": name,
        "domain": domain.value.decode(),
        "federation": federation.hex(),
        "public_key": signer.hex(),
        "signing_message": message.hex(),
        "message_sha256": _sha(message),
        "signing_root": compute_signing_root(domain, message, federation).hex(),
        "signature": obj.signature.hex(),
    }


def _refused_registration(genesis_hash: bytes) -> Registration:
    """A signed ``Registration`` (tag 10): it still decodes, and the transition refuses it."""
    key = derive_key(SEED, 3)
    unsigned = Registration(public_key_bytes(key), 4_000, _digest("data/3"), 150, b"")
    signature = sign(key, Domain.REGISTRATION, signing_message(unsigned), genesis_hash)
    return dataclasses.replace(unsigned, signature=signature)


def _holder_refusal(genesis_hash: bytes) -> Refusal:
    """holder-2's signed refusal to train in round 3 (the golden federation is private, so
    its privacy budget is a reason the transition admits): not in the golden ledger."""
    detail = "privacy budget spent (9 of 9 participations, epsilon 8): not training"
    return sign_refusal(
        derive_key(SEED, 2), genesis_hash, round=3, code="privacy-budget-spent", detail=detail
    )


def _first(block: Block, cls: type) -> Any:
    return next(tx for tx in block.transactions if isinstance(tx, cls))


def vectors_document() -> dict[str, Any]:
    golden = build_golden()
    genesis = golden.states[0].genesis
    gh = golden.states[0].genesis_hash
    federation_id = compute_federation_id(genesis.run_id, genesis.rules)
    contract = Genesis(genesis.run_id, genesis.rules, bytes(32), ())
    b1, b2 = golden.blocks[1], golden.blocks[2]
    registration = _refused_registration(gh)
    objects: list[tuple[str, Any]] = [
        ("Rules", genesis.rules),
        ("GenesisParticipant", genesis.participants[0]),
        ("Genesis", genesis),
        ("Registration (decodes; refused by the transition, §9.3)", registration),
        ("UpdateCommitment", _first(b1, UpdateCommitment)),
        ("ModelVersion", _first(b1, ModelVersion)),
        ("ContributionRecord", _first(b2, ContributionRecord)),
        ("RewardDeltas", _first(b2, RewardDeltas)),
        ("Rejection", _first(b2, Rejection)),
        ("Attestation", _first(b2, Attestation)),
        ("SlashingEvidence double_sign HeaderPair", golden.double_sign),
        ("SlashingEvidence double_sign AttestationPair", golden.attestation_pair),
        ("BlockHeader", b1.header),
        ("SignedHeader", b1.signed_header),
        ("Block 0 (genesis block)", golden.blocks[0]),
        ("ParticipantState", next(iter(golden.states[2].participants.values()))),
        (
            "StateRootBody",
            StateRootBody(
                tuple(golden.states[2].participants.values()),
                golden.states[2].model_head,
                golden.states[2].round,
                golden.states[2].carried_reward,
            ),
        ),
        ("codec edge cases: negative i64, empty and non-ASCII strings", _edge_cases()),
        ("AnchorStatement (its sha256 is the anchor digest, §9.4)", _anchor_statement(golden)),
        ("AnchorReceipt (evm)", _anchor_receipt(golden)),
        ("AppApproval", _first(b2, AppApproval)),
        ("Refusal (a holder's, signed; not in the golden ledger)", _holder_refusal(gh)),
    ]
    signed: list[tuple[str, Any, bytes]] = [
        (
            "GenesisParticipant (federation: the federation id)",
            genesis.participants[0],
            federation_id,
        ),
        ("Registration (refused by the transition, §9.3)", registration, gh),
        ("UpdateCommitment", b1.transactions[0], gh),
        ("Attestation", _first(b2, Attestation), gh),
        ("SignedHeader (block 1)", b1.signed_header, gh),
        ("Refusal", _holder_refusal(gh), gh),
        (
            "AppApproval (federation: the federation id)",
            _app_approval(federation_id),
            federation_id,
        ),
    ]
    tx_roots: list[tuple[str, tuple[BlockTransaction, ...]]] = [
        ("empty body", ()),
        ("block 0: the genesis alone", golden.blocks[0].transactions),
        ("block 2", b2.transactions),
    ]
    tensors: dict[str, np.ndarray] = {
        "layer.bias": np.array([1.5, -2.0], dtype=np.float32),
        "layer.weight": np.arange(4, dtype=np.int64).reshape(2, 2),
        "flag": np.array(True),
        "half": np.array([0.25], dtype=np.float16),
    }
    return {
        "about": "Known answers for docs/ledger-spec.md, generated by tests/vectors/generate.py "
        "from the golden ledger's objects. Bytes are lowercase hex; objects list their fields in "
        "encoding order after _type/_tag.",
        "encoding": [_encoding_vector(name, obj) for name, obj in objects],
        "federation_id": {
            "run_id": genesis.run_id,
            "contract_encoding": encode(contract).hex(),
            "federation_id": federation_id.hex(),
        },
        "signing": [_signed_vector(name, obj, federation) for name, obj, federation in signed],
        "block_hash": [
            {
                "height": b.header.height,
                "header": encode(b.header).hex(),
                "block_hash": _sha(encode(b.header)),
            }
            for b in golden.blocks[:2]
        ],
        "tx_root": [
            {
                "name": name,
                "tx_sha256": [compute_hash(tx).hex() for tx in txs],
                "tx_root": compute_tx_root(txs).hex(),
            }
            for name, txs in tx_roots
        ],
        "evidence_id": [
            {
                "name": name,
                "evidence_sha256": compute_hash(ev).hex(),
                "evidence_id": compute_evidence_id(ev).hex(),
            }
            for name, ev in (
                ("double_sign/header", golden.double_sign),
                ("double_sign/attestation", golden.attestation_pair),
            )
        ],
        "proposer": _proposer_vectors(golden),
        "finality": _finality_vectors(),
        "reward_split": _reward_vectors(),
        "payout": _payout_vectors(),
        "update_hash": [
            {
                "tensors": {
                    name: {"dtype": str(a.dtype), "shape": list(a.shape), "values": a.tolist()}
                    for name, a in tensors.items()
                },
                "encoding": b"".join(bytes(c) for c in iter_canonical_chunks(tensors)).hex(),
                "update_hash": compute_update_hash(tensors).hex(),
            }
        ],
        "decode_rejects": _reject_vectors(golden),
    }


def _anchor_statement(golden: Golden) -> AnchorStatement:
    """The anchor statement of block 2 of the golden ledger (final at its head)."""
    state = golden.states[2]
    return AnchorStatement(state.genesis_hash, 2, state.head_hash, state.model_head)


def _anchor_receipt(golden: Golden) -> AnchorReceipt:
    """A receipt for :func:`_anchor_statement`, with an EVM proof."""
    statement = _anchor_statement(golden)
    proof = b'{"chain_id":131277322940537,"contract":"0xF2E246BB76DF876Cef8b38ae84130F4F55De395b",'
    proof += b'"tx_hash":"0x' + b"ab" * 32 + b'"}'
    return AnchorReceipt("evm", statement, proof)


def _edge_cases() -> Rejection:
    return Rejection(-(2**63), bytes(range(32)), "é ✓ \x00")


def _proposer_vectors(golden: Golden) -> list[dict[str, Any]]:
    state = golden.states[2]
    validators = sorted((k, p.stake) for k, p in state.participants.items() if p.active)
    out = []
    for attempt in (0, 1, 2, 2**32 - 1):
        seed = hashlib.sha256(
            b"fedchain/proposer/v1" + state.head_hash + struct.pack("<I", attempt)
        ).digest()
        out.append(
            {
                "parent_hash": state.head_hash.hex(),
                "validators": [[k.hex(), s] for k, s in validators],
                "attempt": attempt,
                "seed": seed.hex(),
                "target": int.from_bytes(seed, "big") % sum(s for _, s in validators),
                "proposer": compute_proposer(state.head_hash, validators, attempt).hex(),
            }
        )
    return out


def _finality_vectors() -> list[dict[str, Any]]:
    a, b, c = (bytes([i]) * 32 for i in (1, 2, 3))
    cases = [
        ({1: {a: 2, b: 1}, 2: {a: 2, b: 1}}, [(a, 2)], "exactly 2/3 of stake is enough"),
        ({1: {a: 1, b: 1, c: 1}, 2: {a: 1, b: 1, c: 1}}, [(a, 2), (b, 1)], "1 and 2 short"),
        ({1: {a: 1, b: 1, c: 1}, 2: {a: 1, b: 1, c: 1}}, [(a, 2), (b, 2), (c, 1)], "a descendant"),
        ({1: {a: 1, b: 1, c: 1}, 2: {a: 5, b: 1}}, [(b, 2), (c, 2)], "c is no validator of 2"),
    ]
    return [
        {
            "name": name,
            "validators_by_height": {
                str(h): {k.hex(): s for k, s in v.items()} for h, v in validators.items()
            },
            "last_attested": [[k.hex(), h] for k, h in attested],
            "final_height": compute_finalized_height(validators, attested),
        }
        for validators, attested, name in cases
    ]


def _reward_vectors() -> list[dict[str, Any]]:
    a, b, c = (bytes([i]) * 32 for i in (1, 2, 3))
    cases = [
        (1_000, [(a, 1), (b, 1), (c, 1)]),
        (1_000, [(a, 120_000), (b, 80_000), (c, 0)]),
        (7, [(c, 2), (a, 2), (b, -5)]),
        (10, [(a, -1)]),
    ]
    return [
        {
            "pool": pool,
            "scores": [[k.hex(), s] for k, s in shares],
            "deltas": [[k.hex(), d] for k, d in compute_reward_split(pool, shares)],
        }
        for pool, shares in cases
    ]


def _payout_vectors() -> list[dict[str, Any]]:
    """The payout rule (spec §9.5): carried units, the pool, scores, whether the model moved and
    payout_min_score and the score debts in; the rewards and the units carried on out."""
    a, b, c = (bytes([i]) * 32 for i in (1, 2, 3))
    none: dict[bytes, int] = {}
    cases = [
        (0, 10_000, [(a, 120_000), (b, 80_000), (c, 0)], True, 20_000, none),  # paid
        (0, 10_000, [(a, 700), (b, 400), (c, -3_000)], True, 20_000, none),  # paid in part
        (9_450, 10_000, [(a, 15_000), (b, 4_000)], True, 20_000, none),  # in part, from a carry
        (500, 10_000, [(a, 120_000), (b, 80_000)], False, 20_000, none),  # did not move
        (0, 10_000, [(a, 0), (b, -2)], True, 20_000, none),  # no positive score
        (0, 10_000, [(a, 2), (b, -40)], True, 20_000, none),  # +2 quanta: 1 unit
        (0, 1_000, [(a, 3), (b, 1)], True, 0, none),  # min 0: every unit, by the scores
        (0, 10_000, [(a, 30_000), (b, 3_400)], True, 20_000, {b: 5_000}),  # b repays its debt
        (0, 10_000, [(a, 12_000), (b, 9_000)], True, 20_000, {a: 2_000, b: 20_000}),  # in part
    ]
    out = []
    for carried, pool, scores, moved, min_score, debts in cases:
        payout = compute_round_payout(
            carried, pool=pool, scores=scores, moved=moved, min_score=min_score, debts=debts
        )
        out.append(
            {
                "carried_in": carried,
                "pool": pool,
                "scores": [[k.hex(), s] for k, s in scores],
                "model_moved": moved,
                "payout_min_score": min_score,
                "debts": [[k.hex(), d] for k, d in sorted(debts.items())],
                "rewards": [[k.hex(), d] for k, d in payout.rewards],
                "carried_out": payout.carried,
            }
        )
    return out


def _reject_vectors(golden: Golden) -> list[dict[str, Any]]:
    attestation = encode(golden.blocks[2].transactions[0])
    first = next(iter(golden.states[1].participants.values()))
    participant = encode(first)
    active = len(participant) - (8 + 4 + len(first.app_digest) + 8 + 8 + 8) - 1  # `active`
    rejection = encode(Rejection(1, bytes(32), "x"))
    rules = encode(golden.states[0].genesis.rules)
    return [
        {"why": "trailing byte", "type": "Attestation", "bytes": (attestation + b"\0").hex()},
        {"why": "truncated", "type": "Attestation", "bytes": attestation[:-1].hex()},
        {"why": "unknown tag 99", "type": "BlockTransaction", "bytes": "63"},
        {
            "why": "tag of another class",
            "type": "Attestation",
            "bytes": "10" + attestation[1:].hex(),
        },
        {
            "why": "bool byte 2 (active; then dp_participations, app_digest, app_approvals, debts)",
            "type": "ParticipantState",
            "bytes": (participant[:active] + b"\2" + participant[active + 1 :]).hex(),
        },
        {"why": "invalid UTF-8", "type": "Rejection", "bytes": (rejection[:-1] + b"\xff").hex()},
        {"why": "pair count 3", "type": "Rules", "bytes": (rules[:21] + b"\3" + rules[22:]).hex()},
        {
            "why": "retired tag 22 (bad-commitment evidence, no longer a ledger object)",
            "type": "BlockTransaction",
            "bytes": _retired_bad_commitment(golden).hex(),
        },
    ]


def _retired_bad_commitment(golden: Golden) -> bytes:
    """The encoding bad-commitment evidence had (format version 1 before issue 12): a
    SlashingEvidence of kind "bad_commitment" holding tag 22, a commitment and an observed hash."""
    commitment = _first(golden.blocks[1], UpdateCommitment)

    def field(data: bytes) -> bytes:
        return struct.pack("<I", len(data)) + data

    return (
        bytes([SlashingEvidence.TAG])
        + field(b"bad_commitment")
        + field(commitment.public_key)
        + struct.pack("<q", 1)
        + bytes([22])
        + encode(commitment)
        + field(_digest("observed"))
    )


def write_files() -> None:
    VECTORS_FILE.write_text(dump(vectors_document()))
    GOLDEN_FILE.write_text(dump(golden_document()))
