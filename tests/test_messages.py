"""fedchain.rounds.messages (the wire contract) and fedchain.rounds.participant (client duties).

The literal keys here are the wire format: a renamed constant must fail these tests.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from fedchain.config import RunConfig
from fedchain.crypto.identity import public_key_bytes
from fedchain.errors import DecodeError, InvalidBlock
from fedchain.learning.attacks import Attack
from fedchain.ledger.builder import prepare_block
from fedchain.ledger.chain import Chain
from fedchain.ledger.codec import decode
from fedchain.ledger.lightclient import Checkpoint
from fedchain.ledger.objects import Attestation, Block, Transaction, UpdateCommitment
from fedchain.ledger.synthetic import SyntheticFederation
from fedchain.rounds import messages as m
from fedchain.rounds.participant import (
    check_view_replayed,
    compute_duties,
    sign_update_commitment,
)
from fedchain.rounds.replica import compute_held_forms


def test_the_keys_on_the_wire() -> None:
    view = m.encode_ledger_view(b"g" * 32, "run", [], 0, None)
    assert list(view) == [
        "genesis-hash",
        "run-id",
        "blocks",
        "final-height",
        "pending",
        "pending-transactions",
    ]
    assert view["pending"] == b"" and view["blocks"] == view["pending-transactions"] == []
    assert m.encode_replica([b"b0"]) == {"blocks": [b"b0"]} and m.REPLICA == "fedchain-replica"
    duties = m.encode_duties(m.Duties(3, b"a", b"s", b"c"))
    assert duties == {"checkpoint": 3, "attestation": b"a", "seal": b"s", "commitment": b"c"}
    assert m.encode_duties(m.Duties(3)) == {"checkpoint": 3, "attestation": b"", "seal": b""}
    assert m.encode_metrics(5, 0.5) == {"num-examples": 5, "train-loss": 0.5}
    assert (m.CONFIG, m.ARRAYS, m.METRICS, m.DUTIES) == ("config", "arrays", "metrics", "fedchain")
    assert (m.BASE_MODEL_HASH, m.SERVER_ROUND) == ("base-model-hash", "server-round")


def test_train_settings_round_trip(tmp_path: Path) -> None:
    config = RunConfig(model="mlp", local_epochs=2, batch_size=16, lr=0.1, seed=7)
    settings = m.encode_train_settings(config, tmp_path)
    assert settings == {
        "run-dir": str(tmp_path.resolve()),
        "model": "mlp",
        "finetune": "full",
        "lora-rank": 0,
        "local-epochs": 2,
        "batch-size": 16,
        "lr": 0.1,
        "seed": 7,
        "ledger": True,
        "threads": 1,
    }
    assert m.decode_train_settings(settings) == m.TrainSettings("mlp", 2, 16, 0.1, 7)
    assert m.decode_run_dir(settings) == tmp_path.resolve() and m.decode_run_dir({}) is None
    assert m.is_ledger_on(settings) and m.is_ledger_on({}) and m.decode_threads({}) == 1


def test_attack_settings_name_the_attackers() -> None:
    config = RunConfig(clients=5, attack="sign-flip", attackers=2)
    settings = m.encode_attack_settings(config)
    assert settings["attack"] == "sign-flip" and settings["attack-scale"] == 1.0
    attackers = settings["attackers"]
    assert len(attackers) == 2
    assert m.decode_attack({}, settings, attackers[0]) == Attack("sign-flip", 1.0)
    honest = next(i for i in range(5) if i not in attackers)
    assert m.decode_attack({}, settings, honest) is None
    assert m.decode_attack({}, settings, None) is None  # a deployed node without its own attack
    assert m.decode_attack({"attack": "none"}, settings, attackers[0]) is None
    assert m.decode_attack({"attack": "scaled", "attack-scale": "3"}, {}, None) == Attack(
        "scaled", 3.0
    )
    assert m.encode_attack_settings(RunConfig()) == {}


def test_duties_decode_what_they_encode() -> None:
    problems: list[str] = []
    duties = m.Duties(4, b"att", b"seal", b"commit")
    assert m.decode_duties(m.encode_duties(duties), problems) == duties and problems == []


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        (None, "no fedchain record"),
        ("x", "fedchain is not a record"),
        ({"other": 1}, 'unexpected field "other"'),
        ({"seal": "text"}, 'seal is text "text", not bytes'),
        ({"attestation": b"x" * 4097}, "attestation is 4097 bytes (at most 4096)"),
        ({"checkpoint": -1}, "checkpoint is -1, not a whole number in [0, 2**63)"),
        ({"checkpoint": 1.5}, "checkpoint is 1.5, not a whole number in [0, 2**63)"),
        ({"checkpoint": True}, "checkpoint is True, not a whole number in [0, 2**63)"),
    ],
)
def test_invalid_duties_are_problems_and_left_empty(record: object, problem: str) -> None:
    problems: list[str] = []
    duties = m.decode_duties(record, problems)
    assert problems == [problem]
    assert duties.seal == b"" and duties.attestation == b"" and duties.checkpoint == 0


def test_invalid_num_examples() -> None:
    problems: list[str] = []
    assert m.decode_num_examples({}, problems) == 0 and problems == ["no num-examples metric"]
    assert m.decode_num_examples({"num-examples": 2**63}, problems) == 0
    assert problems[-1] == "num-examples is a 64-bit integer, not a whole number in [0, 2**63)"
    assert m.decode_num_examples({"num-examples": 12.0}, []) == 12


def test_checkpoint_state_round_trip() -> None:
    checkpoint = Checkpoint(3, b"h" * 32)
    record = m.encode_checkpoint(checkpoint)
    assert record == {"final-height": 3, "final-hash": b"h" * 32}
    assert m.decode_checkpoint(record) == checkpoint


def test_participant_attests_seals_and_commits(tmp_path: Path) -> None:
    """Round 2's view of a synthetic federation after round 1: every client attests to the
    pending block, only its proposer seals it, and a commitment names the view's run."""
    federation = SyntheticFederation(3, run_id="wire")
    with Chain.create(tmp_path / "ledger.db", federation.genesis) as chain:
        block, state = federation.make_round(chain.state)
        chain.append(block, state)
        header, _ = prepare_block(state, [], round=2)
        genesis = decode(Block, next(chain.store.iter_blocks()).data)
        # block 1 carries no attestations yet, so only block 0 is final (a client refuses a
        # view that claims more than its replica proves)
        wire = m.encode_ledger_view(state.genesis_hash, "wire", [genesis, block], 0, header)
    view = m.decode_ledger_view(wire)
    assert view.pending == header and view.blocks == (genesis, block)
    assert view.headers == (genesis.signed_header, block.signed_header)
    checked = check_view_replayed(None, None, view)
    checkpoint = checked.checkpoint
    assert checkpoint.height == 0 and checked.replica.state == state
    sealed = 0
    for key in federation.keys:
        public = public_key_bytes(key)
        duties = compute_duties(key, public, view, checkpoint)
        assert decode(Attestation, duties.attestation).validator == public
        sealed += bool(duties.seal)
        assert bool(duties.seal) == (header.proposer == public)
    assert sealed == 1
    commitment = decode(
        UpdateCommitment,
        sign_update_commitment(
            federation.keys[0],
            view,
            round_=2,
            base_model_hash=state.model_head,
            update={},
            num_examples=10,
        ),
    )
    assert commitment.run_id == "wire" and commitment.round == 2 and commitment.num_examples == 10


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"genesis-hash": "g"}, "genesis-hash is text"),
        ({"final-height": -1}, "final-height is not a height"),
        ({"final-height": True}, "final-height is not a height"),
        ({"blocks": b"x"}, "blocks is a bytes, not list"),
        ({"blocks": ["x"]}, "an item of blocks is text"),
        ({"blocks": [bytes(m.MAX_VIEW_BLOCK_BYTES + 1)]}, "blocks is 16777217 bytes"),
        ({"pending": bytes(m.MAX_LEDGER_FIELD_BYTES + 1)}, "pending is 4097 bytes"),
        ({"pending-transactions": [b"t"]}, "pending transactions without a pending block"),
        ({"pending-transactions": None}, "pending-transactions is None"),
    ],
)
def test_invalid_ledger_views_are_refused_before_anything_is_decoded(
    change: dict[str, object], reason: str
) -> None:
    """The coordinator chooses a view's bytes: types and sizes first, then the ledger decoder."""
    view = {**m.encode_ledger_view(b"g" * 32, "run", [], 0, None), **change}
    with pytest.raises(DecodeError, match=reason):
        m.decode_ledger_view(view)


