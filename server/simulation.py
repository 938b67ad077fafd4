"""Run a prepared federation on Flower's simulation engine (Ray), on this machine.

Nothing outlives the run, even a ``kill -9``. ``flwr.simulation.run_simulation`` runs the
ServerApp in a thread of this process and starts Ray with ``ray.init()``, here, in the main
thread. Ray starts ``gcs_server``, ``raylet``, the dashboard and log monitor with
``PR_SET_PDEATHSIG`` ("fate sharing"), so those die with this process; but the raylet's own
children (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``, the ``ray::ClientAppActor``
workers) are not bound to it and, seen on Ray 2.55 after a SIGKILL of ``fedchain simulate``,
keep running for good (the agents) or for seconds (the workers). A process that is killed
cannot clean up after itself, so a small watchdog process (:data:`_WATCHDOG`) does it:

- the processes of this run are found by a random mark in their environment
  (``FEDCHAIN_SIMULATION_MARK``), set before Ray starts, which Ray's daemons inherit whatever
  their session or process group, and by descent from those: the agents rewrite their process
  title over their environment (``setproctitle``), so the watchdog, while this process lives,
  keeps a list (PID and start time) of the marked processes below it and of everything below
  them. A process of another run, or one unrelated to Ray (a ``pytest`` child, the other
  programs of a shell pipeline), is never on it;
- the watchdog waits on a pipe whose only writer is this process: the kernel closes it when
  this process ends, however it ends (exit, exception, SIGKILL), and it also checks every half
  second that its parent is still this process. It then kills, until none is left, every listed
  process still running with its recorded start time (a recycled PID is skipped), whatever is
  below them, and any process that carries the mark (one started in the last half second);
- it runs in its own session, so a Ctrl-C at the terminal reaches the simulation but not it.

Linux only (``/proc``); elsewhere the run is as Ray leaves it. A child process with
``PR_SET_PDEATHSIG`` would not do: it dies with us but its own children (Ray's) do not.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from fedchain.config import RunConfig
from fedchain.errors import FedchainError
from fedchain.rounds.coordinator import RoundReporter
from fedchain.runs.layout import LOG_FILENAME
from server.server_app import make_server_app

_QUIET_ENV = {
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "RAY_DEDUP_LOGS": "0",
}
MARK_ENV = "FEDCHAIN_SIMULATION_MARK"
"""The environment variable that marks the processes of one simulated run (see above)."""

_WATCHDOG = r"""
import os, select, signal, sys, time
marker, parent, pipe = sys.argv[1].encode(), int(sys.argv[2]), int(sys.argv[3])
me = os.getpid()
signal.signal(signal.SIGINT, signal.SIG_IGN)


def table():
    procs = {}  # pid -> (state, ppid, start time)
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                procs[int(name)] = (fields[0], int(fields[1]), fields[19])
            except (OSError, IndexError, ValueError):
                pass
    return procs


