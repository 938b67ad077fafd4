"""The ``flwr`` CLI with a private ``FLWR_HOME``: connections, SuperNode keys, runs.

Each call runs ``flwr ... CONNECTION --format json`` and reads its JSON answer; a failure is a
:class:`~fedchain.errors.DeployError` carrying Flower's message. The user's ``~/.flwr`` is never
read or written.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from fedchain.deploy.flower import (
    BARE_KEY,
    ConfigValue,
    flower_env,
    flower_executable,
    format_config_args,
)
from fedchain.durable import write_atomically
from fedchain.errors import ConfigError, DeployError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "FLWR_CLI_TIMEOUT_S",
    "FlwrConnection",
    "NodeStatus",
    "list_runs",
    "list_supernodes",
    "register_supernode",
    "run_flwr",
    "run_status",
    "stop_run",
    "submit_run",
    "unregister_supernode",
    "wait_supernode_status",
    "write_flwr_connection",
]

FLWR_CLI_TIMEOUT_S = 60.0


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
    if not BARE_KEY.fullmatch(name):
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
    write_atomically(path, tomli_w.dumps(config).encode(), mode=0o644)
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
