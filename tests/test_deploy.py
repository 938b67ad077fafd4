"""fedchain.deploy: certificates, SuperNode keys, PID files, and Flower's real processes
on loopback (a TLS SuperLink with SuperNode authentication, SuperNodes, the flwr CLI)."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
    load_ssh_private_key,
    load_ssh_public_key,
)

from fedchain.deploy import flower, flwr_cli, logs, processes
from fedchain.deploy.certs import create_supernode_keys, create_test_certificates
from fedchain.errors import ConfigError, DeployError, FedchainError

# --------------------------------------------------------------------------------------------------
# Certificates and keys


def test_certificates_chain_verify_and_name_the_hosts(tmp_path):
    certs = create_test_certificates(tmp_path, hosts=("127.0.0.1", "localhost", "::1"))
    assert (certs.ca_cert.name, certs.server_cert.name, certs.server_key.name) == (
        "ca.crt",
        "server.pem",
        "server.key",
    )
    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    ca.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    key = load_pem_private_key(certs.server_key.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == server.public_key()
    assert certs.server_key.stat().st_mode & 0o777 == 0o600
    # Python's TLS stack accepts them as a server chain and as a client's trust root.
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
        certs.server_cert, certs.server_key
    )
    ssl.create_default_context(cafile=str(certs.ca_cert))


def test_certificates_pass_a_tls_handshake_for_each_host_name(tmp_path):
    certs = create_test_certificates(tmp_path)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(certs.server_cert, certs.server_key)
    client_context = ssl.create_default_context(cafile=str(certs.ca_cert))
    for name, expect_ok in (("127.0.0.1", True), ("localhost", True), ("example.org", False)):
        left, right = socket.socketpair()
        with left, right:
            server = server_context.wrap_socket(
                left, server_side=True, do_handshake_on_connect=False
            )
            client = client_context.wrap_socket(
                right, server_hostname=name, do_handshake_on_connect=False
            )
            ok = _handshake(server, client)
            assert ok == expect_ok, name


def _handshake(server: ssl.SSLSocket, client: ssl.SSLSocket) -> bool:
    server.setblocking(False)
    client.setblocking(False)
    done = {"server": False, "client": False}
    deadline = time.monotonic() + 5
    while not all(done.values()) and time.monotonic() < deadline:
        for name, sock in (("client", client), ("server", server)):
            if done[name]:
                continue
            try:
                sock.do_handshake()
                done[name] = True
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
            except (ssl.SSLError, OSError):
                return False
    return all(done.values())


def test_invalid_certificates_refuse_to_overwrite(tmp_path):
    first = create_test_certificates(tmp_path)
    before = first.ca_cert.read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        create_test_certificates(tmp_path)
    assert first.ca_cert.read_bytes() == before
    again = create_test_certificates(tmp_path, overwrite=True)
    assert again.ca_cert.read_bytes() != before


def test_invalid_certificates_without_hosts_or_days(tmp_path):
    with pytest.raises(ConfigError, match="host"):
        create_test_certificates(tmp_path, hosts=())
    with pytest.raises(ConfigError, match="1 day"):
        create_test_certificates(tmp_path, days=0)


def test_supernode_keys_are_what_flower_reads(tmp_path):
    from flwr.cli.supernode.register import try_load_public_key

    private_path, public_path = create_supernode_keys(tmp_path, "alice")
    assert (private_path.name, public_path.name) == ("alice.key", "alice.pub")
    assert private_path.stat().st_mode & 0o777 == 0o600
    private = load_ssh_private_key(private_path.read_bytes(), None)  # as flower-supernode does
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(private.curve, ec.SECP384R1)
    public = load_ssh_public_key(public_path.read_bytes())
    assert public == private.public_key()
    assert public_path.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert try_load_public_key(public_path)  # as `flwr supernode register` does
    with pytest.raises(ConfigError, match="already exists"):
        create_supernode_keys(tmp_path, "alice")
    with pytest.raises(ConfigError, match="letters"):
        create_supernode_keys(tmp_path, "../evil")


# --------------------------------------------------------------------------------------------------
# Config strings and the flwr connection file


def test_config_args_round_trip_through_flowers_parser():
    from flwr.common.config import parse_config_args

    config = {
        "data-path": "/data/my files/a.fcd",
        "quote": "it's",
        "dq": 'say "hi"',
        "back": "C:\\x\\y",
        "tab": "a\tb",
        "partition-id": 3,
        "lr": 0.125,
        "big": 1e100,
        "flag": True,
        "off": False,
        "empty": "",
    }
    text = flower.format_config_args(config)
    assert parse_config_args([text]) == config


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"both": 'it\'s "x"'}, "both"),
        ({"bad key": 1}, "letters"),
        ({"a.b": 1}, "letters"),
        ({"x": [1, 2]}, "list"),
        ({"x": None}, "NoneType"),
    ],
)
def test_invalid_config_args(config, match):
    with pytest.raises(ConfigError, match=match):
        flower.format_config_args(config)


def test_flwr_connection_is_what_flwr_reads(tmp_path, monkeypatch):
    from flwr.cli.flower_config import read_superlink_connection

    home = tmp_path / "flwr"
    home.mkdir()
    (home / "config.toml").write_text('[superlink.other]\naddress = "example.org:9093"\n')
    certs = create_test_certificates(tmp_path / "certs")
    connection = flwr_cli.write_flwr_connection(home, "fedchain", "127.0.0.1:9000", certs.ca_cert)
    flwr_cli.write_flwr_connection(home, "plain", "127.0.0.1:9001", None, default=False)
    monkeypatch.setenv("FLWR_HOME", str(home))
    parsed = read_superlink_connection(None)  # the default connection
    assert (parsed.name, parsed.address, parsed.insecure) == ("fedchain", "127.0.0.1:9000", False)
    assert parsed.root_certificates == str(certs.ca_cert.resolve())
    plain = read_superlink_connection("plain")
    assert (plain.address, plain.insecure, plain.root_certificates) == (
        "127.0.0.1:9001",
        True,
        None,
    )
    assert read_superlink_connection("other").address == "example.org:9093"
    assert connection.root_certificates == certs.ca_cert.resolve()


def test_free_port_can_be_bound():
    port = processes.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


# --------------------------------------------------------------------------------------------------
# PID files and stopping (no process started here)


def test_stale_pid_file_is_removed_and_never_signalled(tmp_path):
    pid_file = tmp_path / "x.pid"
    # Our own PID with another start time: a recycled PID that must never be signalled.
    record = {"pid": os.getpid(), "start-time": 1, "command": ["sleep"], "log": "x.log"}
    pid_file.write_text(json.dumps(record))
    process = processes.read_pid_file(pid_file)
    assert process is not None and not processes.is_running(process)
    assert processes.stop_process(pid_file) is False
    assert not pid_file.exists()
    assert processes.stop_process(pid_file) is False  # idempotent: no file at all


def test_invalid_pid_file_is_an_error(tmp_path):
    pid_file = tmp_path / "x.pid"
    pid_file.write_text("12345\n")
    with pytest.raises(DeployError, match="not a fedchain PID file") as info:
        processes.stop_process(pid_file)
    assert isinstance(info.value, FedchainError)
    assert pid_file.exists()


def test_invalid_superlink_auth_without_tls(tmp_path):
    with pytest.raises(ConfigError, match="TLS"):
        flower.start_superlink(tmp_path, port=1, certs=None, supernode_auth=True)


# --------------------------------------------------------------------------------------------------
# Real processes


@pytest.mark.slow
def test_stop_process_ends_the_whole_tree_even_other_sessions(tmp_path):
    script = "sleep 300 & setsid sleep 300 & trap '' TERM; wait"  # ignores SIGTERM: needs KILL
    process = processes.start_process(
        ["/bin/sh", "-c", script], log_path=tmp_path / "x.log", pid_file=tmp_path / "x.pid"
    )
    try:
        deadline = time.monotonic() + 5
        while len(processes._descendants(process.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        tree = processes._descendants(process.pid)
        assert len(tree) == 2
        with pytest.raises(DeployError, match="still running"):
            processes.start_process(
                ["true"], log_path=tmp_path / "y.log", pid_file=process.pid_file
            )
        started = time.monotonic()
        assert processes.stop_process(process, timeout=0.5) is True
        assert time.monotonic() - started < 4
        assert not processes.is_running(process)
        assert not any(processes._same_process(pid, start) for pid, start in tree)
        assert not process.pid_file.exists()
        assert processes.stop_process(process) is False
    finally:
        processes.stop_process(process, timeout=1)


@pytest.mark.slow
def test_invalid_superlink_that_dies_reports_its_log(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        link = flower.start_superlink(tmp_path, port=port, certs=None)
        try:
            with pytest.raises(DeployError, match="exited before") as info:
                processes.wait_healthy(link, f"127.0.0.1:{port}", timeout=30)
            assert "superlink.log" in str(info.value)
            assert "address already in use" in str(info.value).lower()
        finally:
            processes.stop_process(link)


APP_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "deploytest"
version = "1.0.0"
dependencies = []

[tool.flwr.app]
publisher = "fedchain"

[tool.flwr.app.components]
serverapp = "deploytest_app:server"
clientapp = "deploytest_app:client"

[tool.flwr.app.config]
greeting = "hello"
"""

