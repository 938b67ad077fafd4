"""Anchoring to an EVM chain (fedchain.anchor.evm, .receipts, .check) on eth-tester's in-memory
chain; and the ledger's AnchorReceipt rule (pre-state -> receipt -> post-state, test_invalid_*).

Each attack plays the adversary against the real code: a ledger copy cut below an anchored
height, a block rewritten below it (with and without re-anchoring), and forged receipts (another
statement's proof, another contract, a contract in the ledger's block that does not check).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from fedchain.anchor.check import check_anchors, compute_ledger_statement
from fedchain.anchor.evm import EvmWitness, deploy_contract, memory_chain
from fedchain.anchor.receipts import (
    Anchoring,
    compute_statement,
    is_anchor_due,
    load_receipt_files,
)
from fedchain.anchor.witness import compute_anchor_digest
from fedchain.errors import AnchorError, InvalidTransaction
from fedchain.ledger.builder import build_block
from fedchain.ledger.chain import Chain
from fedchain.ledger.codec import compute_hash, decode
from fedchain.ledger.consensus import get_proposer
from fedchain.ledger.containers import LedgerState
from fedchain.ledger.objects import AnchorReceipt, AnchorStatement, Block, Transaction
from fedchain.ledger.show import describe_transaction
from fedchain.ledger.state import process_transaction
from fedchain.ledger.synthetic import SyntheticFederation
from fedchain.ledger.verify import VerifyReport, verify_ledger

ROUNDS = 7
EVERY = 2


@pytest.fixture
def contract() -> str:
    """A fresh contract per test: every test's ledger has the same genesis, and one contract
    holding two of its histories would (rightly) see a rewrite."""
    return deploy_contract(memory_chain())


@pytest.fixture
def witness(contract: str) -> EvmWitness:
    return EvmWitness(memory_chain(), contract)


def build_ledger(
    run_dir: Path,
    anchoring: Anchoring | None,
    *,
    rounds: int = ROUNDS,
    rewrite_round: int | None = None,
    extra: Sequence[Transaction] = (),
) -> list[Block]:
    """A synthetic federation's ledger in ``run_dir`` (always the same genesis), anchored by
    ``anchoring`` as the coordinator does: a due receipt goes at the end of the next block.
    ``rewrite_round`` registers another model in that round (a rewritten history from there);
    ``extra`` transactions go into the last block."""
    fed = SyntheticFederation(4)
    run_dir.mkdir(parents=True, exist_ok=True)
    with Chain.create(run_dir / "ledger.db", fed.genesis) as chain:
        blocks = [decode(Block, stored.data) for stored in chain.store.iter_blocks()]
        for _ in range(rounds):
            state = chain.state
            round_ = state.round + 1
            model = bytes([round_]) * 32 if round_ == rewrite_round else None
            draft, _ = fed.make_round(state, model_hash=model)
            txs = list(draft.transactions)
            if anchoring is not None:
                final = max(0, state.height - 1)  # every validator attests each previous block
                txs += anchoring.receipts_due(blocks.__getitem__, final)
            if round_ == rounds:
                txs += extra
            proposer = fed.by_public[get_proposer(state)]
            block, post = build_block(state, txs, proposer, round=round_)
            chain.append(block, post)
            blocks.append(block)
    return blocks


def copy_prefix(blocks: Sequence[Block], height: int, run_dir: Path) -> VerifyReport:
    """A copy of the ledger cut after block ``height`` (a valid, shorter ledger)."""
    fed = SyntheticFederation(4)
    run_dir.mkdir(parents=True, exist_ok=True)
    with Chain.create(run_dir / "ledger.db", fed.genesis) as chain:
        for block in blocks[1 : height + 1]:
            chain.append(block)
    return verify_ledger(run_dir)


@pytest.fixture
def anchored(tmp_path: Path, witness: EvmWitness) -> tuple[Path, list[Block]]:
    run_dir = tmp_path / "run"
    return run_dir, build_ledger(run_dir, Anchoring(witness, EVERY, run_dir))


# -- when and what ------------------------------------------------------------------------------


def test_is_anchor_due_every_k_final_blocks() -> None:
    assert not is_anchor_due(1, 0, 2)
    assert is_anchor_due(2, 0, 2)
    assert not is_anchor_due(3, 2, 2)
    assert is_anchor_due(5, 2, 2)
    assert not is_anchor_due(100, 0, 0)  # off


def test_statement_binds_genesis_block_and_model_head(anchored: tuple[Path, list[Block]]) -> None:
    run_dir, blocks = anchored
    report = verify_ledger(run_dir)
    statement = compute_statement(blocks.__getitem__, 3)
    assert statement == compute_ledger_statement(report, 3)
    assert statement.genesis_hash == report.genesis_hash
    assert statement.block_hash == report.block_hashes[3]
    assert compute_anchor_digest(statement) == compute_hash(statement)
    genesis_statement = compute_statement(blocks.__getitem__, 0)
    assert genesis_statement.model_head == report.initial_model_hash


# -- the ledger's rule --------------------------------------------------------------------------


def _state_and_receipt(tmp_path: Path, witness: EvmWitness) -> tuple[LedgerState, AnchorReceipt]:
    blocks = build_ledger(tmp_path / "r", None, rounds=3)
    state = verify_ledger(tmp_path / "r").state
    assert state is not None
    statement = compute_statement(blocks.__getitem__, 2)
    return state, AnchorReceipt("evm", statement, witness.publish(statement))


def test_receipt_is_recorded_and_changes_nothing_else(tmp_path: Path, witness: EvmWitness) -> None:
    state, receipt = _state_and_receipt(tmp_path, witness)
    post = process_transaction(state, receipt, state.round + 1)
    assert post.participants == state.participants
    assert post.model_head == state.model_head


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"witness": "ots"}, "unknown anchor witness"),
        ({"proof": b""}, "anchor proof must be"),
        ({"proof": bytes(65_537)}, "anchor proof must be"),
        ({"statement": {"genesis_hash": bytes(32)}}, "is for federation"),
        ({"statement": {"height": 4}}, "anchorable heights are 0..3"),
        ({"statement": {"height": -1}}, "anchorable heights are 0..3"),
        ({"statement": {"block_hash": bytes(32)}}, "is not this chain's block at height 2"),
        ({"statement": {"model_head": b"short"}}, "anchored model head must be 32 bytes"),
    ],
)
def test_invalid_receipt_is_refused(
    tmp_path: Path, witness: EvmWitness, change: dict[str, object], message: str
) -> None:
    state, receipt = _state_and_receipt(tmp_path, witness)
    statement_change = change.pop("statement", {})
    statement = dataclasses.replace(receipt.statement, **statement_change)  # type: ignore[arg-type]
    bad = dataclasses.replace(receipt, statement=statement, **change)  # type: ignore[arg-type]
    with pytest.raises(InvalidTransaction, match=message):
        process_transaction(state, bad, state.round + 1)


# -- the honest run -----------------------------------------------------------------------------


def test_anchored_ledger_verifies_and_reports_last_anchored_height(
    anchored: tuple[Path, list[Block]], witness: EvmWitness
) -> None:
    run_dir, _ = anchored
    report = verify_ledger(run_dir)
    assert report.ok, report.failure
    heights = [r.statement.height for _, r in report.anchor_receipts]
    assert heights == [2, 4]  # final heights 2 and 4 anchored, in blocks 4 and 6
    assert describe_transaction(report.anchor_receipts[0][1]).startswith("anchor evm height=2 ")
    assert [p.name for p, _ in load_receipt_files(run_dir)] == [
        "00000002.receipt",
        "00000004.receipt",
    ]
    check = check_anchors(report, {"evm": witness}, load_receipt_files(run_dir))
    assert check.ok, check.failures
    assert check.anchored_height == 4
    sources = {f.source for f in check.findings}
    assert {"block 4", "block 6"} <= sources
    assert any(s.startswith("the evm witness") for s in sources)  # the contract lists them too
    assert all(f.stamp.where.startswith("EVM chain") for f in check.findings)


def test_publish_costs_gas_once_per_anchor(tmp_path: Path, contract: str) -> None:
    witness = EvmWitness(memory_chain(), contract)
    anchoring = Anchoring(witness, EVERY, tmp_path)
    build_ledger(tmp_path, anchoring)
    assert len(witness.gas_used) == 2 and all(30_000 < gas < 100_000 for gas in witness.gas_used)
    assert len(anchoring.seconds) == 2


# -- attacks ------------------------------------------------------------------------------------


def test_invalid_truncated_copy_with_kept_receipts_fails(
    anchored: tuple[Path, list[Block]], witness: EvmWitness, tmp_path: Path
) -> None:
    run_dir, blocks = anchored
    short = copy_prefix(blocks, 3, tmp_path / "short")  # below anchored height 4
    assert short.ok  # on its own, a valid shorter ledger
    check = check_anchors(short, {"evm": witness}, load_receipt_files(run_dir))
    assert not check.ok
    assert any("00000004.receipt" in f and "shortened" in f for f in check.failures)


def test_invalid_truncated_copy_is_caught_by_the_witness_alone(
    anchored: tuple[Path, list[Block]], witness: EvmWitness, tmp_path: Path
) -> None:
    """No receipt files: the copy (cut after block 4, so final up to 3) still holds the receipt
    of height 2 (in block 4), whose sender the contract's log names as the anchorer of 4."""
    _, blocks = anchored
    short = copy_prefix(blocks, 4, tmp_path / "short")
    check = check_anchors(short, {"evm": witness})
    assert any("the evm witness" in f and "height 4" in f for f in check.failures)
    assert any("shortened" in f for f in check.failures)


