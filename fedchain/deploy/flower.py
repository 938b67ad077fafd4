"""Flower's own processes: where its executables are, their environment, and their arguments.

Facts about Flower 1.41 this module relies on (checked against ``site-packages/flwr``):

* The SuperLink serves the Fleet, Control and ServerAppIo ("Runtime") APIs on **one** HTTP(S)
  port (``--host``/``--port``; the old ``--fleet-api-address`` and ``--control-api-address`` are
  deprecated, ``--serverappio-api-address`` is rejected). ``GET /health`` answers on that port,
  over HTTPS when the SuperLink has certificates. SuperNodes, ``flwr`` and the SuperLink's own
  SuperExec all use that one address.
* The SuperLink starts ``flower-superexec`` by bare name from ``PATH``: we put this interpreter's
  ``bin`` directory first on ``PATH``.
* TLS and SuperNode authentication: see :mod:`fedchain.deploy.certs`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from fedchain.deploy.certs import CertPaths
from fedchain.deploy.logs import tail
from fedchain.deploy.processes import ManagedProcess, start_process
from fedchain.errors import ConfigError, DeployError
from fedchain.runs.layout import (
    SUPERLINK_DB_FILENAME,
    SUPERLINK_LOG_FILENAME,
    SUPERLINK_PID_FILENAME,
)

__all__ = [
    "BARE_KEY",
    "ConfigValue",
    "flower_env",
    "flower_executable",
    "flower_exit_code",
    "format_config_args",
    "start_superlink",
    "start_supernode",
]

BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")  # a bare TOML key: config keys, connection names


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
def flower_exit_code(process: ManagedProcess) -> int | None:
    """The last Flower exit code in the process's log (``Exit Code: N``), or None.

    Flower processes exit with status 1 on any error and log the precise reason as an exit code
    (https://flower.ai/docs/framework/ref-exit-codes/): e.g. 305 for a SuperNode the SuperLink
    refused (an unregistered authentication key shows as 305 with ``[code: 2004] Failed to
    activate SuperNode``).
    """
    codes = re.findall(r"Exit Code: (\d+)", tail(process.log_path, 200))
    return int(codes[-1]) if codes else None


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

    ``certs=None`` means ``--insecure`` (plain HTTP; loopback tests only). ``supernode_auth`` turns
    on ``--enable-supernode-auth``: only SuperNodes whose public key was registered with
    :func:`~fedchain.deploy.flwr_cli.register_supernode` may connect; Flower requires TLS for it.
    With ``persistent`` the link state (runs, registered nodes) lives in ``state_dir/superlink.db``
    and survives a restart. Logs go to ``state_dir/superlink.log``, the PID file is
    ``state_dir/superlink.pid`` (names: :mod:`fedchain.runs.layout`). Call
    :func:`~fedchain.deploy.processes.wait_healthy` before using it.
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
        command += ["--database", str((state_dir / SUPERLINK_DB_FILENAME).resolve())]
    command.append("--disable-runtime-dependency-installation")
    return start_process(
        command,
        log_path=state_dir / SUPERLINK_LOG_FILENAME,
        pid_file=state_dir / SUPERLINK_PID_FILENAME,
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
    isolation: str = "subprocess",
) -> ManagedProcess:
    """Start ``flower-supernode`` connecting to ``superlink_address`` (``host:port``).

    ``node_config`` reaches the ClientApp as ``context.node_config``; values are written as TOML
    (see :func:`format_config_args`). ``root_certificates=None`` means ``--insecure``.
    ``auth_private_key`` is the key from :func:`~fedchain.deploy.certs.create_supernode_keys` whose
    public half was registered. ``clientappio_port`` is the SuperNode's own local API port (one per
    SuperNode on a machine). ``max_wait_time`` bounds how long it keeps retrying an unreachable
    SuperLink (default: forever). Nothing secret is put on the command line (argv is world-readable
    in ``/proc``): pass secrets in ``env``. The PID file defaults to ``log_path`` with ``.pid``.
    ``on_line`` sees every line of its output (see
    :func:`~fedchain.deploy.processes.start_process`). With ``isolation="process"`` it starts no
    ClientApp itself: an executor claims its tasks on ``127.0.0.1:clientappio_port``
    (``fedchain join`` runs :class:`~fedchain.deploy.gate.ApprovingExecutor`).
    """
    command = [flower_executable("flower-supernode"), "--superlink", superlink_address]
    if root_certificates is None:
        command.append("--insecure")
    else:
        command += ["--root-certificates", str(Path(root_certificates).resolve())]
    if auth_private_key is not None:
        command += ["--auth-supernode-private-key", str(Path(auth_private_key).resolve())]
    command += ["--host", "127.0.0.1", "--port", str(clientappio_port)]
    command += ["--isolation", isolation]
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
        if not BARE_KEY.fullmatch(key):
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
