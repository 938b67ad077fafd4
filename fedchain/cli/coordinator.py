"""``fedchain coordinator``: a federation's SuperLink and ServerApp (certs, start, status, stop),
and the holders' signed app approvals it records (approve).

``start`` creates the ledger on the first start (genesis = the registered participants) or
checks the existing one, starts Flower's SuperLink in the background (TLS and SuperNode
authentication on by default), registers each participant's SuperNode key, and submits the
ServerApp, which runs the rounds still to do (server/deployment.py). Everything it starts is
recorded in ``FED_DIR`` (PID file, logs, ``coordinator.json``), so ``status`` and ``stop`` work
from any terminal.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import time
import zipfile
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

import typer
from rich.table import Table

from fedchain.cli.common import console, make_app
from fedchain.crypto.identity import fingerprint
from fedchain.deploy import app as app_bundle
from fedchain.deploy import flower, flwr_cli, processes
from fedchain.deploy.certs import DEFAULT_HOSTS, CertPaths, create_test_certificates
from fedchain.durable import write_atomically
from fedchain.errors import ConfigError, DeployError, LedgerError
from fedchain.ledger.containers import LedgerState
from fedchain.ledger.derived import compute_federation_id
from fedchain.ledger.state import process_transaction
from fedchain.ledger.verify import verify_ledger
from fedchain.rounds.admission import admit_app_approvals, compute_reason
from fedchain.runs import approval
from fedchain.runs import federation as fed
from fedchain.runs.layout import (
    APP_DIRNAME,
    CA_CERT_FILENAME,
    CERTS_DIRNAME,
    COORDINATOR_STATE_FILENAME,
    FEDERATION_FILENAME,
    FLWR_HOME_DIRNAME,
    LEDGER_FILENAME,
    LOG_FILENAME,
    SERVER_CERT_FILENAME,
    SERVER_KEY_FILENAME,
    SUPERLINK_DIRNAME,
    SUPERLINK_PID_FILENAME,
    SUPERNODES_DIRNAME,
    run_dir_of,
    supernode_key_path,
)

app = make_app("Run a federation's coordinator: Flower SuperLink + fedchain ServerApp.")

FedDirArg = Annotated[
    Path, typer.Argument(help=f"The federation folder (holds {FEDERATION_FILENAME}).")
]
DEFAULT_PORT = 9092
CONNECTION = "fedchain"


def _certs(fed_dir: Path) -> CertPaths:
    certs_dir = fed_dir / CERTS_DIRNAME
    paths = CertPaths(
        certs_dir / CA_CERT_FILENAME,
        certs_dir / SERVER_CERT_FILENAME,
        certs_dir / SERVER_KEY_FILENAME,
    )
    for path in (paths.ca_cert, paths.server_cert, paths.server_key):
        if not path.exists():
            raise ConfigError(
                f"{path}: missing; create test certificates with `fedchain coordinator certs "
                f"{fed_dir}` (or put your own there), or run without TLS with --insecure"
            )
    return paths


def _read_state(fed_dir: Path) -> dict[str, Any]:
    path = fed_dir / COORDINATOR_STATE_FILENAME
    if not path.exists():
        return {}
    try:
        state = json.loads(path.read_text())
    except ValueError as e:
        raise ConfigError(f"{path}: unreadable ({e})") from None
    return state if isinstance(state, dict) else {}


def _write_state(fed_dir: Path, state: dict[str, Any]) -> None:
    write_atomically(
        fed_dir / COORDINATOR_STATE_FILENAME, (json.dumps(state, indent=1) + "\n").encode()
    )


def _connection(fed_dir: Path, state: dict[str, Any]) -> flwr_cli.FlwrConnection:
    ca = state.get("root-certificates")
    return flwr_cli.FlwrConnection(
        (fed_dir / FLWR_HOME_DIRNAME).resolve(),
        CONNECTION,
        str(state["address"]),
        Path(ca) if ca else None,
    )


@app.command()
def certs(
    fed_dir: FedDirArg,
    host: Annotated[
        list[str] | None,
        typer.Option(
            "--host",
            help="Host name or IP clients dial (repeat; 127.0.0.1 and localhost always included).",
        ),
    ] = None,
    days: Annotated[int, typer.Option(min=1, help="Validity in days.")] = 30,
    force: Annotated[bool, typer.Option("--force", help="Replace existing certificates.")] = False,
) -> None:
    """Create self-signed TLS certificates for testing: a CA (give ca.crt to every participant)
    and the SuperLink's certificate for the given hosts."""
    # Loopback always: `coordinator start` and `status` reach the SuperLink through it.
    hosts = tuple(dict.fromkeys([*(host or []), *DEFAULT_HOSTS]))
    paths = create_test_certificates(fed_dir / CERTS_DIRNAME, hosts, days, overwrite=force)
    console.print(f"CA certificate   {paths.ca_cert}  (give this file to every participant)")
    console.print(
        f"server cert/key  {paths.server_cert}, {paths.server_key} (for {', '.join(hosts)})"
    )


