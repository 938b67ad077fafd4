"""A data holder's signed approvals of a new app (fedchain/runs/approval.py), and what
`fedchain join --approve` shows of the change."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
from flwr.cli.build import build_fab_from_files

from fedchain.crypto import identity
from fedchain.deploy import app
from fedchain.errors import ConfigError, SignatureError
from fedchain.runs import approval

FED = hashlib.sha256(b"federation").digest()
OTHER_FED = hashlib.sha256(b"another federation").digest()


def _chain(key, digests: list[bytes], federation: bytes = FED) -> list[approval.ApprovalEntry]:
    entries, current = [], app.app_digest()
    for sequence, digest in enumerate(digests, 1):
        entries.append(approval.sign_approval(key, federation, digest, current, sequence, "0.2.0"))
        current = digest
    return entries


def test_approvals_round_trip_and_the_latest_is_the_app_that_runs(tmp_path: Path) -> None:
    key = identity.generate_identity()
    public = identity.public_key_bytes(key)
    path = tmp_path / "approved-app.toml"
    assert approval.read_approvals(path, FED, public) == []
    assert approval.approved_app([], app.app_digest()) == app.app_digest()
    entries = _chain(key, [bytes([1]) * 32, bytes([2]) * 32])
    approval.write_approvals(path, entries + _chain(key, [bytes([9]) * 32], OTHER_FED))
    assert approval.read_approvals(path, FED, public) == entries  # another federation's: skipped
    assert approval.approved_app(entries, app.app_digest()) == bytes([2]) * 32
    assert [entry.approval.sequence for entry in entries] == [1, 2]


def test_a_v1_approval_file_is_refused_with_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "approved-app.toml"
    path.write_text('format = "fedchain-app-approvals/v1"\n')
    with pytest.raises(ConfigError, match="approve the app again"):
        approval.read_approvals(path, FED, bytes(32))


@pytest.mark.parametrize(
    "attack",
    [
        "digest swapped after signing",
        "signed by another key",
        "signed for another federation",
        "chain broken",
        "an old approval replayed after going back",
    ],
)
def test_invalid_approval_files_are_refused(tmp_path: Path, attack: str) -> None:
    """Someone (a coordinator, a script) edits the holder's approval file to make its node run
    another app: the node refuses the file rather than run an app the holder never signed."""
    key = identity.generate_identity()
    public = identity.public_key_bytes(key)
    entries = _chain(key, [bytes([1]) * 32, bytes([2]) * 32])
    first = entries[0]
    if attack == "digest swapped after signing":
        entries[1] = dataclasses.replace(
            entries[1], approval=dataclasses.replace(entries[1].approval, app_digest=bytes(32))
        )
    elif attack == "signed by another key":
        other = _chain(identity.generate_identity(), [bytes([1]) * 32])[0]
        entries[0] = dataclasses.replace(
            other, approval=dataclasses.replace(other.approval, public_key=public)
        )
    elif attack == "signed for another federation":
        foreign = _chain(key, [bytes([1]) * 32], OTHER_FED)[0]
        entries[0] = approval.ApprovalEntry(foreign.approval, FED)
    elif attack == "chain broken":
        entries.insert(1, first)  # replaces a digest that is not the one approved before it
    else:  # the app moved to 1 and back: its first approval (1 in place of the app) replayed
        entries = _chain(key, [bytes([1]) * 32, app.app_digest()])
        entries.append(entries[0])  # it follows by digest; its sequence number is spent
    path = tmp_path / "approved-app.toml"
    approval.write_approvals(path, entries)
    with pytest.raises((SignatureError, ConfigError)):
        approval.read_approvals(path, FED, public)


def test_read_new_app_takes_a_digest_or_a_fab_file(tmp_path: Path) -> None:
    digest = bytes(range(32))
    assert approval.read_new_app(digest.hex().upper()) == (digest, None)
    fab = app.build_app_fab()
    (tmp_path / "app.fab").write_bytes(fab)
    assert approval.read_new_app(str(tmp_path / "app.fab")) == (app.app_digest(), fab)
    with pytest.raises(ConfigError, match="neither an app digest"):
        approval.read_new_app("abc")


def test_describe_change_shows_shipped_code_and_the_config_diff() -> None:
    pyproject = app.APP_PYPROJECT.replace(
        'clientapp = "clients.client_app:app"', 'clientapp = "probe:app"'
    )
    files = {"pyproject.toml": pyproject.encode(), "probe.py": b"print('hello')\n"}
    new_fab, _ = build_fab_from_files(files)
    lines = approval.describe_change(app.build_app_fab(), new_fab)
    assert lines[0] == "it ships Python code that would run on your data: probe.py"
    assert "added probe.py" in lines and "changed pyproject.toml" in lines
    assert '  -clientapp = "clients.client_app:app"' in lines
    assert '  +clientapp = "probe:app"' in lines
    assert approval.describe_change(None, None)[0].startswith("only a digest was given")
    same = approval.describe_change(app.build_app_fab(), app.build_app_fab())
    assert same == ["it ships no code: it runs your installed fedchain's entry points"]
    with pytest.raises(ConfigError, match="not a Flower app bundle"):
        approval.describe_change(None, b"not a zip")
