"""Anchoring to an RFC 3161 timestamping authority (fedchain.anchor.rfc3161) against a local TSA
this test starts (fedchain.anchor.local_tsa: real signed TimeStampResp tokens over HTTP).

Attacks: a truncated ledger copy and a rewritten one (caught through the receipt files kept
outside the ledger: a TSA keeps no searchable record), another statement's token, a token of
an authority the verifier does not trust, and bytes that are no token at all.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedchain.anchor.check import check_anchors
from fedchain.anchor.local_tsa import LocalTsa
from fedchain.anchor.receipts import (
    MAX_PUBLISH_FAILURES,
    Anchoring,
    compute_statement,
    load_receipt_files,
)
from fedchain.anchor.rfc3161 import Rfc3161Witness, http_transport, load_certificates
from fedchain.errors import AnchorError
from fedchain.ledger.codec import decode
from fedchain.ledger.objects import AnchorStatement, Block
from fedchain.ledger.store import LedgerStore
from fedchain.ledger.verify import verify_ledger
from tests.test_anchor import EVERY, build_ledger, copy_prefix


@pytest.fixture(scope="module")
def tsa() -> LocalTsa:
    return LocalTsa()


@pytest.fixture(scope="module")
def witness(tsa: LocalTsa) -> Iterator[Rfc3161Witness]:
    with tsa.serve() as url:
        yield Rfc3161Witness(load_certificates(tsa.root_pem), http_transport(url))


@pytest.fixture(scope="module")
def anchored(tmp_path_factory: pytest.TempPathFactory, witness: Rfc3161Witness) -> Path:
    run_dir = tmp_path_factory.mktemp("tsa") / "run"
    build_ledger(run_dir, Anchoring(witness, EVERY, run_dir))
    return run_dir


def read_blocks(run_dir: Path) -> list[Block]:
    with LedgerStore.open(run_dir / "ledger.db", readonly=True) as store:
        return [decode(Block, stored.data) for stored in store.iter_blocks()]


STATEMENT = AnchorStatement(bytes(range(32)), 3, bytes(32), b"\x01" * 32)


def test_token_over_http_verifies_and_stamps_the_time(witness: Rfc3161Witness) -> None:
    before = int(time.time())
    proof = witness.publish(STATEMENT)
    stamp = witness.check(STATEMENT, proof)
    assert before - 2 <= stamp.time <= int(time.time()) + 1
    assert stamp.where.startswith("TSA CN=fedchain local TSA, token serial ")


def test_anchored_ledger_verifies(anchored: Path, witness: Rfc3161Witness) -> None:
    report = verify_ledger(anchored)
    assert report.ok, report.failure
    assert [r.witness for _, r in report.anchor_receipts] == ["rfc3161", "rfc3161"]
    check = check_anchors(report, {"rfc3161": witness}, load_receipt_files(anchored))
    assert check.ok, check.failures
    assert check.anchored_height == 4
    assert len(check.findings) == 4  # two in blocks, two in anchors/; the TSA lists none


def test_a_checking_witness_needs_no_tsa_connection(anchored: Path, tsa: LocalTsa) -> None:
    offline = Rfc3161Witness(load_certificates(tsa.root_pem))
    assert check_anchors(verify_ledger(anchored), {"rfc3161": offline}).ok
    with pytest.raises(AnchorError, match="no TSA to send requests to"):
        offline.publish(STATEMENT)


def test_invalid_truncated_copy_fails(
    anchored: Path, witness: Rfc3161Witness, tmp_path: Path
) -> None:
    short = copy_prefix(read_blocks(anchored), 3, tmp_path / "short")
    check = check_anchors(short, {"rfc3161": witness}, load_receipt_files(anchored))
    assert any("00000004.receipt" in f and "shortened" in f for f in check.failures)


def test_invalid_rewritten_copy_fails(
    anchored: Path, witness: Rfc3161Witness, tmp_path: Path
) -> None:
    build_ledger(tmp_path / "forged", None, rewrite_round=2)
    check = check_anchors(
        verify_ledger(tmp_path / "forged"), {"rfc3161": witness}, load_receipt_files(anchored)
    )
    assert any("00000002.receipt" in f and "rewritten" in f for f in check.failures)


def test_invalid_token_of_another_statement_fails(witness: Rfc3161Witness) -> None:
    proof = witness.publish(STATEMENT)
    other = dataclasses.replace(STATEMENT, height=4)
    with pytest.raises(AnchorError, match="stamps another digest than this statement's"):
        witness.check(other, proof)


def test_invalid_token_of_an_untrusted_tsa_fails(witness: Rfc3161Witness) -> None:
    rogue = LocalTsa(name="fedchain local TSA")  # same name, another key and root
    proof = Rfc3161Witness([rogue.root], rogue.respond).publish(STATEMENT)
    with pytest.raises(AnchorError, match="not signed by a TSA that the trusted certificate"):
        witness.check(STATEMENT, proof)


def test_invalid_receipt_file_with_an_untrusted_token_fails(
    anchored: Path, witness: Rfc3161Witness
) -> None:
    (path, receipt), _ = load_receipt_files(anchored)
    rogue = LocalTsa()
    forged = dataclasses.replace(
        receipt, proof=Rfc3161Witness([rogue.root], rogue.respond).publish(receipt.statement)
    )
    check = check_anchors(verify_ledger(anchored), {"rfc3161": witness}, [(path, forged)])
    assert any(f.startswith(str(path)) and "not signed by a TSA" in f for f in check.failures)


def test_invalid_bytes_are_no_token(witness: Rfc3161Witness) -> None:
    with pytest.raises(AnchorError, match="not a TimeStampResp"):
        witness.check(STATEMENT, b"\x30\x03\x02\x01\x00")


def test_statement_of_a_block_is_what_the_token_stamps(anchored: Path) -> None:
    _, (_, later) = load_receipt_files(anchored)
    assert later.statement == compute_statement(read_blocks(anchored).__getitem__, 4)


def test_publish_failures_are_retried_then_stop_the_run(tmp_path: Path, tsa: LocalTsa) -> None:
    with tsa.serve() as url:
        pass  # the TSA has gone: its port no longer answers
    witness = Rfc3161Witness([tsa.root], http_transport(url, timeout=2))
    anchoring = Anchoring(witness, 1, tmp_path)
    blocks = build_ledger(tmp_path / "run", None, rounds=3)
    for attempt in range(1, MAX_PUBLISH_FAILURES):
        assert anchoring.receipts_due(blocks.__getitem__, 2) == []  # retried at the next block
        assert len(anchoring.failures) == attempt and "did not answer" in anchoring.failures[-1]
    with pytest.raises(AnchorError, match=f"failed {MAX_PUBLISH_FAILURES} times in a row"):
        anchoring.receipts_due(blocks.__getitem__, 2)
    assert anchoring.anchored_height == 0