@app.command()
def start(
    fed_dir: FedDirArg,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=1, max=65535, help="Port for SuperNodes.")
    ] = DEFAULT_PORT,
    insecure: Annotated[
        bool,
        typer.Option("--insecure", help="No TLS (and so no SuperNode authentication): tests only."),
    ] = False,
    no_auth: Annotated[
        bool,
        typer.Option("--no-supernode-auth", help="Let any SuperNode connect (TLS stays on)."),
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the SuperLink.")] = 60.0,
    app_fab: Annotated[
        Path | None,
        typer.Option(
            "--app",
            help="Submit this app bundle (.fab) instead of your fedchain's own: the one the "
            "holders approved in an upgrade (`fedchain coordinator approve`).",
        ),
    ] = None,
) -> None:
    """Start the SuperLink in the background and submit the federation's ServerApp."""
    federation = fed.load_federation(fed_dir)
    fed.compute_run_config(federation)  # participants and settings are complete
    auth = not insecure and not no_auth
    if auth:
        missing = [p.name for p in federation.participants if not p.supernode_key]
        if missing:
            raise ConfigError(
                f"{', '.join(missing)}: registered without a SuperNode key; they must register "
                "again with --supernode-key, or start with --no-supernode-auth"
            )
    cert_paths = None if insecure else _certs(fed_dir)
    link_dir = fed_dir / SUPERLINK_DIRNAME
    running = processes.read_pid_file(link_dir / SUPERLINK_PID_FILENAME)
    if running is not None and processes.is_running(running):
        raise ConfigError(
            f"the coordinator is already running (pid {running.pid}); "
            f"`fedchain coordinator stop {fed_dir}` first"
        )

    with console.status("preparing the ledger…"):
        run_dir, config, created = fed.prepare_federation_run(federation)
        report = _verify(run_dir)
        bundle = _app_folder(fed_dir, app_fab)
    verb = "created" if created else "resuming"
    console.print(
        f"ledger {verb}: {run_dir / LEDGER_FILENAME} (genesis {report.genesis_hash.hex()[:16]}, "
        f"height {report.head_height}, round {report.rounds} of {config.rounds})"
    )
    submitted = app_bundle.compute_folder_digest(bundle)
    _say_who_refuses(federation, report.state, run_dir, submitted)
    # Where this machine reaches the SuperLink (a wildcard listen address is no dial address).
    address = f"{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"  # noqa: S104
    process = flower.start_superlink(
        link_dir, host=host, port=port, certs=cert_paths, supernode_auth=auth, persistent=True
    )
    try:
        processes.wait_healthy(
            process, address, timeout, root_certificates=cert_paths.ca_cert if cert_paths else None
        )
    except BaseException:
        processes.stop_process(process)
        raise
    console.print(
        f"SuperLink listening on {host}:{port} (pid {process.pid}, log {process.log_path})"
    )
    ca = cert_paths.ca_cert if cert_paths else None
    connection = flwr_cli.write_flwr_connection(
        fed_dir / FLWR_HOME_DIRNAME, CONNECTION, address, ca
    )
    state = _read_state(fed_dir)
    state.update(
        {
            "address": address,
            "root-certificates": str(ca.resolve()) if ca else "",
            "supernode-auth": auth,
        }
    )
    try:
        nodes: dict[str, int] = dict(state.get("nodes", {})) if auth else {}
        if auth:
            _register_nodes(fed_dir, federation, connection, nodes)
        state["nodes"] = nodes
        _write_state(fed_dir, state)  # before the ServerApp starts: it reads the node ids
        _stop_stale_runs(connection)
        run_config = {app_bundle.FEDERATION_DIR_KEY: str(fed_dir.resolve())}
        run_id = flwr_cli.submit_run(bundle, connection, run_config)
    except BaseException:
        processes.stop_process(process)
        raise
    state["run-id"] = run_id
    _write_state(fed_dir, state)
    console.print(
        f"ServerApp submitted: Flower run {run_id}; rounds log to {run_dir / LOG_FILENAME}"
    )
    own = submitted == app_bundle.app_digest()
    console.print(
        f"app {submitted.hex()} ("
        + (f"fedchain {app_bundle.fedchain_version()}'s own" if own else f"from {app_fab}")
        + ")",
        markup=False,
    )
    console.print(
        f"participants join with: fedchain join --coordinator HOST:{port} --data FILE.fcd "
        f"--identity KEY"
        + ("" if ca is None else f" --root-cert {ca}")
        + (" --auth-key SUPERNODE.key" if auth else "")
        + (" --insecure" if insecure else "")
    )
    console.print(f"follow with `fedchain coordinator status {fed_dir}`; stop with `... stop`")