def test_invalid_copy_stripped_of_every_receipt_fails_for_a_verifier_who_knows_the_sender(
    anchored: tuple[Path, list[Block]], contract: str, tmp_path: Path
) -> None:
    _, blocks = anchored
    short = copy_prefix(blocks, 2, tmp_path / "short")  # final height 1 < anchored 2
    assert not short.anchor_receipts
    sender = memory_chain().eth.accounts[0]
    check = check_anchors(short, {"evm": EvmWitness(memory_chain(), contract, [sender])})
    assert not check.ok
    assert any("shortened" in f for f in check.failures)


@pytest.mark.parametrize("reanchor", [False, True])
def test_invalid_rewritten_block_below_anchored_height_fails(
    anchored: tuple[Path, list[Block]],
    witness: EvmWitness,
    tmp_path: Path,
    reanchor: bool,
) -> None:
    """Round 2 rewritten (another model, so blocks 2.. differ), re-signed by every key; with
    ``reanchor`` the rewriter even anchors its new history to the same contract."""
    run_dir, _ = anchored
    forged_dir = tmp_path / "forged"
    anchoring = Anchoring(witness, EVERY, forged_dir) if reanchor else None
    build_ledger(forged_dir, anchoring, rewrite_round=2)
    forged = verify_ledger(forged_dir)
    assert forged.ok
    check = check_anchors(forged, {"evm": witness}, load_receipt_files(run_dir))
    assert not check.ok
    assert any("rewritten" in f for f in check.failures)


