"""A data holder's approvals of a new app (an upgrade), signed and kept beside its dataset.

A holder's registration signs the app it approves at first (:mod:`fedchain.deploy.app`). Running
another one is an explicit act: ``fedchain join --approve DIGEST_OR_FAB`` shows what changed,
signs an :class:`~fedchain.ledger.objects.AppApproval` (the new digest, the one it replaces, its
sequence number, the fedchain version) under the app-approval domain with the federation id, and
appends it to ``NAME.ledger/approved-app.toml``
(:data:`~fedchain.runs.layout.APPROVED_APP_FILENAME`).
From then on the holder's node runs the latest approved app and no other; an older one is not
replayable. The file holds no secret: the holder gives it to the coordinator, who records each
approval on the ledger (``fedchain coordinator approve``), where the state transition checks it
against the holder's key and its previous approval.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedchain.crypto.identity import Domain, public_key_bytes, sign
from fedchain.durable import write_atomically
from fedchain.errors import ConfigError, SignatureError
from fedchain.ledger.derived import signing_message
from fedchain.ledger.objects import HASH_SIZE, AppApproval, Hash32
from fedchain.ledger.signatures import is_signed_by
from fedchain.runs.layout import APPROVAL_INBOX_FILENAME
from fedchain.runs.registration import parse_federation_id, read_toml

__all__ = [
    "APPROVAL_FORMAT",
    "MAX_FAB_SIZE",
    "ApprovalEntry",
    "approved_app",
    "describe_change",
    "parse_approvals",
    "read_approvals",
    "read_inbox",
    "read_new_app",
    "sign_approval",
    "write_approvals",
    "write_inbox",
]

APPROVAL_FORMAT = "fedchain-app-approvals/v2"
"""v2: each approval signs its sequence number (v1's did not, so a v1 file is refused)."""
MAX_FAB_SIZE = 64 << 20  # bytes: fedchain's own FAB is under 1 KiB


@dataclass(frozen=True)
class ApprovalEntry:
    """One signed approval and the federation it was signed for."""

    approval: AppApproval
    federation_id: Hash32


def sign_approval(
    key: Ed25519PrivateKey,
    federation_id: Hash32,
    app_digest: Hash32,
    replaces: Hash32,
    sequence: int,
    fedchain_version: str,
) -> ApprovalEntry:
    """The holder's ``sequence``-th approval (1 for its first): ``app_digest`` in place of
    ``replaces``."""
    fields = (public_key_bytes(key), app_digest, replaces, sequence, fedchain_version)
    unsigned = AppApproval(*fields, b"")
    signature = sign(key, Domain.APP_APPROVAL, signing_message(unsigned), federation_id)
    return ApprovalEntry(AppApproval(*fields, signature), federation_id)


def parse_approvals(path: Path) -> list[ApprovalEntry]:
    """Every approval in the approval file ``path``, as written (nothing checked but its form:
    the holder's :func:`read_approvals` and the ledger check the signatures and the order)."""
    doc = read_toml(path)
    if doc.get("format") != APPROVAL_FORMAT:
        hint = ""
        if doc.get("format") == "fedchain-app-approvals/v1":
            hint = "; it was made before approvals were numbered: approve the app again"
        raise ConfigError(f"{path}: not a fedchain app approval file ({APPROVAL_FORMAT}){hint}")
    entries: list[ApprovalEntry] = []
    for i, table in enumerate(doc.get("approval", [])):
        where = f"{path}: approval {i + 1}"
        try:
            entries.append(
                ApprovalEntry(
                    AppApproval(
                        public_key=bytes.fromhex(str(table["public-key"])),
                        app_digest=bytes.fromhex(str(table["app-digest"])),
                        replaces=bytes.fromhex(str(table["replaces"])),
                        sequence=int(table["sequence"]),
                        fedchain_version=str(table["fedchain-version"]),
                        signature=bytes.fromhex(str(table["signature"])),
                    ),
                    parse_federation_id(str(table["federation-id"]), where),
                )
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"{where}: malformed ({e})") from None
    return entries


def read_approvals(path: Path, federation_id: Hash32, public_key: bytes) -> list[ApprovalEntry]:
    """The holder's approvals for ``federation_id`` in ``path`` (none: ``[]``), each checked to
    be signed by ``public_key`` for that federation, numbered 1, 2, ... and to replace the one
    before it."""
    if not path.exists():
        return []
    entries: list[ApprovalEntry] = []
    for i, entry in enumerate(parse_approvals(path)):
        where = f"{path}: approval {i + 1}"
        if entry.federation_id != federation_id:
            continue  # made for another federation (the same dataset joined another one)
        approval = entry.approval
        if approval.public_key != public_key or not is_signed_by(
            approval, public_key, federation_id
        ):
            raise SignatureError(f"{where}: not signed by your identity for this federation")
        if approval.sequence != len(entries) + 1 or (
            entries and approval.replaces != entries[-1].approval.app_digest
        ):
            raise ConfigError(f"{where}: does not follow the approval before it")
        entries.append(entry)
    return entries


def write_approvals(path: Path, entries: list[ApprovalEntry]) -> None:
    import tomli_w

    tables = [
        {
            "federation-id": entry.federation_id.hex(),
            "public-key": entry.approval.public_key.hex(),
            "app-digest": entry.approval.app_digest.hex(),
            "replaces": entry.approval.replaces.hex(),
            "sequence": entry.approval.sequence,
            "fedchain-version": entry.approval.fedchain_version,
            "signature": entry.approval.signature.hex(),
        }
        for entry in entries
    ]
    text = (
        "# Apps this data holder approved to run on its data, each signed by its identity\n"
        "# (`fedchain join --approve`); the last one is the app its node runs. No secret.\n"
        + tomli_w.dumps({"format": APPROVAL_FORMAT, "approval": tables})
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, text.encode())


def read_inbox(run_dir: Path) -> list[ApprovalEntry]:
    """The approvals the coordinator was given for its next block (none: ``[]``), unchecked:
    the ledger's transition decides which it records (:mod:`fedchain.rounds.admission`)."""
    path = Path(run_dir) / APPROVAL_INBOX_FILENAME
    return parse_approvals(path) if path.exists() else []


def write_inbox(run_dir: Path, entries: list[ApprovalEntry]) -> None:
    write_approvals(Path(run_dir) / APPROVAL_INBOX_FILENAME, entries)


def approved_app(entries: list[ApprovalEntry], default: Hash32) -> Hash32:
    """The app the holder's node runs: its latest approval's, else ``default`` (the one its
    registration signed: its fedchain's own app)."""
    return entries[-1].approval.app_digest if entries else default


def read_new_app(text: str) -> tuple[Hash32, bytes | None]:
    """``--approve``'s value: a digest (64 hex digits), or a FAB file (its SHA-256 and bytes)."""
    candidate = text.strip().lower()
    if len(candidate) == 2 * HASH_SIZE and all(c in "0123456789abcdef" for c in candidate):
        return bytes.fromhex(candidate), None
    path = Path(text)
    if not path.is_file():
        raise ConfigError(f"--approve {text!r}: neither an app digest (64 hex digits) nor a file")
    if path.stat().st_size > MAX_FAB_SIZE:
        raise ConfigError(f"{path}: over {MAX_FAB_SIZE} bytes, not a fedchain app bundle")
    data = path.read_bytes()
    return hashlib.sha256(data).digest(), data


def describe_change(old_fab: bytes | None, new_fab: bytes | None) -> list[str]:
    """What changes from the app bundle ``old_fab`` to ``new_fab``: files added, removed or
    changed, the Python code it ships, and a diff of its ``pyproject.toml`` (components and
    config). A side that is unknown (only a digest was given) is said to be."""
    if new_fab is None:
        return ["only a digest was given: pass the app's .fab file to see what it holds"]
    try:
        new = _files(new_fab)
    except (zipfile.BadZipFile, OSError) as e:
        raise ConfigError(f"the new app is not a Flower app bundle (FAB): {e}") from None
    lines = []
    code = sorted(name for name in new if name.endswith(".py"))
    if code:
        lines.append(f"it ships Python code that would run on your data: {', '.join(code)}")
    else:
        lines.append("it ships no code: it runs your installed fedchain's entry points")
    if old_fab is None:
        lines.append("the app you approved before is not at hand: its files cannot be compared")
        return lines
    old = _files(old_fab)
    for name in sorted(set(old) | set(new)):
        if name not in old:
            lines.append(f"added {name}")
        elif name not in new:
            lines.append(f"removed {name}")
        elif old[name] != new[name]:
            lines.append(f"changed {name}")
            if name.endswith((".toml", ".py", ".txt", ".md", ".json", ".yaml", ".yml")):
                diff = difflib.unified_diff(
                    old[name].decode(errors="replace").splitlines(),
                    new[name].decode(errors="replace").splitlines(),
                    lineterm="",
                    n=0,
                )
                lines += [f"  {line}" for line in diff if not line.startswith(("---", "+++"))]
    return lines


def _files(fab: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(fab)) as archive:
        if sum(info.file_size for info in archive.infolist()) > MAX_FAB_SIZE:
            raise ConfigError(f"the app bundle unpacks to over {MAX_FAB_SIZE} bytes")
        return {
            info.filename: archive.read(info)
            for info in archive.infolist()
            if not info.is_dir() and not info.filename.startswith(".info/")
        }
