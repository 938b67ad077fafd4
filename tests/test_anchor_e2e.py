"""Anchoring as a new user tries it, through the commands alone, each in its own process: a local
witness (``fedchain anchor serve-evm`` / ``serve-tsa``), ``fedchain simulate --anchor``, then
``fedchain verify --anchors``; a copy of the run cut below its last anchor fails to verify.

Everything listens on loopback; every process this test starts is stopped in ``finally``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fedchain.ledger.verify import verify_ledger
from tests.test_anchor_run import truncated_copy
from tests.test_anchor_serve import ENV, fedchain, served

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

RUN = ["--clients", "3", "--rounds", "3", "--model", "mlp", "--local-epochs", "1"]


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        fedchain(*args), env=ENV, capture_output=True, text=True, timeout=timeout, check=False
    )


def check_simulated(result: subprocess.CompletedProcess[str], run_dir: Path) -> int:
    """The run succeeded and anchored; the cut below which a copy is shortened."""
    assert result.returncode == 0, result.stdout + result.stderr
    heights = [r.statement.height for _, r in verify_ledger(run_dir).anchor_receipts]
    assert heights, "the run recorded no anchor"
    return heights[-1] - 1


def words(result: subprocess.CompletedProcess[str]) -> str:
    return " ".join((result.stdout + result.stderr).split())


def test_evm_anchored_run_verifies_in_another_process_and_its_cut_copy_fails(
    tmp_path: Path,
) -> None:
    with served(tmp_path / "evm.json", "serve-evm", "--port", "0") as node:
        url, contract = node["url"], node["contract"]
        assert url.startswith("http://127.0.0.1:")
        simulated = run(
            "simulate", *RUN, "--anchor", "evm", "--anchor-url", url,
            "--anchor-contract", contract, "--anchor-every", "1",
            "--out", str(tmp_path), "--run-id", "evm",
        )  # fmt: skip
        run_dir = tmp_path / "evm"
        cut = check_simulated(simulated, run_dir)

        verified = run("verify", str(run_dir), "--anchors", "--evm-url", url,
                       "--evm-contract", contract, "--evm-sender", node["sender"])  # fmt: skip
        assert verified.returncode == 0, words(verified)
        assert f"last anchored height {cut + 1}" in words(verified)

        short = truncated_copy(run_dir, cut, tmp_path / "short")
        refused = run("verify", str(short), "--anchors", "--evm-url", url,
                      "--evm-contract", contract)  # fmt: skip
        assert refused.returncode == 1, words(refused)
        assert "FAILED anchors" in words(refused) and "shortened" in words(refused)


def test_rfc3161_anchored_run_verifies_after_the_tsa_stops_and_its_cut_copy_fails(
    tmp_path: Path,
) -> None:
    cert = tmp_path / "tsa.pem"
    with served(tmp_path / "tsa.json", "serve-tsa", "--cert", str(cert)) as tsa:
        assert tsa["url"].startswith("http://127.0.0.1:") and Path(tsa["cert"]) == cert
        simulated = run(
            "simulate", *RUN, "--anchor", "rfc3161", "--anchor-url", tsa["url"],
            "--anchor-tsa-cert", str(cert), "--anchor-every", "1",
            "--out", str(tmp_path), "--run-id", "tsa",
        )  # fmt: skip
    run_dir = tmp_path / "tsa"
    cut = check_simulated(simulated, run_dir)

    verified = run("verify", str(run_dir), "--anchors", "--tsa-cert", str(cert))
    assert verified.returncode == 0, words(verified)
    assert f"last anchored height {cut + 1}" in words(verified)

    short = truncated_copy(run_dir, cut, tmp_path / "short")
    refused = run("verify", str(short), "--anchors", "--tsa-cert", str(cert))
    assert refused.returncode == 1, words(refused)
    assert "FAILED anchors" in words(refused) and "shortened" in words(refused)
