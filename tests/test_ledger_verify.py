"""`fedchain verify`: a good ledger verifies; any change to a stored row is found; crashes lose
nothing acknowledged; a coordinator resumes from the head."""

from __future__ import annotations

import dataclasses
import gc
import random
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedchain.cli import app
from fedchain.errors import InvalidBlock, LedgerStoreError
from fedchain.ledger.chain import Chain
from fedchain.ledger.codec import decode, encode
from fedchain.ledger.containers import LedgerState, ParticipantState
from fedchain.ledger.derived import compute_block_hash, compute_tx_root
from fedchain.ledger.objects import (
    Attestation,
    Block,
    ContributionRecord,
    ModelVersion,
    RewardDeltas,
    UpdateCommitment,
)
from fedchain.ledger.synthetic import SyntheticFederation, write_synthetic_ledger
from fedchain.ledger.verify import verify_ledger

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="module")
def small_ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ledger") / "ledger.db"
    write_synthetic_ledger(path, participants=3, rounds=4)
    return path


def test_synthetic_ledger_verifies_with_expected_summary(tmp_path):
    path = tmp_path / "ledger.db"
    write_synthetic_ledger(path, participants=5, rounds=6)
    report = verify_ledger(path)
    assert report.ok, report.failure
    assert report.blocks == 7 and report.head_height == 6 and report.rounds == 6
    # every block after the first carries attestations to its parent from all 5 validators
    assert report.final_height == 5
    assert report.tx_counts == {
        "Attestation": 25,
        "ContributionRecord": 6,
        "Genesis": 1,
        "ModelVersion": 6,
        "RewardDeltas": 6,
        "UpdateCommitment": 30,
    }
    assert report.signatures == 6 + 25 + 30  # headers + attestations + commitments
    assert report.total_stake == 5 * 10_000 + 6 * 1_000
    # every block's hash by height, and every update named (commitments = model inputs here)
    assert report.block_hashes[-1] == report.head_hash and len(report.block_hashes) == 7
    assert len(report.update_hashes) == 30 and [h for h, _ in report.update_hashes][:5] == [1] * 5


PER_ROUND = (
    Block,
    UpdateCommitment,
    Attestation,
    ModelVersion,
    ContributionRecord,
    RewardDeltas,
    LedgerState,
    ParticipantState,
)


def count_live(kinds: tuple[type, ...]) -> dict[str, int]:
    gc.collect()
    counts = dict.fromkeys((k.__name__ for k in kinds), 0)
    for obj in gc.get_objects():
        if type(obj) in kinds:
            counts[type(obj).__name__] += 1
    return counts


@pytest.mark.parametrize("rounds", [3, 12])
def test_verify_without_details_keeps_nothing_per_round(tmp_path, rounds):
    """`fedchain verify` of a ledger file (details=False) keeps no block, transaction or past
    state: what it holds afterwards is the last state (one participant table) and a few hashes a
    block, the same objects at 3 and at 12 rounds. Were memory to grow with rounds again (a
    list of blocks, commitments or states kept for the report), this would count them."""
    path = tmp_path / "ledger.db"
    write_synthetic_ledger(path, participants=4, rounds=rounds)
    before = count_live(PER_ROUND)
    report = verify_ledger(path, details=False)
    after = count_live(PER_ROUND)
    assert report.ok and report.final_height == rounds - 1
    kept = {kind: after[kind] - before[kind] for kind in after}
    assert kept == dict.fromkeys(kept, 0) | {"LedgerState": 1, "ParticipantState": 4}
    assert report.model_versions == report.update_hashes == report.round_records == ()
    assert [h for h, _ in report.model_heads] == list(range(1, rounds + 1))
    assert list(report.validators_by_height) == [rounds]  # the heights not yet final only
    full = verify_ledger(path)
    assert full.round_records and len(full.update_hashes) == 4 * rounds
    details = ("model_versions", "update_hashes", "round_records", "seconds", "state")
    assert dataclasses.replace(full, **{f: getattr(report, f) for f in details}) == report
    assert full.validators_by_height == report.validators_by_height


def test_run_directory_is_accepted(tmp_path):
    write_synthetic_ledger(tmp_path / "ledger.db", participants=3, rounds=2)
    assert verify_ledger(tmp_path).ok


def copy_ledger(source: Path, target: Path) -> None:
    """A standalone copy, WAL contents included (copying the main file alone can miss them)."""
    target.unlink(missing_ok=True)
    with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(target)) as dst:
        src.backup(dst)


