"""Run Flower's real processes (SuperLink, SuperNodes, the ``flwr`` CLI) for a deployment.

This is the thin I/O shell under ``fedchain coordinator`` and ``fedchain join``: it makes test
certificates and SuperNode keys, starts ``flower-superlink`` / ``flower-supernode`` as detached
processes with PID files and log files, waits for them to answer, drives the ``flwr`` CLI with a
private ``FLWR_HOME`` (the user's ``~/.flwr`` is never read or written), and stops what it started.

Facts about Flower 1.41 this module relies on (checked against ``site-packages/flwr``):

* The SuperLink serves the Fleet, Control and ServerAppIo ("Runtime") APIs on **one** HTTP(S)
  port (``--host``/``--port``; the old ``--fleet-api-address`` and ``--control-api-address`` are
  deprecated, ``--serverappio-api-address`` is rejected). ``GET /health`` answers on that port,
  over HTTPS when the SuperLink has certificates. SuperNodes, ``flwr`` and the SuperLink's own
  SuperExec all use that one address.
* TLS: ``--ssl-ca-certfile --ssl-certfile --ssl-keyfile`` on the SuperLink, ``--root-certificates``
  on SuperNodes, ``root-certificates`` (an absolute path) in a ``flwr`` connection. The server
  certificate must name the address clients dial in its SubjectAltNames.
* SuperNode authentication (``--enable-supernode-auth``, TLS required): the SuperNode's key is an
  EC key on a NIST curve (we use SECP384R1); ``flower-supernode --auth-supernode-private-key``
  reads an **unencrypted OpenSSH** private key and ``flwr supernode register`` an OpenSSH public
  key (``ecdsa-sha2-nistp384 ...``). Flower cannot read an encrypted auth key, so that file's
  protection is its 0600 mode.
* The SuperLink starts ``flower-superexec`` by bare name from ``PATH`` and in its own session:
  we put this interpreter's ``bin`` directory first on ``PATH`` and stop a process together with
  all its descendants, not only its process group.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedchain.errors import ConfigError, FedchainError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "CertPaths",
    "DeployError",
    "FlwrConnection",
    "ManagedProcess",
    "NodeStatus",
    "create_supernode_keys",
    "create_test_certificates",
    "flower_env",
    "flower_executable",
    "flower_exit_code",
    "format_config_args",
    "free_port",
    "is_running",
    "list_runs",
    "list_supernodes",
    "parse_flower_log_line",
    "read_pid_file",
    "register_supernode",
    "run_flwr",
    "run_status",
    "start_process",
    "start_superlink",
    "start_supernode",
    "stop_process",
    "stop_run",
    "strip_ansi",
    "submit_run",
    "tail",
    "unregister_supernode",
    "wait_exit",
    "wait_healthy",
    "wait_supernode_status",
    "write_flwr_connection",
]

CA_CERT_NAME = "ca.crt"
SERVER_CERT_NAME = "server.pem"
SERVER_KEY_NAME = "server.key"
DEFAULT_HOSTS = ("127.0.0.1", "localhost")
LOG_TAIL_LINES = 30
FLWR_CLI_TIMEOUT_S = 60.0
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class DeployError(FedchainError):
    """A Flower process would not start, died, never answered, or a ``flwr`` command failed.

    The message names the process or command and ends with the tail of its log or output.
    """


# --------------------------------------------------------------------------------------------------
# Certificates and keys


@dataclass(frozen=True)
class CertPaths:
    """The three PEM files a TLS SuperLink and its clients need.

    ``ca_cert`` goes to SuperNodes (``--root-certificates``), to ``flwr`` connections
    (``root-certificates``) and to the SuperLink (``--ssl-ca-certfile``); ``server_cert`` and
    ``server_key`` (mode 0600) stay with the SuperLink.
    """

    ca_cert: Path
    server_cert: Path
    server_key: Path


def create_test_certificates(
    directory: Path,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = 30,
    *,
    overwrite: bool = False,
) -> CertPaths:
    """Write a fresh self-signed CA and a server certificate it signs for ``hosts``.

    For testing and for federations without a real PKI: every client must be given ``ca.crt``
    out of band. Each host becomes a SubjectAltName (an IP address entry when it parses as one,
    else a DNS entry); TLS clients check the address they dial against these. Keys are EC
    SECP384R1. The CA's private key is never written, so nothing else can be signed with this CA
    later: make new certificates (``overwrite=True``) to add a host. Existing files are refused
    (:class:`ConfigError`) unless ``overwrite`` is true.
    """
    if not hosts:
        raise ConfigError("give at least one host name or IP address for the certificate")
    if days < 1:
        raise ConfigError(f"certificate lifetime must be at least 1 day, got {days}")
    directory = Path(directory)
    paths = CertPaths(
        directory / CA_CERT_NAME, directory / SERVER_CERT_NAME, directory / SERVER_KEY_NAME
    )
    if not overwrite:
        for path in (paths.ca_cert, paths.server_cert, paths.server_key):
            if os.path.lexists(path):
                raise ConfigError(f"{path}: already exists; pass overwrite to replace it")
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_cert = _build_ca_certificate(ca_key, now, days)
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = _build_server_certificate(server_key, ca_key, ca_cert, hosts, now, days)
    pem = serialization.Encoding.PEM
    _write_file(paths.ca_cert, ca_cert.public_bytes(pem), 0o644)
    _write_file(paths.server_cert, server_cert.public_bytes(pem), 0o644)
    key_bytes = server_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_file(paths.server_key, key_bytes, 0o600)
    return paths


def _build_ca_certificate(
    key: ec.EllipticCurvePrivateKey, not_before: datetime.datetime, days: int
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedchain test CA")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _build_server_certificate(
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    hosts: Sequence[str],
    not_before: datetime.datetime,
    days: int,
) -> x509.Certificate:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def create_supernode_keys(
    directory: Path, name: str, *, overwrite: bool = False
) -> tuple[Path, Path]:
    """Write a SuperNode authentication key pair: ``NAME.key`` (0600) and ``NAME.pub``.

    Flower 1.41 wants an EC key on a NIST curve; this is SECP384R1, the private key in unencrypted
    OpenSSH format (what ``flower-supernode --auth-supernode-private-key`` reads) and the public key
    as one OpenSSH line (what ``flwr supernode register`` reads). This key only proves to the
    SuperLink which registered node is connecting; the fedchain identity key that signs updates is
    separate. Returns ``(private_path, public_path)``.
    """
    if not _BARE_KEY.fullmatch(name):
        raise ConfigError(f"SuperNode key name {name!r}: use letters, digits, '-' and '_' only")
    directory = Path(directory)
    private_path, public_path = directory / f"{name}.key", directory / f"{name}.pub"
    if not overwrite:
        for path in (private_path, public_path):
            if os.path.lexists(path):
                raise ConfigError(f"{path}: already exists; pass overwrite to replace it")
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public_bytes = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    _write_file(private_path, private_bytes, 0o600)
    _write_file(public_path, public_bytes + f" fedchain-{name}\n".encode(), 0o644)
    return private_path, public_path


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data`` through a temporary file created with ``mode`` (so a key is
    never readable by others, not even for a moment), then rename it into place."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------
# Processes: start detached, record in a PID file, stop by PID


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


def flower_executable(name: str) -> str:
    """The path of a Flower console script (``flower-superlink``, ``flwr``, ...).

    Looked up next to this interpreter first (the venv's ``bin``, even when that venv is not
    activated), then on ``PATH``.
    """
    candidate = Path(sys.executable).parent / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise DeployError(
            f"{name}: not found next to {sys.executable} nor on PATH; install flwr in this "
            "environment (pip install 'flwr>=1.41,<1.42')"
        )
    return found


def flower_env(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for Flower processes: ours, with Flower's helpers findable and quiet.

    The SuperLink starts ``flower-superexec`` (and SuperExec ``flwr-serverapp``) by bare name,
    so this interpreter's ``bin`` goes first on ``PATH``. Runtime dependency installation is off
    (else every run would ``uv sync`` a fresh environment from the internet), telemetry is off
    unless the user opted in (``fedchain/__init__`` sets the default in ``os.environ``),
    and output is unbuffered so log files are current. ``overrides`` win.
    """
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", os.defpath)])
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides or {})
    return env


