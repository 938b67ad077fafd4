"""One real run on Flower's simulation engine (Ray), through the commands a user types: killed
with SIGKILL mid-run, it leaves no process behind; ``--resume`` finishes it; it verifies."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

ENV = {**os.environ, "COLUMNS": "200", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}


def fedchain(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedchain", *args]


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state, ppid, ...), None once gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def descendants(root: int) -> dict[int, str]:
    """PID -> start time of every process below ``root`` (start time: a reused PID differs)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    found: dict[int, str] = {}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if (fields := _stat(child)) is not None:
                found[child] = fields[19]
                todo.append(child)
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def running(processes: dict[int, str]) -> list[int]:
    """Those still running: same start time and not a zombie (reaped or not, a zombie is gone)."""
    alive = []
    for pid, started in processes.items():
        fields = _stat(pid)
        if fields is not None and fields[19] == started and fields[0] != "Z":
            alive.append(pid)
    return alive


def read_until(
    run: subprocess.Popen[str], prefix: str, lines: list[str], tree: dict[int, str]
) -> None:
    """Read ``run``'s output into ``lines`` until a line starts with ``prefix`` (at most 240 s),
    noting its process tree in ``tree`` as it grows."""
    assert run.stdout is not None
    deadline = time.monotonic() + 240
    for line in run.stdout:
        lines.append(line)
        tree.update(descendants(run.pid))
        if line.startswith(prefix) or time.monotonic() > deadline:
            break
    tree.update(descendants(run.pid))


def leftovers(tree: dict[int, str]) -> list[tuple[int, list[str] | None, str, str]]:
    """The processes of ``tree`` still running 30 s on (each described), SIGKILLed so they are
    not left to the next test either."""
    deadline = time.monotonic() + 30
    while running(tree) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = running(tree)
    described = [(pid, _stat(pid), _cmdline(pid), _comm(pid)) for pid in left]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return described


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_simulation_leaves_no_process_and_resumes_to_a_ledger_that_verifies(tmp_path):
    run_dir = tmp_path / "ray"
    start = fedchain(
        "simulate", "--clients", "3", "--rounds", "3", "--model", "mlp", "--local-epochs", "1",
        "--out", str(tmp_path), "--run-id", "ray",
    )  # fmt: skip
    first = subprocess.Popen(
        start,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=ENV,
    )
    tree: dict[int, str] = {}
    lines: list[str] = []
    try:
        # round 1's block is on the ledger once round 2 is reported
        read_until(first, "round   2/3", lines, tree)
        assert lines and lines[-1].startswith("round   2/3"), "".join(lines)
        assert any("ClientAppActor" in _cmdline(pid) for pid in running(tree)), "no Ray worker"
    finally:
        first.kill()  # SIGKILL: nothing of fedchain's can run
        first.wait()
    left = leftovers(tree)
    assert not left, left

    resumed = subprocess.run(
        fedchain("simulate", "--resume", str(run_dir)),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=240,
        stdin=subprocess.DEVNULL,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert re.search(r"ledger at round [12] of 3", resumed.stdout), resumed.stdout
    assert "round   1/3" not in resumed.stdout and "round   3/3  acc" in resumed.stdout
    # accepted (averaged into the model) + left out (by the rule) = the 3 admitted updates
    counts = re.search(r"accepted\s+(\d)\s+left\s+out\s+(\d)\s+refused\s+0", resumed.stdout)
    assert counts and int(counts[1]) + int(counts[2]) == 3, resumed.stdout
    assert f"run directory: {run_dir}" in resumed.stdout
    verify = subprocess.run(
        fedchain("verify", str(run_dir)), capture_output=True, text=True, env=ENV, timeout=120
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "model files match" in verify.stdout
    assert (run_dir / "log.txt").stat().st_size > 0 and (run_dir / "config.toml").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_leaves_at_once_with_how_to_resume_and_no_process(tmp_path):
    """A terminal's Ctrl-C (SIGINT to the foreground process group) mid-run: the command exits
    within seconds (Flower's ServerApp thread used to keep it waiting until a second Ctrl-C),
    says how to resume, and leaves no process behind."""
    run_dir = tmp_path / "int"  # 60 rounds: far from done when interrupted (~0.2 s a round)
    start = fedchain(
        "simulate", "--clients", "3", "--rounds", "60", "--model", "mlp", "--local-epochs", "1",
        "--out", str(tmp_path), "--run-id", "int",
    )  # fmt: skip
    run = subprocess.Popen(
        start,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=ENV,
        start_new_session=True,  # its own process group, as a terminal's foreground job
        # as a terminal's job gets it: a shell's background job (CI's, perhaps) ignores SIGINT,
        # and Python installs no KeyboardInterrupt handler for an ignored SIGINT
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    tree: dict[int, str] = {}
    lines: list[str] = []
    try:
        read_until(run, "round   2/60", lines, tree)
        assert lines and lines[-1].startswith("round   2/60"), "".join(lines)
        interrupted = time.monotonic()
        os.killpg(run.pid, signal.SIGINT)
        rest, _ = run.communicate(timeout=60)
        took = time.monotonic() - interrupted
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 130, "".join(lines) + rest
    assert took < 30, took
    assert f"fedchain simulate --resume {run_dir}" in rest, rest
    left = leftovers(tree)
    assert not left, left
    verify = subprocess.run(
        fedchain("verify", str(run_dir)), capture_output=True, text=True, env=ENV, timeout=120
    )
    assert verify.returncode == 0 and "unfinished" in verify.stdout, verify.stdout + verify.stderr
