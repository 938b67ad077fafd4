"""The local witnesses served over HTTP (fedchain.anchor.local_http, .local_evm, and the TSA's
``serve``) and their commands (``fedchain anchor serve-evm`` / ``serve-tsa``); EVM anchors signed
with a key file (``simulate --anchor-key``).

The served EVM chain is checked through web3's own HTTP client, as ``simulate`` and ``verify`` in
other processes reach it (tests/test_anchor_e2e.py does that through the commands); a host other
than loopback is refused unless allowed; a served command stops cleanly on SIGINT and SIGTERM.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from typer.testing import CliRunner

from fedchain.anchor import evm
from fedchain.anchor.check import check_anchors
from fedchain.anchor.connect import make_evm_witness, make_run_anchoring
from fedchain.anchor.local_evm import LocalEvmNode, serve_evm
from fedchain.anchor.local_http import is_loopback_host, serve_http
from fedchain.anchor.local_tsa import LocalTsa
from fedchain.anchor.rfc3161 import Rfc3161Witness, http_transport, load_certificates
from fedchain.cli import app
from fedchain.config import RunConfig
from fedchain.errors import AnchorError, ConfigError
from fedchain.ledger.objects import AnchorStatement
from fedchain.ledger.verify import verify_ledger
from tests.test_anchor import EVERY, build_ledger

runner = CliRunner()
ENV = {**os.environ, "COLUMNS": "200", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
STATEMENT = AnchorStatement(bytes(range(32)), 3, bytes(32), b"\x01" * 32)


def fedchain(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedchain", *args]


@contextmanager
def served(
    info: Path, *args: str, stop_with: signal.Signals = signal.SIGTERM
) -> Iterator[dict[str, Any]]:
    """``fedchain anchor ARGS --info INFO`` running; yields what it wrote to INFO. It must stop
    cleanly on ``stop_with`` (exit 0, INFO removed); killed if it does not."""
    process = subprocess.Popen(
        fedchain("anchor", *args, "--info", str(info)),
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not info.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"fedchain anchor {args[0]} did not start: {process.communicate()[0]}")
            time.sleep(0.2)
        yield json.loads(info.read_text())
        process.send_signal(stop_with)
        output = process.communicate(timeout=30)[0]
        assert process.returncode == 0, output
        assert "stopped" in output and not info.exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def node() -> Iterator[LocalEvmNode]:
    with serve_evm() as served:
        yield served


def post(url: str, body: bytes) -> Any:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def test_served_chain_holds_the_contract_and_anchors_over_http(node: LocalEvmNode) -> None:
    assert node.url.startswith("http://127.0.0.1:")
    w3 = evm.connect(node.url)  # web3's HTTP client, not the in-process provider
    assert w3.eth.chain_id == node.chain_id
    assert w3.eth.accounts[0] == node.sender
    witness = evm.EvmWitness(w3, node.contract, [node.sender])
    proof = witness.publish(STATEMENT)
    stamp = witness.check(STATEMENT, proof)
    assert stamp.where.endswith(f"contract {node.contract}, block {w3.eth.block_number}")
    (record,) = [r for r in witness.history(STATEMENT.genesis_hash, []) if r.height == 3]
    assert record.stamp == stamp


def test_served_chain_answers_json_rpc_as_a_node_does(node: LocalEvmNode) -> None:
    answer = post(node.url, b'{"jsonrpc": "2.0", "id": 7, "method": "eth_chainId"}')
    assert answer == {"jsonrpc": "2.0", "id": 7, "result": hex(node.chain_id)}
    batch = post(node.url, b'[{"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber"}]')
    assert batch[0]["id"] == 1 and batch[0]["result"].startswith("0x")
    unknown = post(node.url, b'{"jsonrpc": "2.0", "id": 2, "method": "eth_mine_gold"}')
    assert unknown["id"] == 2 and "Unknown RPC Endpoint" in unknown["error"]["message"]
    assert post(node.url, b"{not json")["error"]["code"] == -32700
    assert post(node.url, b'{"id": 3}')["error"]["code"] == -32600


def test_invalid_anchor_to_a_contract_that_is_not_there_fails(node: LocalEvmNode) -> None:
    rogue = evm.EvmWitness(evm.connect(node.url), "0x" + "12" * 20)
    with pytest.raises(AnchorError, match="does not hold fedchain's anchor contract code"):
        rogue.publish(STATEMENT)


def test_served_tsa_stamps_over_http() -> None:
    tsa = LocalTsa()
    with tsa.serve() as url:
        witness = Rfc3161Witness(load_certificates(tsa.root_pem), http_transport(url))
        assert witness.check(STATEMENT, witness.publish(STATEMENT)).where.startswith("TSA CN=")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("example.org", False),
    ],
)
def test_is_loopback_host(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_invalid_non_loopback_host_is_refused_unless_allowed() -> None:
    with pytest.raises(ConfigError, match="not a loopback address"), serve_evm("0.0.0.0"):
        pass
    with pytest.raises(ConfigError, match="not a loopback address"), LocalTsa().serve("0.0.0.0"):
        pass
    handler = http.server.BaseHTTPRequestHandler
    with pytest.raises(ConfigError, match="not a loopback"), serve_http(handler, "example.org"):
        pass


def test_serve_on_ipv6_loopback() -> None:
    try:
        with LocalTsa().serve("::1") as url:
            assert url.startswith("http://[::1]:")
    except ConfigError as e:  # a machine without IPv6
        pytest.skip(str(e))


def test_invalid_serve_commands_refuse_a_remote_host_and_an_existing_certificate(
    tmp_path: Path,
) -> None:
    result = runner.invoke(app, ["anchor", "serve-evm", "--host", "0.0.0.0"])
    assert result.exit_code == 1 and "not a loopback address" in result.output
    cert = tmp_path / "tsa.pem"
    cert.write_text("an earlier TSA's certificate")
    result = runner.invoke(app, ["anchor", "serve-tsa", "--cert", str(cert)])
    assert result.exit_code == 1 and "exists" in result.output
    assert cert.read_text() == "an earlier TSA's certificate"


def test_serve_commands_help_says_they_are_not_a_trust_anchor() -> None:
    for command in ("serve-evm", "serve-tsa"):
        result = runner.invoke(app, ["anchor", command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0
        assert "not a trust anchor" in " ".join(result.output.split())


# -- anchors signed with a key file (simulate --anchor-key), on the served chain ----------------


def write_key(path: Path, key: str, mode: int = 0o600) -> Path:
    path.write_text(key + "\n")
    path.chmod(mode)
    return path


@pytest.fixture(scope="module")
def signer() -> LocalAccount:
    return Account.create()


@pytest.fixture(scope="module")
def funded_node(signer: LocalAccount) -> Iterator[LocalEvmNode]:
    with serve_evm(fund=[signer.address]) as served:
        yield served


def test_anchors_signed_with_a_key_file_come_from_its_account(
    funded_node: LocalEvmNode, signer: LocalAccount, tmp_path: Path
) -> None:
    key = write_key(tmp_path / "anchor.key", signer.key.hex())
    config = RunConfig(
        anchor="evm",
        anchor_url=funded_node.url,
        anchor_contract=funded_node.contract,
        anchor_key=str(key),
        anchor_every=EVERY,
    )
    anchoring = make_run_anchoring(config, tmp_path / "run", None)
    assert anchoring is not None
    build_ledger(tmp_path / "run", anchoring)
    assert not anchoring.failures
    report = verify_ledger(tmp_path / "run")
    assert [r.statement.height for _, r in report.anchor_receipts] == [2, 4]
    w3 = evm.connect(funded_node.url)
    assert signer.address not in w3.eth.accounts  # the node could not have signed them
    trusting_the_key = evm.EvmWitness(w3, funded_node.contract, [signer.address])
    check = check_anchors(report, {"evm": trusting_the_key})
    assert check.ok and check.anchored_height == 4
    listed = trusting_the_key.history(report.genesis_hash, [])  # no receipts in hand
    assert [r.height for r in listed] == [2, 4]
    assert evm.EvmWitness(w3, funded_node.contract).history(report.genesis_hash, []) == []


def test_invalid_unfunded_key_cannot_anchor(funded_node: LocalEvmNode, tmp_path: Path) -> None:
    key = write_key(tmp_path / "poor.key", Account.create().key.hex())
    witness = make_evm_witness(funded_node.url, funded_node.contract, key_file=str(key))
    with pytest.raises(AnchorError, match=r"did not anchor digest .* cannot afford"):
        witness.publish(STATEMENT)


@pytest.mark.parametrize(
    ("content", "mode", "message"),
    [
        ("0x" + "11" * 32, 0o644, "can be read by others \\(mode 644\\): chmod 600"),
        ("0x" + "11" * 32, 0o640, "can be read by others"),
        ("not a key " + "ab" * 30, 0o600, "does not hold an EVM private key"),
        ("0x" + "11" * 31, 0o600, "does not hold an EVM private key"),
    ],
)
def test_invalid_key_file_is_refused_without_showing_it(
    tmp_path: Path, content: str, mode: int, message: str
) -> None:
    path = write_key(tmp_path / "anchor.key", content, mode)
    with pytest.raises(AnchorError, match=message) as raised:
        evm.load_account(path)
    assert content not in str(raised.value) and "ab" * 30 not in str(raised.value)


def test_invalid_missing_key_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AnchorError, match="cannot read the EVM key file"):
        evm.load_account(tmp_path / "absent.key")


def test_invalid_anchor_key_without_evm_is_refused() -> None:
    with pytest.raises(ConfigError, match="anchor-key signs EVM anchors: it needs anchor evm"):
        RunConfig(anchor="rfc3161", anchor_url="http://tsa", anchor_tsa_cert="t", anchor_key="k")


def test_serve_evm_refuses_to_fund_a_malformed_address() -> None:
    with pytest.raises(AnchorError, match="not an EVM address to fund"), serve_evm(fund=["0x12"]):
        pass


@pytest.mark.slow
@pytest.mark.parametrize("stop_with", [signal.SIGINT, signal.SIGTERM])
def test_serve_command_answers_then_stops_cleanly_on_a_signal(
    tmp_path: Path, stop_with: signal.Signals
) -> None:
    cert = tmp_path / "tsa.pem"
    info = tmp_path / "tsa.json"
    with served(info, "serve-tsa", "--cert", str(cert), stop_with=stop_with) as tsa:
        roots = load_certificates(Path(tsa["cert"]).read_bytes())
        witness = Rfc3161Witness(roots, http_transport(tsa["url"]))
        witness.check(STATEMENT, witness.publish(STATEMENT))
    assert load_certificates(cert.read_bytes()) == roots  # kept for verify --tsa-cert
