"""The ledger spec's test vectors and golden ledger: checked against the code byte for byte, and
re-derived by an independent reader written from docs/ledger-spec.md alone.

- ``tests/vectors/ledger-vectors.json`` and ``tests/vectors/golden-ledger.json`` must equal what
  :mod:`tests.vectors.generate` builds from the code now: a format change that does not update
  them fails here.
- The second half of this module re-derives the vectors and replays the golden ledger *without*
  the ledger package: a decoder driven by the spec's tag/field table (§3), the hashes and roots
  of §4-5, the proposer draw of §8, the effects of §9, the finality rule of §10, the reward split
  and the update hash. It checks that the spec says enough, and says it right.

Regenerate the files after a deliberate format change (then review the diff and the spec)::

    .venv/bin/python -m tests.test_ledger_spec --regenerate

or run pytest with ``FEDCHAIN_REGENERATE_VECTORS=1``.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedchain.errors import DecodeError
from fedchain.ledger.chain import Chain
from fedchain.ledger.codec import decode
from fedchain.ledger.containers import ParticipantState
from fedchain.ledger.objects import Attestation, Block, BlockTransaction, Rejection, Rules
from fedchain.ledger.verify import verify_ledger
from tests.vectors.generate import (
    GOLDEN_FILE,
    VECTORS_FILE,
    dump,
    golden_document,
    vectors_document,
    write_files,
)

REGENERATE_ENV = "FEDCHAIN_REGENERATE_VECTORS"


def _check_file(path: Path, text: str) -> None:
    if os.environ.get(REGENERATE_ENV):
        path.write_text(text)
    assert path.read_text() == text, (
        f"{path} is stale: the ledger format changed. Regenerate it with "
        "`python -m tests.test_ledger_spec --regenerate`, review the diff and update "
        "docs/ledger-spec.md."
    )


def test_vectors_match_the_code() -> None:
    _check_file(VECTORS_FILE, dump(vectors_document()))


def test_golden_ledger_matches_the_code() -> None:
    _check_file(GOLDEN_FILE, dump(golden_document()))


def test_invalid_encodings_are_refused_by_the_code() -> None:
    types = {
        "Attestation": Attestation,
        "ParticipantState": ParticipantState,
        "Rejection": Rejection,
        "Rules": Rules,
        "BlockTransaction": BlockTransaction,
    }
    for case in _vectors()["decode_rejects"]:
        with pytest.raises(DecodeError):
            decode(types[case["type"]], bytes.fromhex(case["bytes"]))


def test_golden_blocks_verify_from_their_bytes(tmp_path: Path) -> None:
    document = _golden()
    blocks = [decode(Block, bytes.fromhex(b["data"])) for b in document["blocks"]]
    with Chain.create(tmp_path / "ledger.db", blocks[0].transactions[0]) as chain:  # type: ignore[arg-type]
        for block in blocks[1:]:
            chain.append(block)
    report = verify_ledger(tmp_path)
    assert report.ok, report.failure
    assert (report.head_hash.hex(), report.final_height) == (
        document["head_hash"],
        document["final_height"],
    )


def _vectors() -> dict[str, Any]:
    return dict(json.loads(VECTORS_FILE.read_text()))


def _golden() -> dict[str, Any]:
    return dict(json.loads(GOLDEN_FILE.read_text()))


# --------------------------------------------------------------------------------------------------
# An independent reader, from docs/ledger-spec.md only (no fedchain.ledger import below this line)

INT, BYTES, STR, BOOL = "i64", "bytes", "str", "bool"
TX_TAGS = (3, 10, 11, 12, 13, 14, 15, 16, 17, 18, 23, 50)
FIELDS: dict[int, tuple[tuple[str, Any], ...]] = {  # spec §3, transcribed
    1: (
        ("min_stake", INT),
        ("reward_per_round", INT),
        ("slash_bps", ("seq", ("pair", STR, INT))),
        ("aggregation_rule", STR),
        ("aggregation_params", ("seq", ("pair", STR, STR))),
        ("contribution_method", STR),
        ("weight_cap_bps", INT),
        ("reputation_penalty_bps", INT),
        ("payout_min_score", INT),
        ("score_debt_decay_bps", INT),
        ("harm_debt_decay_bps", INT),
        ("contribution_budget", INT),
        ("contribution_min_evaluations", INT),
        ("update_archive_rounds", INT),
        ("dp_mode", STR),
        ("dp_noise_micro", INT),
        ("dp_clip_micro", INT),
        ("dp_sample_rate_micro", INT),
        ("dp_steps_per_round", INT),
        ("dp_delta_pico", INT),
        ("dp_max_epsilon_micro", INT),
        ("dp_max_participations", INT),
        ("model", (4,)),
        ("max_rounds", INT),
        ("max_local_epochs", INT),
        ("model_access", ("seq", BYTES)),
    ),
    4: (
        ("architecture", STR),
        ("finetune", STR),
        ("lora_rank", INT),
        ("base_hash", BYTES),
        ("base_source", STR),
        ("base_licence", STR),
        ("trainable", ("seq", STR)),
        ("update_bytes", INT),
    ),
    2: (
        ("public_key", BYTES),
        ("stake", INT),
        ("dataset_hash", BYTES),
        ("num_examples", INT),
        ("name", STR),
        ("supernode_key", STR),
        ("app_digest", BYTES),
        ("fedchain_version", STR),
        ("signature", BYTES),
    ),
    3: (
        ("run_id", STR),
        ("rules", (1,)),
        ("initial_model_hash", BYTES),
        ("participants", ("seq", (2,))),
    ),
    10: (
        ("public_key", BYTES),
        ("stake", INT),
        ("dataset_hash", BYTES),
        ("num_examples", INT),
        ("signature", BYTES),
    ),
    11: (
        ("run_id", STR),
        ("round", INT),
        ("base_model_hash", BYTES),
        ("update_hash", BYTES),
        ("num_examples", INT),
        ("public_key", BYTES),
        ("dp_noise_micro", INT),
        ("dp_sample_rate_micro", INT),
        ("dp_steps", INT),
        ("signature", BYTES),
    ),
    12: (
        ("round", INT),
        ("model_hash", BYTES),
        ("parent_hash", BYTES),
        ("update_hashes", ("seq", BYTES)),
        ("rule", STR),
    ),
    13: (("round", INT), ("scores", ("seq", ("pair", BYTES, INT)))),
    14: (("round", INT), ("deltas", ("seq", ("pair", BYTES, INT)))),
    15: (("kind", STR), ("offender", BYTES), ("round", INT), ("evidence", (20, 21))),
    16: (("round", INT), ("public_key", BYTES), ("reason", STR)),
    17: (("validator", BYTES), ("height", INT), ("block_hash", BYTES), ("signature", BYTES)),
    18: (("witness", STR), ("statement", (19,)), ("proof", BYTES)),
    19: (("genesis_hash", BYTES), ("height", INT), ("block_hash", BYTES), ("model_head", BYTES)),
    20: (("first", (31,)), ("second", (31,))),
    21: (("first", (17,)), ("second", (17,))),
    23: (
        ("public_key", BYTES),
        ("round", INT),
        ("code", STR),
        ("detail", STR),
        ("signature", BYTES),
    ),
    30: (
        ("height", INT),
        ("round", INT),
        ("parent_hash", BYTES),
        ("tx_root", BYTES),
        ("state_root", BYTES),
        ("proposer", BYTES),
        ("attempt", INT),
    ),
    31: (("header", (30,)), ("signature", BYTES)),
    32: (("signed_header", (31,)), ("transactions", ("seq", TX_TAGS))),
    40: (
        ("public_key", BYTES),
        ("stake", INT),
        ("reputation_bps", INT),
        ("dataset_hash", BYTES),
        ("num_examples", INT),
        ("active", BOOL),
        ("dp_participations", INT),
        ("app_digest", BYTES),
        ("app_approvals", INT),
        ("score_debt", INT),
        ("harm_debt", INT),
    ),
    41: (
        ("participants", ("seq", (40,))),
        ("model_head", BYTES),
        ("round", INT),
        ("carried_reward", INT),
    ),
    50: (
        ("public_key", BYTES),
        ("app_digest", BYTES),
        ("replaces", BYTES),
        ("sequence", INT),
        ("fedchain_version", STR),
        ("signature", BYTES),
    ),
}
DOMAINS = {
    2: b"fedchain/registration/v1",
    10: b"fedchain/registration/v1",
    11: b"fedchain/update-commitment/v1",
    17: b"fedchain/attestation/v1",
    31: b"fedchain/block-header/v1",
    23: b"fedchain/refusal/v1",
    50: b"fedchain/app-approval/v1",
}
SIGNER = {
    **{2: "public_key", 10: "public_key", 11: "public_key", 17: "validator"},
    **{23: "public_key", 50: "public_key"},
}


def H(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def read(kind: Any, data: bytes, pos: int) -> tuple[Any, int]:
    """One value of ``kind`` at ``pos``; objects are dicts with ``_tag`` and ``_raw``."""
    if kind == INT:
        return struct.unpack_from("<q", data, pos)[0], pos + 8
    if kind == BOOL:
        assert data[pos] in (0, 1)
        return data[pos] == 1, pos + 1
    if kind in (BYTES, STR):
        (n,) = struct.unpack_from("<I", data, pos)
        raw = data[pos + 4 : pos + 4 + n]
        assert len(raw) == n
        return (raw.decode("utf-8") if kind == STR else raw), pos + 4 + n
    (count,) = struct.unpack_from("<I", data, pos) if isinstance(kind[0], str) else (0,)
    if kind[0] == "seq":
        items, pos = [], pos + 4
        for _ in range(count):
            item, pos = read(kind[1], data, pos)
            items.append(item)
        return items, pos
    if kind[0] == "pair":
        assert count == 2
        a, pos = read(kind[1], data, pos + 4)
        b, pos = read(kind[2], data, pos)
        return (a, b), pos
    tag, start = data[pos], pos  # an object of one of the tags in ``kind``
    assert tag in kind, f"tag {tag} not in {kind}"
    obj: dict[str, Any] = {"_tag": tag}
    pos += 1
    for name, field_kind in FIELDS[tag]:
        obj[name], pos = read(field_kind, data, pos)
    obj["_raw"] = data[start:pos]
    return obj, pos


def read_all(data: bytes) -> dict[str, Any]:
    obj, end = read(tuple(FIELDS), data, 0)
    assert end == len(data)
    return dict(obj)


def signing_root(obj: dict[str, Any], federation: bytes) -> bytes:
    message = obj["_raw"][: -(4 + len(obj["signature"]))] + bytes(4)
    domain = DOMAINS[obj["_tag"]]
    return H(bytes([len(domain)]) + domain + federation + H(message))


def check_signed(obj: dict[str, Any], federation: bytes) -> None:
    signer = obj["header"]["proposer"] if obj["_tag"] == 31 else obj[SIGNER[obj["_tag"]]]
    key = Ed25519PublicKey.from_public_bytes(signer)
    key.verify(obj["signature"], signing_root(obj, federation))  # raises if invalid


def federation_id(run_id: str, rules: dict[str, Any]) -> bytes:
    """H of the Genesis with this run id and rules, a zero model hash and no participants."""
    return H(bytes([3]) + b(run_id.encode()) + rules["_raw"] + b(bytes(32)) + bytes(4))


def draw(parent: bytes, validators: list[tuple[bytes, int]], attempt: int) -> bytes:
    seed = H(b"fedchain/proposer/v1" + parent + struct.pack("<I", attempt))
    target = int.from_bytes(seed, "big") % sum(s for _, s in validators)
    total = 0
    for key, stake in sorted(validators):
        total += stake
        if target < total:
            return key
    raise AssertionError


def split(pool: int, scores: list[tuple[bytes, int]]) -> list[tuple[bytes, int]]:
    positive = [(k, s) for k, s in scores if s > 0]
    if not positive or pool == 0:
        return []
    total = sum(s for _, s in positive)
    paid = {k: pool * s // total for k, s in positive}
    rem = {k: pool * s % total for k, s in positive}
    for k in sorted(rem, key=lambda k: (-rem[k], k))[: pool - sum(paid.values())]:
        paid[k] += 1
    return [(k, v) for k, v in sorted(paid.items()) if v > 0]


def payout(
    carried: int,
    pool: int,
    scores: list[tuple[bytes, int]],
    moved: bool,
    min_score: int,
    debts: dict[bytes, int] | None = None,
) -> tuple[list[tuple[bytes, int]], int]:
    """Spec §9.5: (the rewards due, the units carried on)."""
    available = carried + pool
    payable = [(k, max(0, s - (debts or {}).get(k, 0))) for k, s in scores]
    total = sum(p for _, p in payable)
    if not moved or total == 0:
        return [], available
    due = split(available if total >= min_score else available * total // min_score, payable)
    return due, available - sum(d for _, d in due)


def evidence_id(ev: dict[str, Any]) -> bytes:
    payload = ev["evidence"]
    if payload["_tag"] == 20:
        label, number = b"double_sign/header", payload["first"]["header"]["height"]
    else:
        label, number = b"double_sign/attestation", payload["first"]["height"]
    body = bytes([len(label)]) + label + ev["offender"] + struct.pack("<q", number)
    return H(b"fedchain/evidence-id/v1" + body)


def final_height(validators_by_height: dict[int, dict[bytes, int]], last: dict[bytes, int]) -> int:
    for h in range(max(last.values(), default=0), 0, -1):
        vals = validators_by_height.get(h, {})
        attesting = sum(s for k, s in vals.items() if last.get(k, -1) >= h)
        if vals and 3 * attesting >= 2 * sum(vals.values()):
            return h
    return 0


def b(x: bytes) -> bytes:
    return struct.pack("<I", len(x)) + x


def state_root(
    people: dict[bytes, list[Any]], model_head: bytes, round_: int, carried: int
) -> bytes:
    body = bytes([41]) + struct.pack("<I", len(people))
    for key in sorted(people):
        stake, rep, data_hash, examples, active, participations, app, approvals = people[key][:8]
        debt, harm = people[key][8:]
        body += bytes([40]) + b(key) + struct.pack("<qq", stake, rep) + b(data_hash)
        body += struct.pack("<q", examples) + bytes([active]) + struct.pack("<q", participations)
        body += b(app) + struct.pack("<qqq", approvals, debt, harm)
    return H(body + b(model_head) + struct.pack("<qq", round_, carried))


def test_independent_reader_replays_the_golden_ledger() -> None:
    golden = _golden()
    blocks = [read_all(bytes.fromhex(entry["data"])) for entry in golden["blocks"]]
    genesis = blocks[0]["transactions"][0]
    rules, federation = genesis["rules"], H(genesis["_raw"])
    assert federation.hex() == golden["genesis_hash"]
    for p in genesis["participants"]:  # each registration signed for the federation id
        check_signed(p, federation_id(genesis["run_id"], rules))
    slash, penalty = dict(rules["slash_bps"]), rules["reputation_penalty_bps"]
    fed_id = federation_id(genesis["run_id"], rules)
    people = {
        p["public_key"]: [
            *(p["stake"], 10_000, p["dataset_hash"], p["num_examples"], True, 0),
            *(p["app_digest"], 0, 0, 0),
        ]
        for p in genesis["participants"]
    }
    model_head, parent, last, by_height, seen = genesis["initial_model_hash"], bytes(32), {}, {}, []
    scores: list[tuple[bytes, int]] | None = None  # this block's contribution record, if any
    carried, moved, due = 0, False, []  # the payout rule's carried pool; the rewards it owes
    commits: set[bytes] = set()  # who committed in the current round
    round_ = 0
    for entry, block in zip(golden["blocks"], blocks, strict=True):
        header = block["signed_header"]["header"]
        assert H(header["_raw"]).hex() == entry["block_hash"] and header["parent_hash"] == parent
        txs = block["transactions"]
        tx_root = H(struct.pack("<I", len(txs)) + b"".join(H(tx["_raw"]) for tx in txs))
        assert header["tx_root"] == tx_root
        validators = [(k, p[0]) for k, p in people.items() if p[4] and p[0] >= rules["min_stake"]]
        if header["round"] > round_:
            commits, round_ = set(), header["round"]
        if header["height"] > 0:
            assert header["proposer"] == draw(parent, validators, header["attempt"])
            check_signed(block["signed_header"], federation)
            by_height[header["height"]] = dict(validators)
        for tx in txs:
            tag = tx["_tag"]
            if tag in SIGNER:  # an approval, like a registration, signs the federation id
                check_signed(tx, fed_id if tag == 50 else federation)
            if tag == 50:  # the holder's next approval, replacing its current app (§9.2)
                p = people[tx["public_key"]]
                assert (tx["sequence"], tx["replaces"]) == (p[7] + 1, p[6])
                p[6], p[7] = tx["app_digest"], tx["sequence"]
            elif tag == 11:
                commits.add(tx["public_key"])
                mechanism = (tx["dp_noise_micro"], tx["dp_sample_rate_micro"], tx["dp_steps"])
                if rules["dp_mode"] == "off":
                    assert mechanism == (0, 0, 0)
                else:  # the rules' mechanism, within the participation cap (§9.2)
                    assert mechanism == (
                        rules["dp_noise_micro"],
                        rules["dp_sample_rate_micro"],
                        rules["dp_steps_per_round"],
                    )
                    assert people[tx["public_key"]][5] < rules["dp_max_participations"]
                    people[tx["public_key"]][5] += 1
            elif tag == 10:  # participants join in the genesis only (§9.3)
                raise AssertionError("a Registration after the genesis is refused")
            elif tag == 12:
                moved = bool(tx["update_hashes"]) and tx["model_hash"] != tx["parent_hash"]
                model_head = tx["model_hash"]
            elif tag == 13:  # the round's committers, each scored once
                scores = tx["scores"]
                assert sorted(key for key, _ in scores) == sorted(commits)
                for key, score in scores:
                    rep = people[key][1]
                    rep = max(0, rep - penalty) if score <= -10_000 else rep
                    people[key][1] = min(10_000, rep + penalty // 2) if score > 0 else rep
                pool, min_score = rules["reward_per_round"], rules["payout_min_score"]
                debts = {key: people[key][8] for key, _ in scores}
                due, carried = payout(carried, pool, scores, moved, min_score, debts)
                forgive, forgive_harm = rules["score_debt_decay_bps"], rules["harm_debt_decay_bps"]
                for key, score in scores:  # a positive score repays the debt first, noise first
                    owed = max(0, debts[key] - score)
                    harm = people[key][9]  # harm: the part of a score below -10 000
                    harm = harm + max(0, -score - 10_000) if score < 0 else min(harm, owed)
                    noise = owed - harm
                    harm = harm * (10_000 - forgive_harm) // 10_000
                    people[key][8] = harm + noise * (10_000 - forgive) // 10_000
                    people[key][9] = harm
            elif tag == 14:  # exactly what the payout rule makes due: never a penalty
                assert scores is not None and due and tx["deltas"] == due
                due = []
                for key, delta in tx["deltas"]:
                    people[key][0] += delta
                    people[key][4] = people[key][4] and people[key][0] >= rules["min_stake"]
            elif tag == 15:  # double signing: two votes, one height of this chain's past
                first, second = tx["evidence"]["first"], tx["evidence"]["second"]
                for signed in (first, second):
                    check_signed(signed, federation)
                votes = [v.get("header", v) for v in (first, second)]
                assert votes[0]["height"] == votes[1]["height"] <= header["height"] - 1
                if tx["evidence"]["_tag"] == 20:
                    assert H(votes[0]["_raw"]) < H(votes[1]["_raw"])
                else:
                    assert votes[0]["block_hash"] < votes[1]["block_hash"]
                p = people[tx["offender"]]
                p[0] -= p[0] * slash.get(tx["kind"], 0) // 10_000
                p[1] = max(0, p[1] - penalty)
                p[4] = p[4] and p[0] >= rules["min_stake"]
                seen.append(evidence_id(tx).hex())
            elif tag == 17:
                last[tx["validator"]] = tx["height"]
        assert not due  # a payment made due is in the same block
        assert header["state_root"] == state_root(people, model_head, header["round"], carried)
        assert header["state_root"].hex() == entry["state_root"]
        parent = H(header["_raw"])
        scores = None
    assert final_height(by_height, last) == golden["final_height"]
    assert sorted(seen) == golden["final_state"]["evidence_seen"]
    assert sum(p[0] for p in people.values()) == golden["total_stake"]


def test_independent_reader_reproduces_the_vectors() -> None:
    vectors = _vectors()
    for case in vectors["encoding"]:
        data = bytes.fromhex(case["encoding"])
        assert read_all(data)["_tag"] == case["object"]["_tag"]
        assert H(data).hex() == case["sha256"]
    contract = read_all(bytes.fromhex(vectors["federation_id"]["contract_encoding"]))
    assert contract["run_id"] == vectors["federation_id"]["run_id"] and not contract["participants"]
    fed_id = federation_id(contract["run_id"], contract["rules"])
    assert fed_id.hex() == vectors["federation_id"]["federation_id"]
    assert fed_id.hex() in {case["federation"] for case in vectors["signing"]}
    for case in vectors["signing"]:
        domain = case["domain"].encode()
        message = bytes.fromhex(case["signing_message"])
        root = H(bytes([len(domain)]) + domain + bytes.fromhex(case["federation"]) + H(message))
        assert root.hex() == case["signing_root"]
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(case["public_key"]))
        key.verify(bytes.fromhex(case["signature"]), root)
    evidence = [read_all(bytes.fromhex(c["encoding"])) for c in vectors["encoding"]]
    ids = {evidence_id(e).hex() for e in evidence if e["_tag"] == 15}
    assert ids == {case["evidence_id"] for case in vectors["evidence_id"]}
    for case in vectors["proposer"]:
        validators = [(bytes.fromhex(k), s) for k, s in case["validators"]]
        chosen = draw(bytes.fromhex(case["parent_hash"]), validators, case["attempt"])
        assert chosen.hex() == case["proposer"]
    for case in vectors["reward_split"]:
        scores = [(bytes.fromhex(k), s) for k, s in case["scores"]]
        assert [[k.hex(), v] for k, v in split(case["pool"], scores)] == case["deltas"]
    for case in vectors["payout"]:
        scores = [(bytes.fromhex(k), s) for k, s in case["scores"]]
        debts = {bytes.fromhex(k): d for k, d in case["debts"]}
        due, left = payout(
            case["carried_in"],
            case["pool"],
            scores,
            case["model_moved"],
            case["payout_min_score"],
            debts,
        )
        assert [[k.hex(), v] for k, v in due] == case["rewards"]
        assert left == case["carried_out"]
    for case in vectors["finality"]:
        by_height = {
            int(h): {bytes.fromhex(k): s for k, s in v.items()}
            for h, v in case["validators_by_height"].items()
        }
        last = {bytes.fromhex(k): h for k, h in case["last_attested"]}
        assert final_height(by_height, last) == case["final_height"]
    for case in vectors["update_hash"]:
        assert _update_encoding(case["tensors"]).hex() == case["encoding"]
        assert H(_update_encoding(case["tensors"])).hex() == case["update_hash"]


def _update_encoding(tensors: dict[str, Any]) -> bytes:
    out = b"FCUPD\x01" + struct.pack("<I", len(tensors))
    for name in sorted(tensors, key=lambda n: n.encode()):
        spec = tensors[name]
        data = np.asarray(spec["values"], dtype=np.dtype(spec["dtype"]).newbyteorder("<")).tobytes()
        dtype, shape = spec["dtype"].encode(), spec["shape"]
        out += struct.pack("<I", len(name.encode())) + name.encode() + bytes([len(dtype)]) + dtype
        out += struct.pack(f"<B{len(shape)}Q", len(shape), *shape) + struct.pack("<Q", len(data))
        out += data
    return out


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit("usage: python -m tests.test_ledger_spec --regenerate")
    write_files()
    print(f"wrote {VECTORS_FILE} and {GOLDEN_FILE}")
