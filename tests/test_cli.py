"""The command line as a user runs it: real processes for the error paths (exit code, stderr)."""

from __future__ import annotations

import json
import os
import stat
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedchain.cli import app
from fedchain.crypto import identity
from fedchain.data import datafile, keys
from fedchain.data.sources import load_source

runner = CliRunner()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real entry point in a fresh process, without a terminal on stdin."""
    return subprocess.run(
        [sys.executable, "-m", "fedchain", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        timeout=120,
    )


@pytest.fixture(scope="module")
def encrypted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("enc")
    result = runner.invoke(
        app,
        [
            "data",
            "encrypt",
            "-n",
            "3",
            "-o",
            str(out),
            "-k",
            str(out / "k.key"),
            "--chunk-size",
            "4096",
        ],
    )
    assert result.exit_code == 0, result.output
    return out


def test_encrypt_writes_one_file_per_client_covering_the_split(encrypted):
    files = sorted(encrypted.glob("client-*.fcd"))
    assert [f.name for f in files] == ["client-000.fcd", "client-001.fcd", "client-002.fcd"]
    assert stat.S_IMODE((encrypted / "k.key").stat().st_mode) == 0o600
    key = keys.load_key_file(encrypted / "k.key")
    loaded = [datafile.load_dataset(f, key) for f in files]
    train = load_source("digits", split="train")
    assert sum(len(d) for d in loaded) == len(train)
    x = np.concatenate([d.x for d in loaded])
    # every training example lands in exactly one file (compare as sorted rows of bytes)
    rows = sorted(
        bytes(r) + bytes([int(y)])
        for r, y in zip(x.reshape(len(x), -1), np.concatenate([d.y for d in loaded]), strict=True)
    )
    want = sorted(
        bytes(r) + bytes([int(y)])
        for r, y in zip(train.x.reshape(len(train), -1), train.y, strict=True)
    )
    assert rows == want


def test_inspect_json_with_and_without_key(encrypted):
    path = encrypted / "client-001.fcd"
    header_only = run_cli("data", "inspect", str(path), "--json")
    assert header_only.returncode == 0, header_only.stderr
    doc = json.loads(header_only.stdout)
    assert doc["dataset"]["num_examples"] > 0 and "decrypted" not in doc
    assert doc["dataset"]["partition"] == {
        "method": "iid",
        "num_clients": 3,
        "seed": 0,
        "source_split": "train",
        "client": 1,
    }
    full = run_cli("data", "inspect", str(path), "--json", "-k", str(encrypted / "k.key"))
    assert full.returncode == 0, full.stderr
    dec = json.loads(full.stdout)["decrypted"]
    assert sum(dec["label_histogram"].values()) == doc["dataset"]["num_examples"]
    assert dec["x_shape"] == [doc["dataset"]["num_examples"], 1, 8, 8]


def test_encrypt_single_client_matches_full_split(encrypted, tmp_path):
    result = runner.invoke(
        app,
        [
            "data",
            "encrypt",
            "-n",
            "3",
            "--client",
            "2",
            "-o",
            str(tmp_path),
            "-k",
            str(encrypted / "k.key"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert [p.name for p in tmp_path.iterdir()] == ["client-002.fcd"]
    key = keys.load_key_file(encrypted / "k.key")
    one = datafile.load_dataset(tmp_path / "client-002.fcd", key)
    full = datafile.load_dataset(encrypted / "client-002.fcd", key)
    assert np.array_equal(one.x, full.x) and np.array_equal(one.y, full.y)


def test_passphrase_from_environment(tmp_path):
    env = {"MY_PASS": "open sesame"}
    enc = run_cli(
        "data",
        "encrypt",
        "-n",
        "2",
        "-p",
        "shards",
        "-o",
        str(tmp_path),
        "--passphrase-env",
        "MY_PASS",
        env=env,
    )
    assert enc.returncode == 0, enc.stderr
    ok = run_cli(
        "data",
        "inspect",
        str(tmp_path / "client-000.fcd"),
        "--unlock",
        "--passphrase-env",
        "MY_PASS",
        env=env,
    )
    assert ok.returncode == 0 and "label histogram" in ok.stdout
    bad = run_cli(
        "data",
        "inspect",
        str(tmp_path / "client-000.fcd"),
        "--unlock",
        env={"FEDCHAIN_PASSPHRASE": "nope"},
    )
    assert_clean_failure(bad, tmp_path / "client-000.fcd", "wrong passphrase")


def test_no_passphrase_and_no_terminal_is_refused(tmp_path):
    result = run_cli("data", "encrypt", "-n", "2", "-o", str(tmp_path))
    assert result.returncode != 0 and "FEDCHAIN_PASSPHRASE" in result.stderr
    assert not list(tmp_path.iterdir())


def assert_clean_failure(result: subprocess.CompletedProcess[str], path: Path, reason: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    assert path.name in result.stderr and reason in " ".join(result.stderr.split())
    assert "label histogram" not in result.stdout and "decrypted" not in result.stdout


def header_end(raw: bytes) -> int:
    return 8 + struct.unpack("<I", raw[4:8])[0]


def tamper_cases(raw: bytes) -> dict[str, tuple[bytes, str]]:
    h, size = header_end(raw), 4096 + 16
    flip = lambda data, at: data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]  # noqa: E731
    name_at = raw.index(b'"digits"') + 1
    return {
        "header byte": (flip(raw, name_at), "chunk 0 failed authentication"),
        "chunk byte": (flip(raw, h + size + 10), "chunk 1 failed authentication"),
        "truncated": (raw[: h + size], "truncated"),
        "appended": (raw + b"\0" * 5, "unexpected bytes"),
        "reordered": (
            raw[:h] + raw[h + size : h + 2 * size] + raw[h : h + size] + raw[h + 2 * size :],
            "chunk 0 failed authentication",
        ),
    }


@pytest.mark.parametrize(
    "case", ["header byte", "chunk byte", "truncated", "appended", "reordered"]
)
def test_invalid_altered_file_fails_cleanly(encrypted, tmp_path, case):
    original = (encrypted / "client-000.fcd").read_bytes()
    assert (len(original) - header_end(original)) > 3 * 4096, "need at least three chunks"
    data, reason = tamper_cases(original)[case]
    path = tmp_path / "altered.fcd"
    path.write_bytes(data)
    result = run_cli("data", "inspect", str(path), "-k", str(encrypted / "k.key"))
    assert_clean_failure(result, path, reason)


def test_invalid_wrong_key_file_fails_cleanly(encrypted, tmp_path):
    keys.create_key_file(tmp_path / "other.key")
    path = encrypted / "client-000.fcd"
    result = run_cli("data", "inspect", str(path), "-k", str(tmp_path / "other.key"))
    assert_clean_failure(result, path, "wrong key file")


def test_invalid_truncated_file_detected_without_key(encrypted, tmp_path):
    path = tmp_path / "short.fcd"
    path.write_bytes((encrypted / "client-000.fcd").read_bytes()[:-1])
    result = run_cli("data", "inspect", str(path))
    assert_clean_failure(result, path, "truncated")


def test_invalid_source_and_partitioner_are_explained(tmp_path):
    bad_source = runner.invoke(
        app, ["data", "encrypt", "-s", "imagenet", "-o", str(tmp_path), "-k", str(tmp_path / "k")]
    )
    assert bad_source.exit_code == 1 and "digits" in bad_source.output
    bad_part = runner.invoke(
        app, ["data", "encrypt", "-p", "zipf", "-o", str(tmp_path), "-k", str(tmp_path / "k")]
    )
    assert bad_part.exit_code == 1 and "dirichlet" in bad_part.output
    assert not list(tmp_path.glob("*.fcd"))


def test_invalid_existing_output_is_kept(encrypted):
    before = (encrypted / "client-000.fcd").read_bytes()
    result = runner.invoke(
        app, ["data", "encrypt", "-n", "3", "-o", str(encrypted), "-k", str(encrypted / "k.key")]
    )
    assert result.exit_code == 1 and "--force" in result.output
    assert (encrypted / "client-000.fcd").read_bytes() == before


def test_keygen_with_passphrase_and_without(tmp_path):
    enc = run_cli("keygen", str(tmp_path / "alice.key"), env={"FEDCHAIN_PASSPHRASE": "pw"})
    assert enc.returncode == 0, enc.stderr
    key = identity.load_identity(tmp_path / "alice.key", b"pw")
    assert identity.load_public_key(tmp_path / "alice.pub") == identity.public_key_bytes(key)
    assert identity.public_key_bytes(key).hex() in enc.stdout
    plain = run_cli("keygen", str(tmp_path / "bob.key"), "--no-passphrase")
    assert plain.returncode == 0, plain.stderr
    assert stat.S_IMODE((tmp_path / "bob.key").stat().st_mode) == 0o600
    identity.load_identity(tmp_path / "bob.key", None)
    again = run_cli("keygen", str(tmp_path / "bob.key"), "--no-passphrase")
    assert again.returncode == 1 and "Traceback" not in again.stderr and "bob.key" in again.stderr


@pytest.mark.parametrize(
    "command",
    [[], ["data"], ["data", "encrypt"], ["data", "inspect"], ["data", "keygen"], ["keygen"]],
)
def test_help_explains_every_command(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_cli_start_imports_nothing_heavy() -> None:
    """Every command pays for what ``fedchain`` imports at start: torch, scikit-learn, scipy,
    Flower and Ray are imported where a command needs them, not before
    (experiments/bench_startup.py)."""
    code = (
        "import sys, fedchain.cli; heavy = {'torch', 'sklearn', 'scipy', 'flwr', 'ray'}; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def run_in_terminal(args: list[str], answers: list[str], timeout: float = 60.0) -> tuple[int, str]:
    """Run the CLI on a pseudo-terminal, answering each prompt in turn: (exit code, output)."""
    import pty
    import select
    import time

    pid, fd = pty.fork()
    if pid == 0:  # child: the pty is its controlling terminal, so getpass reads from it
        os.execv(sys.executable, [sys.executable, "-m", "fedchain", *args])
    output, pending, deadline = b"", list(answers), time.monotonic() + timeout
    answered = 0  # answer only a prompt that appeared after the previous answer
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
                if pending and output[answered:].rstrip().endswith(b":"):
                    os.write(fd, pending.pop(0).encode() + b"\n")
                    answered = len(output)
        else:
            os.kill(pid, 9)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def test_keygen_asks_for_passphrase_twice_on_a_terminal(tmp_path):
    env_before = os.environ.pop("FEDCHAIN_PASSPHRASE", None)
    try:
        code, out = run_in_terminal(
            ["keygen", str(tmp_path / "t.key")], ["s3cret pass", "s3cret pass"]
        )
        assert code == 0, out
        assert "Passphrase for the identity" in out and "Repeat the passphrase" in out
        assert "s3cret" not in out  # not echoed
        identity.load_identity(tmp_path / "t.key", b"s3cret pass")
        code, out = run_in_terminal(["keygen", str(tmp_path / "u.key")], ["one", "two"])
        assert code == 1 and "do not match" in out and not (tmp_path / "u.key").exists()
    finally:
        if env_before is not None:
            os.environ["FEDCHAIN_PASSPHRASE"] = env_before


def test_invalid_missing_source_creates_no_key_file(tmp_path):
    result = run_cli(
        "data",
        "encrypt",
        "-s",
        "mnist",
        "--root",
        str(tmp_path / "none"),
        "-o",
        str(tmp_path / "out"),
        "-k",
        str(tmp_path / "new.key"),
    )
    assert result.returncode == 1 and "--download" in " ".join(result.stderr.split())
    assert not (tmp_path / "new.key").exists() and not (tmp_path / "out").exists()


def test_invalid_scoring_too_expensive_is_refused_before_anything_runs(tmp_path):
    result = run_cli(
        "simulate", "--contribution", "shapley", "--clients", "20", "--out", str(tmp_path / "o")
    )
    text = " ".join((result.stdout + result.stderr).replace("│", " ").split())
    assert result.returncode != 0
    assert "limited to 16: use mc-shapley" in text, text
    assert "or use leave-one-out (21 evaluations) or gradient-similarity" in text
    assert not (tmp_path / "o").exists()
