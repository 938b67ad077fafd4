"""Proof for issue 13 (docs/app-approval.md): a real Flower 1.41 SuperNode on loopback, run with
``--isolation process`` and a gate (tests/approval_gate.py) that knows the approved FAB digest,
refuses an app with another digest before any of its code runs, tells the coordinator why,
and runs the approved app, which gets the holder's secret on a pipe, not in its environment.

Also what stock Flower does: as `fedchain join` starts it, a SuperNode runs a modified app and
hands it the holder's secret; with ``--trusted-entities`` it refuses every app that ``flwr run``
submits, because ``flwr run`` sends no signatures and a SuperLink attaches them only to apps
fetched from Flower Hub. A stand-in for Flower Hub's Platform API on loopback (the SuperLink
reads its address from ``FLWR_SUPERGRID_API_URL``) makes the holder-signed app pass.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.cli.build import build_fab_from_disk

from fedchain.deploy import flower, flwr_cli, logs, processes

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

SECRET = "holder-passphrase-0123"

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
    """A SuperNode as `fedchain join` starts it (today: the secret in its environment), plus
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


def test_a_gated_supernode_refuses_an_unapproved_app_and_runs_the_approved_one(tmp_path, link):
    superlink, connection = link
    honest = _write_app(tmp_path / "honest", HONEST)
    evil = _write_app(tmp_path / "evil", EVIL)
    approved = hashlib.sha256(build_fab_from_disk(honest)).hexdigest()
    (tmp_path / "data.txt").write_text("the holder's raw examples")
    loot = tmp_path / "loot.json"
    config = {"data-path": str(tmp_path / "data.txt"), "loot": str(loot)}
    node, runtime, env = _start_supernode(
        tmp_path, connection.address, ["--isolation", "process"], config, secret_in_env=False
    )
    events = tmp_path / "gate.jsonl"
    gate = processes.start_process(
        [
            sys.executable,
            str(Path(__file__).with_name("approval_gate.py")),
            runtime,
            approved,
            str(events),
        ],
        log_path=tmp_path / "gate.log",
        pid_file=tmp_path / "gate.pid",
        env=flower.flower_env({**env, "APPROVAL_GATE_SECRET": SECRET}),  # join's memory, later
    )
    alive = [superlink, node, gate]
    try:
        # The coordinator submits a modified ClientApp: refused before any of its code runs.
        run_evil = flwr_cli.submit_run(evil, connection, {"out": str(tmp_path / "evil.json")})
        result = _wait_file(tmp_path / "evil.json", alive, timeout=60)
        assert len(result["nodes"]) == 1 and len(result["answers"]) == 1
        answer = result["answers"][0]
        evil_hash = hashlib.sha256(build_fab_from_disk(evil)).hexdigest()
        assert answer["reason"] == (
            f"refused by the data holder: app {evil_hash} is not the approved {approved}"
        )
        assert not loot.exists()  # its code never ran: no data, no secret taken
        assert not (tmp_path / "node-home" / "apps").exists()  # never even installed
        # The approved app runs, and gets the secret on a pipe, not in its environment.
        flwr_cli.submit_run(honest, connection, {"out": str(tmp_path / "honest.json")})
        result = _wait_file(tmp_path / "honest.json", alive, timeout=60)
        assert result["answers"] == [{"reply": {"secret-ok": True, "secret-in-env": False}}]
        decisions = [json.loads(line) for line in events.read_text().splitlines()]
        assert [(d["decision"], d["fab_hash"]) for d in decisions] == [
            ("refused", evil_hash),
            ("ran", approved),
        ]
        assert decisions[0]["run_id"] == run_evil
        assert b"holder-passphrase" not in Path(f"/proc/{node.pid}/environ").read_bytes()
    finally:
        for process in (gate, node):
            processes.stop_process(process, timeout=5)


def test_stock_flower_runs_a_modified_app_and_verifies_only_hub_apps(tmp_path, link):
    """Two SuperNodes on one SuperLink. As `fedchain join` starts it (subprocess isolation), a
    node runs whatever app the coordinator submits, and that app reads the holder's data and
    the secret in the environment. With Flower's ``--trusted-entities``, a node refuses every
    app ``flwr run`` submits, whatever its code: ``flwr run`` sends no signature and a SuperLink
    attaches signatures only to apps fetched from Flower Hub (the node's log says so). Served
    by a stand-in Hub with the holder's signature, the approved app passes Flower's own check
    and runs, but with the secret in its environment all the same."""
    superlink, connection = link
    evil = _write_app(tmp_path / "evil", EVIL)
    (tmp_path / "data.txt").write_text("the holder's raw examples")
    holder_key = Ed25519PrivateKey.generate()
    public = holder_key.public_key()
    line = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    trusted = tmp_path / "trusted.yaml"
    trusted.write_text(f"holder: '{line.decode()}'\n")
    nodes = []
    for name, extra in (("stock", []), ("signed-only", ["--trusted-entities", str(trusted)])):
        config = {"data-path": str(tmp_path / "data.txt"), "loot": str(tmp_path / f"{name}.loot")}
        nodes.append(_start_supernode(tmp_path / name, connection.address, extra, config, True)[0])
    signed_only = nodes[1]
    try:
        deadline = time.monotonic() + 30
        while not all("SuperNode ID" in logs.tail(n.log_path, 40) for n in nodes):
            assert time.monotonic() < deadline, "SuperNodes did not connect"
            time.sleep(0.2)
        flwr_cli.submit_run(evil, connection, {"out": str(tmp_path / "evil.json")})
        result = _wait_file(tmp_path / "evil.json", [superlink, *nodes], timeout=60)
        refused = {"error": 7, "reason": "The FAB could not be verified."}  # INVALID_FAB
        assert len(result["answers"]) == 2 and refused in result["answers"]
        loot = json.loads((tmp_path / "stock.loot").read_text())  # the stock node ran it
        assert loot["env"]["APPROVAL_GATE_SECRET"] == SECRET
        assert loot["data"] == "the holder's raw examples"
        assert not (tmp_path / "signed-only.loot").exists()
        assert "App verification is not supported by the connected SuperLink" in logs.tail(
            signed_only.log_path, 80
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
        result = _wait_file(tmp_path / "hub.json", [superlink, *nodes], timeout=60)
        ran_with_secret_in_env = {"reply": {"secret-ok": False, "secret-in-env": True}}
        assert result["answers"] == [ran_with_secret_in_env, ran_with_secret_in_env]
    finally:
        for node in nodes:
            processes.stop_process(node, timeout=5)