def _app_folder(fed_dir: Path, fab: Path | None) -> Path:
    """The app folder ``flwr run`` submits: fedchain's own, or the files of ``fab``, which must
    build back to the same bundle (the digest the holders approved)."""
    folder = fed_dir / APP_DIRNAME
    if folder.exists():
        shutil.rmtree(folder)
    if fab is None:
        return app_bundle.write_app_bundle(folder)
    if not fab.is_file() or fab.stat().st_size > approval.MAX_FAB_SIZE:
        raise ConfigError(f"--app {fab}: not a file of at most {approval.MAX_FAB_SIZE} bytes")
    data = fab.read_bytes()
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for info in archive.infolist():
                name = PurePosixPath(info.filename)
                if info.is_dir() or name.parts[0] == ".info":
                    continue
                if name.is_absolute() or ".." in name.parts:
                    raise ConfigError(f"--app {fab}: the path {info.filename!r} leaves the app")
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                (folder / name).write_bytes(archive.read(info))
    except zipfile.BadZipFile as e:
        raise ConfigError(f"--app {fab}: not a Flower app bundle ({e})") from None
    rebuilt = app_bundle.compute_folder_digest(folder).hex()
    if rebuilt != hashlib.sha256(data).hexdigest():
        raise ConfigError(
            f"--app {fab}: its files build to app {rebuilt}, not to the bundle's own digest "
            f"{hashlib.sha256(data).hexdigest()} (another Flower or zlib built it): the holders "
            "would refuse what flwr submits"
        )
    return folder


def _say_who_refuses(
    federation: fed.Federation, state: LedgerState | None, run_dir: Path, app: bytes
) -> None:
    """Name the participants whose approved app, on the ledger (with the approvals waiting in
    the inbox), is not ``app``: their nodes will refuse it."""
    if state is None:
        return
    queued = [entry.approval for entry in approval.read_inbox(run_dir)]
    state, _ = admit_app_approvals(state, queued, state.round)
    names = {p.public_key: p.name for p in federation.participants}
    for key, participant in state.participants.items():
        if participant.app_digest and participant.app_digest != app:
            console.print(
                f"warning: {names.get(key, fingerprint(key))} approved app "
                f"{participant.app_digest.hex()[:16]}…, not {app.hex()[:16]}…: its node will "
                "refuse this one",
                markup=False,
            )


def _verify(run_dir: Path) -> Any:
    report = verify_ledger(run_dir)
    if not report.ok:
        raise ConfigError(f"{run_dir}: the ledger does not verify: {report.failure}")
    return report


def _register_nodes(
    fed_dir: Path,
    federation: fed.Federation,
    connection: flwr_cli.FlwrConnection,
    nodes: dict[str, int],
) -> None:
    """Register every participant's SuperNode key (kept by the SuperLink's database across
    restarts; Flower answers "Public key already in use" for a key it knows)."""
    (fed_dir / SUPERNODES_DIRNAME).mkdir(parents=True, exist_ok=True)
    for participant in federation.participants:
        key_path = supernode_key_path(fed_dir, participant.name)
        key_path.write_text(participant.supernode_key + "\n")
        try:
            nodes[participant.name] = flwr_cli.register_supernode(connection, key_path)
        except DeployError as e:
            if "already in use" not in str(e) or participant.name not in nodes:
                raise
        console.print(f"SuperNode of {participant.name}: node {nodes[participant.name]}")


def _stop_stale_runs(connection: flwr_cli.FlwrConnection) -> None:
    """Runs a killed coordinator left "running" in the SuperLink's database: stop them."""
    for run in flwr_cli.list_runs(connection):
        status = str(run.get("status", ""))
        if not status.startswith("finished"):
            with contextlib.suppress(DeployError, ValueError):
                flwr_cli.stop_run(connection, int(str(run.get("run-id"))))