def test_invalid_receipt_with_another_statements_proof_fails(
    anchored: tuple[Path, list[Block]], witness: EvmWitness
) -> None:
    run_dir, _ = anchored
    report = verify_ledger(run_dir)
    (path, receipt), (_, other) = load_receipt_files(run_dir)
    forged = dataclasses.replace(receipt, proof=other.proof)  # height 2's statement, 4's proof
    check = check_anchors(report, {"evm": witness}, [(path, forged)])
    assert any(
        f.startswith(str(path)) and "not this statement's digest" in f for f in check.failures
    )


def test_invalid_receipt_from_another_contract_fails(
    anchored: tuple[Path, list[Block]], witness: EvmWitness, tmp_path: Path
) -> None:
    run_dir, blocks = anchored
    report = verify_ledger(run_dir)
    rogue = EvmWitness(memory_chain(), deploy_contract(memory_chain()))
    statement = compute_statement(blocks.__getitem__, 4)
    forged = AnchorReceipt("evm", statement, rogue.publish(statement))
    check = check_anchors(report, {"evm": witness}, [(tmp_path / "rogue.receipt", forged)])
    assert any("the trusted anchor contract is" in f for f in check.failures)


def test_invalid_forged_receipt_inside_the_ledger_fails(
    witness: EvmWitness, tmp_path: Path
) -> None:
    """The transition cannot reach the witness: a block with a made-up proof is valid, and
    ``verify --anchors`` is what refuses it."""
    blocks = build_ledger(tmp_path / "probe", None, rounds=3)
    statement = compute_statement(blocks.__getitem__, 1)
    proof = json.dumps(
        {
            "chain_id": memory_chain().eth.chain_id,
            "contract": witness.address,
            "tx_hash": "0x" + "ab" * 32,
        }
    ).encode()
    shutil.rmtree(tmp_path / "probe")
    build_ledger(tmp_path / "run", None, rounds=3, extra=[AnchorReceipt("evm", statement, proof)])
    report = verify_ledger(tmp_path / "run")
    assert report.ok and len(report.anchor_receipts) == 1
    check = check_anchors(report, {"evm": witness})
    assert check.failures == (f"block 3: the chain has no anchor transaction 0x{'ab' * 32}",)


def test_invalid_missing_witness_is_a_failure_that_says_so(
    anchored: tuple[Path, list[Block]],
) -> None:
    run_dir, _ = anchored
    check = check_anchors(verify_ledger(run_dir), {})
    assert check.failures and all("no evm witness given" in f for f in check.failures)


def test_invalid_contract_address_is_refused() -> None:
    with pytest.raises(AnchorError, match="not an EVM address"):
        EvmWitness(memory_chain(), "0x1234")


def test_invalid_malformed_proof_is_refused(witness: EvmWitness) -> None:
    statement = AnchorStatement(bytes(32), 1, bytes(32), bytes(32))
    with pytest.raises(AnchorError, match="not \\{chain_id, contract, tx_hash\\} JSON"):
        witness.check(statement, b"not json")


def test_importing_the_evm_witness_leaves_a_recursion_limit_json_survives() -> None:
    """web3 imports py_ecc, which raises the process's recursion limit to 100,000; json's C parser
    then crashed the process (SIGSEGV) on a deeply nested document instead of raising
    RecursionError (a dataset header of 100,000 '[' did, in this test suite)."""
    code = (
        "import json, sys\n"
        "import fedchain.anchor.evm\n"
        "assert sys.getrecursionlimit() <= fedchain.anchor.evm.SAFE_RECURSION_LIMIT\n"
        "try:\n"
        "    json.loads('[' * 100_000)\n"
        "except RecursionError:\n"
        "    print('refused')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0 and done.stdout.strip() == "refused", done.stderr[-2000:]