def test_invalid_a_view_with_more_blocks_than_allowed() -> None:
    view = m.encode_ledger_view(b"g" * 32, "run", [b""] * (m.MAX_VIEW_BLOCKS + 1), 0, None)
    with pytest.raises(DecodeError, match=f"blocks has {m.MAX_VIEW_BLOCKS + 1} items"):
        m.decode_ledger_view(view)


def test_invalid_a_view_over_the_total_size_cap_is_refused_before_decoding() -> None:
    """Each item under its own cap, together over :data:`MAX_VIEW_BYTES`: one 16 MiB bytes
    object listed 17 times (so the test holds 16 MiB, not 272)."""
    item = bytes(m.MAX_VIEW_BLOCK_BYTES)
    count = m.MAX_VIEW_BYTES // len(item) + 1
    view = m.encode_ledger_view(b"g" * 32, "run", [item] * count, 0, None)
    with pytest.raises(DecodeError, match=f"at most {m.MAX_VIEW_BYTES}"):
        m.decode_ledger_view(view)


@pytest.fixture(scope="module")
def three_blocks(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Block], bytes]:
    """Blocks 0..2 of a synthetic federation, and its genesis hash."""
    federation = SyntheticFederation(3, run_id="held")
    with Chain.create(tmp_path_factory.mktemp("held") / "ledger.db", federation.genesis) as chain:
        for _ in range(2):
            block, state = federation.make_round(chain.state)
            chain.append(block, state)
        blocks = [decode(Block, stored.data) for stored in chain.store.iter_blocks()]
    return blocks, state.genesis_hash


