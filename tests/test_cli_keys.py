"""`fedchain keygen` as the README runs it: a fresh folder, true help, one-line errors."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from fedchain.cli import app
from fedchain.crypto import identity

runner = CliRunner()


def cli(*args: object) -> Result:
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "300"})


@pytest.fixture
def fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEDCHAIN_PASSPHRASE", "a long passphrase")
    return tmp_path


def test_keygen_creates_the_missing_keys_folder(fresh):
    """The README's `fedchain keygen keys/alice.key` in a folder without keys/."""
    result = cli("keygen", "keys/alice.key")
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE((fresh / "keys").stat().st_mode) == 0o700
    assert stat.S_IMODE((fresh / "keys/alice.key").stat().st_mode) == 0o600
    key = identity.load_identity(fresh / "keys/alice.key", b"a long passphrase")
    assert identity.load_public_key(fresh / "keys/alice.pub") == identity.public_key_bytes(key)
    assert cli("keygen", "keys/bob.key", "--no-passphrase").exit_code == 0  # folder exists now
    supernode = cli("keygen", "nodes/deep/alice-node.key", "--supernode")
    assert supernode.exit_code == 0, supernode.output
    assert (fresh / "nodes/deep/alice-node.pub").exists()


def test_invalid_keygen_folder_is_a_file(fresh):
    (fresh / "keys").write_text("not a folder")
    result = cli("keygen", "keys/alice.key")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output and "keys" in result.output


def test_keygen_help_names_the_formats_it_writes(fresh):
    """The help said PKCS#8 while a passphrase-protected key is written as OpenSSH."""
    shown = " ".join(cli("keygen", "--help").output.split())
    assert "OpenSSH format encrypted with your passphrase" in shown
    assert "unencrypted PKCS#8" in shown
    assert cli("keygen", "enc.key").exit_code == 0
    assert cli("keygen", "plain.key", "--no-passphrase").exit_code == 0
    assert (fresh / "enc.key").read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert (fresh / "plain.key").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