# Popen objects of the processes started by this interpreter, so they are reaped (no zombies, no
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

    With ``on_line``, the output comes through this interpreter instead (a pipe read by a
    thread, which ends when the process and every child holding the pipe have exited): each
    line is written to the log without ANSI escapes (:func:`strip_ansi`; Flower colours its
    log levels whatever the output is) and handed to ``on_line``. Only for a process whose
    life this interpreter follows (``fedchain join``): when we exit, its output has nowhere
    to go.
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
        threading.Thread(
            target=_copy_output,
            args=(popen.stdout, log_path, on_line),
            name=f"output of {Path(command[0]).name}",
            daemon=True,
        ).start()
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
    _write_file(pid_file, (json.dumps(record) + "\n").encode(), 0o644)
    return process


_ANSI_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
_FLOWER_LOG_LINE = re.compile(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL)\b[^:]*:\s*(.*)")


def strip_ansi(text: str) -> str:
    """``text`` without ANSI escape sequences (colours, cursor moves, OSC links)."""
    return _ANSI_ESCAPE.sub("", text)


def parse_flower_log_line(line: str) -> tuple[str | None, str]:
    """``(level, message)`` of a line of Flower's console log (``INFO :      message``);
    ``(None, line)`` for anything else (a traceback, a child's own output)."""
    match = _FLOWER_LOG_LINE.fullmatch(strip_ansi(line).rstrip("\r\n"))
    if match is None:
        return None, strip_ansi(line).rstrip("\r\n")
    return match.group(1), match.group(2)


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


