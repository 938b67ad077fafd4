"""The SQLite block store: round trip, refusals, damaged files, WAL durability and a real crash."""

from __future__ import annotations

import hashlib
import os
import queue
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest

from fedchain.errors import LedgerStoreError
from fedchain.ledger import store as store_module
from fedchain.ledger.store import (
    APPLICATION_ID,
    FORMAT_VERSION,
    LedgerStore,
    StoredBlock,
    open_ledger_path,
)
from tests.crash_writer import GENESIS_HASH, make_genesis_block, make_next_block

CRASH_WRITER = Path(__file__).with_name("crash_writer.py")


def random_bytes(rng: random.Random, size: int = 200) -> bytes:
    return rng.randbytes(size)


def make_chain(n: int, seed: int = 0) -> list[StoredBlock]:
    """Blocks 0..n-1 of a fake chain: random data, SHA-256 of the data as block hash."""
    rng = random.Random(seed)
    blocks = [make_genesis_block(random_bytes(rng))]
    for _ in range(n - 1):
        blocks.append(make_next_block(blocks[-1], random_bytes(rng)))
    return blocks


def new_store(path: Path, n: int, seed: int = 0) -> tuple[LedgerStore, list[StoredBlock]]:
    chain = make_chain(n, seed)
    store = LedgerStore.create(path, GENESIS_HASH, chain[0])
    store.append_many(chain[1:])
    return store, chain


def write_ledger(path: Path, n: int) -> list[StoredBlock]:
    store, chain = new_store(path, n)
    store.close()
    return chain


def loosen_blocks_table(path: Path) -> sqlite3.Connection:
    """A raw connection to the ledger whose blocks table has lost its NOT NULL and CHECKs.

    This is how a damaged or hostile file looks to the store: it must not trust its own schema.
    """
    con = sqlite3.connect(path, isolation_level=None)
    con.executescript(
        """
        BEGIN;
        CREATE TABLE loose (height INTEGER PRIMARY KEY, hash, parent, round, proposer, data);
        INSERT INTO loose SELECT * FROM blocks;
        DROP TABLE blocks;
        ALTER TABLE loose RENAME TO blocks;
        COMMIT;
        """
    )
    return con


# --------------------------------------------------------------------------------------------------
# Round trip


def test_create_append_reopen_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    store, chain = new_store(path, 6)
    assert store.head() == chain[-1]
    assert store.genesis_hash == GENESIS_HASH
    store.close()

    with LedgerStore.open(path) as reopened:
        assert reopened.genesis_hash == GENESIS_HASH
        assert reopened.head() == chain[-1]
        assert [reopened.get(h) for h in range(6)] == chain
        assert list(reopened.iter_blocks()) == chain
        assert list(reopened.iter_blocks(start=4)) == chain[4:]
        assert list(reopened.iter_blocks(start=6)) == []
        nxt = make_next_block(chain[-1], b"more")
        reopened.append(nxt)
        assert reopened.head() == nxt