APP_CODE = """\
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

server = ServerApp()
client = ClientApp()


@server.main()
def main(grid, context):
    print("greeting:", context.run_config["greeting"], flush=True)
"""


@pytest.fixture(scope="module")
def tls_link(tmp_path_factory):
    """One TLS SuperLink with SuperNode authentication, and a flwr connection to it."""
    base = tmp_path_factory.mktemp("link")
    certs = create_test_certificates(base / "certs")
    port = processes.free_port()
    link = flower.start_superlink(base / "state", port=port, certs=certs, supernode_auth=True)
    try:
        processes.wait_healthy(
            link, f"127.0.0.1:{port}", timeout=60, root_certificates=certs.ca_cert
        )
        connection = flwr_cli.write_flwr_connection(
            base / "flwr", "fedchain", f"127.0.0.1:{port}", certs.ca_cert
        )
        yield base, certs, link, connection
    finally:
        processes.stop_process(link)
        assert not processes.is_running(link)


@pytest.mark.slow
def test_tls_superlink_is_healthy_only_over_verified_https(tls_link):
    _, _, link, connection = tls_link
    assert processes.is_running(link)
    assert link.pid_file.exists() and processes.read_pid_file(link.pid_file) == link
    with pytest.raises(DeployError, match="did not answer"):  # an unknown CA is refused
        other = create_test_certificates(link.log_path.parent.parent / "other")
        processes.wait_healthy(link, connection.address, timeout=1, root_certificates=other.ca_cert)