def flower_exit_code(process: ManagedProcess) -> int | None:
    """The last Flower exit code in the process's log (``Exit Code: N``), or None.

    Flower processes exit with status 1 on any error and log the precise reason as an exit code
    (https://flower.ai/docs/framework/ref-exit-codes/): e.g. 305 for a SuperNode the SuperLink
    refused (an unregistered authentication key shows as 305 with ``[code: 2004] Failed to
    activate SuperNode``).
    """
    codes = re.findall(r"Exit Code: (\d+)", tail(process.log_path, 200))
    return int(codes[-1]) if codes else None


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ('' when it does not exist)."""
    try:
        data = Path(path).read_bytes()[-64 * 1024 :]
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", errors="replace").splitlines()[-lines:])


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


# --------------------------------------------------------------------------------------------------
# SuperLink and SuperNodes

ConfigValue = str | int | float | bool


def start_superlink(
    state_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int,
    certs: CertPaths | None,
    supernode_auth: bool = False,
    persistent: bool = True,
    env: Mapping[str, str] | None = None,
) -> ManagedProcess:
    """Start ``flower-superlink`` serving all its APIs on ``host:port``.

    ``certs=None`` means ``--insecure`` (plain HTTP; loopback tests only). ``supernode_auth``
    turns on ``--enable-supernode-auth``: only SuperNodes whose public key was registered with
    :func:`register_supernode` may connect; Flower requires TLS for it. With ``persistent`` the
    link state (runs, registered nodes) lives in ``state_dir/superlink.db`` and survives a
    restart. Logs go to ``state_dir/superlink.log``, the PID file is ``state_dir/superlink.pid``.
    Call :func:`wait_healthy` before using it.
    """
    if supernode_auth and certs is None:
        raise ConfigError("SuperNode authentication needs TLS: give certificates")
    state_dir = Path(state_dir)
    command = [flower_executable("flower-superlink"), "--host", host, "--port", str(port)]
    if certs is None:
        command.append("--insecure")
    else:
        command += [
            "--ssl-ca-certfile",
            str(Path(certs.ca_cert).resolve()),
            "--ssl-certfile",
            str(Path(certs.server_cert).resolve()),
            "--ssl-keyfile",
            str(Path(certs.server_key).resolve()),
        ]
    if supernode_auth:
        command.append("--enable-supernode-auth")
    if persistent:
        command += ["--database", str((state_dir / "superlink.db").resolve())]
    command.append("--disable-runtime-dependency-installation")
    return start_process(
        command,
        log_path=state_dir / "superlink.log",
        pid_file=state_dir / "superlink.pid",
        env=flower_env(env),
        cwd=state_dir,
    )


def start_supernode(
    *,
    superlink_address: str,
    node_config: Mapping[str, ConfigValue],
    root_certificates: Path | None,
    auth_private_key: Path | None = None,
    clientappio_port: int,
    log_path: Path,
    pid_file: Path | None = None,
    max_wait_time: float | None = None,
    env: Mapping[str, str] | None = None,
    on_line: Callable[[str], None] | None = None,
) -> ManagedProcess:
    """Start ``flower-supernode`` connecting to ``superlink_address`` (``host:port``).

    ``node_config`` reaches the ClientApp as ``context.node_config``; values are written as
    TOML (see :func:`format_config_args`). ``root_certificates=None`` means ``--insecure``.
    ``auth_private_key`` is the key from :func:`create_supernode_keys` whose public half was
    registered. ``clientappio_port`` is the SuperNode's own local API port (one per SuperNode on a
    machine). ``max_wait_time`` bounds how long it keeps retrying an unreachable SuperLink
    (default: forever). Nothing secret is put on the command line (argv is world-readable in
    ``/proc``): pass secrets in ``env``. The PID file defaults to ``log_path`` with ``.pid``.
    ``on_line`` sees every line of its output (see :func:`start_process`).
    """
    command = [flower_executable("flower-supernode"), "--superlink", superlink_address]
    if root_certificates is None:
        command.append("--insecure")
    else:
        command += ["--root-certificates", str(Path(root_certificates).resolve())]
    if auth_private_key is not None:
        command += ["--auth-supernode-private-key", str(Path(auth_private_key).resolve())]
    command += ["--host", "127.0.0.1", "--port", str(clientappio_port)]
    if node_config:
        command += ["--node-config", format_config_args(node_config)]
    if max_wait_time is not None:
        command += ["--max-wait-time", f"{max_wait_time:g}"]
    log_path = Path(log_path)
    return start_process(
        command,
        log_path=log_path,
        pid_file=Path(pid_file) if pid_file is not None else log_path.with_suffix(".pid"),
        env=flower_env(env),
        on_line=on_line,
    )


def format_config_args(config: Mapping[str, ConfigValue]) -> str:
    """Write ``config`` as the ``k=v k2=v2`` string of ``--node-config`` and ``--run-config``.

    Flower splits that string with a regular expression (a value is ``'...'``, ``"..."`` or a run
    of non-spaces) and reads each pair as TOML, so strings are quoted as TOML literal strings
    (``'...'``, no escapes) or, when they contain a single quote, as basic strings. A string with
    both quote kinds, a key that is not a bare TOML key, or another value type cannot pass
    through intact: :class:`ConfigError`.
    """
    parts = []
    for key, value in config.items():
        if not _BARE_KEY.fullmatch(key):
            raise ConfigError(f"config key {key!r}: use letters, digits, '-' and '_' only")
        parts.append(f"{key}={_toml_value(key, value)}")
    return " ".join(parts)


def _toml_value(key: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # 'inf', '-inf', 'nan' and '1e+100' are TOML floats too
    if not isinstance(value, str):
        raise ConfigError(f"config {key}: {type(value).__name__} values are not supported")
    if "'" not in value and not any(ord(c) < 32 or ord(c) == 127 for c in value):
        return f"'{value}'"
    if '"' not in value:
        return json.dumps(value, ensure_ascii=False)  # a valid TOML basic string
    raise ConfigError(f"config {key}: a string cannot hold both ' and \" quotes here")


# --------------------------------------------------------------------------------------------------
# The flwr CLI, with a private FLWR_HOME


@dataclass(frozen=True)
class FlwrConnection:
    """A SuperLink connection for the ``flwr`` CLI: a name in ``FLWR_HOME/config.toml``.

    ``root_certificates=None`` means an insecure (plain HTTP) connection.
    """

    flwr_home: Path
    name: str
    address: str
    root_certificates: Path | None


@dataclass(frozen=True)
class NodeStatus:
    """One SuperNode as ``flwr supernode list`` reports it.

    ``status`` is Flower's: ``registered`` (key known, never connected), ``online``, ``offline``
    or ``unregistered``.
    """

    node_id: int
    status: str
    owner: str


def write_flwr_connection(
    flwr_home: Path,
    name: str,
    address: str,
    root_certificates: Path | None,
    *,
    default: bool = True,
) -> FlwrConnection:
    """Add (or replace) connection ``name`` in ``flwr_home/config.toml``; return it.

    Other entries in that file are kept. fedchain gives ``flwr`` its own ``FLWR_HOME`` so that a
    user's ``~/.flwr`` is never read or changed, and so the ``local`` connection (which would
    start a SuperLink nothing stops) is not the default.
    """
    if not _BARE_KEY.fullmatch(name):
        raise ConfigError(f"connection name {name!r}: use letters, digits, '-' and '_' only")
    flwr_home = Path(flwr_home).resolve()
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    try:
        config = tomllib.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the flwr configuration: {exc}") from exc
    superlink = config.setdefault("superlink", {})
    entry: dict[str, str | bool] = {"address": address}
    if root_certificates is None:
        entry["insecure"] = True
    else:
        entry["root-certificates"] = str(Path(root_certificates).resolve())
    superlink[name] = entry
    if default:
        superlink["default"] = name
    _write_file(path, tomli_w.dumps(config).encode(), 0o644)
    ca = None if root_certificates is None else Path(root_certificates).resolve()
    return FlwrConnection(flwr_home, name, address, ca)


def run_flwr(
    connection: FlwrConnection,
    arguments: Sequence[str],
    *,
    timeout: float = FLWR_CLI_TIMEOUT_S,
    cwd: Path | None = None,
) -> dict[str, object]:
    """Run ``flwr ARGUMENTS... CONNECTION --format json`` and return its JSON answer.

    ``arguments`` are the subcommand and its positional arguments/options (the connection name
    and ``--format json`` are appended). A failure (non-zero exit, ``"success": false``, no JSON,
    or ``timeout``) is a :class:`DeployError` carrying Flower's message.
    """
    command = [flower_executable("flwr"), *arguments, connection.name, "--format", "json"]
    env = flower_env(
        {"FLWR_HOME": str(connection.flwr_home), "NO_COLOR": "1", "COLUMNS": "200", "TERM": "dumb"}
    )
    what = f"flwr {' '.join(arguments[:2])}"
    try:
        result = subprocess.run(  # noqa: S603 - argv list, no shell
            command,
            capture_output=True,
            text=True,
            env=env,
            cwd=cwd,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise DeployError(f"{what}: no answer within {timeout:g} s") from exc
    answer = _parse_json_answer(result.stdout)
    if result.returncode != 0 or answer is None or answer.get("success") is not True:
        detail = str(answer.get("error-message", "")) if answer is not None else ""
        detail = _clean_cli_message(detail or result.stdout + "\n" + result.stderr)
        status = f" (exit {result.returncode})" if result.returncode != 0 else ""
        raise DeployError(f"{what} failed{status}: {detail or 'no output'}")
    return answer


def _clean_cli_message(text: str) -> str:
    """Flower's error text without its progress chatter, on one line, at most 2000 characters."""
    lines = [line.strip() for line in text.splitlines()]
    kept = [line for line in lines if line and not line.startswith(("Using SuperLink", "Stopping"))]
    return " ".join(kept)[-2000:]


