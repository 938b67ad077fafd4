"""`fedchain data` as a user meets it: forged headers and missing keys are one line, exit 1."""

from __future__ import annotations

import json
import struct
import tracemalloc
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from fedchain.cli import app
from fedchain.data import datafile, keys
from fedchain.data.header import MAX_CHUNK_SIZE
from fedchain.data.sources import load_source

runner = CliRunner()


def cli(*args: object) -> Result:
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "300"})


def error_line(result: Result) -> str:
    """The one line of a FedchainError in click's error box (exit 1, no traceback)."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    inside = [line.strip("│ ") for line in result.output.splitlines() if line.startswith("│")]
    assert len(inside) == 1, result.output
    return inside[0]


@pytest.fixture
def sealed(tmp_path: Path) -> tuple[Path, Path]:
    key_path = tmp_path / "data.key"
    key = keys.create_key_file(key_path)
    path = tmp_path / "client-000.fcd"
    datafile.write_dataset(path, load_source("digits", split="train").subset(range(40)), key)
    return path, key_path


def set_header(path: Path, section: str, field: str, value: object) -> None:
    raw = path.read_bytes()
    end = 8 + struct.unpack("<I", raw[4:8])[0]
    doc = json.loads(raw[8:end])
    doc[section][field] = value
    body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    path.write_bytes(raw[:4] + struct.pack("<I", len(body)) + body + raw[end:])


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("num_examples", 40_000_000, "truncated, or its header was altered"),
        ("num_examples", 10**11, "truncated, or its header was altered"),
        ("num_examples", 1e11, "num_examples must be an integer"),
        ("num_examples", -1, "num_examples must be a positive integer"),
        ("x_shape", [2**32, 2**32], "truncated, or its header was altered"),
    ],
)
def test_invalid_forged_header_through_inspect_and_decrypt(sealed, field, value, reason):
    """`data inspect` (header only, and with the key) refuses a forged header in one line
    naming the file, without allocating from the claim (it asked for up to 7 TB)."""
    path, key_path = sealed
    set_header(path, "dataset", field, value)
    for extra in ((), ("--key-file", key_path)):
        tracemalloc.start()
        try:
            line = error_line(cli("data", "inspect", path, *extra))
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert line.startswith(f"{path}: ") and reason in line
        assert peak < 64 << 20


def test_inspect_key_file_help_is_true_and_a_missing_key_is_not_created(sealed, tmp_path):
    """The help said the key file is created if missing; for inspect it must exist (a new
    random key could not open the file), and a missing one is one line, nothing created."""
    path, _ = sealed
    shown = " ".join(cli("data", "inspect", "--help").output.split())
    assert "created if missing" not in shown and "creates it if missing" not in shown
    assert "it must exist" in shown
    missing = tmp_path / "missing.key"
    line = error_line(cli("data", "inspect", path, "--key-file", missing))
    assert str(missing) in line and "not found" in line
    assert not missing.exists()
    encrypt = " ".join(cli("data", "encrypt", "--help").output.split())
    assert "created if missing" in encrypt  # there it is true


def test_inspect_decrypts_with_the_key(sealed):
    path, key_path = sealed
    result = cli("data", "inspect", path, "--key-file", key_path, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["decrypted"]["num_examples"] == 40 == report["dataset"]["num_examples"]


def test_invalid_chunk_size_above_the_readers_bound(tmp_path):
    too_big = MAX_CHUNK_SIZE + 1
    result = cli("data", "encrypt", "--out", tmp_path / "d", "--chunk-size", too_big)
    assert result.exit_code == 2 and "--chunk-size" in result.output  # click's usage error
    assert not (tmp_path / "d").exists()


def test_invalid_forged_header_stops_join_before_anything_starts(sealed, tmp_path):
    """`fedchain join` decrypts first: a header claiming 4e7 examples allocated 2.9 GB there
    (1e11: a MemoryError traceback); now it is one line naming the file, and no SuperNode."""
    path, key_path = sealed
    set_header(path, "dataset", "num_examples", 10**11)
    tracemalloc.start()
    try:
        result = cli(
            "join", "--coordinator", "127.0.0.1:1", "--data", path, "--data-key", key_path,
            "--identity", tmp_path / "none.key", "--insecure", "--log", tmp_path / "sn.log",
        )  # fmt: skip
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    line = error_line(result)
    assert line.startswith(f"{path}: ") and "100,000,000,000 examples" in line
    assert peak < 64 << 20 and not (tmp_path / "sn.log").exists()


def test_encrypt_a_text_folder_with_a_local_tokenizer(tmp_path):
    """`fedchain data encrypt --source text`: CSV/JSONL files and a tokenizer directory in,
    per-client files of int64 token ids and masks out, with the class list the user gave."""
    import transformers  # fedchain[nlp], part of the dev extra; slow to import

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad"]))
    transformers.BertTokenizer(str(vocab)).save_pretrained(str(tmp_path / "tok"))
    data = tmp_path / "reviews"
    data.mkdir()
    (data / "train.csv").write_text("text,stars\n" + "good,5\nbad,1\n" * 4)
    (data / "test.csv").write_text("text,stars\nbad good,1\n")
    key = tmp_path / "data.key"
    result = cli(
        "data",
        "encrypt",
        "--source",
        "text",
        "--root",
        data,
        "--tokenizer",
        tmp_path / "tok",
        "--label-column",
        "stars",
        "--max-length",
        5,
        "--classes",
        "1,3,5",
        "--clients",
        2,
        "--out",
        tmp_path / "fcd",
        "--key-file",
        key,
    )
    assert result.exit_code == 0, result.output
    ds = datafile.load_dataset(tmp_path / "fcd" / "client-000.fcd", keys.load_key_file(key))
    assert ds.x.shape == (4, 2, 5) and str(ds.x.dtype) == "int64"
    assert ds.classes == ("1", "3", "5") and set(ds.y.tolist()) <= {0, 2}
    without = cli(
        "data",
        "encrypt",
        "--source",
        "text",
        "--root",
        data,
        "--out",
        tmp_path / "no",
        "--key-file",
        key,
    )
    assert "--tokenizer" in error_line(without)