@pytest.mark.slow
def test_registered_supernode_connects_and_unregistered_is_refused(tls_link):
    base, certs, _, connection = tls_link
    good_key, good_pub = create_supernode_keys(base / "keys", "good")
    bad_key, _ = create_supernode_keys(base / "keys", "stranger")
    node_id = flwr_cli.register_supernode(connection, good_pub)
    assert [(n.node_id, n.status) for n in flwr_cli.list_supernodes(connection)] == [
        (node_id, "registered")
    ]
    started = []
    try:
        for name, key in (("good", good_key), ("stranger", bad_key)):
            started.append(
                flower.start_supernode(
                    superlink_address=connection.address,
                    node_config={"data-path": f"/data/{name} set.fcd", "partition-id": 0},
                    root_certificates=certs.ca_cert,
                    auth_private_key=key,
                    clientappio_port=processes.free_port(),
                    log_path=base / f"{name}.log",
                    env={"FEDCHAIN_TEST_SECRET": "s3cret"},
                )
            )
        good, stranger = started
        # The unregistered node is refused when it activates: it exits (status 1) and logs
        # Flower's exit code 305 with the SuperLink's error 2004.
        assert processes.wait_exit(stranger, timeout=60) == 1
        assert flower.flower_exit_code(stranger) == 305
        assert "Failed to activate SuperNode" in logs.tail(stranger.log_path)
        assert "No SuperNode found with the given public key" in logs.tail(
            tls_link[2].log_path, 200
        )
        flwr_cli.wait_supernode_status(connection, node_id, "online", timeout=60)
        assert [(n.node_id, n.status) for n in flwr_cli.list_supernodes(connection)] == [
            (node_id, "online")
        ]
        assert f"SuperNode ID: {node_id}" in logs.tail(good.log_path)
        assert processes.is_running(good)
        # Secrets travel in the environment, never on the (world-readable) command line.
        assert b"FEDCHAIN_TEST_SECRET=s3cret" in Path(f"/proc/{good.pid}/environ").read_bytes()
        assert b"s3cret" not in Path(f"/proc/{good.pid}/cmdline").read_bytes()
        assert b"data-path='/data/good set.fcd'" in Path(f"/proc/{good.pid}/cmdline").read_bytes()
        tree = processes._descendants(good.pid)
        assert tree  # its SuperExec
        assert processes.stop_process(good) is True
        assert not any(processes._same_process(pid, start) for pid, start in tree)
        assert not good.pid_file.exists()
    finally:
        for process in started:
            processes.stop_process(process)