def _parse_json_answer(stdout: str) -> dict[str, object] | None:
    start = stdout.find("{")
    if start < 0:
        return None
    try:
        answer = json.loads(stdout[start:])
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


def register_supernode(connection: FlwrConnection, public_key: Path) -> int:
    """Register a SuperNode's public key (``flwr supernode register``); return its node id.

    Only with a SuperLink started with ``supernode_auth``; a SuperNode holding the matching
    private key may then connect, and keeps this node id across reconnects.
    """
    answer = run_flwr(connection, ["supernode", "register", str(Path(public_key).resolve())])
    return _as_int(answer.get("node-id"), "flwr supernode register: node-id")


def unregister_supernode(connection: FlwrConnection, node_id: int) -> None:
    """Remove a registered SuperNode; its key is refused from then on."""
    run_flwr(connection, ["supernode", "unregister", str(node_id)])


def list_supernodes(connection: FlwrConnection) -> list[NodeStatus]:
    """The SuperNodes the SuperLink knows (``flwr supernode list``), oldest first."""
    answer = run_flwr(connection, ["supernode", "list"])
    nodes = answer.get("nodes")
    if not isinstance(nodes, list):
        raise DeployError(f"flwr supernode list: unexpected answer {answer!r}")
    return [
        NodeStatus(
            node_id=_as_int(node.get("node-id"), "node-id"),
            status=str(node.get("status")),
            owner=str(node.get("owner-name")),
        )
        for node in nodes
        if isinstance(node, dict)
    ]