def test_blocks_the_client_holds_are_taken_by_their_bytes_without_decoding(three_blocks) -> None:
    """Re-sent whole or as headers alone, a held block is the client's own object (not decoded
    from the coordinator's bytes); the next block is decoded and replayed."""
    blocks, genesis_hash = three_blocks
    replica = check_view_replayed(
        None,
        None,
        m.decode_ledger_view(m.encode_ledger_view(genesis_hash, "held", blocks[:2], 0, None)),
    ).replica
    forms = compute_held_forms(replica)
    assert len(forms) == 4  # blocks 0 and 1, each whole and bare
    for resent in (blocks[:2], [Block(b.signed_header, ()) for b in blocks[:2]]):
        wire = m.encode_ledger_view(genesis_hash, "held", [*resent, blocks[2]], 0, None)
        view = m.decode_ledger_view(wire, forms)
        assert all(view.blocks[i] is forms[wire["blocks"][i]] for i in range(2))
        assert view.blocks[2] == blocks[2]
        assert check_view_replayed(replica, None, view).replica.state.height == 2


def test_a_decoded_memo_shares_objects_and_gives_what_decoding_gives(three_blocks) -> None:
    """Two clients of one process decode the same view: the second gets the very objects the
    first decoded (blocks and pending transactions), equal to a fresh decode; an entry of the
    wrong kind under some bytes is not taken for them."""
    blocks, genesis_hash = three_blocks
    pending = blocks[2]
    wire = m.encode_ledger_view(
        genesis_hash, "memo", blocks[:2], 0, pending.header, pending.transactions
    )
    memo: dict[bytes, Block | Transaction] = {}
    first = m.decode_ledger_view(wire, None, memo)
    assert len(memo) == 2 + len(pending.transactions)
    second = m.decode_ledger_view(wire, None, memo)
    fresh = m.decode_ledger_view(wire)
    assert second == fresh == first
    assert all(a is b for a, b in zip(first.blocks, second.blocks, strict=True))
    assert all(
        a is b for a, b in zip(first.pending_transactions, second.pending_transactions, strict=True)
    )
    wrong_kind: dict[bytes, Block | Transaction] = {
        raw: blocks[0] for raw in wire[m.PENDING_TRANSACTIONS]
    }
    third = m.decode_ledger_view(wire, None, wrong_kind)
    assert third.pending_transactions == pending.transactions


def test_invalid_a_held_block_re_sent_with_another_body_or_signature(three_blocks) -> None:
    """The coordinator re-sends block 1, which the client holds, with junk in its body (before,
    the body was decoded and never read), or with the header re-signed: both refused."""
    blocks, genesis_hash = three_blocks
    first = m.encode_ledger_view(genesis_hash, "held", blocks[:2], 0, None)
    replica = check_view_replayed(None, None, m.decode_ledger_view(first)).replica
    forms = compute_held_forms(replica)
    block1 = blocks[1]
    junk_body = Block(block1.signed_header, (*block1.transactions, *blocks[2].transactions))
    other_body = Block(block1.signed_header, blocks[2].transactions)
    resigned = Block(replace(block1.signed_header, signature=bytes(64)), ())
    for held_forms in (forms, compute_held_forms(replica, since=2)):  # block 1 decoded, or not
        for forged, reason in (
            (junk_body, "carries a body other than the one this client replayed"),
            (other_body, "carries a body other than the one this client replayed"),
            (resigned, "not the block 1 this client replayed"),
        ):
            wire = m.encode_ledger_view(genesis_hash, "held", [forged, blocks[2]], 0, None)
            view = m.decode_ledger_view(wire, held_forms)
            with pytest.raises(InvalidBlock, match=reason):
                check_view_replayed(replica, None, view)


def test_held_forms_from_the_checkpoint_on_and_older_blocks_still_compared(three_blocks) -> None:
    """Forms only from the checkpoint's height on (a view starts there); a coordinator that
    re-sends older blocks anyway has them decoded and compared with the held ones: as held or
    bare, accepted; the held encodings are the client's own objects only where forms exist."""
    blocks, genesis_hash = three_blocks
    first = m.encode_ledger_view(genesis_hash, "held", blocks[:2], 0, None)
    replica = check_view_replayed(None, None, m.decode_ledger_view(first)).replica
    forms = compute_held_forms(replica, since=1)
    assert len(forms) == 2 and all(b.header.height == 1 for b in forms.values())
    for resent in (blocks[:2], [Block(b.signed_header, ()) for b in blocks[:2]]):
        wire = m.encode_ledger_view(genesis_hash, "held", [*resent, blocks[2]], 0, None)
        view = m.decode_ledger_view(wire, forms)
        assert view.blocks[0] not in forms.values() and view.blocks[1] is forms[wire["blocks"][1]]
        assert check_view_replayed(replica, None, view).replica.state.height == 2
