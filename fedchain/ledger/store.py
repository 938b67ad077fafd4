"""The ledger's block store: one SQLite file in WAL mode, one transaction per appended block.

The store knows nothing of what a block means. It keeps each block's canonical encoding (``data``)
next to the few columns it indexes or checks (height, hash, parent hash, round, proposer), and it
enforces only what makes a chain a chain: block ``h`` extends block ``h - 1`` by height and parent
hash. Everything else (hashes match the data, signatures, state transitions) is re-checked by
``fedchain verify`` from the bytes stored here.

Durability and crashes:

* ``journal_mode=WAL`` (persistent in the file) and ``synchronous=FULL`` (set on every connection):
  a commit fsyncs the write-ahead log before :meth:`LedgerStore.append` returns, so an acknowledged
  block survives a process kill and a power cut. A commit interrupted half-way leaves a WAL tail
  without a valid commit frame, which SQLite discards on the next open: a block is there whole or
  not at all, and the next writer resumes from the head.
* One writer (the coordinator); any number of readers (verify, report) may open the file read-only
  while it appends. A read-only opening never writes the database file; SQLite may leave empty
  ``-wal``/``-shm`` side files next to it, which the next writer cleans up.

A file is recognised as a fedchain ledger by SQLite's ``application_id`` header field, the format
version by ``user_version`` (both also in the ``meta`` table), so a foreign SQLite file or a ledger
written by an incompatible fedchain is refused by name instead of misread.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from fedchain.errors import LedgerStoreError

APPLICATION_ID = 0x46434C44  # b"FCLD" (FedChain LeDger) in SQLite's application_id header field
# 7: harm debt, never forgiven (ParticipantState.harm_debt; issue 19);
# 6: a floor on a round's coalition evaluations (Rules.contribution_min_evaluations; issue 17),
# one signed refusal per participant a round;
# 5: score debt (Rules.score_debt_decay_bps, ParticipantState.score_debt; issue 19);
# 4: the model record in the rules (the base model, fine-tuning mode, trainable tensors; issue
# 14), the approved app in registrations and the rules of data use (max rounds and local
# epochs; issue 13); 3: the payout rule (Rules fields, carried_reward in the state root; issue
# 19), the update archive's retention (issue 17), differential privacy in the rules, commitments
# and participant state (issue 15); 2: signed genesis registrations, evidence-backed stake rules
# (issue 12)
FORMAT_VERSION = 7
HASH_SIZE = 32  # bytes: SHA-256 block hashes, Ed25519 public keys
LEDGER_FILENAME = "ledger.db"  # inside a run directory (fedchain.runs.layout re-exports it)
BUSY_TIMEOUT_S = 10.0  # how long to wait for a lock (a checkpoint, another writer) before failing
READ_BATCH_BLOCKS = 128  # at most this many blocks fetched per query by iter_blocks
READ_BATCH_BYTES = 4 << 20  # and at most this many bytes of them (or one block, if bigger)
MAX_INT64 = 2**63 - 1

_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)",
    # The CHECKs repeat the Python-side validation inside the file, against other writers.
    "CREATE TABLE blocks ("
    " height INTEGER PRIMARY KEY CHECK (height >= 0),"
    " hash BLOB NOT NULL UNIQUE CHECK (typeof(hash) = 'blob' AND length(hash) = 32),"
    " parent BLOB NOT NULL CHECK (typeof(parent) = 'blob' AND length(parent) = 32),"
    " round INTEGER NOT NULL CHECK (typeof(round) = 'integer' AND round >= 0),"
    " proposer BLOB NOT NULL CHECK (typeof(proposer) = 'blob' AND length(proposer) = 32),"
    " data BLOB NOT NULL CHECK (typeof(data) = 'blob'))",
)
_INSERT_BLOCK = (
    "INSERT INTO blocks (height, hash, parent, round, proposer, data) VALUES (?, ?, ?, ?, ?, ?)"
)
_SELECT_HEAD = (
    "SELECT height, hash, parent, round, proposer, data FROM blocks ORDER BY height DESC LIMIT 1"
)
_SELECT_HEAD_LINK = "SELECT height, hash FROM blocks ORDER BY height DESC LIMIT 1"
_SELECT_ONE = "SELECT height, hash, parent, round, proposer, data FROM blocks WHERE height = ?"
_SELECT_FROM = (
    "SELECT height, hash, parent, round, proposer, data FROM blocks"
    " WHERE height >= ? ORDER BY height LIMIT ?"
)
# SQLite reads a blob's length from its record header, without loading the blob
_SELECT_SIZES = "SELECT length(data) FROM blocks WHERE height >= ? ORDER BY height LIMIT ?"


@dataclass(frozen=True)
class StoredBlock:
    """One block as the store sees it: indexed columns plus the block's canonical encoding."""

    height: int
    block_hash: bytes  # HASH_SIZE bytes
    parent_hash: bytes  # HASH_SIZE bytes; the genesis block's is chosen by the caller
    round: int
    proposer: bytes  # HASH_SIZE bytes (a public key; zeros for genesis)
    data: bytes  # the canonical encoding of the whole block