def below(roots, procs):
    children = {}
    for pid, (_, ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), list(roots)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def marked(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return marker in f.read().split(b"\0")
    except OSError:
        return False


tracked = {}  # pid -> start time: marked processes below the parent, and all below them
while os.getppid() == parent:
    procs = table()
    for pid in below([parent], procs) - {me}:
        if tracked.get(pid) != procs[pid][2] and marked(pid):
            tracked[pid] = procs[pid][2]
    for pid in below(tracked, procs):
        tracked[pid] = procs[pid][2]
    ready, _, _ = select.select([pipe], [], [], 0.5)
    if ready and not os.read(pipe, 64):
        break

deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    procs = table()
    ours = {pid for pid, start in tracked.items() if pid in procs and procs[pid][2] == start}
    ours |= below(ours, procs) | {pid for pid in procs if marked(pid)}
    ours = {pid for pid in ours - {me, parent} if procs[pid][0] != b"Z"}
    if not ours:
        break
    for pid in ours:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    time.sleep(0.2)
"""


@contextlib.contextmanager
def reaped_on_exit(wait: float = 30.0) -> Iterator[None]:
    """Mark the processes started inside the block and have a watchdog kill them when this
    process ends or the block is left (see the module docstring)."""
    if not sys.platform.startswith("linux") or MARK_ENV in os.environ:
        yield  # not Linux, or already inside a marked run (the outer watchdog reaps)
        return
    mark = secrets.token_hex(16)
    read_end, write_end = os.pipe()  # neither is inherited by Ray's processes (O_CLOEXEC)
    watchdog = subprocess.Popen(  # noqa: S603 - our interpreter, our code, no shell
        [sys.executable, "-c", _WATCHDOG, f"{MARK_ENV}={mark}", str(os.getpid()), str(read_end)],
        pass_fds=(read_end,),
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(read_end)
    os.environ[MARK_ENV] = mark
    try:
        yield
    finally:
        del os.environ[MARK_ENV]
        os.close(write_end)  # the watchdog wakes up and reaps what is left
        with contextlib.suppress(subprocess.TimeoutExpired):
            watchdog.wait(timeout=wait)


def make_ray_init_args(cpus: int | None, ray_address: str | None) -> dict[str, object]:
    """``ray.init``'s arguments: a Ray of ``cpus`` CPUs (default: all) started here, or a
    connection to the cluster at ``ray_address`` (whose nodes say how many CPUs they give).
    ``address="local"`` keeps a ``RAY_ADDRESS`` in the environment from sending a run meant
    for this machine to a cluster."""
    quiet: dict[str, object] = {"logging_level": logging.ERROR, "log_to_driver": False}
    if ray_address:
        return {"address": ray_address, **quiet}
    return {
        "address": "local",
        "num_cpus": cpus or os.cpu_count() or 1,
        "num_gpus": 0,
        "include_dashboard": False,
        **quiet,
    }


def run_simulated(
    config: RunConfig,
    run_dir: Path,
    report: RoundReporter | None = None,
    *,
    cpus: int | None = None,
    ray_address: str | None = None,
) -> None:
    """Run the rounds still to do (all of them, or from a resumed ledger's head) with
    ``config.clients`` virtual SuperNodes.

    By default Ray starts here, on this machine, with ``cpus`` CPUs (all of them), and stops
    with the run. With ``ray_address`` (``HOST:PORT`` of a running cluster's head, as
    ``ray start --head`` prints it) the clients run as actors spread over the cluster's nodes,
    one CPU each; the cluster is left running. Every node then needs the same Python
    environment (fedchain installed at the same path: Flower hands this process's ``sys.path``
    to the workers) and the run directory at the same path (a shared file system): the
    simulated clients read their encrypted data and keys from it.

    Flower's and Ray's logs go to ``run_dir/log.txt``; the console gets ``report``'s lines. A
    failure is one :class:`FedchainError`: the run's own (every client failed, say), or Flower's
    simulation raising, with its traceback in ``log.txt``.
    """
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    from flwr.common.logger import FLOWER_LOGGER  # after the environment above: read at import
    from flwr.simulation import run_simulation

    from clients.client_app import app as client_app  # imports torch; after the env above too
    from fedchain.learning.training import configure_threads

    # The ServerApp runs here, beside the clients' Ray workers on the same cores: its scoring
    # and evaluation (many small forward passes) with torch's default of one thread per core
    # spin-wait against them (OpenMP). Measured on 2 cores, default federation, rounds 2-4:
    # 8-10 s a round with 2 threads, 0.8-1.1 s with 1 (python experiments/bench_headline.py).
    configure_threads(1)

    handler = logging.FileHandler(run_dir / LOG_FILENAME)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    console_handlers = [h for h in FLOWER_LOGGER.handlers if not isinstance(h, logging.FileHandler)]
    for h in console_handlers:
        FLOWER_LOGGER.removeHandler(h)
    FLOWER_LOGGER.addHandler(handler)
    # Flower's records go to log.txt only: not also to a root handler some library installed
    # (importing Opacus adds one: its DEBUG lines reached the console of a --dp example run).
    propagate, FLOWER_LOGGER.propagate = FLOWER_LOGGER.propagate, False
    try:
        with reaped_on_exit():
            run_simulation(
                server_app=make_server_app(config, run_dir, report),
                client_app=client_app,
                num_supernodes=config.clients,
                backend_config={
                    "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                    "init_args": make_ray_init_args(cpus, ray_address),
                },
            )
    except FedchainError:
        raise
    except Exception as e:
        FLOWER_LOGGER.exception("the simulation failed")  # the traceback, into log.txt
        cause = e.__cause__ or e
        raise FedchainError(
            f"Flower's simulation failed: {type(cause).__name__}: {cause} "
            f"(details in {run_dir / LOG_FILENAME})"
        ) from e
    finally:
        FLOWER_LOGGER.propagate = propagate
        FLOWER_LOGGER.removeHandler(handler)
        handler.close()
        for h in console_handlers:
            FLOWER_LOGGER.addHandler(h)