def stored_cells(path: Path) -> list[tuple[str, str, str, object, int]]:
    """Every (table, key column, column, key, byte length) a mutation can hit."""
    cells = []
    with closing(sqlite3.connect(path)) as db:
        for height, *_ in db.execute("SELECT height FROM blocks"):
            for column in ("height", "hash", "parent", "round", "proposer", "data"):
                value = db.execute(
                    f"SELECT {column} FROM blocks WHERE height=?", (height,)
                ).fetchone()[0]
                size = 8 if isinstance(value, int) else len(value)
                cells.append(("blocks", "height", column, height, size))
        for (key,) in db.execute("SELECT key FROM meta"):
            value = db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()[0]
            cells.append(("meta", "key", "value", key, len(value)))
    return cells


def mutate(path: Path, cell: tuple[str, str, str, object, int], offset: int, xor: int) -> bool:
    """Flip bits of one byte of one stored value in place; False if SQLite refuses the result."""
    table, key_column, column, key, _ = cell
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("PRAGMA synchronous=OFF")  # a scratch copy: no need to wait for the disk
        (value,) = db.execute(
            f"SELECT {column} FROM {table} WHERE {key_column}=?", (key,)
        ).fetchone()
        if isinstance(value, int):
            raw = bytearray(value.to_bytes(8, "little", signed=True))
            raw[offset] ^= xor
            new: object = int.from_bytes(raw, "little", signed=True)
        else:
            raw = bytearray(value)
            raw[offset] ^= xor
            new = bytes(raw)
        try:
            db.execute(f"UPDATE {table} SET {column}=? WHERE {key_column}=?", (new, key))
        except sqlite3.IntegrityError:  # e.g. a height that collides with another block's
            return False
    return True


def test_every_single_byte_mutation_of_stored_rows_is_detected(tmp_path):
    """>= 1,000 random single-byte changes to stored rows (every column of every block, and the
    file's metadata): verify reports each one."""
    write_synthetic_ledger(tmp_path / "source.db", participants=2, rounds=3)
    pristine_path = tmp_path / "pristine.db"
    copy_ledger(tmp_path / "source.db", pristine_path)
    assert verify_ledger(pristine_path).ok
    pristine = pristine_path.read_bytes()
    cells = stored_cells(pristine_path)
    weights = [cell[4] for cell in cells]
    rng = random.Random(20261123)
    work = tmp_path / "mutated.db"
    detected = refused = 0
    while detected < 1000:
        cell = rng.choices(cells, weights)[0]
        offset, xor = rng.randrange(cell[4]), rng.randrange(1, 256)
        work.write_bytes(pristine)
        for side in ("-wal", "-shm"):
            Path(f"{work}{side}").unlink(missing_ok=True)
        if not mutate(work, cell, offset, xor):
            refused += 1
            continue
        report = verify_ledger(work)
        assert not report.ok, f"undetected: {cell[:4]} byte {offset} ^ {xor:#x}"
        detected += 1
    assert refused < 200


def test_invalid_block_rewritten_consistently_is_still_detected(small_ledger, tmp_path):
    """Reorder block 2's transactions and rewrite everything derivable to match (tx root in the
    header, hash column): the proposer's signature no longer covers the header."""
    work = tmp_path / "rewritten.db"
    copy_ledger(small_ledger, work)
    with closing(sqlite3.connect(work)) as db, db:
        (data,) = db.execute("SELECT data FROM blocks WHERE height=2").fetchone()
        block = decode(Block, data)
        txs = tuple(reversed(block.transactions))
        header = dataclasses.replace(block.header, tx_root=compute_tx_root(txs))
        forged = Block(dataclasses.replace(block.signed_header, header=header), txs)
        db.execute(
            "UPDATE blocks SET data=?, hash=? WHERE height=2",
            (encode(forged), compute_block_hash(header)),
        )
    report = verify_ledger(work)
    assert not report.ok and report.failure.height == 2
    assert "signature" in str(report.failure)


def test_invalid_missing_block_is_reported(small_ledger, tmp_path):
    work = tmp_path / "gap.db"
    copy_ledger(small_ledger, work)
    with sqlite3.connect(work) as db:
        db.execute("DELETE FROM blocks WHERE height=2")
    report = verify_ledger(work)
    assert not report.ok and "missing" in str(report.failure)
    assert report.blocks == 2  # blocks 0 and 1 verified before the gap


