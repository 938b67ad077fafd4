"""Encrypted dataset files: round trip, and every way a file can be wrong fails loudly and whole."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from fedchain.data import datafile, keys
from fedchain.data.header import MAGIC, DatasetHeader
from fedchain.data.keys import DataKey, Passphrase
from fedchain.data.sources import ArrayDataset
from fedchain.errors import ConfigError, DatasetFileError, KeyFileError, WrongKeyError

CHUNK = 256  # small chunks so that a tiny data set spans many of them


def make_dataset(n: int = 50, seed: int = 0) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    return ArrayDataset(
        name="synthetic",
        x=rng.integers(0, 17, size=(n, 1, 8, 8), dtype=np.uint8),
        y=rng.integers(0, 10, size=n).astype(np.int64),
        classes=tuple(str(i) for i in range(10)),
        value_max=16.0,
    )


def counter_bytes() -> keys.RandomBytes:
    """Deterministic 'randomness' so a file's bytes are reproducible in tests."""
    state = {"i": 0}

    def random_bytes(n: int) -> bytes:
        state["i"] += 1
        return bytes((state["i"] * 31 + j) % 256 for j in range(n))

    return random_bytes


@pytest.fixture
def key(tmp_path: Path) -> DataKey:
    return keys.create_key_file(tmp_path / "data.key")


@pytest.fixture
def sealed(tmp_path: Path, key: DataKey) -> tuple[Path, ArrayDataset, DatasetHeader]:
    ds = make_dataset()
    path = tmp_path / "client-000.fcd"
    header = datafile.write_dataset(
        path, ds, key, partition={"method": "iid", "client": 0}, chunk_size=CHUNK
    )
    return path, ds, header


def assert_same(a: ArrayDataset, b: ArrayDataset) -> None:
    assert np.array_equal(a.x, b.x) and a.x.dtype == b.x.dtype and a.x.shape == b.x.shape
    assert np.array_equal(a.y, b.y) and b.y.dtype == np.int64
    assert (a.name, a.classes, a.value_max) == (b.name, b.classes, b.value_max)


# --------------------------------------------------------------------------------------------------
# Round trips


def test_round_trip_key_file(sealed, key):
    path, ds, header = sealed
    assert header.num_chunks > 10
    assert path.stat().st_size == header.file_size
    assert_same(ds, datafile.load_dataset(path, key))


def test_round_trip_passphrase(tmp_path):
    ds = make_dataset(20)
    path = tmp_path / "p.fcd"
    datafile.write_dataset(path, ds, Passphrase(b"correct horse"), chunk_size=100)
    assert_same(ds, datafile.load_dataset(path, Passphrase(b"correct horse")))
    assert datafile.read_header(path).key["kind"] == "passphrase"