@app.command()
def approve(
    fed_dir: FedDirArg,
    approvals_file: Annotated[
        Path,
        typer.Argument(
            help="A holder's approval file (its NAME.ledger/approved-app.toml, from "
            "`fedchain join --approve`)."
        ),
    ],
) -> None:
    """Record a data holder's signed app approvals on the ledger: checked now against its key
    and its approved app, kept in the run's inbox, and written into the next block (the holder's
    approved app is then the new one for everyone who replays the ledger)."""
    run_dir = run_dir_of(fed_dir)
    federation = fed.load_federation(fed_dir)
    if not fed.has_ledger(fed_dir):
        raise ConfigError(
            f"{fed_dir}: no ledger yet; before the first `coordinator start` the holder "
            "registers again with the app it approves"
        )
    state = _verify(run_dir).state
    genesis = state.genesis
    federation_id = compute_federation_id(genesis.run_id, genesis.rules)
    given = [
        entry
        for entry in approval.parse_approvals(approvals_file)
        if entry.federation_id == federation_id
    ]
    if not given:
        raise ConfigError(f"{approvals_file}: holds no approval for this federation")
    names = {p.public_key: p.name for p in federation.participants}
    waiting: list[approval.ApprovalEntry] = []
    for entry in sorted(
        [*approval.read_inbox(run_dir), *given],
        key=lambda e: (e.approval.public_key, e.approval.sequence),
    ):
        item = entry.approval
        holder = state.participants.get(item.public_key)
        if holder is not None and item.sequence <= holder.app_approvals:
            continue  # on the ledger already, or given twice
        try:
            state = process_transaction(state, item, state.round)
        except LedgerError as e:
            who = names.get(item.public_key, fingerprint(item.public_key))
            raise ConfigError(
                f"{approvals_file}: approval {item.sequence} of {who} refused: {compute_reason(e)}"
            ) from None
        waiting.append(entry)
    approval.write_inbox(run_dir, waiting)
    for entry in waiting:
        item = entry.approval
        console.print(
            f"{names.get(item.public_key, fingerprint(item.public_key))}: approval "
            f"{item.sequence}, app {item.app_digest.hex()} in place of {item.replaces.hex()[:16]}… "
            "(recorded in the next block)",
            markup=False,
        )
    if not waiting:
        console.print("nothing new: these approvals are on the ledger already")
    _say_who_refuses(federation, state, run_dir, app_bundle.app_digest())


@app.command()
def status(fed_dir: FedDirArg) -> None:
    """Show the ledger head, final height, round, connected SuperNodes and the processes."""
    federation = fed.load_federation(fed_dir)
    state = _read_state(fed_dir)
    run_dir = run_dir_of(fed_dir)
    config = fed.compute_run_config(federation)
    if fed.has_ledger(fed_dir):
        report = _verify(run_dir)
        console.print(
            f"ledger: height {report.head_height}, final height {report.final_height}, "
            f"round {report.rounds} of {config.rounds}, head {report.head_hash.hex()[:16]}, "
            f"total stake {report.total_stake}"
        )
    else:
        console.print("ledger: not created yet (the first `coordinator start` creates it)")
    process = processes.read_pid_file(fed_dir / SUPERLINK_DIRNAME / SUPERLINK_PID_FILENAME)
    alive = process is not None and processes.is_running(process)
    where = f" on {state.get('address')}" if state.get("address") else ""
    pid = f" (pid {process.pid})" if process is not None else ""
    console.print(f"SuperLink: {'running' if alive else 'not running'}{pid}{where}")
    if not alive or "address" not in state:
        return
    connection = _connection(fed_dir, state)
    run_id = state.get("run-id")
    if run_id is not None:
        console.print(
            f"ServerApp: Flower run {run_id}, {flwr_cli.run_status(connection, int(run_id))}"
        )
    names = {node_id: name for name, node_id in state.get("nodes", {}).items()}
    keys = {p.name: p.public_key for p in federation.participants}
    table = Table(title="SuperNodes")
    for column in ("node", "participant", "identity", "status"):
        table.add_column(column)
    for node in flwr_cli.list_supernodes(connection):
        name = names.get(node.node_id, "-")
        key = keys.get(name)
        table.add_row(str(node.node_id), name, fingerprint(key) if key else "-", node.status)
    console.print(table)


@app.command()
def stop(
    fed_dir: FedDirArg,
    timeout: Annotated[float, typer.Option(help="Seconds before SIGKILL.")] = 15.0,
) -> None:
    """Stop the ServerApp and the SuperLink (SIGTERM, then SIGKILL after the timeout)."""
    state = _read_state(fed_dir)
    pid_file = fed_dir / SUPERLINK_DIRNAME / SUPERLINK_PID_FILENAME
    process = processes.read_pid_file(pid_file)
    if process is None or not processes.is_running(process):
        processes.stop_process(pid_file, timeout)  # removes a stale PID file
        console.print("the coordinator is not running")
        return
    run_id = state.get("run-id")
    if run_id is not None and "address" in state:
        try:
            flwr_cli.stop_run(_connection(fed_dir, state), int(run_id))
            time.sleep(1.0)  # let the ServerApp go before its SuperLink does
        except DeployError:
            pass  # finished already, or the SuperLink does not answer: stop it anyway
    processes.stop_process(process, timeout)
    console.print(f"stopped the SuperLink (pid {process.pid}) and the ServerApp")
