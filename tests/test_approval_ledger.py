"""The coordinator's side of an app upgrade: `fedchain coordinator approve` takes a holder's
signed approval, checks it against the ledger, and the next block records it; every replay of
the ledger then names the holder's new app (spec §9.9). Attackers: a coordinator (or anyone
with its folder) forging an approval, recording another participant's, or replaying an old one.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from typer.testing import CliRunner

from fedchain.cli import app
from fedchain.crypto import identity
from fedchain.deploy.app import app_digest
from fedchain.ledger.codec import decode
from fedchain.ledger.objects import AppApproval, Block
from fedchain.ledger.store import LedgerStore
from fedchain.ledger.verify import verify_ledger
from fedchain.runs import approval, federation, layout
from server.deployment import run_deployment
from tests.test_federation import deployed_grid, make_federation, make_holders

SETTINGS = {"rounds": 1, "model": "mlp", "local-epochs": 1, "round-timeout": 30.0}
APP_V2 = hashlib.sha256(b"app v2").digest()
APP_V3 = hashlib.sha256(b"app v3").digest()


def _federation(tmp_path: Path, nodes: list[dict[str, str]]) -> tuple[Path, bytes]:
    fed_dir = make_federation(tmp_path, nodes, name="upgrade", settings=SETTINGS)
    return fed_dir, bytes.fromhex(nodes[0]["federation-id"])


def _cli(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "500"})
    return result.exit_code, " ".join(result.output.replace("│", " ").split())


def _approve(fed_dir: Path, path: Path) -> tuple[int, str]:
    return _cli("coordinator", "approve", fed_dir, path)


def _key(node: dict[str, str]) -> identity.Ed25519PrivateKey:
    return identity.load_identity(Path(node["identity-path"]), None)


def _recorded(run_dir: Path) -> list[AppApproval]:
    with LedgerStore.open(run_dir / "ledger.db", readonly=True) as store:
        blocks = [decode(Block, stored.data) for stored in store.iter_blocks()]
    return [tx for block in blocks for tx in block.transactions if isinstance(tx, AppApproval)]


def test_coordinator_records_a_holders_approval_and_refuses_forged_ones(tmp_path: Path) -> None:
    nodes = make_holders(tmp_path, 2)
    fed_dir, fed_id = _federation(tmp_path, nodes)
    run_dir = layout.run_dir_of(fed_dir)
    h0, h1 = _key(nodes[0]), _key(nodes[1])
    entry = approval.sign_approval(h0, fed_id, APP_V2, app_digest(), 1, "0.2.0")
    approval.write_approvals(tmp_path / "h0.toml", [entry])

    code, output = _approve(fed_dir, tmp_path / "h0.toml")
    assert code != 0 and "no ledger yet" in output
    federation.prepare_federation_run(federation.load_federation(fed_dir))

    attacks = {
        "forged": dataclasses.replace(
            entry, approval=dataclasses.replace(entry.approval, app_digest=APP_V3)
        ),
        "another participant's": approval.ApprovalEntry(
            dataclasses.replace(
                approval.sign_approval(h1, fed_id, APP_V2, app_digest(), 1, "0.2.0").approval,
                public_key=identity.public_key_bytes(h0),
            ),
            fed_id,
        ),
        "out of turn": approval.sign_approval(h0, fed_id, APP_V3, APP_V2, 2, "0.2.0"),
    }
    for name, forged in attacks.items():
        approval.write_approvals(tmp_path / "forged.toml", [forged])
        code, output = _approve(fed_dir, tmp_path / "forged.toml")
        assert code != 0, name
        assert "approval" in output and "of h0 refused" in output, (name, output)
    assert approval.read_inbox(run_dir) == []  # nothing forged waits for a block

    code, output = _approve(fed_dir, tmp_path / "h0.toml")
    assert code == 0, output
    assert f"h0: approval 1, app {APP_V2.hex()}" in output
    assert "warning: h0 approved app" in output  # this coordinator's own app: h0 now refuses it
    assert approval.read_inbox(run_dir) == [entry]

    run_deployment(deployed_grid(nodes), fed_dir)  # the next block records it
    report = verify_ledger(run_dir)
    assert report.ok, report.failure
    assert report.state is not None
    holder = report.state.participants[identity.public_key_bytes(h0)]
    assert (holder.app_digest, holder.app_approvals) == (APP_V2, 1)
    other = report.state.participants[identity.public_key_bytes(h1)]
    assert (other.app_digest, other.app_approvals) == (app_digest(), 0)
    assert _recorded(run_dir) == [entry.approval]  # once, although the inbox still held it

    code, output = _approve(fed_dir, tmp_path / "h0.toml")  # given again: on the ledger already
    assert code == 0 and "nothing new" in output
    assert approval.read_inbox(run_dir) == []

    # The federation's models go to its participants only (its model-access rule lists none).
    code, output = _cli("models", "export", run_dir, "--out", tmp_path / "m")
    assert code != 0 and "name who the model is for with --recipient KEY" in output
    assert "lets its 2 participants be given its models" in output
    h1_key = identity.public_key_bytes(h1).hex()
    code, output = _cli("models", "export", run_dir, "--out", tmp_path / "m", "--recipient", h1_key)
    assert code == 0, output
