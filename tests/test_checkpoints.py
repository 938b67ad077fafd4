"""fedchain.ledger.checkpoints: the checkpoint file (format, load, save) and whether a ledger
extends it.

Pre -> op -> post: a saved file -> save / load / check -> the file and the verdict. Negative cases
are named ``test_invalid_*``. The attack (a real run's ledger truncated or rewritten under a
checkpoint) is in ``tests/test_verify_files.py``, against ``fedchain verify``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedchain.errors import ConfigError, InvalidBlock
from fedchain.ledger.checkpoints import (
    CHECKPOINT_FORMAT,
    MAX_CHECKPOINT_FILE_BYTES,
    check_advance,
    check_extends,
    decode_checkpoint,
    encode_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from fedchain.ledger.lightclient import Checkpoint

GENESIS = bytes(range(32))
OTHER_GENESIS = bytes(32)
HASHES = [bytes([h]) * 32 for h in range(1, 8)]  # a toy ledger's block hashes, by height


def cp(height: int, block_hash: bytes | None = None) -> Checkpoint:
    return Checkpoint(height, HASHES[height] if block_hash is None else block_hash)


def block_hash_at(height: int) -> bytes | None:
    return HASHES[height] if height < len(HASHES) else None


def write_doc(path: Path, **changes: object) -> Path:
    doc: dict[str, object] = {
        "format": CHECKPOINT_FORMAT,
        "genesis-hash": GENESIS.hex(),
        "height": 3,
        "block-hash": HASHES[3].hex(),
    }
    doc.update(changes)
    path.write_text(json.dumps({k: v for k, v in doc.items() if v is not None}))
    return path


# -- the format ----------------------------------------------------------------------------------


def test_the_file_round_trips_and_is_the_documented_json() -> None:
    data = encode_checkpoint(GENESIS, cp(3))
    assert json.loads(data) == {
        "format": "fedchain-checkpoint/1",
        "genesis-hash": GENESIS.hex(),
        "height": 3,
        "block-hash": HASHES[3].hex(),
    }
    assert decode_checkpoint(data) == (GENESIS, cp(3))
    assert len(data) < MAX_CHECKPOINT_FILE_BYTES


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format": "fedchain-checkpoint/2"}, "format"),
        ({"height": -1}, "height"),
        ({"height": 3.0}, "height"),
        ({"height": True}, "height"),
        ({"height": "3"}, "height"),
        ({"genesis-hash": GENESIS.hex().upper()}, "genesis-hash"),
        ({"genesis-hash": GENESIS.hex()[:-2]}, "genesis-hash"),
        ({"block-hash": HASHES[3].hex() + "00"}, "block-hash"),
        ({"block-hash": None}, "exactly the keys"),
        ({"extra": 1}, "exactly the keys"),
    ],
)
def test_invalid_files_are_refused_naming_the_file_and_the_field(
    tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    path = write_doc(tmp_path / "cp.json", **changes)
    with pytest.raises(ConfigError, match=message) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"[]", "not a JSON object"),
        (b"{", "not JSON"),
        (b"\xff", "not JSON"),
        (b'{"height": NaN}', "NaN"),
        (b'{"format": 1, "format": 2}', "duplicate key"),
        (b" " * (MAX_CHECKPOINT_FILE_BYTES + 1), "larger than"),
    ],
)
def test_invalid_bytes_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        decode_checkpoint(data)


def test_invalid_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "absent.json")


# -- saving: only forward, only in one federation -----------------------------------------------


def test_a_checkpoint_is_saved_and_moves_forward(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.json"
    save_checkpoint(path, GENESIS, cp(2))
    assert load_checkpoint(path) == (GENESIS, cp(2))
    save_checkpoint(path, GENESIS, cp(2))  # the same again: a no-op
    save_checkpoint(path, GENESIS, cp(5))
    assert load_checkpoint(path) == (GENESIS, cp(5))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.json"]  # no temporary left


@pytest.mark.parametrize(
    ("genesis", "new", "message"),
    [
        (GENESIS, cp(4), "backwards, from height 5 to 4"),
        (GENESIS, cp(5, HASHES[6]), "another block at the saved checkpoint's height 5"),
        (OTHER_GENESIS, cp(6), "another federation"),
    ],
)
def test_invalid_save_moves_back_forks_or_changes_federation(
    tmp_path: Path, genesis: bytes, new: Checkpoint, message: str
) -> None:
    path = tmp_path / "checkpoint.json"
    save_checkpoint(path, GENESIS, cp(5))
    before = path.read_bytes()
    with pytest.raises(InvalidBlock, match=message):
        save_checkpoint(path, genesis, new)
    assert path.read_bytes() == before


def test_invalid_save_over_a_damaged_file_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.json"
    path.write_text("not json")
    with pytest.raises(ConfigError, match="not a fedchain checkpoint file"):
        save_checkpoint(path, GENESIS, cp(1))
    assert path.read_text() == "not json"


def test_check_advance_allows_higher_heights() -> None:
    assert check_advance(GENESIS, cp(2), GENESIS, cp(3)) is None


# -- does a ledger extend it ----------------------------------------------------------------------


def test_a_ledger_holding_the_block_extends_the_checkpoint() -> None:
    for height in range(len(HASHES)):
        assert (
            check_extends(GENESIS, cp(height), block_hash_at, ledger_genesis_hash=GENESIS) is None
        )


def test_invalid_a_shorter_ledger_names_the_height() -> None:
    reason = check_extends(GENESIS, cp(6), lambda h: block_hash_at(h) if h < 4 else None,
                           ledger_genesis_hash=GENESIS)  # fmt: skip
    assert reason is not None and "no block at height 6" in reason


def test_invalid_another_block_at_the_height() -> None:
    reason = check_extends(GENESIS, cp(3, HASHES[0]), block_hash_at, ledger_genesis_hash=GENESIS)
    assert reason is not None and "another block at height 3" in reason


def test_invalid_another_federation() -> None:
    reason = check_extends(GENESIS, cp(3), block_hash_at, ledger_genesis_hash=OTHER_GENESIS)
    assert reason is not None and "another federation" in reason