@pytest.mark.parametrize("content", [b"", b"not a database", None])
def test_invalid_not_a_ledger(tmp_path, content):
    path = tmp_path / "x.db"
    if content is not None:
        path.write_bytes(content)
    report = verify_ledger(path)
    assert not report.ok and report.failure.height is None and str(path) in str(report.failure)


def test_cli_verify_and_show(small_ledger, tmp_path):
    ok = runner.invoke(app, ["verify", str(small_ledger)], env={"COLUMNS": "200"})
    assert ok.exit_code == 0 and "verified" in ok.output and "final height" in ok.output
    work = tmp_path / "bad.db"
    copy_ledger(small_ledger, work)
    with sqlite3.connect(work) as db:
        db.execute("UPDATE blocks SET round=round+1 WHERE height=3")
    bad = runner.invoke(app, ["verify", str(work)], env={"COLUMNS": "200"})
    assert bad.exit_code == 1 and "FAILED block 3" in bad.output and "round" in bad.output
    shown = runner.invoke(app, ["ledger", "show", str(small_ledger)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and "#4 round 4" in shown.output and "commitment" in shown.output
    as_json = runner.invoke(
        app, ["ledger", "show", str(small_ledger), "--json", "--from", "1", "--to", "2"]
    )
    lines = as_json.output.strip().splitlines()
    assert as_json.exit_code == 0 and len(lines) == 2 and '"type": "Block"' in lines[0]
    missing = runner.invoke(app, ["verify", str(tmp_path / "nope")])
    assert missing.exit_code == 1 and "nope" in missing.output


def test_chain_resumes_from_head_and_refuses_invalid_blocks(tmp_path):
    path = tmp_path / "ledger.db"
    federation = SyntheticFederation(4, seed=3)
    with Chain.create(path, federation.genesis) as chain:
        for _ in range(3):
            chain.append(federation.make_round(chain.state)[0])
        stale, _ = federation.make_round(chain.state)  # built on height 3
        chain.append(federation.make_round(chain.state)[0])
        head = chain.state.head_hash
        with pytest.raises(InvalidBlock):
            chain.append(stale)  # no longer extends the head: refused, nothing stored
    with Chain.open(path) as chain:
        assert chain.state.height == 4 and chain.state.head_hash == head
        block, state = federation.make_round(chain.state)
        with pytest.raises(InvalidBlock, match="do not extend"):
            chain.append(block, federation.make_round(state)[1])  # a state from elsewhere
        chain.append(block, state)
    assert verify_ledger(path).blocks == 6


def test_invalid_chain_open_refuses_a_corrupted_ledger(small_ledger, tmp_path):
    work = tmp_path / "bad.db"
    copy_ledger(small_ledger, work)
    with sqlite3.connect(work) as db:
        db.execute("UPDATE blocks SET proposer=zeroblob(32) WHERE height=1")
    with pytest.raises(LedgerStoreError, match="fails verification"):
        Chain.open(work)


def run_writer_until(path: Path, min_acks: int, rounds: int = 10_000) -> int:
    """Start the chain writer, SIGKILL it (by PID) after ``min_acks`` acks; return the last ack."""
    writer = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "crash_chain_writer.py"), str(path), str(rounds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    acked, deadline = [], time.monotonic() + 60
    try:
        assert writer.stdout is not None
        for line in writer.stdout:
            acked.append(int(line.split()[1]))
            if len(acked) >= min_acks or time.monotonic() > deadline:
                break
        writer.send_signal(signal.SIGKILL)
        rest, _ = writer.communicate(timeout=30)
    finally:
        if writer.poll() is None:
            writer.kill()
    acked += [int(line.split()[1]) for line in rest.splitlines() if line.startswith("acked")]
    assert len(acked) >= min_acks, "the writer stopped before it could be killed"
    return max(acked)


def test_crash_mid_append_loses_no_acknowledged_block_and_verifies(tmp_path):
    path = tmp_path / "ledger.db"
    previous = 0
    for min_acks in (15, 25, 40):  # each writer resumes where the killed one stopped
        last_acked = run_writer_until(path, min_acks)
        assert last_acked >= previous + min_acks
        report = verify_ledger(path)
        assert report.ok, report.failure
        assert report.head_height >= last_acked
        previous = report.head_height
    with Chain.open(path) as chain:
        assert chain.state.height == previous