def test_iter_blocks_reads_a_bounded_number_of_bytes_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Big blocks are fetched a few at a time (``fedchain verify``'s memory is bounded by the
    largest block, not by READ_BATCH_BLOCKS of them); every block still comes, in order."""
    path = tmp_path / "ledger.db"
    store, chain = new_store(path, 9)
    batches: list[int] = []
    query_all = store._query_all

    def recording(sql: str, params: tuple) -> list:
        rows = query_all(sql, params)
        if "data FROM" in sql:  # the blocks themselves, not their lengths
            batches.append(sum(len(row[5]) for row in rows))
        return rows

    monkeypatch.setattr(store, "_query_all", recording)
    size = len(chain[1].data)
    assert {len(b.data) for b in chain} == {size}
    monkeypatch.setattr(store_module, "READ_BATCH_BYTES", 2 * size + 1)
    assert list(store.iter_blocks()) == chain
    assert batches == [2 * size] * 4 + [size]
    batches.clear()
    monkeypatch.setattr(store_module, "READ_BATCH_BYTES", 1)  # smaller than any block: one
    assert list(store.iter_blocks(start=6)) == chain[6:]
    assert batches == [size] * 3
    batches.clear()
    monkeypatch.setattr(store_module, "READ_BATCH_BLOCKS", 4)
    monkeypatch.setattr(store_module, "READ_BATCH_BYTES", 1 << 30)
    assert list(store.iter_blocks(start=1)) == chain[1:]
    assert batches == [4 * size, 4 * size]
    store.close()


def test_iter_blocks_spans_several_read_batches(tmp_path: Path) -> None:
    store, chain = new_store(tmp_path / "ledger.db", 300)
    with store:
        assert list(store.iter_blocks()) == chain
        assert list(store.iter_blocks(start=255)) == chain[255:]


def test_new_ledger_holds_only_genesis(tmp_path: Path) -> None:
    genesis = make_chain(1)[0]
    with LedgerStore.create(tmp_path / "ledger.db", GENESIS_HASH, genesis) as store:
        assert store.head() == genesis
        assert list(store.iter_blocks()) == [genesis]


def test_closed_store_refuses_use(tmp_path: Path) -> None:
    store, _ = new_store(tmp_path / "ledger.db", 2)
    store.close()
    store.close()
    with pytest.raises(LedgerStoreError, match="closed"):
        store.head()


# --------------------------------------------------------------------------------------------------
# Appending: only a block that extends the head


@pytest.mark.parametrize("height", [0, 3, 5, 99])
def test_invalid_append_wrong_height(tmp_path: Path, height: int) -> None:
    store, chain = new_store(tmp_path / "ledger.db", 4)
    with store:
        bad = make_next_block(chain[-1], b"x")
        bad = StoredBlock(height, bad.block_hash, bad.parent_hash, 4, bad.proposer, bad.data)
        with pytest.raises(LedgerStoreError, match=f"height {height}.*next block is 4"):
            store.append(bad)
        assert store.head() == chain[-1]
        store.append(make_next_block(chain[-1], b"x"))
        assert store.head().height == 4


def test_invalid_append_wrong_parent(tmp_path: Path) -> None:
    store, chain = new_store(tmp_path / "ledger.db", 4)
    with store:
        fork = make_next_block(chain[-2], b"fork")  # extends block 2, not the head
        fork = StoredBlock(4, fork.block_hash, fork.parent_hash, 4, fork.proposer, fork.data)
        with pytest.raises(LedgerStoreError, match="parent hash"):
            store.append(fork)
        assert store.head() == chain[-1]


def test_invalid_append_duplicate_block_hash(tmp_path: Path) -> None:
    store, chain = new_store(tmp_path / "ledger.db", 3)
    with store:
        dup = make_next_block(chain[-1], chain[1].data)  # same data, so same hash as block 1
        with pytest.raises(LedgerStoreError, match="block 3"):
            store.append(dup)
        assert store.head() == chain[-1]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("block_hash", b"\x01" * 31, "hash is 31 bytes"),
        ("parent_hash", None, "parent is NULL"),
        ("proposer", "ab" * 16, "proposer is str"),
        ("round", -1, "round -1 is out of range"),
        ("round", True, "round is bool"),
        ("round", 2**63, "out of range"),
        ("data", bytearray(b"x"), "data is bytearray"),
    ],
)
def test_invalid_append_malformed_field(
    tmp_path: Path, field: str, value: object, message: str
) -> None:
    store, chain = new_store(tmp_path / "ledger.db", 2)
    with store:
        fields = vars(make_next_block(chain[-1], b"x")) | {field: value}
        with pytest.raises(LedgerStoreError, match=message):
            store.append(StoredBlock(**fields))
        assert store.head() == chain[-1]


def test_append_many_keeps_blocks_before_a_refused_one(tmp_path: Path) -> None:
    store, chain = new_store(tmp_path / "ledger.db", 2)
    with store:
        a = make_next_block(chain[-1], b"a")
        b = make_next_block(a, b"b")
        stale = make_next_block(chain[-1], b"c")  # height 2 again
        with pytest.raises(LedgerStoreError, match="height 2"):
            store.append_many([a, b, stale])
        assert store.head() == b


def test_read_only_store_refuses_append(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    chain = write_ledger(path, 2)
    with (
        LedgerStore.open(path, readonly=True) as reader,
        pytest.raises(LedgerStoreError, match="read-only"),
    ):
        reader.append(make_next_block(chain[-1], b"x"))


# --------------------------------------------------------------------------------------------------
# Creating and opening: refuse anything that is not a fresh path / not our ledger


def test_invalid_create_over_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    write_ledger(path, 3)
    before = path.read_bytes()
    with pytest.raises(LedgerStoreError, match=re.escape(f"{path}: already exists")):
        LedgerStore.create(path, GENESIS_HASH, make_chain(1, seed=9)[0])
    assert path.read_bytes() == before
    with LedgerStore.open(path) as store:
        assert store.head().height == 2

    other = tmp_path / "notes.txt"
    other.write_text("keep me")
    with pytest.raises(LedgerStoreError, match="already exists"):
        LedgerStore.create(other, GENESIS_HASH, make_chain(1)[0])
    assert other.read_text() == "keep me"


def test_invalid_create_with_leftover_journal(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    Path(f"{path}-wal").write_bytes(b"stale")  # would be replayed into the new database
    with pytest.raises(LedgerStoreError, match=r"ledger\.db-wal"):
        LedgerStore.create(path, GENESIS_HASH, make_chain(1)[0])
    assert not path.exists()


def test_invalid_create_bad_genesis_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    genesis = make_chain(1)[0]
    with pytest.raises(LedgerStoreError, match="genesis hash"):
        LedgerStore.create(path, b"short", genesis)
    with pytest.raises(LedgerStoreError, match="height 0"):
        LedgerStore.create(path, GENESIS_HASH, make_chain(2)[1])
    with pytest.raises(LedgerStoreError, match="hash is 3 bytes"):
        LedgerStore.create(
            path, GENESIS_HASH, StoredBlock(0, b"abc", bytes(32), 0, bytes(32), b"g")
        )
    assert list(tmp_path.iterdir()) == []


def test_invalid_create_in_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "ledger.db"
    with pytest.raises(LedgerStoreError, match="cannot create"):
        LedgerStore.create(path, GENESIS_HASH, make_chain(1)[0])


def _missing(path: Path) -> None:
    pass


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _text(path: Path) -> None:
    path.write_text("height,hash\n0,abc\n" * 100)


def _tiny_text(path: Path) -> None:
    path.write_text("hi")


def _foreign_sqlite(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE blocks (height INTEGER PRIMARY KEY, payload TEXT)")
    con.execute("INSERT INTO blocks VALUES (0, 'not ours')")
    con.commit()
    con.close()


def _directory(path: Path) -> None:
    path.mkdir()


@pytest.mark.parametrize("readonly", [False, True])
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_missing, "no such ledger file"),
        (_empty, "not a fedchain ledger"),
        (_text, "not a readable fedchain ledger"),
        (_tiny_text, "not a"),
        (_foreign_sqlite, "not a fedchain ledger"),
        (_directory, "not a ledger file"),
    ],
)
def test_invalid_open_not_a_ledger(
    tmp_path: Path, make: Callable[[Path], None], message: str, readonly: bool
) -> None:
    path = tmp_path / "thing.db"
    make(path)
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(LedgerStoreError, match=message) as info:
        LedgerStore.open(path, readonly=readonly)
    assert str(path) in str(info.value)
    if before is not None:
        assert path.read_bytes() == before  # not switched to WAL, not touched


def test_foreign_sqlite_keeps_its_journal_mode(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    _foreign_sqlite(path)
    with pytest.raises(LedgerStoreError):
        LedgerStore.open(path)
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    con.close()


def test_invalid_open_wrong_format_version(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    write_ledger(path, 2)
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {FORMAT_VERSION + 1}")
    con.close()
    expected = f"{path}: ledger format version {FORMAT_VERSION + 1}; this fedchain reads version"
    with pytest.raises(LedgerStoreError, match=re.escape(expected)):
        LedgerStore.open(path)


def test_invalid_open_damaged_meta(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    write_ledger(path, 2)
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value = x'00' WHERE key = 'genesis_hash'")
    con.commit()
    con.close()
    with pytest.raises(
        LedgerStoreError, match=re.escape(f"{path}: damaged ledger: meta genesis_hash")
    ):
        LedgerStore.open(path, readonly=True)


def test_open_ledger_path(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(LedgerStoreError, match=r"has no ledger\.db"):
        open_ledger_path(run_dir)
    write_ledger(run_dir / "ledger.db", 1)
    assert open_ledger_path(run_dir) == run_dir / "ledger.db"
    assert open_ledger_path(run_dir / "ledger.db") == run_dir / "ledger.db"
    with pytest.raises(LedgerStoreError, match="no such ledger file or run directory"):
        open_ledger_path(tmp_path / "nope")


# --------------------------------------------------------------------------------------------------
# Damage written behind the store's back: never skipped, always named by height


def test_invalid_iter_gap(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    chain = write_ledger(path, 6)
    con = sqlite3.connect(path)
    con.execute("DELETE FROM blocks WHERE height = 3")
    con.commit()
    con.close()
    with LedgerStore.open(path, readonly=True) as store:
        seen: list[StoredBlock] = []
        with pytest.raises(LedgerStoreError, match="height 3 is missing"):
            seen.extend(store.iter_blocks())
        assert seen == chain[:3]
        with pytest.raises(LedgerStoreError, match="height 3 is missing"):
            list(store.iter_blocks(start=3))
        with pytest.raises(LedgerStoreError, match="no block at height 3"):
            store.get(3)


def test_invalid_iter_gap_at_genesis(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    write_ledger(path, 3)
    con = sqlite3.connect(path)
    con.execute("DELETE FROM blocks WHERE height = 0")
    con.commit()
    con.close()
    with (
        LedgerStore.open(path) as store,
        pytest.raises(LedgerStoreError, match="height 0 is missing"),
    ):
        list(store.iter_blocks())


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("hash", None, "hash is NULL"),
        ("hash", "a" * 32, "hash is str"),
        ("parent", b"\x00" * 31, "parent is 31 bytes"),
        ("parent", b"\x00" * 33, "parent is 33 bytes"),
        ("round", None, "round is NULL"),
        ("round", "three", "round is str"),
        ("round", 3.5, "round is float"),
        ("proposer", b"", "proposer is 0 bytes"),
        ("data", None, "data is NULL"),
        ("data", 7, "data is int"),
    ],
)
def test_invalid_iter_corrupt_column(
    tmp_path: Path, column: str, value: object, message: str
) -> None:
    path = tmp_path / "ledger.db"
    write_ledger(path, 6)
    con = loosen_blocks_table(path)
    con.execute(f"UPDATE blocks SET {column} = ? WHERE height = 4", (value,))
    con.close()
    with LedgerStore.open(path, readonly=True) as store:
        expected = re.escape(f"{path}: corrupt row at height 4: {message}")
        with pytest.raises(LedgerStoreError, match=expected):
            list(store.iter_blocks())
        with pytest.raises(LedgerStoreError, match=expected):
            store.get(4)
        assert len(list(store.iter_blocks(start=5))) == 1


def test_invalid_head_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    write_ledger(path, 3)
    con = loosen_blocks_table(path)
    con.execute("UPDATE blocks SET hash = NULL WHERE height = 2")
    con.close()
    with pytest.raises(LedgerStoreError, match="corrupt row at height 2: hash is NULL"):
        LedgerStore.open(path)


# --------------------------------------------------------------------------------------------------
# SQLite settings and concurrency


def test_wal_and_full_sync_are_set(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    store, _ = new_store(path, 2)
    with store:
        con = store._conn  # the store's own connection: synchronous is per connection
        assert con is not None
        assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert con.execute("PRAGMA synchronous").fetchone() == (2,)  # 2 = FULL
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)  # persistent in the file
    assert raw.execute("PRAGMA application_id").fetchone() == (APPLICATION_ID,)
    assert raw.execute("PRAGMA user_version").fetchone() == (FORMAT_VERSION,)
    raw.close()
    with LedgerStore.open(path) as reopened:
        assert reopened._conn is not None
        assert reopened._conn.execute("PRAGMA synchronous").fetchone() == (2,)


def test_reader_sees_appends_while_writer_is_open(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    writer, chain = new_store(path, 3)
    with writer, LedgerStore.open(path, readonly=True) as reader:
        assert reader.head() == chain[-1]
        blocks = iter(reader.iter_blocks())
        assert next(blocks) == chain[0]
        for _ in range(3):
            chain.append(make_next_block(chain[-1], os.urandom(100)))
            writer.append(chain[-1])
            assert reader.head() == chain[-1]
        assert [chain[0], *blocks] == chain  # an iteration in progress sees them too
        assert reader.get(5) == chain[5]


def test_read_only_open_never_writes_the_ledger(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    write_ledger(path, 5)
    before = path.read_bytes()
    with LedgerStore.open(path, readonly=True) as reader:
        assert len(list(reader.iter_blocks())) == 5
    assert path.read_bytes() == before


# --------------------------------------------------------------------------------------------------
# A real crash: SIGKILL a writer mid-append, then recover


def run_writer_and_kill(path: Path, min_acks: int, timeout_s: float = 8.0) -> int:
    """Start crash_writer on ``path``, SIGKILL it after ``min_acks`` acks; the last acked height.

    Acks still in the pipe when it dies count too: they were printed after a durable append.
    """
    proc = subprocess.Popen(
        [sys.executable, str(CRASH_WRITER), str(path), "1000000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    lines: queue.Queue[str | None] = queue.Queue()

    def pump(stream: IO[str]) -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, args=(proc.stdout,), daemon=True)
    reader.start()
    acked: list[int] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(acked) < min_acks:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            if line is None:
                pytest.fail(f"writer exited early: {proc.wait()} {proc.stderr.read()}")
            acked.append(int(line.split()[1]))
        assert proc.poll() is None, "the writer must still be appending when killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    reader.join(timeout=5)
    while (line := lines.get_nowait()) is not None:
        acked.append(int(line.split()[1]))
    proc.stdout.close()
    proc.stderr.close()
    return acked[-1]


def check_recovered_ledger(path: Path, last_acked: int) -> int:
    """Every acked block is there, whole, and the chain links; returns the head height."""
    with LedgerStore.open(path, readonly=True) as store:
        head = store.head()
        assert head.height >= last_acked
        previous: StoredBlock | None = None
        for block in store.iter_blocks():
            assert block.block_hash == hashlib.sha256(block.data).digest()  # not torn
            if previous is not None:
                assert block.parent_hash == previous.block_hash
            previous = block
        assert previous == head
    # Store level only (fake blocks); test_ledger_verify.py repeats the crash with real signed
    # blocks and a full `verify` of the recovered ledger.
    return head.height


def test_crash_loses_no_acked_block_and_resumes(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    head_height = 0
    for min_acks in (30, 60, 150):  # each run resumes from the previous crash's head
        last_acked = run_writer_and_kill(path, min_acks)
        assert last_acked >= head_height + min_acks
        head_height = check_recovered_ledger(path, last_acked)
    with LedgerStore.open(path) as store:
        head = store.head()
        assert head.height == head_height
        store.append(make_next_block(head, b"after the crashes"))
        assert store.head().height == head_height + 1


def test_the_spec_names_this_format_version() -> None:
    """docs/ledger-spec.md states the version a reader accepts; it must be this code's."""
    spec = (Path(__file__).parent.parent / "docs" / "ledger-spec.md").read_text()
    assert f"(format version {FORMAT_VERSION})" in spec.splitlines()[0]
    assert f"`PRAGMA user_version = {FORMAT_VERSION}`" in spec
    assert f"('format_version', X'{str(FORMAT_VERSION).encode().hex()}')" in spec