def wait_supernode_status(
    connection: FlwrConnection, node_id: int, status: str = "online", timeout: float = 60.0
) -> None:
    """Poll ``flwr supernode list`` (each call takes about 2 s) until ``node_id`` has ``status``.

    Raises :class:`DeployError` naming the last status seen after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    seen = "not listed"
    while True:
        nodes = {node.node_id: node.status for node in list_supernodes(connection)}
        seen = nodes.get(node_id, "not listed")
        if seen == status:
            return
        if time.monotonic() >= deadline:
            raise DeployError(
                f"SuperNode {node_id} is {seen}, not {status}, after {timeout:g} s; "
                "see the SuperNode's log"
            )
        time.sleep(0.5)


def submit_run(
    app_dir: Path,
    connection: FlwrConnection,
    run_config: Mapping[str, ConfigValue] | None = None,
    *,
    timeout: float = 120.0,
) -> int:
    """Submit the Flower app in ``app_dir`` (``flwr run APP_DIR CONNECTION``); return the run id.

    ``flwr`` bundles the app's code and config files (a FAB) and returns once the SuperLink has
    accepted the run. ``run_config`` overrides keys of ``[tool.flwr.app.config]`` (only existing
    keys may be overridden).
    """
    arguments = ["run", str(Path(app_dir).resolve())]
    if run_config:
        arguments += ["--run-config", format_config_args(run_config)]
    answer = run_flwr(connection, arguments, timeout=timeout, cwd=Path(app_dir))
    return _as_int(answer.get("run-id"), "flwr run: run-id")


def list_runs(connection: FlwrConnection) -> list[dict[str, object]]:
    """The runs the SuperLink knows, as ``flwr list`` reports them (``run-id``, ``status``, ...)."""
    answer = run_flwr(connection, ["list"])
    runs = answer.get("runs")
    if not isinstance(runs, list):
        raise DeployError(f"flwr list: unexpected answer {answer!r}")
    return [run for run in runs if isinstance(run, dict)]


def run_status(connection: FlwrConnection, run_id: int) -> str:
    """Flower's status of run ``run_id``: ``pending``, ``starting``, ``running`` or
    ``finished:completed`` / ``finished:failed`` / ``finished:stopped``."""
    answer = run_flwr(connection, ["list", "--run-id", str(run_id)])
    runs = answer.get("runs")
    if not isinstance(runs, list) or len(runs) != 1 or not isinstance(runs[0], dict):
        raise DeployError(f"flwr list --run-id {run_id}: unexpected answer {answer!r}")
    return str(runs[0].get("status"))


def stop_run(connection: FlwrConnection, run_id: int) -> None:
    """Ask the SuperLink to stop run ``run_id`` (``flwr stop``)."""
    run_flwr(connection, ["stop", str(run_id)])


def _as_int(value: object, what: str) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise DeployError(f"{what}: expected an integer, got {value!r}") from None