@pytest.mark.parametrize("dtype", ["float32", "float64", "int64", "bool", "float16"])
def test_round_trip_dtypes_and_exact_chunk_multiple(tmp_path, key, dtype):
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(8, 4)) > 0) if dtype == "bool" else rng.normal(size=(8, 4))
    ds = ArrayDataset("npz:t", x.astype(dtype), np.arange(8) % 3, ("0", "1", "2"), None)
    chunk = 8 * 4 * np.dtype(dtype).itemsize + 8 * 8  # body is exactly one chunk, then try halves
    for size in (chunk, chunk // 2, 7):
        path = tmp_path / f"{dtype}-{size}.fcd"
        datafile.write_dataset(path, ds, key, chunk_size=size)
        assert_same(ds, datafile.load_dataset(path, key))


def test_header_readable_without_key(sealed):
    path, ds, header = sealed
    read = datafile.read_header(path)
    assert read.meta == header.meta
    assert read.meta.num_examples == 50 and read.meta.x_shape == (1, 8, 8)
    assert read.meta.labels_present == tuple(int(v) for v in np.unique(ds.y))
    shown = json.dumps(read.to_json())
    assert "wrapped_key" not in shown and "histogram" not in shown


def test_deterministic_randomness_gives_identical_files(tmp_path, key):
    ds = make_dataset()
    a, b = tmp_path / "a.fcd", tmp_path / "b.fcd"
    datafile.write_dataset(a, ds, key, random_bytes=counter_bytes())
    datafile.write_dataset(b, ds, key, random_bytes=counter_bytes())
    assert a.read_bytes() == b.read_bytes()
    assert datafile.compute_dataset_commitment(a) == datafile.compute_dataset_commitment(b)


def test_known_answer_bytes(tmp_path):
    """The byte format, pinned: fixed randomness and key give these exact files (SHA-256)."""
    a, b = tmp_path / "a.fcd", tmp_path / "b.fcd"
    datafile.write_dataset(
        a,
        make_dataset(20),
        DataKey(bytes(range(32))),
        partition={"method": "iid", "client": 3},
        chunk_size=100,
        random_bytes=counter_bytes(),
    )
    datafile.write_dataset(
        b, make_dataset(7), Passphrase(b"pw"), chunk_size=64, random_bytes=counter_bytes()
    )
    assert hashlib.sha256(a.read_bytes()).hexdigest() == (
        "2ddac336e283bee6ef9426ea98b498d40b2662b68f7780d199473c9342b5cb1a"
    )
    assert hashlib.sha256(b.read_bytes()).hexdigest() == (
        "e58d647b158120e34c5d9b8907d3786e62ef941304a4ef4ff3242baa56ca04af"
    )


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_data_file_mode_is_0600_whatever_the_umask(tmp_path, key, umask):
    old = os.umask(umask)
    try:
        datafile.write_dataset(tmp_path / "m.fcd", make_dataset(5), key)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.fcd").stat().st_mode) == 0o600


def test_commitment_is_hash_of_encrypted_file(sealed):
    path, ds, _ = sealed
    c = datafile.compute_dataset_commitment(path)
    assert c.file_hash == hashlib.sha256(path.read_bytes()).digest()
    assert c.num_examples == len(ds)


def test_refuses_to_overwrite_and_leaves_no_temp_files(sealed, key):
    path, ds, _ = sealed
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        datafile.write_dataset(path, ds, key)
    assert path.read_bytes() == before
    datafile.write_dataset(path, ds, key, overwrite=True)
    assert sorted(p.name for p in path.parent.iterdir()) == ["client-000.fcd", "data.key"]


def test_invalid_empty_dataset(tmp_path, key):
    ds = make_dataset(3).subset(np.array([], dtype=np.int64))
    with pytest.raises(ConfigError, match="empty"):
        datafile.write_dataset(tmp_path / "e.fcd", ds, key)
    assert not list(tmp_path.glob("e.fcd*"))


# --------------------------------------------------------------------------------------------------
# Key files


def test_key_file_mode_0600_and_no_overwrite(tmp_path):
    path = tmp_path / "k.key"
    key = keys.create_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keys.load_key_file(path) == key
    with pytest.raises(KeyFileError, match="already exists"):
        keys.create_key_file(path)


@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_key_file_mode_is_0600_whatever_the_umask_and_a_refusal_leaves_no_scratch(tmp_path, umask):
    path = tmp_path / "k.key"
    old = os.umask(umask)
    try:
        keys.create_key_file(path)
    finally:
        os.umask(old)
    before = path.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(KeyFileError, match="refusing to overwrite a key"):
        keys.create_key_file(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.key"]


def test_invalid_key_file_readable_by_others(tmp_path):
    path = tmp_path / "k.key"
    keys.create_key_file(path)
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        keys.load_key_file(path)


@pytest.mark.parametrize("content", ["", "zz" * 32, "ab" * 31, "ab" * 33])
def test_invalid_key_file_content(tmp_path, content):
    path = tmp_path / "k.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, content.encode())
    os.close(fd)
    with pytest.raises(KeyFileError, match="not a fedchain data key"):
        keys.load_key_file(path)


def test_invalid_key_file_missing(tmp_path):
    with pytest.raises(KeyFileError, match="not found"):
        keys.load_key_file(tmp_path / "nope.key")


# --------------------------------------------------------------------------------------------------
# Wrong keys


def test_invalid_wrong_key_file(sealed, tmp_path):
    path, _, _ = sealed
    other = keys.create_key_file(tmp_path / "other.key")
    with pytest.raises(WrongKeyError, match="wrong key file") as e:
        datafile.load_dataset(path, other)
    assert str(path) in str(e.value)


def test_invalid_wrong_passphrase(tmp_path):
    path = tmp_path / "p.fcd"
    datafile.write_dataset(path, make_dataset(5), Passphrase(b"right"))
    with pytest.raises(WrongKeyError, match="wrong passphrase") as e:
        datafile.load_dataset(path, Passphrase(b"wrong"))
    assert str(path) in str(e.value)


def test_invalid_passphrase_for_key_file_encrypted(sealed, key, tmp_path):
    path, _, _ = sealed
    key_id = datafile.read_header(path).key["key_id"]
    with pytest.raises(
        WrongKeyError, match=f"key file, not a passphrase: give its key file .*{key_id}"
    ):
        datafile.load_dataset(path, Passphrase(b"x"))
    other = tmp_path / "p.fcd"
    datafile.write_dataset(other, make_dataset(5), Passphrase(b"pw"))
    with pytest.raises(WrongKeyError, match="passphrase, not a key file: leave the key file out"):
        datafile.load_dataset(other, key)


def test_invalid_empty_passphrase():
    with pytest.raises(ConfigError):
        Passphrase(b"")


# --------------------------------------------------------------------------------------------------
# Tampering: every case is one DatasetFileError naming the file, and nothing is returned.


def header_len(path: Path) -> int:
    return 8 + struct.unpack("<I", path.read_bytes()[4:8])[0]


def expect_rejected(path: Path, key: DataKey, match: str | None = None) -> DatasetFileError:
    with pytest.raises(DatasetFileError, match=match) as e:
        datafile.load_dataset(path, key)
    assert str(path) in str(e.value)
    return e.value


def test_invalid_every_single_byte_flip_is_detected(tmp_path, key):
    """Flip each byte of a five-chunk file in turn (header and every chunk): all are rejected."""
    path = tmp_path / "small.fcd"
    header = datafile.write_dataset(path, make_dataset(16), key, chunk_size=CHUNK)
    assert header.num_chunks == 5
    original = path.read_bytes()
    for offset in range(len(original)):
        altered = bytearray(original)
        altered[offset] ^= 0x01
        path.write_bytes(altered)
        expect_rejected(path, key)
    path.write_bytes(original)
    datafile.load_dataset(path, key)


def test_invalid_flipped_byte_in_header_metadata(sealed, key):
    path, _, _ = sealed
    raw = bytearray(path.read_bytes())
    at = raw.index(b'"synthetic"') + 1
    raw[at] = ord("S")  # still valid JSON, still a valid header: only authentication catches it
    path.write_bytes(raw)
    assert datafile.read_header(path).meta.name == "Synthetic"
    expect_rejected(path, key, match="chunk 0 failed authentication")


def test_invalid_flipped_byte_in_wrapped_key(sealed, key):
    path, _, header = sealed
    raw = path.read_bytes()
    wrapped = header.key["wrapped_key"]
    flipped = ("0" if wrapped[0] != "0" else "1") + wrapped[1:]
    path.write_bytes(raw.replace(wrapped.encode(), flipped.encode()))
    expect_rejected(path, key, match="key header was altered")


@pytest.mark.parametrize("chunk", [0, 5, "last"])
def test_invalid_flipped_byte_in_chunk(sealed, key, chunk):
    path, _, header = sealed
    raw = bytearray(path.read_bytes())
    index = header.num_chunks - 1 if chunk == "last" else chunk
    raw[header_len(path) + index * (CHUNK + 16) + 3] ^= 0x80
    path.write_bytes(raw)
    expect_rejected(path, key, match=f"chunk {index} failed authentication")


def test_invalid_reordered_chunks(sealed, key):
    path, _, _ = sealed
    raw = path.read_bytes()
    h, size = header_len(path), CHUNK + 16
    c1, c2 = raw[h : h + size], raw[h + size : h + 2 * size]
    path.write_bytes(raw[:h] + c2 + c1 + raw[h + 2 * size :])
    expect_rejected(path, key, match="chunk 0 failed authentication")


def test_invalid_truncated_at_chunk_boundary(sealed, key):
    path, _, header = sealed
    raw = path.read_bytes()
    path.write_bytes(raw[: header_len(path) + (header.num_chunks - 1) * (CHUNK + 16)])
    expect_rejected(path, key, match="truncated")


def test_invalid_truncated_mid_chunk(sealed, key):
    path, _, _ = sealed
    raw = path.read_bytes()
    for cut in (1, 7, 16, CHUNK, len(raw) - header_len(path) - 1):
        path.write_bytes(raw[:-cut])
        expect_rejected(path, key, match="truncated")


def test_invalid_truncated_inside_header(sealed, key):
    path, _, _ = sealed
    path.write_bytes(path.read_bytes()[:20])
    expect_rejected(path, key, match="truncated")


def test_invalid_appended_bytes(sealed, key):
    path, _, _ = sealed
    raw = path.read_bytes()
    for extra in (b"\x00", b"x" * (CHUNK + 16)):
        path.write_bytes(raw + extra)
        expect_rejected(path, key, match="unexpected bytes")


def test_invalid_duplicated_chunk(sealed, key):
    path, _, _ = sealed
    raw = path.read_bytes()
    h, size = header_len(path), CHUNK + 16
    path.write_bytes(raw[: h + size] + raw[h : h + size] + raw[h + size :])
    expect_rejected(path, key)


def test_invalid_not_a_dataset_file(tmp_path, key):
    path = tmp_path / "x.fcd"
    path.write_bytes(b"PK\x03\x04 hello")
    expect_rejected(path, key, match="not a fedchain dataset")
    with pytest.raises(DatasetFileError, match="not a fedchain dataset"):
        datafile.read_header(path)


def test_invalid_missing_file(tmp_path, key):
    expect_rejected(tmp_path / "missing.fcd", key, match="not found")


def rewrite_header(path: Path, edit) -> None:  # type: ignore[no-untyped-def]
    """Re-encode a file's header after ``edit`` changed its JSON, fixing the length field."""
    raw = path.read_bytes()
    end = header_len(path)
    doc = json.loads(raw[8:end])
    edit(doc)
    body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    path.write_bytes(raw[:4] + struct.pack("<I", len(body)) + body + raw[end:])


def test_invalid_forged_header_asking_absurd_scrypt_cost(tmp_path):
    path = tmp_path / "p.fcd"
    datafile.write_dataset(path, make_dataset(5), Passphrase(b"pw"))
    rewrite_header(path, lambda doc: doc["key"].update(n=1 << 30))
    with pytest.raises(DatasetFileError, match="malformed or was altered"):
        datafile.load_dataset(path, Passphrase(b"pw"))


def test_invalid_forged_header_claiming_fewer_examples(sealed, key):
    """A header edited to describe a shorter body (a forged truncation) fails authentication."""
    path, _, _ = sealed
    rewrite_header(path, lambda doc: doc["dataset"].update(num_examples=10))
    body = 10 * (64 + 8)  # ten 1x8x8 uint8 examples and their int64 labels
    path.write_bytes(path.read_bytes()[: header_len(path) + body + -(-body // CHUNK) * 16])
    assert datafile.read_header(path).meta.num_examples == 10  # sizes agree: only the key tells
    expect_rejected(path, key, match="chunk 0 failed authentication")


def test_failed_decryption_returns_no_partial_data(sealed, key, monkeypatch):
    """The body buffer is wiped when a later chunk fails, so no plaintext survives the error."""
    path, _, header = sealed
    raw = bytearray(path.read_bytes())
    # only the last chunk is bad
    raw[header_len(path) + (header.num_chunks - 1) * (CHUNK + 16)] ^= 1
    path.write_bytes(raw)
    buffers: list[bytearray] = []

    def capture(n: int) -> bytearray:
        buffers.append(bytearray(n))
        return buffers[-1]

    monkeypatch.setattr(datafile, "bytearray", capture, raising=False)
    expect_rejected(path, key, match=f"chunk {header.num_chunks - 1} failed")
    assert len(buffers) == 1 and len(buffers[0]) == header.meta.body_size
    assert not any(buffers[0])


# --------------------------------------------------------------------------------------------------
# Forged header sizes: refused from the file's length, before anything is allocated from them.

PEAK_BOUND = 8 << 20  # bytes; the honest file is 4 kB, a forged claim asked for up to 7 TB


def forged_sizes(path: Path, num_examples: object = None, x_shape: object = None) -> None:
    def edit(doc: dict) -> None:  # type: ignore[type-arg]
        if num_examples is not None:
            doc["dataset"]["num_examples"] = num_examples
        if x_shape is not None:
            doc["dataset"]["x_shape"] = x_shape

    rewrite_header(path, edit)


def peak_of(call) -> int:  # type: ignore[no-untyped-def]
    tracemalloc.start()
    try:
        call()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize(
    ("num_examples", "x_shape", "match"),
    [
        (40_000_000, None, "truncated, or its header was altered: the header describes 40,000,000"),
        (10**11, None, "truncated, or its header was altered"),
        (10**40, None, "truncated, or its header was altered"),
        (-1, None, "num_examples must be a positive integer"),
        (0, None, "num_examples must be a positive integer"),
        (4e7, None, "num_examples must be an integer"),
        (1e11, None, "num_examples must be an integer"),
        (50.0, None, "num_examples must be an integer"),
        ("50", None, "num_examples must be an integer"),
        (True, None, "num_examples must be an integer"),
        (None, [2**32, 2**32], "truncated, or its header was altered"),  # int64 product wraps to 0
        (None, [320, 57_646_075_230_342_349], "truncated, or"),  # int64 product wraps to 64
        (None, [1] * 40, "at most 32 dimensions"),
        (None, [1, 8.0, 8], "x_shape must be an integer"),
        (None, "64", "x_shape must be a list"),
        (1, None, "unexpected bytes after its last chunk, or its header was altered"),
    ],
)
def test_invalid_forged_header_sizes_refused_before_allocation(
    sealed, key, num_examples, x_shape, match
):
    """The header is plain JSON anyone can edit. Its sizes must match the file's length before
    any buffer is sized from them: each forged claim is one line naming the file, and neither
    reading the header, hashing the file, nor decrypting it allocates more than a few MB."""
    path, _, _ = sealed
    forged_sizes(path, num_examples, x_shape)
    calls = {
        "read_header": lambda: datafile.read_header(path),
        "commitment": lambda: datafile.compute_dataset_commitment(path),
        "verified": lambda: datafile.compute_verified_commitment(path, key),
        "load": lambda: datafile.load_dataset(path, key),
    }
    for name, call in calls.items():
        errors: list[DatasetFileError] = []

        def run(call=call, errors=errors):  # type: ignore[no-untyped-def]
            with pytest.raises(DatasetFileError, match=match) as e:
                call()
            errors.append(e.value)

        assert peak_of(run) < PEAK_BOUND, name
        message = str(errors[0])
        assert message.startswith(f"{path}: ") and "\n" not in message, name


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        (
            "labels_present",
            [float("inf")],
            "labels_present must be an integer",
        ),  # was OverflowError
        ("chunk_size", 1 << 40, "chunk_size above"),
    ],
)
def test_invalid_forged_header_fields(sealed, key, field, value, match):
    path, _, _ = sealed

    def edit(doc: dict) -> None:  # type: ignore[type-arg]
        (doc["cipher"] if field == "chunk_size" else doc["dataset"])[field] = value

    rewrite_header(path, edit)
    with pytest.raises(DatasetFileError, match=match):
        datafile.load_dataset(path, key)


def test_invalid_deeply_nested_header_is_one_error(tmp_path, key):
    path = tmp_path / "deep.fcd"
    body = b"[" * 100_000
    path.write_bytes(MAGIC + struct.pack("<I", len(body)) + body)
    with pytest.raises(DatasetFileError, match="malformed"):
        datafile.read_header(path)


def test_body_buffer_allocated_only_after_the_header_authenticated(sealed, key, monkeypatch):
    """A header altered with consistent sizes passes the length check; chunk 0, which binds the
    header, fails before the body buffer is allocated from the header's numbers."""
    path, _, _ = sealed
    rewrite_header(path, lambda doc: doc["dataset"].update(name="altered"))
    buffers: list[int] = []

    def capture(n: int) -> bytearray:
        buffers.append(n)
        return bytearray(n)

    monkeypatch.setattr(datafile, "bytearray", capture, raising=False)
    expect_rejected(path, key, match="chunk 0 failed authentication")
    assert buffers == []


def test_invalid_fifo_is_refused_without_blocking(tmp_path, key):
    path = tmp_path / "pipe.fcd"
    os.mkfifo(path)
    expect_rejected(path, key, match="not a regular file")
    with pytest.raises(DatasetFileError, match="not a regular file"):
        datafile.compute_dataset_commitment(path)


# --------------------------------------------------------------------------------------------------
# The verified commitment (what `fedchain register` signs)


def test_verified_commitment_matches_and_authenticates(sealed, key, tmp_path):
    path, ds, _ = sealed
    verified = datafile.compute_verified_commitment(path, key)
    assert verified == datafile.compute_dataset_commitment(path)
    assert verified.num_examples == len(ds)
    other = keys.create_key_file(tmp_path / "other.key")
    with pytest.raises(WrongKeyError):
        datafile.compute_verified_commitment(path, other)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1  # the last chunk: only a full pass finds it
    path.write_bytes(raw)
    with pytest.raises(
        DatasetFileError, match=f"chunk {datafile.read_header(path).num_chunks - 1}"
    ):
        datafile.compute_verified_commitment(path, key)


def test_verified_commitment_refuses_a_consistently_forged_count(sealed, key):
    """A header edited to claim fewer examples, with the file cut to match, still hashes (no
    key) but is refused once decrypted: the count a participant signs is authenticated."""
    path, _, _ = sealed
    rewrite_header(path, lambda doc: doc["dataset"].update(num_examples=10))
    body = 10 * (64 + 8)
    path.write_bytes(path.read_bytes()[: header_len(path) + body + -(-body // CHUNK) * 16])
    assert datafile.compute_dataset_commitment(path).num_examples == 10  # the unverified claim
    with pytest.raises(DatasetFileError, match="chunk 0 failed authentication"):
        datafile.compute_verified_commitment(path, key)