@pytest.mark.slow
def test_submit_run_over_tls_runs_the_app(tls_link):
    base, _, _, connection = tls_link
    app = base / "app"
    app.mkdir()
    (app / "pyproject.toml").write_text(APP_PYPROJECT)
    (app / "deploytest_app.py").write_text(APP_CODE)
    run_id = flwr_cli.submit_run(app, connection, {"greeting": "it's me"})
    assert run_id in [int(str(run["run-id"])) for run in flwr_cli.list_runs(connection)]
    deadline = time.monotonic() + 90
    status = ""
    while time.monotonic() < deadline:
        status = flwr_cli.run_status(connection, run_id)
        if status.startswith("finished"):
            break
        time.sleep(1)
    assert status == "finished:completed"


@pytest.mark.slow
def test_invalid_flwr_command_reports_flowers_message(tls_link):
    connection = tls_link[3]
    with pytest.raises(DeployError, match=r"flwr stop 12345 failed: .*Run ID not found"):
        flwr_cli.stop_run(connection, 12345)


@pytest.mark.slow
def test_registrations_survive_a_superlink_restart(tmp_path):
    certs = create_test_certificates(tmp_path / "certs")
    port = processes.free_port()
    address = f"127.0.0.1:{port}"
    connection = flwr_cli.write_flwr_connection(tmp_path / "flwr", "fc", address, certs.ca_cert)
    _, public_key = create_supernode_keys(tmp_path / "keys", "a")
    link = flower.start_superlink(tmp_path / "state", port=port, certs=certs, supernode_auth=True)
    try:
        processes.wait_healthy(link, address, timeout=60, root_certificates=certs.ca_cert)
        node_id = flwr_cli.register_supernode(connection, public_key)
        with pytest.raises(DeployError, match="already in use"):
            flwr_cli.register_supernode(connection, public_key)
        assert processes.stop_process(link.pid_file) is True  # by PID file, as a new CLI call would
        assert not processes.is_running(link)
        link = flower.start_superlink(
            tmp_path / "state", port=port, certs=certs, supernode_auth=True
        )
        processes.wait_healthy(link, address, timeout=60, root_certificates=certs.ca_cert)
        assert [(n.node_id, n.status) for n in flwr_cli.list_supernodes(connection)] == [
            (node_id, "registered")
        ]
        flwr_cli.unregister_supernode(connection, node_id)
        assert [n.status for n in flwr_cli.list_supernodes(connection)] == ["unregistered"]
    finally:
        processes.stop_process(link)
