"""``fedchain join``: take part in a federation as a data holder (runs a Flower SuperNode).

Before anything starts, the dataset is decrypted and the identity unlocked once here, so a wrong
key or passphrase is one clear error, not a failure inside every round. Secrets never go on a
command line: passphrases reach the SuperNode (and the ClientApp processes it starts) through
its environment, and the node config names the variables, never the values.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer

from fedchain import datafile, deploy, identity
from fedchain.cli.common import PASSPHRASE_ENV, console, read_passphrase
from fedchain.cli.federation import _parse_set
from fedchain.errors import ConfigError

IDENTITY_PASSPHRASE_ENV = "FEDCHAIN_IDENTITY_PASSPHRASE"  # noqa: S105 - a variable's name


def _check_address(address: str) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--coordinator {address!r}: expected HOST:PORT")
    return address


def join(
    coordinator: Annotated[
        str, typer.Option("--coordinator", "-c", help="The coordinator's HOST:PORT.")
    ],
    data: Annotated[Path, typer.Option("--data", "-d", help="Your encrypted dataset (.fcd).")],
    identity_path: Annotated[
        Path, typer.Option("--identity", "-i", help="Your identity key (the one you registered).")
    ],
    data_key: Annotated[
        Path | None,
        typer.Option("--data-key", help="The dataset's key file; without it, its passphrase."),
    ] = None,
    root_cert: Annotated[
        Path | None,
        typer.Option("--root-cert", help="The coordinator's CA certificate (ca.crt) for TLS."),
    ] = None,
    auth_key: Annotated[
        Path | None,
        typer.Option(
            "--auth-key",
            help="Your SuperNode authentication private key (`fedchain keygen --supernode`).",
        ),
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="No TLS: only for a coordinator started so.")
    ] = False,
    log: Annotated[
        Path | None, typer.Option(help="SuperNode log file (default: NAME.supernode.log here).")
    ] = None,
    passphrase_env: Annotated[
        str, typer.Option("--passphrase-env", help="Variable holding the dataset's passphrase.")
    ] = PASSPHRASE_ENV,
    identity_passphrase_env: Annotated[
        str,
        typer.Option(
            "--identity-passphrase-env", help="Variable holding the identity's passphrase."
        ),
    ] = IDENTITY_PASSPHRASE_ENV,
    node_config: Annotated[
        list[str] | None,
        typer.Option("--node-config", help="Extra node config KEY=VALUE for the ClientApp."),
    ] = None,
    max_wait: Annotated[
        float | None,
        typer.Option(help="Give up after this many seconds without reaching the coordinator."),
    ] = None,
) -> None:
    """Join a federation: check your data and identity, then run a Flower SuperNode that
    trains on your data with your identity until you press Ctrl-C."""
    address = _check_address(coordinator)
    if insecure == (root_cert is not None):
        raise ConfigError("give --root-cert CA.crt (TLS), or --insecure for a coordinator without")
    if insecure and auth_key is not None:
        raise ConfigError("--auth-key needs TLS: give --root-cert instead of --insecure")
    env: dict[str, str] = {}
    config: dict[str, Any] = {
        "data-path": str(data.resolve()),
        "identity-path": str(identity_path.resolve()),
    }
    # Unlock everything once, here: wrong keys and passphrases fail now, clearly.
    unlock: datafile.Unlock
    if data_key is not None:
        unlock = datafile.load_key_file(data_key)
        config["data-key-path"] = str(data_key.resolve())
    else:
        secret = read_passphrase(passphrase_env, confirm=False, what=str(data))
        unlock = datafile.Passphrase(secret)
        env[passphrase_env] = secret.decode()
        config["passphrase-env"] = passphrase_env
    with console.status(f"decrypting {data}…"):
        dataset = datafile.load_dataset(data, unlock)
    passphrase = None
    if identity.is_identity_encrypted(identity_path):
        env_name = identity_passphrase_env
        if env_name not in os.environ and data_key is not None and passphrase_env in os.environ:
            env_name = passphrase_env  # one secret in the environment: the identity's
        passphrase = read_passphrase(env_name, confirm=False, what=f"the identity {identity_path}")
        env[env_name] = passphrase.decode()
        config["identity-passphrase-env"] = env_name
    key = identity.load_identity(identity_path, passphrase)
    config.update(_parse_set(node_config or []))
    public = identity.public_key_bytes(key)
    console.print(f"data {data}: {len(dataset)} examples; identity {identity.fingerprint(public)}")
    log_path = log or Path(f"{data.stem}.supernode.log")
    process = deploy.start_supernode(
        superlink_address=address,
        node_config=config,
        root_certificates=root_cert,
        auth_private_key=auth_key,
        clientappio_port=deploy.free_port(),
        log_path=log_path,
        max_wait_time=max_wait,
        env=env,
    )
    console.print(
        f"SuperNode started (pid {process.pid}), connecting to {address}; log {log_path}. "
        "Ctrl-C stops it."
    )
    _follow(process)


def _follow(process: deploy.ManagedProcess) -> None:
    """Echo the SuperNode's log until it exits; Ctrl-C or SIGTERM stops it (and its children)."""

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    offset = process.log_path.stat().st_size if process.log_path.exists() else 0
    try:
        while deploy.is_running(process):
            offset = _echo(process.log_path, offset)
            time.sleep(0.5)
        _echo(process.log_path, offset)
        status = deploy.wait_exit(process, 5.0)
        flower_code = deploy.flower_exit_code(process)
        reason = f", Flower exit code {flower_code}" if flower_code is not None else ""
        console.print(f"the SuperNode exited (status {status}{reason})")
        raise typer.Exit(1 if status or flower_code else 0)
    except KeyboardInterrupt:
        console.print("stopping the SuperNode…")
        deploy.stop_process(process, timeout=10.0)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _echo(path: Path, offset: int) -> int:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            chunk = f.read()
    except OSError:
        return offset
    if chunk:
        sys.stdout.write(chunk.decode("utf-8", errors="replace"))
        sys.stdout.flush()
    return offset + len(chunk)
