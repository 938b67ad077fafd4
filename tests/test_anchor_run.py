"""The user journey: a federation anchored while it runs, then ``fedchain verify --anchors``.

The rounds run through the real ServerApp and ClientApp code on the in-process grid (the clients
replay and attest every block, anchor receipts included); the witness is this process's
in-memory EVM chain, or a local TSA over HTTP. A truncated copy of the run directory's ledger
then fails ``verify --anchors`` with a message that says so.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedchain.anchor.evm import MEMORY
from fedchain.anchor.local_tsa import LocalTsa
from fedchain.cli import app
from fedchain.config import RunConfig
from fedchain.errors import ConfigError
from fedchain.ledger.chain import Chain
from fedchain.ledger.codec import decode
from fedchain.ledger.objects import Block
from fedchain.ledger.store import LedgerStore
from fedchain.ledger.verify import verify_ledger
from tests.conftest import MakeFederation

runner = CliRunner()
SETTINGS = {
    "clients": 3,
    "rounds": 5,
    "model": "mlp",
    "aggregation": "fedavg",
    "contribution": "none",
    "anchor_every": 2,
}


def truncated_copy(run_dir: Path, height: int, out: Path) -> Path:
    """The run directory with its ledger cut after block ``height`` (``anchors/`` kept)."""
    shutil.copytree(run_dir, out, ignore=shutil.ignore_patterns("ledger.db*"))
    with LedgerStore.open(run_dir / "ledger.db", readonly=True) as store:
        blocks = [decode(Block, stored.data) for stored in store.iter_blocks()]
    genesis = blocks[0].transactions[0]
    with Chain.create(out / "ledger.db", genesis) as chain:  # type: ignore[arg-type]
        for block in blocks[1 : height + 1]:
            chain.append(block)
    return out


def test_evm_anchored_run_verifies_and_its_truncated_copy_fails(
    tmp_path: Path, inprocess_federation: MakeFederation
) -> None:
    fed = inprocess_federation(tmp_path, anchor="evm", anchor_url=MEMORY, **SETTINGS).run()
    run_dir = fed.setup.run_dir
    report = verify_ledger(run_dir)
    assert report.ok, report.failure
    anchored = [r.statement.height for _, r in report.anchor_receipts]
    assert anchored and anchored == sorted(anchored)
    assert sorted(p.name for p in (run_dir / "anchors").iterdir()) == [
        f"{h:08d}.receipt" for h in anchored
    ]

    result = runner.invoke(app, ["verify", str(run_dir), "--anchors", "--evm-url", MEMORY])
    assert result.exit_code == 0, result.output
    assert f"last anchored height {anchored[-1]}" in " ".join(result.output.split())

    short = truncated_copy(run_dir, anchored[-1] - 1, tmp_path / "short")
    assert verify_ledger(short).ok  # a valid, shorter ledger on its own
    result = runner.invoke(app, ["verify", str(short), "--anchors", "--evm-url", MEMORY])
    assert result.exit_code == 1
    assert "FAILED anchors" in result.output and "shortened" in " ".join(result.output.split())


def test_rfc3161_anchored_run_verifies_against_the_tsa_certificate(
    tmp_path: Path, inprocess_federation: MakeFederation
) -> None:
    tsa = LocalTsa()
    cert = tmp_path / "tsa.pem"
    cert.write_bytes(tsa.root_pem)
    with tsa.serve() as url:
        fed = inprocess_federation(
            tmp_path / "out",
            anchor="rfc3161",
            anchor_url=url,
            anchor_tsa_cert=str(cert),
            **SETTINGS,
        ).run()
    run_dir = fed.setup.run_dir  # the TSA is gone now: checking needs only its certificate
    result = runner.invoke(app, ["verify", str(run_dir), "--anchors", "--tsa-cert", str(cert)])
    assert result.exit_code == 0, result.output
    assert "last anchored height" in result.output

    other = tmp_path / "other.pem"
    other.write_bytes(LocalTsa().root_pem)
    result = runner.invoke(app, ["verify", str(run_dir), "--anchors", "--tsa-cert", str(other)])
    assert result.exit_code == 1
    assert "not signed by a TSA that the trusted certificate vouches for" in " ".join(
        result.output.split()
    )


def test_verify_anchors_on_an_unanchored_run_fails(
    tmp_path: Path, inprocess_federation: MakeFederation
) -> None:
    settings = {**SETTINGS, "rounds": 2}
    fed = inprocess_federation(tmp_path, **settings).run()
    result = runner.invoke(app, ["verify", str(fed.setup.run_dir), "--anchors"])
    assert result.exit_code == 1
    assert "anchors: none found" in result.output


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"anchor": "ots"}, "anchor must be one of off, evm, rfc3161"),
        ({"anchor": "evm"}, "anchor needs anchor-url"),
        ({"anchor": "rfc3161", "anchor_url": "http://tsa"}, "needs anchor-tsa-cert"),
        ({"anchor_every": 0}, "anchor-every must be at least 1"),
    ],
)
def test_invalid_anchor_settings_are_refused(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RunConfig(**settings)  # type: ignore[arg-type]
