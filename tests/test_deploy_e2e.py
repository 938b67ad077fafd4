"""The deployment journey on loopback, with Flower's real SuperLink and SuperNodes over TLS.

A coordinator and three joined data holders (one of them, mallory, sends updates that do not
match her signed commitments) run 3 rounds with SuperNode authentication. Along the way an
unregistered SuperNode is refused, one client is killed mid-round (the round goes on after its
timeout), and the coordinator is killed (SIGKILL, SuperLink and ServerApp) and restarted: it
resumes from the ledger head with every appended block kept. Everything runs through the
``fedchain`` command line, as a user would; only processes this test started are stopped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedchain.crypto import identity
from fedchain.data import datafile, keys
from fedchain.data.partition import partition
from fedchain.data.sources import load_source
from fedchain.deploy import processes
from fedchain.deploy.certs import create_supernode_keys, create_test_certificates
from fedchain.ledger.codec import decode
from fedchain.ledger.objects import Block, Rejection, SlashingEvidence
from fedchain.ledger.store import LedgerStore
from fedchain.ledger.verify import verify_ledger
from fedchain.rounds.admission import MISMATCH_REASON
from fedchain.runs import federation, layout, registration

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
FEDCHAIN = [sys.executable, "-m", "fedchain"]
HOLDERS = ("alice", "bob", "mallory")
PHASE_S = 240.0  # generous: 2 shared cores; every wait below is bounded by it
ENV = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "COLUMNS": "200", "NO_COLOR": "1"}


def fedchain(*args: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FEDCHAIN, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
        check=False,
    )


def ok(*args: str, timeout: float = 180.0) -> str:
    result = fedchain(*args, timeout=timeout)
    assert result.returncode == 0, (
        f"fedchain {' '.join(map(str, args))}:\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


def wait_for(what: str, check, timeout: float = PHASE_S, every: float = 1.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def metrics_rounds(run_dir: Path) -> list[int]:
    try:
        return [
            row["round"] for row in json.loads((run_dir / "metrics.json").read_text())["rounds"]
        ]
    except (OSError, ValueError, KeyError):
        return []


def block_hashes(run_dir: Path) -> list[bytes]:
    with LedgerStore.open(run_dir / "ledger.db", readonly=True) as store:
        return [stored.block_hash for stored in store.iter_blocks()]


def kill_tree(pid_file: Path) -> None:
    """SIGKILL a process we started (recorded in its PID file) and all its descendants."""
    process = processes.read_pid_file(pid_file)
    assert process is not None and processes.is_running(process)
    tree = processes._descendants(process.pid) | {(process.pid, process.start_time)}
    for pid, start in tree:
        if processes._same_process(pid, start):
            os.kill(pid, signal.SIGKILL)
    processes.wait_exit(process, 10)


@pytest.fixture
def world(tmp_path):  # type: ignore[no-untyped-def]
    """Three holders' data, identities and SuperNode keys, plus an unregistered stranger; a
    federation with the three registered, and TLS certificates. (Made through the library: the
    same commands' command-line forms are tested in test_federation.py.)"""
    train = load_source("digits", split="train")
    parts = partition(train.y, len(HOLDERS), "iid", seed=1)
    data_key = keys.create_key_file(tmp_path / "data.key")
    fed_dir = tmp_path / "fed"
    fed_id = federation.init_federation(
        fed_dir,
        name="e2e",
        settings={
            "rounds": 3,
            "model": "mlp",
            "local-epochs": 1,
            "contribution": "leave-one-out",
            "round-timeout": 30.0,
        },
        min_clients=2,
        join_timeout=PHASE_S,
    ).federation_id
    for i, name in enumerate((*HOLDERS, "eve")):
        data = tmp_path / f"{name}.fcd"
        datafile.write_dataset(data, train.subset(parts[i % len(HOLDERS)]), data_key)
        key = identity.generate_identity()
        identity.save_identity(key, tmp_path / f"{name}.key", None)
        _, node_pub = create_supernode_keys(tmp_path, f"{name}-node")
        if name != "eve":  # eve never registers
            entry = registration.create_registration(
                key,
                data,
                federation_id=fed_id,
                unlock=data_key,
                stake=1_000_000,
                name=name,
                supernode_key=node_pub.read_text(),
            )
            federation.add_participant(fed_dir, entry)
    create_test_certificates(fed_dir / "certs")
    return tmp_path, fed_dir


def join(base: Path, name: str, address: str, ca: Path, **extra: str) -> subprocess.Popen[bytes]:
    args = [
        *FEDCHAIN,
        "join",
        "--coordinator",
        address,
        "--data",
        base / f"{name}.fcd",
        "--identity",
        base / f"{name}.key",
        "--data-key",
        base / "data.key",
        "--root-cert",
        ca,
        "--auth-key",
        base / f"{name}-node.key",
        "--log",
        base / f"{name}.log",
        "--federation-id",  # the one every holder registered for (eve: she would have, too)
        federation.load_federation(base / "fed").federation_id.hex(),
    ]
    for key, value in extra.items():
        args += ["--node-config", f"{key}={value}"]
    out = (base / f"{name}.join.out").open("wb")
    return subprocess.Popen(list(map(str, args)), stdout=out, stderr=subprocess.STDOUT, env=ENV)


def test_coordinator_and_joined_clients_over_tls(world):  # type: ignore[no-untyped-def]
    base, fed_dir = world
    run_dir = layout.run_dir_of(fed_dir)
    ca = fed_dir / "certs" / "ca.crt"
    link_pid = fed_dir / "superlink" / "superlink.pid"
    joins: dict[str, subprocess.Popen[bytes]] = {}
    started = time.monotonic()
    try:
        address = f"127.0.0.1:{processes.free_port()}"
        port = address.rsplit(":", 1)[1]
        assert "ledger created" in ok("coordinator", "start", fed_dir, "--port", port)
        joins["alice"] = join(base, "alice", address, ca)
        joins["bob"] = join(base, "bob", address, ca)
        joins["mallory"] = join(base, "mallory", address, ca, attack="commit-mismatch")

        # An unregistered SuperNode is refused: `fedchain join` ends with an error.
        eve = join(base, "eve", address, ca)
        assert eve.wait(timeout=PHASE_S) == 1
        assert "Failed to activate SuperNode" in (base / "eve.join.out").read_text()

        # Kill bob's SuperNode as round 2 starts: the round goes on without him. Round 1's
        # metrics are written before round 2's messages go out, and a SuperNode needs seconds
        # (3 s polling, a fresh ClientApp process) to answer, so a quick kill lands mid-round.
        wait_for("round 1", lambda: 1 in metrics_rounds(run_dir), every=0.1)
        joins.pop("bob").kill()
        kill_tree(base / "bob.pid")
        wait_for("round 2", lambda: 2 in metrics_rounds(run_dir))

        # Kill the coordinator once round 2's block is on the ledger (round 3 under way).
        wait_for("block 2", lambda: verify_ledger(run_dir).head_height >= 2, every=0.5)
        kill_tree(link_pid)
        prefix = block_hashes(run_dir)
        before = verify_ledger(run_dir)
        assert before.ok and before.rounds == 2, before.failure

        status = ok("coordinator", "status", fed_dir)
        assert "SuperLink: not running" in status and "final height" in status
        assert "resuming" in ok("coordinator", "start", fed_dir, "--port", port)
        wait_for(
            "the resumed run to finish",
            lambda: "finished" in ok("coordinator", "status", fed_dir, timeout=60),
            every=3.0,
        )
        # The joined clients see the run finish and stop by themselves, with exit 0; their
        # consoles had one line per round and their SuperNode logs no colour codes.
        for name in ("alice", "mallory"):
            code = joins[name].wait(timeout=PHASE_S)
            console = (base / f"{name}.join.out").read_text()
            assert code == 0, console[-3000:]
            # Messages carry their ledger round (Flower's group id): the resumed run's first
            # round is ledger round 3, not Flower's round 1 of the new run.
            trained = [line for line in console.splitlines() if "trained on your data" in line]
            assert trained and trained[-1].startswith("round 3: "), console
            assert "has finished" in console and "Receiving: train" not in console
            assert "\x1b" not in (base / f"{name}.log").read_text()
        after = verify_ledger(run_dir)
        assert after.ok and after.rounds == 3, after.failure
        assert block_hashes(run_dir)[: len(prefix)] == prefix  # nothing lost
        assert after.final_height >= before.final_height  # (bob's stake is needed for 2/3)
        verdict = ok("verify", run_dir)
        assert "verified" in verdict

        keys = {p.name: p.public_key for p in federation.load_federation(fed_dir).participants}
        with LedgerStore.open(run_dir / "ledger.db", readonly=True) as store:
            txs = [tx for s in store.iter_blocks() for tx in decode(Block, s.data).transactions]
        slashed = {tx.offender for tx in txs if isinstance(tx, SlashingEvidence)}
        rejected = {tx.public_key: tx.reason for tx in txs if isinstance(tx, Rejection)}
        # mallory's mismatch is the coordinator's observation alone: rejected, never slashed
        assert slashed == set()
        assert rejected[keys["mallory"]] == MISMATCH_REASON
        assert "no reply" in rejected[keys["bob"]]  # the killed client's round is on record
        participants = after.state.participants  # type: ignore[union-attr]
        assert participants[keys["mallory"]].stake == 1_000_000 < participants[keys["alice"]].stake
        assert metrics_rounds(run_dir)[-1] == 3
        ok("coordinator", "stop", fed_dir)
        assert processes.read_pid_file(link_pid) is None
    finally:
        for process in joins.values():
            process.terminate()  # `fedchain join` stops its SuperNode on SIGTERM
        for process in joins.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        for name in HOLDERS:
            processes.stop_process(base / f"{name}.pid", timeout=5)
        processes.stop_process(link_pid, timeout=5)
        print(f"deployment journey: {time.monotonic() - started:.0f} s")
