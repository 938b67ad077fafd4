"""Issue 13 (docs/app-approval.md): a data holder's node runs only the app the holder approved.

A real `fedchain join` (its SuperNode with ``--isolation process``, fedchain's approving executor
``fedchain/deploy/gate.py``) on a loopback Flower 1.41 SuperLink refuses a modified ClientApp
before any of its code runs, and tells the coordinator why; the full journey, with the honest
app training, is in ``test_deploy_approval_e2e.py``.

Also what stock Flower offers: with ``--trusted-entities`` a SuperNode refuses every app that
``flwr run`` submits, because ``flwr run`` sends no signatures and a SuperLink attaches them only
to apps fetched from Flower Hub. A stand-in for Flower Hub's Platform API on loopback (the
SuperLink reads its address from ``FLWR_SUPERGRID_API_URL``) makes the holder-signed app pass,
and it then runs with the secret in its environment (subprocess isolation).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.cli.build import build_fab_from_disk, build_fab_from_files

from fedchain.crypto import identity
from fedchain.data import datafile, keys
from fedchain.data.sources import load_source
from fedchain.deploy import app as app_bundle
from fedchain.deploy import flower, flwr_cli, gate, logs, processes
from fedchain.deploy.app import app_digest
from fedchain.deploy.certs import create_supernode_keys, create_test_certificates
from fedchain.ledger.codec import decode
from fedchain.ledger.objects import AppApproval, Block, Refusal, Rejection
from fedchain.ledger.store import LedgerStore
from fedchain.ledger.verify import verify_ledger
from fedchain.runs import approval

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

SECRET = "holder-passphrase-0123"
IDENTITY_SECRET = "holder-identity-passphrase-4567"
FEDCHAIN = [sys.executable, "-m", "fedchain"]
JOIN_ENV = {
    "FEDCHAIN_PASSPHRASE": SECRET,
    "FEDCHAIN_IDENTITY_PASSPHRASE": IDENTITY_SECRET,
    "FLWR_TELEMETRY_ENABLED": "0",
    "COLUMNS": "200",
    "NO_COLOR": "1",
}

PYPROJECT = """\
[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "approvaltest"
version = "1.0.0"
dependencies = []

[tool.flwr.app]
publisher = "fedchain"

[tool.flwr.app.components]
serverapp = "approvaltest_app:server"
clientapp = "approvaltest_app:client"

[tool.flwr.app.config]
out = ""
"""

SERVER = """\
import json, os, time
from pathlib import Path
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

server = ServerApp()
client = ClientApp()


@server.main()
def main(grid, context):
    deadline = time.monotonic() + 30
    while not (nodes := list(grid.get_node_ids())) and time.monotonic() < deadline:
        time.sleep(0.2)
    messages = [
        Message(RecordDict({"c": ConfigRecord({"x": 1})}), dst_node_id=n, message_type="query")
        for n in nodes
    ]
    answers = []
    for reply in grid.send_and_receive(messages, timeout=40):
        if reply.has_error():
            answers.append({"error": reply.error.code, "reason": reply.error.reason})
        else:
            answers.append({"reply": dict(reply.content["m"])})
    Path(context.run_config["out"]).write_text(json.dumps({"nodes": nodes, "answers": answers}))
"""

HONEST = """

@client.query()
def answer(msg, context):
    fd = os.environ.get("FEDCHAIN_SECRET_FD")
    secret = os.read(int(fd), 1024).decode() if fd else ""
    leaked = any("holder-passphrase" in value for value in os.environ.values())
    return Message(
        RecordDict({"m": ConfigRecord({"secret-ok": secret == "holder-passphrase-0123",
                                       "secret-in-env": leaked})}),
        reply_to=msg,
    )
"""

EVIL = """

@client.query()
def answer(msg, context):
    stolen = {"env": dict(os.environ), "node-config": dict(context.node_config)}
    stolen["data"] = Path(context.node_config["data-path"]).read_text()
    Path(context.node_config["loot"]).write_text(json.dumps(stolen))
    return Message(RecordDict({"m": ConfigRecord({"stolen": json.dumps(stolen)})}), reply_to=msg)
"""


def _write_app(folder: Path, client_code: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "pyproject.toml").write_text(PYPROJECT)
    (folder / "approvaltest_app.py").write_text(SERVER + client_code)
    return folder


def _wait_file(path: Path, processes_alive: list[processes.ManagedProcess], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size:
            return json.loads(path.read_text())
        for process in processes_alive:
            assert processes.is_running(process), logs.tail(process.log_path, 40)
        time.sleep(0.2)
    raise AssertionError(f"{path} not written within {timeout} s")


class Hub(BaseHTTPRequestHandler):
    """A stand-in for Flower Hub's Platform API, as ``request_download_link`` and
    ``_get_remote_fab`` (``flwr/supercore/utils.py``, ``flwr/superlink/servicer/control/
    control_handlers.py``) call it: POST ``/hub/fetch-fab`` answers the FAB's URL and its
    verifications; GET ``/fab`` serves the FAB. ``published`` is (FAB bytes, verifications)."""

    published: tuple[bytes, list[dict[str, object]]] = (b"", [])

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        host, port = self.server.server_address[:2]
        body = {"fab_url": f"http://{host}:{port}/fab", "verifications": self.published[1]}
        self._answer(json.dumps(body).encode(), "application/json")

    def do_GET(self) -> None:
        self._answer(self.published[0], "application/zip")

    def _answer(self, data: bytes, kind: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def link(tmp_path) -> Iterator[tuple[processes.ManagedProcess, flwr_cli.FlwrConnection]]:
    """An insecure loopback SuperLink (its apps installed in its own folder) and a flwr
    connection to it; one per test, so that no node of another test is still listed. Its
    "Flower Hub" is :class:`Hub` on loopback."""
    Hub.published = (b"", [])
    hub = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    base = tmp_path / "link"
    port = processes.free_port()
    env = {
        "FLWR_HOME": str(base / "link-home"),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_SUPERGRID_API_URL": f"http://127.0.0.1:{hub.server_address[1]}",
    }
    superlink = flower.start_superlink(base / "state", port=port, certs=None, env=env)
    try:
        processes.wait_healthy(superlink, f"127.0.0.1:{port}", timeout=30)
        connection = flwr_cli.write_flwr_connection(base / "flwr", "t", f"127.0.0.1:{port}", None)
        yield superlink, connection
    finally:
        processes.stop_process(superlink, timeout=5)
        hub.shutdown()
        hub.server_close()


def _start_supernode(
    folder: Path, address: str, extra: list[str], config: dict, secret_in_env: bool
):
    """A stock SuperNode (subprocess isolation; the secret in its environment if asked), plus
    ``extra`` options; its Flower home, log and PID file in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    runtime_port = processes.free_port()
    command = [flower.flower_executable("flower-supernode"), "--insecure", "--superlink", address]
    command += ["--host", "127.0.0.1", "--port", str(runtime_port), "--max-wait-time", "30"]
    command += ["--node-config", flower.format_config_args(config), *extra]
    env = {"FLWR_HOME": str(folder / "node-home"), "FLWR_TELEMETRY_ENABLED": "0"}
    if secret_in_env:
        env["APPROVAL_GATE_SECRET"] = SECRET  # where `fedchain join` puts secrets today
    node = processes.start_process(
        command,
        log_path=folder / "supernode.log",
        pid_file=folder / "supernode.pid",
        env=flower.flower_env(env),
    )
    return node, f"127.0.0.1:{runtime_port}", env


def _holder_files(folder: Path, first: int = 0) -> tuple[Path, Path, str]:
    """A holder's encrypted dataset (60 examples from ``first`` on) and identity, both locked by
    passphrases (the ones `fedchain join` reads from its environment); its fingerprint."""
    train = load_source("digits", split="train")
    data = folder / "holder.fcd"
    folder.mkdir(parents=True, exist_ok=True)
    examples = train.subset(np.arange(first, first + 60))
    datafile.write_dataset(data, examples, keys.Passphrase(SECRET.encode()))
    key = identity.generate_identity()
    identity.save_identity(key, folder / "holder.key", IDENTITY_SECRET.encode())
    return data, folder / "holder.key", identity.fingerprint(identity.public_key_bytes(key))


def start_join(
    folder: Path, address: str, federation_id: str, config: dict[str, str], *extra: object
) -> subprocess.Popen[bytes]:
    """`fedchain join` as a holder runs it, its secrets in its environment, its console in
    ``folder/join.out``, its SuperNode's log in ``folder/supernode.log``."""
    command = [*FEDCHAIN, "join", "--coordinator", address]
    command += [] if "--root-cert" in extra else ["--insecure"]
    command += ["--data", folder / "holder.fcd", "--identity", folder / "holder.key"]
    command += ["--federation-id", federation_id, "--log", folder / "supernode.log"]
    command += ["--max-wait", "120"]
    for key, value in config.items():
        command += ["--node-config", f"{key}={value}"]
    command += list(extra)
    env = {**os.environ, **JOIN_ENV}
    out = (folder / "join.out").open("wb")
    return subprocess.Popen(list(map(str, command)), stdout=out, stderr=subprocess.STDOUT, env=env)


def wait_output(join: subprocess.Popen[bytes], path: Path, text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        output = path.read_text() if path.exists() else ""
        if text in output:
            return output
        assert join.poll() is None, f"join exited ({join.returncode}):\n{output}"
        time.sleep(0.3)
    raise AssertionError(f"{text!r} not in {path} within {timeout} s:\n{output}")


def stop_join(join: subprocess.Popen[bytes]) -> None:
    """SIGTERM the join this test started (it stops its SuperNode), SIGKILL if it hangs."""
    if join.poll() is None:
        join.terminate()
        try:
            join.wait(30)
        except subprocess.TimeoutExpired:
            join.kill()
            join.wait()


def test_join_refuses_a_modified_app_before_anything_is_decrypted(tmp_path, link):
    """The attacker is the coordinator: it submits a ClientApp that reads the environment, the
    node config and the data file and sends them home. The holder runs `fedchain join` as
    documented (its passphrases in its environment). Before issue 13, its SuperNode ran that app
    and the app got the passphrases and the data (docs/app-approval.md §1). Now the node's
    executor refuses it before any of its code runs: no loot, the coordinator's ServerApp gets
    the holder's refusal naming both digests, the holder's console shows it, and no process
    join started holds a secret in its environment."""
    superlink, connection = link
    _data, _key, holder = _holder_files(tmp_path)
    evil = _write_app(tmp_path / "evil", EVIL)
    evil_hash = hashlib.sha256(build_fab_from_disk(evil)).hexdigest()
    loot = tmp_path / "loot.json"
    join = start_join(tmp_path, connection.address, "ab" * 32, {"loot": str(loot)})
    try:
        wait_output(join, tmp_path / "join.out", "connected to the coordinator", 120)
        run_id = flwr_cli.submit_run(evil, connection, {"out": str(tmp_path / "evil.json")})
        result = _wait_file(tmp_path / "evil.json", [superlink], timeout=90)
        approved = app_digest().hex()
        assert result["answers"] == [
            {"error": 7, "reason": gate.refusal_reason(evil_hash, [approved], holder)}
        ]
        assert f"digests: {evil_hash} vs {approved}" in result["answers"][0]["reason"]
        assert not loot.exists()  # its code never ran: no data, no secret taken
        output = wait_output(join, tmp_path / "join.out", f"refused Flower run {run_id}", 30)
        assert f"app {evil_hash}, not the one you approved" in output
        assert "trained" not in output  # the refusal's reply is no round
        node = processes.read_pid_file(tmp_path / "supernode.pid")
        assert node is not None and processes.is_running(node)
        environ = Path(f"/proc/{node.pid}/environ").read_bytes()
        assert SECRET.encode() not in environ and IDENTITY_SECRET.encode() not in environ
        assert b"passphrase" not in Path(f"/proc/{node.pid}/cmdline").read_bytes()  # config
    finally:
        stop_join(join)
    assert join.returncode == 0


def test_stock_flower_verifies_only_hub_apps(tmp_path, link):
    """Flower's own check, ``--trusted-entities``: the node refuses every app ``flwr run``
    submits, whatever its code, because ``flwr run`` sends no signature and a SuperLink attaches
    signatures only to apps fetched from Flower Hub (the node's log says so). Served by a
    stand-in Hub with the holder's signature, the approved app passes Flower's own check and
    runs, but with the secret in its environment all the same (subprocess isolation)."""
    superlink, connection = link
    evil = _write_app(tmp_path / "evil", EVIL)
    (tmp_path / "data.txt").write_text("the holder's raw examples")
    holder_key = Ed25519PrivateKey.generate()
    public = holder_key.public_key()
    line = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    trusted = tmp_path / "trusted.yaml"
    trusted.write_text(f"holder: '{line.decode()}'\n")
    config = {"data-path": str(tmp_path / "data.txt"), "loot": str(tmp_path / "signed.loot")}
    extra = ["--trusted-entities", str(trusted)]
    node = _start_supernode(tmp_path / "signed-only", connection.address, extra, config, True)[0]
    try:
        deadline = time.monotonic() + 30
        while "SuperNode ID" not in logs.tail(node.log_path, 40):
            assert time.monotonic() < deadline, "the SuperNode did not connect"
            time.sleep(0.2)
        flwr_cli.submit_run(evil, connection, {"out": str(tmp_path / "evil.json")})
        result = _wait_file(tmp_path / "evil.json", [superlink, node], timeout=60)
        refused = {"error": 7, "reason": "The FAB could not be verified."}  # INVALID_FAB
        assert result["answers"] == [refused]
        assert not (tmp_path / "signed.loot").exists()
        assert "App verification is not supported by the connected SuperLink" in logs.tail(
            node.log_path, 80
        )
        # Flower's own path: the holder signs signed_at (8 bytes, big-endian) | SHA-256(FAB)
        # (flwr/supercore/primitives/asymmetric_ed25519.py), the Hub serves it with the FAB.
        honest = _write_app(tmp_path / "honest", HONEST)
        fab = build_fab_from_disk(honest)
        signed_at = int(time.time())
        signature = holder_key.sign(signed_at.to_bytes(8, "big") + hashlib.sha256(fab).digest())
        verification = {
            "public_key_id": "holder",
            "signature": base64.urlsafe_b64encode(signature).rstrip(b"=").decode(),
            "signed_at": signed_at,
        }
        Hub.published = (fab, [verification])
        out = flower.format_config_args({"out": str(tmp_path / "hub.json")})
        arguments = ["run", "@fedchain/approvaltest==1.0.0", "--run-config", out]
        flwr_cli.run_flwr(connection, arguments, cwd=tmp_path)
        result = _wait_file(tmp_path / "hub.json", [superlink, node], timeout=60)
        assert result["answers"] == [{"reply": {"secret-ok": False, "secret-in-env": True}}]
    finally:
        processes.stop_process(node, timeout=5)


def fedchain_ok(*args: object, timeout: float = 180.0) -> str:
    result = subprocess.run(
        [*FEDCHAIN, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **JOIN_ENV},
        check=False,
    )
    assert result.returncode == 0, f"fedchain {args}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _registered_federation(
    tmp_path: Path, holders: list[Path], *, secure: bool = False
) -> tuple[Path, str, int, int]:
    """A one-round federation, its holders (one folder each) registered with `fedchain
    register` (which signs the app its fedchain submits), its coordinator started on loopback
    (``secure``: TLS and SuperNode authentication, each holder's node key in its folder as
    node.key; else insecure); its folder, id, port and the Flower run of its ServerApp."""
    fed_dir = tmp_path / "fed"
    created = fedchain_ok(
        "federation", "init", fed_dir, "--rounds", 1, "--model", "mlp",
        "--min-clients", len(holders),
        "--round-timeout", 120, "--join-timeout", 240, "--set", "local-epochs=1",
    )  # fmt: skip
    fed_id = created.split("federation id: ")[1].split()[0]
    for i, folder in enumerate(holders):
        _holder_files(folder, 60 * i)
        node_key = ["--supernode-key", create_supernode_keys(folder, "node")[1]] if secure else []
        registered = fedchain_ok(
            "register", "--identity", folder / "holder.key", "--data", folder / "holder.fcd",
            "--stake", 1_000_000, "--name", f"holder-{i}", "--out", folder / "holder.reg",
            "--federation-id", fed_id, *node_key,
        )  # fmt: skip
        assert f"approved app {app_digest().hex()}" in registered
        fedchain_ok("federation", "add", fed_dir, folder / "holder.reg")
    port = processes.free_port()
    if secure:
        create_test_certificates(fed_dir / "certs")
    security = [] if secure else ["--insecure"]
    started = fedchain_ok("coordinator", "start", fed_dir, *security, "--port", port)
    assert "ledger created" in started
    run_id = int(started.split("ServerApp submitted: Flower run ")[1].split(";")[0])
    return fed_dir, fed_id, port, run_id


def test_journey_a_modified_app_is_refused_and_the_approved_one_trains(tmp_path):
    """The data holder's journey, as the README tells it, against a coordinator that also
    submits a modified ClientApp (one that reads the environment, the node config and the data
    file and sends them home). The holder registers (signing the app its fedchain submits),
    the coordinator adds it and starts, the holder joins. The modified app is refused by the
    holder's node before any of its code runs: the coordinator's ServerApp receives the refusal
    with both digests, the holder's console shows it, nothing leaks. The federation's own
    run, the app the holder approved, trains its round on the holder's data all the same."""
    fed_dir, fed_id, port, _run = _registered_federation(tmp_path, [tmp_path])
    approved = app_digest().hex()
    address = f"127.0.0.1:{port}"
    loot = tmp_path / "loot.json"
    limits = ("--max-rounds", 1, "--max-local-epochs", 1)  # the federation's: within them
    join = start_join(tmp_path, address, fed_id, {"loot": str(loot)}, *limits)
    try:
        output = wait_output(join, tmp_path / "join.out", "connected to the coordinator", 120)
        assert "your limits: at most 1 rounds and 1 local epochs a round" in output
        # The coordinator (here: anyone holding its SuperLink's Control API) submits its own app.
        attacker = flwr_cli.write_flwr_connection(tmp_path / "attacker", "t", address, None)
        evil = _write_app(tmp_path / "evil", EVIL)
        evil_hash = hashlib.sha256(build_fab_from_disk(evil)).hexdigest()
        evil_run = flwr_cli.submit_run(evil, attacker, {"out": str(tmp_path / "evil.json")})
        result = _wait_file(tmp_path / "evil.json", [], timeout=120)
        (answer,) = result["answers"]
        assert answer["error"] == 7 and answer["reason"].startswith(gate.REFUSAL_PREFIX)
        assert answer["reason"].endswith(f"digests: {evil_hash} vs {approved}")
        assert not loot.exists()
        output = wait_output(join, tmp_path / "join.out", f"refused Flower run {evil_run}", 30)
        # The approved app: the federation's round, trained on the holder's data.
        output = wait_output(join, tmp_path / "join.out", "round 1: trained on your data", 300)
        assert output.count("trained on your data") == 1
        ledger = fedchain_ok("coordinator", "status", fed_dir)
        assert "round 1 of 1" in ledger or "round 0 of 1" in ledger
    finally:
        stop_join(join)
        fedchain_ok("coordinator", "stop", fed_dir)


def test_an_upgrade_is_an_explicit_signed_act_and_a_refusal_reaches_the_ledger(tmp_path):
    """A holder approves a new app (`join --approve app-v2.fab`): join shows what changed,
    signs the approval and keeps it; its node then runs that app and no other. The coordinator,
    still on the app the holders registered, is refused by it: join signs the holder's refusal
    (both digests) and its ServerApp records it on the ledger as that holder's own `Refusal`
    (in a block the other holder, who runs the registered app, proposes); the report shows
    it."""
    upgraded, other = tmp_path / "upgraded", tmp_path / "other"
    fed_dir, fed_id, port, run_id = _registered_federation(tmp_path, [upgraded, other], secure=True)
    new_config = app_bundle.APP_PYPROJECT + "max-local-epochs = 1\n"
    fab, _ = build_fab_from_files({"pyproject.toml": new_config.encode()})
    (tmp_path / "app-v2.fab").write_bytes(fab)
    new = hashlib.sha256(fab).hexdigest()
    address = f"127.0.0.1:{port}"
    tls = ["--root-cert", fed_dir / "certs" / "ca.crt", "--auth-key"]  # the coordinator's CA
    joins = [
        start_join(
            upgraded, address, fed_id, {}, *tls, upgraded / "node.key",
            "--approve", tmp_path / "app-v2.fab",
        ),
        start_join(other, address, fed_id, {}, *tls, other / "node.key"),
    ]  # fmt: skip
    run_dir = fed_dir / "run"
    public = identity.public_key_bytes(
        identity.load_identity(upgraded / "holder.key", IDENTITY_SECRET.encode())
    )

    def refusals() -> list[Refusal | Rejection]:
        with LedgerStore.open(run_dir / "ledger.db", readonly=True) as store:
            blocks = [decode(Block, stored.data) for stored in store.iter_blocks()]
        return [
            tx
            for block in blocks
            for tx in block.transactions
            if isinstance(tx, Refusal | Rejection) and tx.public_key == public
        ]

    try:
        output = wait_output(joins[0], upgraded / "join.out", f"refused Flower run {run_id}", 180)
        assert f"approving app {new}, replacing {app_digest().hex()}:" in output
        assert "it ships no code" in output and "  +max-local-epochs = 1" in output
        assert f"approved app {new} (your signed approval)" in output
        kept = upgraded / "holder.ledger" / "approved-app.toml"
        (entry,) = approval.read_approvals(kept, bytes.fromhex(fed_id), public)
        assert entry.approval.app_digest.hex() == new
        assert entry.approval.replaces == app_digest()
        wait_output(joins[1], other / "join.out", "round 1: trained on your data", 240)
        deadline = time.monotonic() + 180
        while not refusals():
            assert time.monotonic() < deadline, "no rejection on the coordinator's ledger"
            time.sleep(1.0)
        (refusal,) = refusals()  # the holder's own, signed by its join (spec §9.10)
        assert isinstance(refusal, Refusal) and refusal.code == "app-not-approved"
        assert f"app {app_digest().hex()} is not the app it approved ({new})" == refusal.detail
    finally:
        for join in joins:
            stop_join(join)
        fedchain_ok("coordinator", "stop", fed_dir)
    report = fedchain_ok("report", run_dir, "--json-only")
    assert "refused to train (app-not-approved), signed by the holder" in " ".join(report.split())


def test_the_upgrade_journey_the_holders_approve_the_coordinator_records_and_submits_it(tmp_path):
    """Upgrading, both sides, as a new user would: the coordinator's ledger exists (its first
    start), the holders approve `app-v2.fab` (`join --approve`), the coordinator records their
    signed approvals (`coordinator approve`) and starts with that app (`coordinator start
    --app`): no holder refuses it, both train with it, and the ledger (replayed by `verify`
    and the report) names the new app as each holder's."""
    holders = [tmp_path / "a", tmp_path / "b"]
    fed_dir, fed_id, port, _ = _registered_federation(tmp_path, holders, secure=True)
    fedchain_ok("coordinator", "stop", fed_dir)  # the ledger is created: nothing trained yet
    new_config = app_bundle.APP_PYPROJECT + "max-local-epochs = 1\n"
    fab, _ = build_fab_from_files({"pyproject.toml": new_config.encode()})
    (tmp_path / "app-v2.fab").write_bytes(fab)
    new = hashlib.sha256(fab).hexdigest()
    address = f"127.0.0.1:{port}"
    tls = ["--root-cert", fed_dir / "certs" / "ca.crt", "--auth-key"]
    joins = [
        start_join(
            h, address, fed_id, {}, *tls, h / "node.key", "--approve", tmp_path / "app-v2.fab"
        )
        for h in holders
    ]
    try:
        for join, h in zip(joins, holders, strict=True):
            wait_output(join, h / "join.out", f"approved app {new} (your signed approval)", 120)
        for i, h in enumerate(holders):
            recorded = fedchain_ok(
                "coordinator", "approve", fed_dir, h / "holder.ledger" / "approved-app.toml"
            )
            assert f"holder-{i}: approval 1, app {new}" in " ".join(recorded.split())
        started = fedchain_ok(
            "coordinator", "start", fed_dir, "--port", port, "--app", tmp_path / "app-v2.fab"
        )
        assert f"app {new} (from " in started and "will refuse" not in started
        for join, h in zip(joins, holders, strict=True):
            wait_output(join, h / "join.out", "round 1: trained on your data", 240)
        deadline = time.monotonic() + 180  # round 1's block, with the approvals, is sealed
        while not _approvals_recorded(run_dir := fed_dir / "run"):
            assert time.monotonic() < deadline, "no app approval on the coordinator's ledger"
            time.sleep(1.0)
    finally:
        for join in joins:
            stop_join(join)
        fedchain_ok("coordinator", "stop", fed_dir)
    shown = fedchain_ok("ledger", "show", run_dir)
    assert shown.count("app approval") == 2
    report = verify_ledger(run_dir)
    assert report.ok, report.failure
    assert report.state is not None
    assert {p.app_digest.hex() for p in report.state.participants.values()} == {new}
    events = fedchain_ok("report", run_dir, "--json-only")
    assert "app-approved" in events


def _approvals_recorded(run_dir: Path) -> int:
    with LedgerStore.open(run_dir / "ledger.db", readonly=True) as store:
        blocks = [decode(Block, stored.data) for stored in store.iter_blocks()]
    return sum(isinstance(tx, AppApproval) for block in blocks for tx in block.transactions)
