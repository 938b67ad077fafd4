"""Federated rounds through the real ServerApp logic and ClientApp, in process (no Ray).

Each misbehaving client is the real ClientApp with its reply altered afterwards, re-signed with
the client's own key where the attack needs a valid signature.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import FLOWER_LOGGER

from clients import client_app as real_client
from fedchain.crypto.hashing import compute_update_hash
from fedchain.data.holder import load_simulated_holder
from fedchain.errors import InvalidBlock
from fedchain.ledger.builder import sign_commitment
from fedchain.ledger.codec import decode, encode
from fedchain.ledger.lightclient import Checkpoint
from fedchain.ledger.objects import (
    Block,
    ContributionRecord,
    Rejection,
    SlashingEvidence,
    UpdateCommitment,
)
from fedchain.ledger.store import LedgerStore
from fedchain.ledger.verify import verify_ledger
from fedchain.rounds.admission import MISMATCH_REASON
from fedchain.rounds.recheck import recheck_scores
from fedchain.runs.archive import UpdateArchive
from fedchain.runs.layout import update_pack_name
from server.inprocess_grid import NODE_BASE

FLOWER_LOGGER.setLevel(logging.ERROR)


def ledger_transactions(run_dir: Path) -> list[object]:
    with LedgerStore.open(run_dir / "ledger.db", readonly=True) as store:
        return [tx for s in store.iter_blocks() for tx in decode(Block, s.data).transactions]


def test_rounds_register_models_blocks_and_checkpoints(inprocess_federation, tmp_path):
    fed = inprocess_federation(tmp_path, real_client.app, clients=4, rounds=3).run()
    report = verify_ledger(fed.setup.run_dir)
    assert report.ok, report.failure
    assert [o.accepted for o in fed.outcomes] == [4, 4, 4]
    # 3 round blocks + the closing block; the closing block finalises round 3's block
    assert report.head_height == 4 and report.final_height == 3
    assert report.tx_counts["UpdateCommitment"] == 12 and report.tx_counts["ModelVersion"] == 3
    assert len(report.model_versions) == 3 and fed.accuracy is not None
    for context in fed.grid.contexts.values():  # every client holds a checkpoint it checked
        assert int(context.state["fedchain"]["final-height"]) >= 2
    assert report.total_stake == 4 * 1_000_000 + 3 * 10_000  # every round's pool paid out
    assert report.tx_counts["ContributionRecord"] == 3  # rewards follow recorded scores
    metrics = json.loads((fed.setup.run_dir / "metrics.json").read_text())["rounds"]
    assert [m["round"] for m in metrics] == [0, 1, 2, 3]
    assert metrics[3]["accepted"] + len(metrics[3]["left_out"]) == 4  # averaged + left out
    # each message's group is its ledger round (a SuperNode logs it; fedchain join prints it)
    train_groups = {
        m.metadata.group_id for m in fed.grid.sent if m.metadata.message_type == "train"
    }
    assert train_groups == {"1", "2", "3"}


def misbehaving(kind: str) -> ClientApp:
    """The real client, then one attack applied to its train reply."""
    app = ClientApp()
    remembered: dict[str, object] = {}

    @app.train()
    def train(msg: Message, context):  # type: ignore[no-untyped-def]
        config = msg.content["config"]
        round_ = int(config["server-round"])
        if kind == "raises" and round_ >= 2:
            raise RuntimeError("disk on fire")
        reply = real_client.train(msg, context)
        content = reply.content
        update = {k: v.numpy() for k, v in content["arrays"].items()}
        record = dict(content["fedchain"])
        commitment = decode(UpdateCommitment, record["commitment"])
        holder = load_simulated_holder(
            Path(str(config["run-dir"])), int(context.node_config["partition-id"])
        )
        examples = commitment.num_examples

        def resign(new_update: dict, num_examples: int = examples) -> bytes:  # type: ignore[type-arg]
            signed = sign_commitment(
                holder.key,
                bytes(config["genesis-hash"]),
                run_id=commitment.run_id,
                round=round_,
                base_model_hash=commitment.base_model_hash,
                update_hash=compute_update_hash(new_update),
                num_examples=num_examples,
            )
            return encode(signed)

        if kind == "hash-mismatch":
            first = next(iter(update))
            update[first] = update[first] + np.float32(0.01)
        elif kind == "forged-signature":
            record["commitment"] = encode(dataclasses.replace(commitment, signature=bytes(64)))
        elif kind == "replay":
            if round_ == 1:
                remembered.update(update=update, commitment=record["commitment"])
            else:
                update, record["commitment"] = remembered["update"], remembered["commitment"]  # type: ignore[assignment]
        elif kind == "inflated":
            examples = examples * 10
            record["commitment"] = resign(update, examples)
        elif kind == "nan":
            first = next(iter(update))
            update[first] = np.full_like(update[first], np.nan)
            record["commitment"] = resign(update)
        elif kind == "shapes":
            first = next(iter(update))
            update[first] = update[first].reshape(-1)
            record["commitment"] = resign(update)
        metrics = MetricRecord({"num-examples": examples, "train-loss": 0.0})
        arrays = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in update.items()})
        return Message(
            RecordDict({"arrays": arrays, "metrics": metrics, "fedchain": ConfigRecord(record)}),
            reply_to=msg,
        )

    @app.query()
    def query(msg: Message, context):  # type: ignore[no-untyped-def]
        return real_client.seal_and_attest(msg, context)

    return app


ATTACKS = ["hash-mismatch", "forged-signature", "replay", "inflated", "nan", "shapes", "raises"]
EXPECTED_REASON = {
    "hash-mismatch": MISMATCH_REASON,
    "forged-signature": "bad signature",
    "replay": "round",
    "inflated": "examples",
    "nan": "NaN",
    "shapes": "shape",
    "raises": "disk on fire",
}


def test_each_misbehaviour_is_rejected_recorded_and_the_run_goes_on(inprocess_federation, tmp_path):
    """Clients 0..6 each misbehave one way; clients 7..9 are honest."""
    apps = lambda i: misbehaving(ATTACKS[i]) if i < len(ATTACKS) else real_client.app  # noqa: E731
    fed = inprocess_federation(tmp_path, apps, clients=10, rounds=2).run()
    report = verify_ledger(fed.setup.run_dir)
    assert report.ok, report.failure
    assert len(fed.outcomes) == 2
    # round 1: honest 3 + replay (its first round is honest) + raises (raises from round 2)
    assert fed.outcomes[0].accepted == 5 and fed.outcomes[1].accepted == 3
    keys = {i: fed.setup.public_keys[i] for i in range(10)}
    txs = ledger_transactions(fed.setup.run_dir)
    rejections = {(tx.public_key, tx.round): tx.reason for tx in txs if isinstance(tx, Rejection)}
    for i, attack in enumerate(ATTACKS):
        if attack == "forged-signature":  # it never proved it holds a key: named by node only
            assert not any(key == keys[i] for key, _ in rejections)
            refused = [d for o in fed.outcomes for d in o.rejected if d.node_id == NODE_BASE + i]
            assert len(refused) == 2 and all(d.public_key is None for d in refused)
            assert all("bad signature" in d.reason for d in refused)
            continue
        round_ = 2 if attack in ("replay", "raises") else 1
        reason = rejections.get((keys[i], round_), "")
        assert EXPECTED_REASON[attack].lower() in reason.lower(), (attack, reason)
    # a mismatch is refused on the record, never slashed: only the coordinator saw the bytes
    assert not [tx for tx in txs if isinstance(tx, SlashingEvidence)]
    stakes = {p.public_key: p.stake for p in report.state.participants.values()}
    assert stakes[keys[0]] == 1_000_000  # refused, not slashed, and never rewarded
    assert stakes[keys[9]] > 1_000_000  # honest: rewarded
    commits = Counter(tx.public_key for tx in txs if isinstance(tx, UpdateCommitment))
    assert commits[keys[9]] == 2 and commits[keys[0]] == 0 and commits[keys[1]] == 0


def test_a_dead_proposer_is_replaced_and_the_round_goes_on(inprocess_federation, tmp_path):
    """Client 0 never answers: whenever it is drawn to seal, the next draw seals instead."""
    fed = inprocess_federation(tmp_path, real_client.app, clients=3, rounds=4, down={0}).run()
    report = verify_ledger(fed.setup.run_dir)
    assert report.ok, report.failure
    assert [o.accepted for o in fed.outcomes] == [2, 2, 2, 2]
    assert report.head_height == 5


def test_client_refuses_a_head_that_rewrites_its_final_block(inprocess_federation, tmp_path):
    from fedchain.ledger.lightclient import check_head

    fed = inprocess_federation(tmp_path, real_client.app, clients=3, rounds=3).run()
    context = next(iter(fed.grid.contexts.values()))
    saved = Checkpoint(
        int(context.state["fedchain"]["final-height"]),
        bytes(context.state["fedchain"]["final-hash"]),
    )
    with LedgerStore.open(fed.setup.run_dir / "ledger.db", readonly=True) as store:
        headers = [decode(Block, s.data).signed_header for s in store.iter_blocks()]
    genesis_hash = verify_ledger(fed.setup.run_dir).genesis_hash
    assert check_head(saved, headers, saved.height, None, genesis_hash) == saved
    forged = list(headers)
    original = forged[saved.height]
    forged[saved.height] = dataclasses.replace(
        original, header=dataclasses.replace(original.header, round=original.header.round + 1)
    )
    with pytest.raises(InvalidBlock):
        check_head(saved, forged, saved.height, None, genesis_hash)


def test_ledger_off_runs_plain_fedavg_and_writes_no_ledger(inprocess_federation, tmp_path):
    fed = inprocess_federation(
        tmp_path, real_client.app, clients=3, rounds=2, ledger=False, aggregation="fedavg"
    ).run()
    assert not (fed.setup.run_dir / "ledger.db").exists() and fed.outcomes == []
    assert fed.accuracy is not None and fed.accuracy["accuracy"] > 0.3
    assert all("fedchain" not in c.state for c in fed.grid.contexts.values())  # nothing signed


@pytest.mark.parametrize("method", ["leave-one-out", "gtg-shapley", "gradient-similarity"])
def test_contribution_scores_split_rewards_and_updates_are_archived(
    inprocess_federation, tmp_path, method
):
    apps = lambda i: misbehaving("raises") if i == 0 else real_client.app  # noqa: E731
    fed = inprocess_federation(tmp_path, apps, clients=4, rounds=2, contribution=method).run()
    report = verify_ledger(fed.setup.run_dir)
    assert report.ok, report.failure
    txs = ledger_transactions(fed.setup.run_dir)
    records = [tx for tx in txs if isinstance(tx, ContributionRecord)]
    assert [r.round for r in records] == [1, 2]
    assert len(records[1].scores) == 3  # client 0 raised in round 2: not scored
    assert any(score > 0 for _, score in records[1].scores)
    archive = UpdateArchive(fed.setup.run_dir)
    committed = {tx.update_hash for tx in txs if isinstance(tx, UpdateCommitment)}
    assert committed <= set(archive.index)
    assert sorted(p.name for p in archive.files) == [update_pack_name(1), update_pack_name(2)]
    check = recheck_scores(fed.setup.run_dir, report, fed.setup.config)
    assert check.rounds == 2 and not check.problems and check.max_difference <= 0.005
    # an archived update that no longer holds what was committed is reported
    victim = archive.index[sorted(committed)[0]]
    victim.write_bytes(victim.read_bytes()[:-8] + bytes(8))
    assert any(
        "altered" in p or "differ" in p
        for p in recheck_scores(fed.setup.run_dir, report, fed.setup.config).problems
    )