def open_ledger_path(path: Path) -> Path:
    """The ledger file for ``path``: the file itself, or ``ledger.db`` inside a run directory."""
    path = Path(path)
    if path.is_dir():
        candidate = path / LEDGER_FILENAME
        if not candidate.is_file():
            raise LedgerStoreError(
                f"{path}: directory has no {LEDGER_FILENAME}; give a run directory written by "
                "a fedchain coordinator, or the ledger file itself"
            )
        return candidate
    if path.is_file():
        return path
    raise LedgerStoreError(f"{path}: no such ledger file or run directory")


def _check_block_fields(
    height: Any, block_hash: Any, parent: Any, round_: Any, proposer: Any, data: Any
) -> str | None:
    """What is wrong with a block's fields, or None. Used for writes and for rows read back."""
    for name, value in (("height", height), ("round", round_)):
        if value is None:
            return f"{name} is NULL"
        if type(value) is not int:
            return f"{name} is {type(value).__name__}, expected an integer"
        if not 0 <= value <= MAX_INT64:
            return f"{name} {value} is out of range"
    for name, value in (("hash", block_hash), ("parent", parent), ("proposer", proposer)):
        if value is None:
            return f"{name} is NULL"
        if type(value) is not bytes:
            return f"{name} is {type(value).__name__}, expected bytes"
        if len(value) != HASH_SIZE:
            return f"{name} is {len(value)} bytes, expected {HASH_SIZE}"
    if data is None:
        return "data is NULL"
    if type(data) is not bytes:
        return f"data is {type(data).__name__}, expected bytes"
    return None


def _block_from_row(row: tuple[Any, ...], path: Path) -> StoredBlock:
    height, block_hash, parent, round_, proposer, data = row
    problem = _check_block_fields(height, block_hash, parent, round_, proposer, data)
    if problem is not None:
        raise LedgerStoreError(f"{path}: corrupt row at height {height}: {problem}")
    return StoredBlock(height, block_hash, parent, round_, proposer, data)


def _block_to_row(block: StoredBlock) -> tuple[Any, ...]:
    row = (
        block.height,
        block.block_hash,
        block.parent_hash,
        block.round,
        block.proposer,
        block.data,
    )
    problem = _check_block_fields(*row)
    if problem is not None:
        raise LedgerStoreError(f"refusing to store block at height {block.height}: {problem}")
    return row


