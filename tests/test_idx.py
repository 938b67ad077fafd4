"""Tests for fedchain.data.idx: IDX files written in tmp_path, plain and gzipped, whole and
broken."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from fedchain.data.idx import read_idx
from fedchain.errors import DataSourceError


def idx_bytes(array: np.ndarray, code: int) -> bytes:
    """The IDX encoding of ``array``: 0, 0, type code, ndim, big-endian sizes, big-endian values."""
    header = bytes([0, 0, code, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize(
    ("dtype", "code"),
    [
        (np.uint8, 0x08),
        (np.int8, 0x09),
        (np.int16, 0x0B),
        (np.int32, 0x0C),
        (np.float32, 0x0D),
        (np.float64, 0x0E),
    ],
)
@pytest.mark.parametrize("gzipped", [False, True])
def test_read_idx_round_trips_every_type(tmp_path: Path, dtype: type, code: int, gzipped: bool):
    array = (np.arange(2 * 3 * 4) - 7).astype(dtype).reshape(2, 3, 4)
    if dtype is np.uint8:
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4) * 10
    data = idx_bytes(array, code)
    path = tmp_path / "a-idx3-ubyte"
    path.write_bytes(gzip.compress(data) if gzipped else data)
    got = read_idx(path)
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    assert got.flags["C_CONTIGUOUS"] and got.flags["WRITEABLE"]
    np.testing.assert_array_equal(got, array)


def test_read_idx_goes_by_the_bytes_not_the_name(tmp_path: Path):
    """A gzipped file without .gz and a plain one with .gz both read."""
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    (tmp_path / "plain.gz").write_bytes(idx_bytes(labels, 0x08))
    (tmp_path / "zipped").write_bytes(gzip.compress(idx_bytes(labels, 0x08)))
    for name in ("plain.gz", "zipped"):
        np.testing.assert_array_equal(read_idx(tmp_path / name), labels)


def test_read_idx_empty_dimension(tmp_path: Path):
    path = tmp_path / "empty"
    path.write_bytes(bytes([0, 0, 8, 2]) + (0).to_bytes(4, "big") + (28).to_bytes(4, "big"))
    assert read_idx(path).shape == (0, 28)


GOOD = idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 4), 0x08)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not an IDX file"),
        (b"\x00\x00", "not an IDX file"),
        (b"\x01\x00\x08\x02" + GOOD[4:], "not an IDX file"),
        (b"\x00\x00\x07\x02" + GOOD[4:], "unknown IDX type code 0x07"),
        (b"\x00\x00\x08\x00", "at least one dimension"),
        (GOOD[:9], "truncated IDX header"),
        (GOOD[:-1], "truncated"),
        (GOOD[:12], "truncated"),
        (GOOD + b"\x00", "longer than its header says"),
        (b"\x00\x00\x08\x01\xff\xff\xff\xff", "truncated"),  # a claim of 4 GiB, nothing behind
    ],
    ids=[
        "empty",
        "short-magic",
        "bad-magic",
        "bad-type",
        "no-dims",
        "short-header",
        "one-byte-short",
        "no-values",
        "trailing",
        "huge-claim",
    ],
)
@pytest.mark.parametrize("gzipped", [False, True])
def test_invalid_idx_files_are_refused_naming_the_file(
    tmp_path: Path, data: bytes, message: str, gzipped: bool
):
    path = tmp_path / "broken-idx1-ubyte"
    path.write_bytes(gzip.compress(data) if gzipped else data)
    with pytest.raises(DataSourceError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("cut", [5, 20, -9])
def test_invalid_truncated_gzip_stream(tmp_path: Path, cut: int):
    """A gzip stream cut short (a partial download) is a DataSourceError, not an EOFError."""
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(GOOD)[:cut])
    with pytest.raises(DataSourceError, match=str(path)):
        read_idx(path)


def test_invalid_corrupted_gzip_stream(tmp_path: Path):
    """A flipped bit in the gzip's CRC-32 trailer: every value arrived, yet the file is bad."""
    zipped = bytearray(gzip.compress(GOOD))
    zipped[-8] ^= 1
    path = tmp_path / "bad.gz"
    path.write_bytes(bytes(zipped))
    with pytest.raises(DataSourceError, match="cannot read this IDX file"):
        read_idx(path)


def test_missing_file(tmp_path: Path):
    with pytest.raises(DataSourceError, match="cannot read"):
        read_idx(tmp_path / "nowhere-idx3-ubyte")
