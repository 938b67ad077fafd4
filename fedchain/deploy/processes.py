"""POSIX supervision of detached processes: start with a PID file and a log, wait, stop.

A process is started in its own session, recorded in a PID file (with its kernel start time, so
a recycled PID is never signalled), and stopped together with all its descendants, not only its
process group: the SuperLink starts ``flower-superexec`` in a session of its own. Nothing here
knows Flower; :mod:`fedchain.deploy.flower` builds the command lines.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from fedchain.deploy.logs import strip_ansi, tail
from fedchain.durable import write_atomically
from fedchain.errors import DeployError

__all__ = [
    "ManagedProcess",
    "copy_output",
    "free_port",
    "is_running",
    "read_pid_file",
    "start_process",
    "stop_process",
    "wait_exit",
    "wait_healthy",
]


@dataclass(frozen=True)
class ManagedProcess:
    """A detached process this module started, as recorded in its PID file.

    ``start_time`` is the kernel's start time of ``pid`` (clock ticks since boot, from
    ``/proc/PID/stat``): a PID is only ever signalled while it still has this start time, so a
    PID the kernel has recycled for someone else's process is never touched. It is 0 where
    ``/proc`` does not exist; there only the PID is checked.
    """

    pid: int
    start_time: int
    command: tuple[str, ...]
    log_path: Path
    pid_file: Path


# ResourceWarning) when stopped; a process started by another interpreter is only known by PID.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
_EXITED: dict[int, subprocess.Popen[bytes]] = {}


def start_process(
    command: Sequence[str],
    *,
    log_path: Path,
    pid_file: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    on_line: Callable[[str], None] | None = None,
) -> ManagedProcess:
    """Start ``command`` detached, appending its output to ``log_path``, and write ``pid_file``.

    The process gets its own session (``start_new_session``): a Ctrl-C in our terminal does not
    reach it and stopping it signals its group, never ours. A PID file naming a live process is
    refused (stop that process first); a stale one is replaced.

    With ``on_line``, the output comes through this interpreter instead (a pipe read by a thread,
    which ends when the process and every child holding the pipe have exited): each line is written
    to the log without ANSI escapes (:func:`~fedchain.deploy.logs.strip_ansi`; Flower colours its
    log levels whatever the output is) and handed to ``on_line``. Only for a process whose life this
    interpreter follows (``fedchain join``): when we exit, its output has nowhere to go.
    """
    pid_file, log_path = Path(pid_file), Path(log_path)
    existing = read_pid_file(pid_file)
    if existing is not None and is_running(existing):
        raise DeployError(
            f"{pid_file}: process {existing.pid} ({' '.join(existing.command[:1])}) is still "
            "running; stop it first"
        )
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        try:
            popen = subprocess.Popen(  # noqa: S603 - argv list, no shell
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=log if on_line is None else subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise DeployError(f"cannot start {command[0]}: {exc}") from exc
    if on_line is not None and popen.stdout is not None:
        copy_output(popen.stdout, log_path, on_line, f"output of {Path(command[0]).name}")
    _CHILDREN[popen.pid] = popen
    process = ManagedProcess(
        pid=popen.pid,
        start_time=_start_time(popen.pid) or 0,
        command=tuple(command),
        log_path=log_path,
        pid_file=pid_file,
    )
    record = {
        "pid": process.pid,
        "start-time": process.start_time,
        "command": list(process.command),
        "log": str(log_path),
    }
    write_atomically(pid_file, (json.dumps(record) + "\n").encode(), mode=0o644)
    return process


def copy_output(
    stream: IO[bytes], log_path: Path, on_line: Callable[[str], None], name: str
) -> None:
    """Start a thread that appends each line of ``stream`` to ``log_path`` (without ANSI
    escapes) and hands it to ``on_line``, until the stream ends."""
    threading.Thread(
        target=_copy_output, args=(stream, log_path, on_line), name=name, daemon=True
    ).start()


def _copy_output(stream: IO[bytes], log_path: Path, on_line: Callable[[str], None]) -> None:
    with stream, log_path.open("ab") as log:
        for raw in iter(stream.readline, b""):
            text = strip_ansi(raw.decode("utf-8", errors="replace"))
            log.write(text.encode("utf-8"))
            log.flush()
            with contextlib.suppress(Exception):  # a console problem must not stop the log
                on_line(text.rstrip("\r\n"))


def read_pid_file(pid_file: Path) -> ManagedProcess | None:
    """The process recorded in ``pid_file``, or None when there is no such file.

    It may have exited since: ask :func:`is_running`. A file that is not a PID file written by
    :func:`start_process` is a :class:`DeployError` (never guess a PID to signal).
    """
    pid_file = Path(pid_file)
    try:
        text = pid_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DeployError(f"{pid_file}: cannot read: {exc.strerror}") from exc
    try:
        record = json.loads(text)
        pid, start_time = record["pid"], record["start-time"]
        command, log = record["command"], record["log"]
        if not (isinstance(pid, int) and pid > 0 and isinstance(start_time, int)):
            raise TypeError("bad pid or start time")
        if not (isinstance(command, list) and all(isinstance(a, str) for a in command)):
            raise TypeError("bad command")
    except (ValueError, KeyError, TypeError) as exc:
        raise DeployError(
            f"{pid_file}: not a fedchain PID file ({exc}); remove it if no process is running"
        ) from exc
    return ManagedProcess(pid, start_time, tuple(command), Path(log), pid_file)


def is_running(process: ManagedProcess) -> bool:
    """Whether ``process`` is alive: its PID exists, is no zombie, and is still the same process
    (same kernel start time, and its command line mentions the program we started)."""
    _reap(process.pid)
    if not Path("/proc").is_dir():  # no /proc (macOS): the PID alone is all we can check
        return _pid_exists(process.pid)
    if _start_time(process.pid) != process.start_time:
        return False
    try:
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    program = os.path.basename(process.command[0]).encode() if process.command else b""
    return any(os.path.basename(arg) == program for arg in cmdline)


def stop_process(target: ManagedProcess | Path, timeout: float = 10.0) -> bool:
    """Stop a process started by :func:`start_process`, with all its descendants.

    ``target`` is the process or its PID file. SIGTERM goes to its process group and to every
    descendant (Flower starts some helpers in sessions of their own); whatever is still alive
    after ``timeout`` seconds gets SIGKILL. The PID file is removed. Idempotent: returns False
    when nothing was running (a stale PID file is just removed). A PID is only signalled while it
    is the very process recorded (see :class:`ManagedProcess`).
    """
    if isinstance(target, ManagedProcess):
        process: ManagedProcess | None = target
        pid_file = target.pid_file
    else:
        pid_file = Path(target)
        process = read_pid_file(pid_file)
    if process is None or not is_running(process):
        _remove_pid_file(pid_file, process)
        return False
    tree = {(process.pid, process.start_time)} | _descendants(process.pid)
    _signal_tree(process, tree, signal.SIGTERM)
    tree = _wait_gone(tree, time.monotonic() + timeout)
    if tree:
        _signal_tree(process, tree, signal.SIGKILL)
        tree = _wait_gone(tree, time.monotonic() + 5.0)
    _remove_pid_file(pid_file, process)
    if tree:
        raise DeployError(
            f"{' '.join(process.command[:1])} (pid {process.pid}): processes "
            f"{sorted(pid for pid, _ in tree)} survived SIGKILL"
        )
    return True


def _remove_pid_file(pid_file: Path, process: ManagedProcess | None) -> None:
    """Remove ``pid_file`` unless it now names another live process (a restart raced us)."""
    current = None
    with contextlib.suppress(DeployError):
        current = read_pid_file(pid_file)
    other = current is not None and process is not None and current.pid != process.pid
    if other and current is not None and is_running(current):
        return
    pid_file.unlink(missing_ok=True)


def _signal_tree(root: ManagedProcess, tree: set[tuple[int, int]], signum: int) -> None:
    if (root.pid, root.start_time) in tree and _same_process(root.pid, root.start_time):
        with contextlib.suppress(OSError):
            if os.getpgid(root.pid) == root.pid:
                os.killpg(root.pid, signum)
    for pid, start_time in tree:
        if _same_process(pid, start_time):
            with contextlib.suppress(OSError):
                os.kill(pid, signum)


def _wait_gone(tree: set[tuple[int, int]], deadline: float) -> set[tuple[int, int]]:
    """Wait until none of ``tree`` (nor a process they started meanwhile) is alive; return the
    survivors at ``deadline``."""
    while True:
        alive = set()
        for pid, start_time in tree:
            _reap(pid)
            if _same_process(pid, start_time):
                alive.add((pid, start_time))
                alive |= _descendants(pid)
        tree = alive
        if not tree or time.monotonic() >= deadline:
            return tree
        time.sleep(0.05)


def _same_process(pid: int, start_time: int) -> bool:
    if not Path("/proc").is_dir():
        return _pid_exists(pid)
    return _start_time(pid) == start_time


def _start_time(pid: int) -> int | None:
    """The start time of live, non-zombie ``pid`` in clock ticks since boot, else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # the command name may hold spaces and ')'
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _descendants(pid: int) -> set[tuple[int, int]]:
    """All live descendants of ``pid`` as ``(pid, start_time)``, from one scan of ``/proc``."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return set()
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text(encoding="ascii", errors="replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry))
    found: set[tuple[int, int]] = set()
    stack = list(children.get(pid, []))
    while stack:
        child = stack.pop()
        start_time = _start_time(child)
        if start_time is not None:
            found.add((child, start_time))
        stack.extend(children.get(child, []))
    return found


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap(pid: int) -> None:
    """Collect the exit status of our own exited child so it does not linger as a zombie."""
    popen = _CHILDREN.get(pid)
    if popen is not None and popen.poll() is not None:
        _EXITED[pid] = _CHILDREN.pop(pid)


def wait_exit(process: ManagedProcess, timeout: float) -> int | None:
    """Wait up to ``timeout`` seconds for ``process`` to exit; return its exit code.

    None if it is still running then, or if it exited but is not a child of this interpreter
    (only a parent can learn the exit code).
    """
    popen = _CHILDREN.get(process.pid) or _EXITED.get(process.pid)
    if popen is not None:
        try:
            code = popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        _reap(process.pid)
        return code
    deadline = time.monotonic() + timeout
    while is_running(process):
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (the kernel's pick for port 0).

    Another process may take it before ours binds it; callers that start a server on it should
    treat a bind failure as retryable.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_healthy(
    process: ManagedProcess,
    address: str,
    timeout: float = 30.0,
    *,
    root_certificates: Path | None = None,
) -> None:
    """Wait until ``GET /health`` on ``address`` (``host:port``) answers 200.

    HTTPS verified against ``root_certificates`` when given, else plain HTTP. Raises
    :class:`DeployError` with the tail of the process's log as soon as the process has exited,
    or after ``timeout`` seconds.
    """
    scheme = "http" if root_certificates is None else "https"
    context = None
    if root_certificates is not None:
        context = ssl.create_default_context(cafile=str(root_certificates))
    url = f"{scheme}://{address}/health"
    deadline = time.monotonic() + timeout
    last_error = "no answer"
    while True:
        if not is_running(process):
            raise DeployError(
                f"{_describe(process)} exited before {url} answered; "
                f"its log {process.log_path} ends with:\n{tail(process.log_path)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2.0, context=context) as response:  # noqa: S310
                if response.status == 200:
                    return
                last_error = f"HTTP {response.status}"
        except (urllib.error.URLError, OSError) as exc:
            last_error = str(getattr(exc, "reason", exc))
        if time.monotonic() >= deadline:
            raise DeployError(
                f"{_describe(process)} did not answer {url} within {timeout:g} s "
                f"(last error: {last_error}); its log {process.log_path} ends with:\n"
                f"{tail(process.log_path)}"
            )
        time.sleep(0.2)


def _describe(process: ManagedProcess) -> str:
    name = os.path.basename(process.command[0]) if process.command else "process"
    return f"{name} (pid {process.pid})"
