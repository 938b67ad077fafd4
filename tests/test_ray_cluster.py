"""A simulation spread over a Ray cluster of two nodes (``fedchain simulate --ray-address``),
both started here on loopback with ``ray start``, one CPU each: the clients run on both nodes,
the cluster outlives the run, and the run verifies."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

RAY = str(Path(sys.executable).parent / "ray")
ENV = {
    **os.environ,
    "COLUMNS": "200",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}
READY = "This command will now block forever"  # `ray start --block`, once its node is up


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_node(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """``ray start ARGS --block`` in a process group of its own (its daemons stay in it), once
    its node is up."""
    with log.open("wb") as out:
        node = subprocess.Popen(
            [RAY, "start", *args, "--num-cpus=1", "--block"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=ENV,
            start_new_session=True,
        )
    deadline = time.monotonic() + 120
    while READY not in log.read_text(errors="replace"):
        if node.poll() is not None or time.monotonic() > deadline:
            stop_nodes([node])
            pytest.fail(f"ray start did not come up:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.5)
    return node


def stop_nodes(nodes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each node's process group (``ray start --block`` then stops its daemons), then
    SIGKILL what is left of those groups after a grace period."""
    for node in reversed(nodes):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(group_members(n.pid) for n in nodes):
        time.sleep(0.5)
    for node in nodes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.wait(timeout=10)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


@pytest.fixture
def cluster() -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """A head and a worker node on loopback, one CPU each (Ray's session files in a short
    temporary folder: its socket paths must stay under the kernel's 107 characters)."""
    temp = Path(tempfile.mkdtemp(prefix="fcray"))
    address = f"127.0.0.1:{free_port()}"
    nodes: list[subprocess.Popen[bytes]] = []
    try:
        nodes.append(
            start_node(
                [
                    "--head",
                    "--node-ip-address=127.0.0.1",
                    f"--port={address.rsplit(':', 1)[1]}",
                    "--include-dashboard=false",
                    f"--temp-dir={temp / 'ray'}",
                ],
                temp / "head.log",
            )
        )
        nodes.append(
            start_node([f"--address={address}", "--node-ip-address=127.0.0.1"], temp / "worker.log")
        )
        yield address, nodes
    finally:
        stop_nodes(nodes)
        shutil.rmtree(temp, ignore_errors=True)


def test_a_simulation_runs_on_a_two_node_ray_cluster_and_verifies(cluster, tmp_path):
    address, nodes = cluster
    run = subprocess.run(
        [
            sys.executable, "-m", "fedchain", "simulate", "--clients", "4", "--rounds", "2",
            "--model", "mlp", "--local-epochs", "1", "--out", str(tmp_path), "--run-id", "c",
            "--ray-address", address,
        ],
        capture_output=True, text=True, env=ENV, timeout=420,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "round   2/2" in run.stdout
    log = (tmp_path / "c" / "log.txt").read_text()
    # one actor per CPU of the cluster: 2 actors on two one-CPU nodes means both ran clients
    assert f"'address': '{address}'" in log and "Constructed ActorPool with: 2 actors" in log, log
    assert all(node.poll() is None for node in nodes), "the run must leave the cluster running"
    verify = subprocess.run(
        [sys.executable, "-m", "fedchain", "verify", str(tmp_path / "c")],
        capture_output=True, text=True, env=ENV, timeout=180,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    stop_nodes(nodes)
    assert not [pid for node in nodes for pid in group_members(node.pid)]


def test_an_unreachable_ray_address_is_one_clear_error_and_writes_nothing(tmp_path):
    port = free_port()  # nothing listens there
    for address, expected in [
        (f"127.0.0.1:{port}", "no Ray cluster answers there"),
        ("127.0.0.1", "expected HOST:PORT"),
    ]:
        run = subprocess.run(
            [
                sys.executable, "-m", "fedchain", "simulate", "--clients", "2", "--rounds", "1",
                "--model", "mlp", "--out", str(tmp_path), "--run-id", "x",
                "--ray-address", address,
            ],
            capture_output=True, text=True, env=ENV, timeout=120,
        )  # fmt: skip
        output = run.stdout + run.stderr
        assert run.returncode != 0 and expected in output, output
        assert "Traceback" not in output and not (tmp_path / "x").exists()
