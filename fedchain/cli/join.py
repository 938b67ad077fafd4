"""``fedchain join``: take part in a federation as a data holder (runs a Flower SuperNode).

Before anything starts, the dataset is decrypted and the identity unlocked once here, so a wrong
key or passphrase is one clear error, not a failure inside every round. The node runs only the
app the holder approved (the one its registration signed: :mod:`fedchain.deploy.app`): the
SuperNode runs with ``--isolation process`` and an environment without any secret, and this
process claims its tasks (:class:`fedchain.deploy.gate.ApprovingExecutor`), refusing any other
app before anything is decrypted for it and handing the secrets to approved ClientApp processes
over a pipe, never on a command line or in an environment. The holder's own
copy of the ledger (the blocks it replayed before signing, and the last final block it saw) is
kept beside the dataset (``NAME.ledger/``, :func:`fedchain.runs.layout.holder_ledger_dir`;
``--node-config replica-dir=DIR`` puts it elsewhere, and nothing removes it), so a restarted node
cannot be rewound. ``--federation-id`` (the id the holder registered under) pins the federation:
the node refuses a ledger whose genesis does not give that id or does not hold the holder's own
registration, on first contact too.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedchain.cli.common import PASSPHRASE_ENV, console, read_passphrase
from fedchain.cli.federation import _parse_set
from fedchain.crypto import identity
from fedchain.data import datafile, keys
from fedchain.deploy import app as app_bundle
from fedchain.deploy import flower, flwr_cli, gate, logs, processes
from fedchain.errors import ConfigError, DeployError
from fedchain.ledger.builder import sign_refusal
from fedchain.ledger.codec import encode
from fedchain.ledger.objects import REFUSE_APP
from fedchain.ledger.show import printable
from fedchain.runs import approval
from fedchain.runs.layout import APPROVED_APP_FILENAME, CA_CERT_FILENAME, holder_ledger_dir
from fedchain.runs.registration import parse_federation_id

IDENTITY_PASSPHRASE_ENV = "FEDCHAIN_IDENTITY_PASSPHRASE"  # noqa: S105 - a variable's name
FEDERATION_ID_KEY = "federation-id"  # the ClientApp's node config key (clients/client_app.py)
MAX_ROUNDS_KEY = "max-rounds"  # the holder's limits, node config keys its ClientApp enforces
MAX_LOCAL_EPOCHS_KEY = "max-local-epochs"  # (clients/client_app.py: check_agreed_use)


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
    federation_id: Annotated[
        str | None,
        typer.Option(
            "--federation-id",
            help="The federation id you registered under (as given to `fedchain register`): "
            "your node refuses any other federation's ledger.",
        ),
    ] = None,
    data_key: Annotated[
        Path | None,
        typer.Option("--data-key", help="The dataset's key file; without it, its passphrase."),
    ] = None,
    root_cert: Annotated[
        Path | None,
        typer.Option(
            "--root-cert", help=f"The coordinator's CA certificate ({CA_CERT_FILENAME}) for TLS."
        ),
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
    max_rounds: Annotated[
        int | None,
        typer.Option(
            min=1, help="Train in no round past this one: a later round is refused, unread."
        ),
    ] = None,
    max_local_epochs: Annotated[
        int | None,
        typer.Option(min=1, help="Train at most this many local epochs a round: more is refused."),
    ] = None,
    base_weights: Annotated[
        Path | None,
        typer.Option(
            help="Your copy of the base model a fine-tuning federation starts from (.safetensors "
            "or .pth): your node checks it against the genesis's base hash before it trains, and "
            "refuses another."
        ),
    ] = None,
    approve: Annotated[
        str | None,
        typer.Option(
            "--approve",
            help="Approve another app to run on your data (an upgrade): its .fab file (what "
            "changed is shown) or its digest. You sign the approval; your node then runs that "
            "app and no other.",
        ),
    ] = None,
) -> None:
    """Join a federation: check your data and identity, then run a Flower SuperNode that
    trains on your data with your identity until the federation's run has finished (or you
    press Ctrl-C).

    The console shows one line per round this node trains in, and Flower's warnings and
    errors; the SuperNode's full log (without colour codes) goes to --log.
    """
    address = _check_address(coordinator)
    federation = (
        None if federation_id is None else parse_federation_id(federation_id, "--federation-id")
    )
    if insecure == (root_cert is not None):
        raise ConfigError("give --root-cert CA.crt (TLS), or --insecure for a coordinator without")
    if insecure and auth_key is not None:
        raise ConfigError("--auth-key needs TLS: give --root-cert instead of --insecure")
    config: dict[str, Any] = {
        "data-path": str(data.resolve()),
        "identity-path": str(identity_path.resolve()),
        # the holder's own copy of the ledger (what it replayed and its checkpoint)
        "replica-dir": str(holder_ledger_dir(data.resolve())),
    }
    # Unlock everything once, here: wrong keys and passphrases fail now, clearly.
    unlock: keys.Unlock
    if data_key is not None:
        unlock = keys.load_key_file(data_key)
    else:
        unlock = keys.Passphrase(read_passphrase(passphrase_env, confirm=False, what=str(data)))
    with console.status(f"decrypting {data}…"):
        dataset = datafile.load_dataset(data, unlock)
    passphrase = None
    if identity.is_identity_encrypted(identity_path):
        env_name = identity_passphrase_env
        if env_name not in os.environ and data_key is not None and passphrase_env in os.environ:
            env_name = passphrase_env  # one secret in the environment: the identity's
        passphrase = read_passphrase(env_name, confirm=False, what=f"the identity {identity_path}")
    key = identity.load_identity(identity_path, passphrase)
    for name in {passphrase_env, identity_passphrase_env, PASSPHRASE_ENV, IDENTITY_PASSPHRASE_ENV}:
        os.environ.pop(name, None)  # read once: no process started from here inherits them
    if federation is None:  # after the data and identity checks: their errors come first
        raise ConfigError(
            "give --federation-id ID: the id of the federation you registered for (the one "
            "you gave `fedchain register`); your node refuses any other federation's ledger"
        )
    # the federation the holder registered for: its node refuses any other genesis
    config[FEDERATION_ID_KEY] = federation.hex()
    # the holder's own limits, which its approved ClientApp enforces (clients/client_app.py)
    if max_rounds is not None:
        config[MAX_ROUNDS_KEY] = max_rounds
    if max_local_epochs is not None:
        config[MAX_LOCAL_EPOCHS_KEY] = max_local_epochs
    if base_weights is not None:
        if not base_weights.is_file():
            raise ConfigError(f"{base_weights}: no such base weights file (--base-weights)")
        config["base-weights"] = str(base_weights.resolve())
    config.update(_parse_set(node_config or []))
    for name in ("replica-dir", FEDERATION_ID_KEY):
        if not str(config.get(name, "")):
            raise ConfigError(
                f"--node-config {name} may change it, not remove it: a holder always keeps its "
                "copy of the ledger and its federation id, so a restart never trusts a new genesis"
            )
    if str(config[FEDERATION_ID_KEY]) != federation.hex():
        raise ConfigError("--node-config federation-id differs from --federation-id")
    public = identity.public_key_bytes(key)
    console.print(
        f"data {data}: {len(dataset)} examples; identity {identity.fingerprint(public)}; "
        f"ledger copy {config['replica-dir']}",
        markup=False,
    )
    limits = [
        f"{value} {what}"
        for value, what in ((max_rounds, "rounds"), (max_local_epochs, "local epochs a round"))
        if value is not None
    ]
    if limits:
        console.print(
            f"your limits: at most {' and '.join(limits)}; your node refuses a round over them",
            markup=False,
        )
    approved = _approved_app(key, federation, Path(str(config["replica-dir"])), approve).hex()
    log_path = log or Path(f"{data.stem}.supernode.log")
    progress = SupernodeProgress()
    runtime_port = processes.free_port()
    with tempfile.TemporaryDirectory(prefix="fedchain-join-") as home:
        # private to this node (mode 0700): only approved apps are ever installed here
        flwr_home = Path(home) / "node"
        flwr_home.mkdir(mode=0o700)
        process = flower.start_supernode(
            superlink_address=address,
            node_config=config,
            root_certificates=root_cert,
            auth_private_key=auth_key,
            clientappio_port=runtime_port,
            log_path=log_path,
            max_wait_time=max_wait,
            env={"FLWR_HOME": str(flwr_home)},
            on_line=progress.on_line,
            isolation="process",
        )
        executor = gate.ApprovingExecutor(
            f"127.0.0.1:{runtime_port}",
            [approved],
            gate.encode_secrets(unlock, passphrase),
            flwr_home=flwr_home,
            log_path=log_path,
            holder=identity.fingerprint(public),
            on_line=progress.on_line,
            on_decision=progress.on_decision,
            sign=functools.partial(_sign_app_refusal, key),
        )
        executor.start()
        console.print(
            f"SuperNode started (pid {process.pid}), connecting to {address}; log {log_path}. "
            "Ctrl-C stops it.",
            markup=False,
        )
        connection = flwr_cli.write_flwr_connection(Path(home), "federation", address, root_cert)
        try:
            _follow(process, progress, connection, executor)
        finally:
            executor.stop()


def _sign_app_refusal(
    key: Ed25519PrivateKey, round_: int, genesis_hash: bytes, detail: str
) -> bytes:
    """The holder's signed refusal of an app it did not approve (the gate's, spec §9.10)."""
    return encode(sign_refusal(key, genesis_hash, round=round_, code=REFUSE_APP, detail=detail))


def _approved_app(
    key: Ed25519PrivateKey, federation: bytes, ledger_dir: Path, approve: str | None
) -> bytes:
    """The app this node runs: the holder's latest signed approval, else the one its
    registration signed (its fedchain's own); with ``--approve``, a new approval is shown
    (what changed), signed and kept first."""
    public = identity.public_key_bytes(key)
    path = ledger_dir / APPROVED_APP_FILENAME
    entries = approval.read_approvals(path, federation, public)
    own = app_bundle.app_digest()
    current = approval.approved_app(entries, own)
    if approve is not None:
        new, fab = approval.read_new_app(approve)
        if new != current:
            old_fab = app_bundle.build_app_fab() if current == own else None
            console.print(f"approving app {new.hex()}, replacing {current.hex()}:", markup=False)
            for line in approval.describe_change(old_fab, fab):
                console.print(f"  {line}", markup=False, highlight=False)
            version = app_bundle.fedchain_version()
            sequence = len(entries) + 1
            entries.append(approval.sign_approval(key, federation, new, current, sequence, version))
            approval.write_approvals(path, entries)
            console.print(
                f"signed your approval into {path} (no secret: give it to the coordinator); "
                "your node now runs this app and no other",
                markup=False,
            )
            current = new
    how = "your signed approval" if entries else f"fedchain {app_bundle.fedchain_version()}'s own"
    console.print(
        f"approved app {current.hex()} ({how}): your node runs no other app on your data",
        markup=False,
    )
    return current


@dataclass
class SupernodeProgress:
    """What the SuperNode's log says: one console line per round this node takes part in,
    Flower's warnings and errors, and the Flower run the node last served.

    A Flower round is named by the message's group id where the coordinator sets one
    (``[RUN r, ROUND k]``); otherwise rounds are counted per run, as the node received them.
    Fed by the thread that copies the SuperNode's output
    (:func:`fedchain.deploy.processes.start_process`).
    """

    run_id: int | None = None
    round_label: str | None = None
    rounds_in_run: int = 0
    rounds_done: int = 0
    last_line: float = field(default_factory=time.monotonic)
    started: float = field(default_factory=time.monotonic)
    printed: list[str] = field(default_factory=list)
    in_problem: bool = False  # the last leveled line was a warning or an error
    refused_runs: set[int] = field(default_factory=set)  # runs of an app the holder refused

    def on_decision(self, decision: gate.Decision) -> None:
        """The approving executor's decision on a task: a refusal gets its own line (and its
        run's replies are not rounds trained)."""
        if decision.ran or decision.run_id in self.refused_runs:
            return
        self.refused_runs.add(decision.run_id)
        self._print(
            f"refused Flower run {decision.run_id}: the coordinator submitted app "
            f"{decision.fab_hash}, not the one you approved; nothing was decrypted for it and "
            "the coordinator was told why"
        )

    def _print(self, text: str) -> None:
        self.printed.append(text)
        console.print(text, markup=False, highlight=False)

    def on_line(self, line: str) -> None:
        self.last_line = time.monotonic()
        level, message = logs.parse_flower_log_line(line)
        text = self.describe(level, message)
        if text is not None:
            self._print(text)

    def describe(self, level: str | None, message: str) -> str | None:
        """The console line for one log line, or None (most of the log stays in the file)."""
        if level in ("WARNING", "ERROR", "CRITICAL"):
            self.in_problem = True
            return f"{level.lower()}: {printable(message)}"
        if level is None:  # a problem's further lines (Flower's explanation, a traceback)
            return f"  {printable(message)}" if self.in_problem and message.strip() else None
        self.in_problem = False
        if level != "INFO":
            return None
        if match := _RUN_HEADER.fullmatch(message):
            run_id = int(match.group(1))
            if run_id != self.run_id:
                self.run_id, self.rounds_in_run = run_id, 0
            self.round_label = match.group(2)
        elif match := _NODE_ID.fullmatch(message):
            return f"connected to the coordinator (SuperNode id {match.group(1)})"
        elif _RECEIVING_TRAIN.match(message):
            self.rounds_in_run += 1
            self.started = time.monotonic()
        elif _SENDING_TRAIN.match(message):
            if self.run_id in self.refused_runs:
                return None  # the refusal's error reply, not a round trained
            self.rounds_done += 1
            label = self.round_label or str(self.rounds_in_run)
            seconds = time.monotonic() - self.started
            return (
                f"round {label}: trained on your data, signed update sent "
                f"({seconds:.1f} s; Flower run {self.run_id})"
            )
        return None


_RUN_HEADER = re.compile(r"\[RUN (\d+)(?:, ROUND (\S+))?\]")
_NODE_ID = re.compile(r"SuperNode ID: (\d+)")
_RECEIVING_TRAIN = re.compile(r"Receiving: train\b")
_SENDING_TRAIN = re.compile(r"Sending: train\b")
STATUS_POLL_S = 15.0
"""How often, once the node has been idle that long, join asks the coordinator whether the
Flower run it served has finished (``flwr list``: a SuperNode itself is never told)."""


def _follow(
    process: processes.ManagedProcess,
    progress: SupernodeProgress,
    connection: flwr_cli.FlwrConnection,
    executor: gate.ApprovingExecutor,
) -> None:
    """Wait for the SuperNode; stop it and exit 0 once the federation's run has completed.

    A SuperNode serves runs for ever: Flower 1.41 never tells it that a run ended (its loop in
    ``flwr/supernode/start_client_internal.py`` only pulls messages). So join asks the
    coordinator's SuperLink (``flwr list --run-id``, the Control API on the address it already
    dials) whenever the node has been idle for :data:`STATUS_POLL_S`. Only ``finished:completed``
    ends it: a run that failed or was stopped may be a coordinator about to resume. If the
    coordinator does not answer, join says so once and asks less often (Ctrl-C still stops).
    Ctrl-C or SIGTERM stops the SuperNode (and its children).
    """

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    next_ask, warned = 0.0, False
    try:
        while processes.is_running(process):
            time.sleep(0.5)
            now = time.monotonic()
            idle = now - progress.last_line >= STATUS_POLL_S
            if not (idle and now >= next_ask and progress.run_id and progress.rounds_done):
                continue
            next_ask = now + STATUS_POLL_S
            try:
                status = flwr_cli.run_status(connection, progress.run_id)
            except DeployError as e:
                next_ask = now + 4 * STATUS_POLL_S  # a coordinator restarting, or one that
                if not warned:  # keeps its Control API to itself: ask less often
                    warned = True
                    console.print(
                        f"cannot ask the coordinator whether run {progress.run_id} has "
                        f"finished ({printable(e)}); asking again later (Ctrl-C stops)",
                        markup=False,
                    )
                continue
            if status == "finished:completed":
                console.print(
                    f"the federation's run {progress.run_id} has finished "
                    f"({progress.rounds_done} round(s) trained here); stopping the SuperNode"
                )
                executor.stop()  # its ClientApps first: they answer through the SuperNode
                processes.stop_process(process, timeout=10.0)
                return
        status_code = processes.wait_exit(process, 5.0)
        flower_code = flower.flower_exit_code(process)
        reason = f", Flower exit code {flower_code}" if flower_code is not None else ""
        console.print(f"the SuperNode exited (status {status_code}{reason})")
        raise typer.Exit(1 if status_code or flower_code else 0)
    except KeyboardInterrupt:
        console.print("stopping the SuperNode…")
        executor.stop()
        processes.stop_process(process, timeout=10.0)
    finally:
        signal.signal(signal.SIGTERM, previous)