def _connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    """A connection in autocommit mode (we issue BEGIN/COMMIT ourselves); never creates a file."""
    uri = f"{path.resolve().as_uri()}?mode={'ro' if readonly else 'rw'}"
    try:
        return sqlite3.connect(uri, uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error as e:
        raise LedgerStoreError(f"{path}: cannot open ledger ({e})") from e


def _configure(conn: sqlite3.Connection, path: Path, *, readonly: bool) -> None:
    """WAL + synchronous=FULL for a writer; query_only for a reader (belt and braces over ro)."""
    if readonly:
        conn.execute("PRAGMA query_only = ON")
        return
    (journal_mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
    if journal_mode != "wal":
        raise LedgerStoreError(
            f"{path}: cannot switch the ledger to WAL mode (got {journal_mode}); "
            "is the file on a network file system?"
        )
    conn.execute("PRAGMA synchronous = FULL")  # per connection: fsync the WAL on every commit


def _remove_new_ledger(path: Path) -> None:
    """Undo a failed :meth:`LedgerStore.create`: it made these files, nobody else has them."""
    for made in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        with contextlib.suppress(FileNotFoundError):
            made.unlink()


class LedgerStore:
    """An append-only chain of blocks in one SQLite file. Use :meth:`create` or :meth:`open`.

    Not shared between threads (SQLite's default check); open one store per thread instead.
    """

    def __init__(
        self, path: Path, conn: sqlite3.Connection, genesis_hash: bytes, readonly: bool
    ) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = conn
        self._genesis_hash = genesis_hash
        self._readonly = readonly

    # ----------------------------------------------------------------------------------------------
    # Opening and closing

    @classmethod
    def create(cls, path: Path, genesis_hash: bytes, genesis_block: StoredBlock) -> LedgerStore:
        """Create a new ledger file holding the genesis block; never touches an existing file.

        ``genesis_hash`` identifies the federation (the hash of the genesis object); it is not the
        genesis block's hash. Meta data and block 0 are written in one transaction, and a failed
        creation removes the files it made.
        """
        path = Path(path)
        if type(genesis_hash) is not bytes or len(genesis_hash) != HASH_SIZE:
            raise LedgerStoreError(f"{path}: the genesis hash must be {HASH_SIZE} bytes")
        if genesis_block.height != 0:
            raise LedgerStoreError(
                f"{path}: the genesis block has height 0, got {genesis_block.height}"
            )
        row = _block_to_row(genesis_block)
        if path.exists() or path.is_symlink():
            raise LedgerStoreError(
                f"{path}: already exists; refusing to overwrite a ledger (open it instead)"
            )
        for leftover in (Path(f"{path}-wal"), Path(f"{path}-journal")):
            # A journal left by a deleted database would be replayed into the new one.
            if leftover.exists():
                raise LedgerStoreError(
                    f"{leftover}: a journal of an earlier database is in the way; "
                    "remove it (and its -shm file) or choose another ledger path"
                )
        try:  # O_EXCL: a file that appeared since the check above is still never overwritten
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            raise LedgerStoreError(f"{path}: already exists; refusing to overwrite it") from None
        except OSError as e:
            raise LedgerStoreError(f"{path}: cannot create ledger file ({e.strerror})") from None
        try:
            conn = _connect(path, readonly=False)
        except BaseException:
            _remove_new_ledger(path)
            raise
        try:
            _configure(conn, path, readonly=False)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [
                    ("format_version", str(FORMAT_VERSION).encode()),
                    ("genesis_hash", genesis_hash),
                ],
            )
            conn.execute(_INSERT_BLOCK, row)
            conn.execute("COMMIT")
        except BaseException as e:
            conn.close()
            _remove_new_ledger(path)
            if isinstance(e, sqlite3.Error):
                raise LedgerStoreError(f"{path}: cannot create ledger ({e})") from e
            raise
        return cls(path, conn, genesis_hash, readonly=False)

    @classmethod
    def open(cls, path: Path, *, readonly: bool = False) -> LedgerStore:
        """Open an existing ledger file; ``readonly`` for readers that must never write (verify)."""
        path = Path(path)
        if not path.exists():
            raise LedgerStoreError(f"{path}: no such ledger file")
        if not path.is_file():
            raise LedgerStoreError(f"{path}: not a ledger file (a directory or device)")
        conn = _connect(path, readonly=readonly)
        try:
            # Identify the file before anything that could write to it (such as the WAL switch).
            genesis_hash = cls._read_identity(path, conn)
            _configure(conn, path, readonly=readonly)
            store = cls(path, conn, genesis_hash, readonly=readonly)
            store.head()  # a ledger without its genesis block is damaged: say so now
        except BaseException as e:
            conn.close()
            if isinstance(e, sqlite3.Error):
                raise LedgerStoreError(f"{path}: not a readable fedchain ledger ({e})") from e
            raise
        return store

    @staticmethod
    def _read_identity(path: Path, conn: sqlite3.Connection) -> bytes:
        """Check that ``conn`` holds a fedchain ledger of our format; return its genesis hash."""
        (application_id,) = conn.execute("PRAGMA application_id").fetchone()
        if application_id != APPLICATION_ID:
            raise LedgerStoreError(
                f"{path}: not a fedchain ledger (an empty file or another program's database)"
            )
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version != FORMAT_VERSION:
            raise LedgerStoreError(
                f"{path}: ledger format version {version}; this fedchain reads version "
                f"{FORMAT_VERSION} (use the fedchain release that wrote it)"
            )
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("format_version") != str(FORMAT_VERSION).encode():
            raise LedgerStoreError(f"{path}: damaged ledger: meta format_version disagrees")
        genesis_hash = meta.get("genesis_hash")
        if type(genesis_hash) is not bytes or len(genesis_hash) != HASH_SIZE:
            raise LedgerStoreError(f"{path}: damaged ledger: meta genesis_hash is not a hash")
        return genesis_hash

    def close(self) -> None:
        """Close the file (a writer's close checkpoints the WAL). Closing twice is harmless."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> LedgerStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else "read-only" if self._readonly else "writable"
        return f"LedgerStore({str(self._path)!r}, {state})"

    # ----------------------------------------------------------------------------------------------
    # Reading

    @property
    def path(self) -> Path:
        return self._path

    @property
    def genesis_hash(self) -> bytes:
        """The federation's identity (hash of the genesis object), fixed at creation."""
        return self._genesis_hash

    def head(self) -> StoredBlock:
        """The block with the highest height (the genesis block for a new ledger)."""
        row = self._query_one(_SELECT_HEAD, ())
        if row is None:
            raise LedgerStoreError(f"{self._path}: damaged ledger: it holds no blocks, not even 0")
        return _block_from_row(row, self._path)

    def get(self, height: int) -> StoredBlock:
        """The block at ``height``; LedgerStoreError if there is none."""
        if type(height) is not int or not 0 <= height <= MAX_INT64:
            raise LedgerStoreError(f"{self._path}: no block at height {height!r}")
        row = self._query_one(_SELECT_ONE, (height,))
        if row is None:
            raise LedgerStoreError(f"{self._path}: no block at height {height}")
        return _block_from_row(row, self._path)

    def iter_blocks(self, start: int = 0) -> Iterator[StoredBlock]:
        """Blocks from ``start`` up to the head, in height order, read in batches.

        A batch holds at most :data:`READ_BATCH_BLOCKS` blocks and :data:`READ_BATCH_BYTES`
        of them (one block if it alone is bigger), sized from the blocks' lengths first, so
        reading a ledger holds a few MiB of it at a time whatever its length or its blocks'
        size.

        Raises (never skips) on a missing height or a damaged row. It stops only when no block
        is stored above the last one yielded, so blocks appended meanwhile are included. Trailing
        blocks deleted behind the store's back look like a shorter chain here; only a later final
        header or attestation can reveal that.
        """
        if type(start) is not int or start < 0:
            raise LedgerStoreError(f"{self._path}: cannot iterate from height {start!r}")
        expected = start
        while True:
            sizes = self._query_all(_SELECT_SIZES, (expected, READ_BATCH_BLOCKS))
            batch = total = 0
            for (size,) in sizes:  # not an int: a damaged row, refused once read
                total += size if type(size) is int else 0
                if batch and total > READ_BATCH_BYTES:
                    break
                batch += 1
            rows = self._query_all(_SELECT_FROM, (expected, batch)) if batch else []
            if not rows:
                return
            for row in rows:
                if row[0] != expected:
                    raise LedgerStoreError(
                        f"{self._path}: damaged ledger: block at height {expected} is missing "
                        f"(next stored height is {row[0]})"
                    )
                yield _block_from_row(row, self._path)
                expected += 1
            del rows  # before the next query: one batch in memory at a time

    # ----------------------------------------------------------------------------------------------
    # Appending

    def append(self, block: StoredBlock) -> None:
        """Append one block in one transaction; durable (fsynced) when this returns.

        The block must extend the head: height = head height + 1 and parent hash = head hash.
        """
        self.append_many((block,))

    def append_many(self, blocks: Sequence[StoredBlock]) -> None:
        """Append blocks in order, each in its own transaction (each block whole or not at all).

        If one is refused, the blocks before it stay appended and the error names the refused one.
        """
        conn = self._connection()
        if self._readonly:
            raise LedgerStoreError(f"{self._path}: opened read-only; cannot append")
        for block in blocks:
            row = _block_to_row(block)
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    self._check_extends_head(conn, block)
                    conn.execute(_INSERT_BLOCK, row)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.IntegrityError as e:
                raise LedgerStoreError(
                    f"{self._path}: cannot append block {block.height}: {e} "
                    "(a block with this hash is already stored?)"
                ) from e
            except sqlite3.Error as e:
                raise LedgerStoreError(
                    f"{self._path}: cannot append block {block.height}: {e}"
                ) from e

    def _check_extends_head(self, conn: sqlite3.Connection, block: StoredBlock) -> None:
        head = conn.execute(_SELECT_HEAD_LINK).fetchone()
        if head is None:
            raise LedgerStoreError(f"{self._path}: damaged ledger: it holds no blocks, not even 0")
        head_height, head_hash = head
        if block.height != head_height + 1:
            raise LedgerStoreError(
                f"{self._path}: cannot append block at height {block.height}: "
                f"the head is at height {head_height}, so the next block is {head_height + 1}"
            )
        if block.parent_hash != head_hash:
            raise LedgerStoreError(
                f"{self._path}: cannot append block at height {block.height}: its parent hash "
                f"{block.parent_hash.hex()[:16]}… is not the head's hash {head_hash.hex()[:16]}…"
            )

    # ----------------------------------------------------------------------------------------------
    # Plumbing

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LedgerStoreError(f"{self._path}: the ledger store is closed")
        return self._conn

    def _query_one(self, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        try:
            row: tuple[Any, ...] | None = self._connection().execute(sql, params).fetchone()
        except sqlite3.Error as e:
            raise LedgerStoreError(f"{self._path}: cannot read ledger ({e})") from e
        return row

    def _query_all(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        try:
            rows: list[tuple[Any, ...]] = self._connection().execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise LedgerStoreError(f"{self._path}: cannot read ledger ({e})") from e
        return rows
