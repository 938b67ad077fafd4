"""A data holder's node runs only the app the holder approved: ``fedchain join``'s executor.

``fedchain join`` starts its Flower 1.41 SuperNode with ``--isolation process``: the SuperNode
then starts no ClientApp itself. It creates a task per message it receives, carrying the run's
``fab_hash`` (the SHA-256 of the app bundle, which the node's state recomputes from the bytes:
``flwr/supernode/start_client_internal.py``, ``flwr/supercore/corestate/in_memory_corestate.py``)
and waits for an executor to claim it on its local Runtime API (``AcquireTask``). Flower's own
executor launches whatever it claims. :class:`ApprovingExecutor` is the one ``join`` runs
instead, in a thread of its own process, the only process that holds the unlocked secrets:

* a ClientApp task whose ``fab_hash`` is approved: it launches Flower's ClientApp runtime
  (what ``flwr-clientapp`` runs) as ``python -m fedchain.deploy.gate --clientapp``, with an
  environment built from an allow-list (no secret in it; a private ``FLWR_HOME`` where only
  approved apps are ever installed), and hands the secrets over an inherited pipe
  (:data:`SECRET_FD_ENV` names its fd). That process checks once more, on the FAB's content,
  before Flower installs or loads anything (:func:`run_checked_clientapp`), then reads the
  secrets into :func:`fedchain.data.holder.provide_secrets`;
* anything else (another digest, or an AgentApp task): the app is never installed, imported or
  started, and nothing is decrypted for it. The executor claims the task's input as
  ``flwr-clientapp`` does, answers the coordinator with an error reply naming both digests
  (``ErrorCode.INVALID_FAB``, text :func:`refusal_reason`) and closes the task as failed, so the
  refusal shows on both sides.

The approved digests come from the holder alone (its registration's app, which its own
fedchain builds: :func:`fedchain.deploy.app.app_digest`), never from the coordinator.
What this does not cover (the holder's own machine, the packages it installed): see
docs/app-approval.md §5.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedchain.data import keys
from fedchain.deploy.processes import copy_output
from fedchain.ledger.objects import HASH_SIZE, MAX_REFUSAL_DETAIL_CHARS
from fedchain.rounds import messages as m

__all__ = [
    "KEPT_ENV",
    "REFUSAL_PREFIX",
    "SECRET_FD_ENV",
    "ApprovingExecutor",
    "Decision",
    "decode_secrets",
    "encode_secrets",
    "refusal_reason",
    "run_checked_clientapp",
]

SECRET_FD_ENV = "FEDCHAIN_SECRET_FD"  # noqa: S105 - the name of a variable holding an fd number
REFUSAL_PREFIX = "refused by the data holder"
POLL_S = 0.2
KEPT_ENV = (
    "PATH",
    "PYTHONPATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "VIRTUAL_ENV",
    "CUDA_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "TORCH_HOME",
    "XDG_CACHE_HOME",
    "NO_COLOR",
    "FLWR_TELEMETRY_ENABLED",
)
"""The only variables of ``join``'s environment an approved ClientApp process gets."""


@dataclass(frozen=True)
class Decision:
    """What the executor did with one task: ran the approved app, or refused another."""

    ran: bool
    fab_hash: str
    run_id: int
    reason: str = ""


def refusal_reason(fab_hash: str, approved: Iterable[str], holder: str) -> str:
    """The error text the coordinator receives for a refused app: short digests first (what
    a coordinator's ledger keeps of a client's words fits in 120 characters), then in full."""
    approved = sorted(approved)
    short = ", ".join(f"{digest[:16]}…" for digest in approved)
    return (
        f"{REFUSAL_PREFIX} {holder}: app {fab_hash[:16]}… is not the app it approved "
        f"({short}); digests: {fab_hash} vs {', '.join(approved)}"
    )


def signed_refusal(
    sign: Callable[[int, bytes, str], bytes] | None, content: Any, detail: str
) -> bytes:
    """The holder's signed refusal of a train message's app, for the round and federation the
    message names (``b""``: no signer, or a message that is not a fedchain train message). The
    round and genesis hash are the coordinator's claims: a refusal for another federation is
    good for nothing, and one for another round is refused by the ledger (spec §9.10)."""
    if sign is None:
        return b""
    try:
        config = content["config"]
        round_, genesis_hash = config[m.SERVER_ROUND], config[m.GENESIS_HASH]
    except (KeyError, TypeError):
        return b""
    if type(round_) is not int or not isinstance(genesis_hash, bytes):
        return b""
    if round_ < 1 or len(genesis_hash) != HASH_SIZE:
        return b""
    return sign(round_, genesis_hash, detail[:MAX_REFUSAL_DETAIL_CHARS])


def encode_secrets(unlock: keys.Unlock, identity_passphrase: bytes | None) -> bytes:
    """The holder's secrets as they cross the pipe to an approved ClientApp process."""
    kind = "key" if isinstance(unlock, keys.DataKey) else "passphrase"
    record = {
        "unlock": kind,
        "secret": unlock.secret.hex(),
        "identity": identity_passphrase.hex() if identity_passphrase is not None else None,
    }
    return json.dumps(record).encode()


def decode_secrets(data: bytes) -> tuple[keys.Unlock, bytes | None]:
    record = json.loads(data)
    secret = bytes.fromhex(record["secret"])
    unlock: keys.Unlock = (
        keys.DataKey(secret) if record["unlock"] == "key" else keys.Passphrase(secret)
    )
    identity = record["identity"]
    return unlock, bytes.fromhex(identity) if identity is not None else None


def _runtime_client(address: str, token: str | None = None) -> Any:
    from flwr.supercore.interceptors import (
        RuntimeTokenHttpInterceptor,
        RuntimeVersionHttpInterceptor,
    )
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    interceptors: list[Any] = [RuntimeVersionHttpInterceptor(component_name="SuperExec")]
    if token is not None:
        interceptors = [
            RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
            RuntimeTokenHttpInterceptor(token),
        ]
    return RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,
        root_certificates=None,
        interceptors=interceptors,
        retry_invoker=make_simple_http_retry_invoker(),
    )


class ApprovingExecutor:
    """Claims the tasks of one SuperNode (Runtime API at ``runtime_address``) and runs only
    the apps whose digest (hex) is in ``approved``.

    ``secrets`` (:func:`encode_secrets`) go to approved ClientApp processes over a pipe;
    ``flwr_home`` is their private Flower home; their output is appended to ``log_path`` and
    handed to ``on_line``. ``holder`` names the holder in refusals; ``on_decision`` hears each
    decision, for a refusal before the coordinator is answered. ``sign`` (``join``'s, which
    holds the unlocked identity) signs the holder's refusal of an app, ``(round, genesis hash,
    detail) -> encoded Refusal``; it is appended to the error reply (:func:`signed_refusal`).
    """

    def __init__(
        self,
        runtime_address: str,
        approved: Iterable[str],
        secrets: bytes,
        *,
        flwr_home: Path,
        log_path: Path,
        holder: str,
        on_line: Callable[[str], None],
        on_decision: Callable[[Decision], None],
        sign: Callable[[int, bytes, str], bytes] | None = None,
    ) -> None:
        self.address = runtime_address
        self.approved = frozenset(approved)
        self._secrets = secrets
        self.flwr_home = flwr_home
        self.log_path = log_path
        self.holder = holder
        self.on_line = on_line
        self.on_decision = on_decision
        self.sign = sign
        self.children: list[subprocess.Popen[bytes]] = []
        self.stopping = threading.Event()
        self.problem: BaseException | None = None  # the last error, said once on the console
        self._thread: threading.Thread | None = None

    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self.serve, name="fedchain app gate", daemon=True)
        self._thread.start()
        return self._thread

    def serve(self) -> None:
        """Claim and decide tasks until :meth:`stop`; a failing claim is retried."""
        from flwr.proto.runtime_pb2 import AcquireTaskRequest
        from flwr.supercore.constant import TaskType

        types = [TaskType.CLIENT_APP, TaskType.AGENT_APP]  # what a SuperNode creates
        # Flower's client logs each retry on this process's console: join's console is the
        # holder's, so only its errors show (the SuperNode's own log has the details)
        logging.getLogger("flwr").setLevel(logging.ERROR)
        self._wait_for_node()
        client = _runtime_client(self.address)
        while not self.stopping.is_set():
            self.children = [child for child in self.children if child.poll() is None]
            try:
                answer = client.AcquireTask(AcquireTaskRequest(supported_task_types=types))
                if not (answer.HasField("task") and answer.token):
                    self.stopping.wait(POLL_S)
                    continue
                task = answer.task
                if task.type == TaskType.CLIENT_APP and task.fab_hash in self.approved:
                    self.children.append(self._launch(answer.token))
                    self.on_decision(Decision(True, task.fab_hash, int(task.run_id)))
                else:
                    self._refuse(answer.token, task.fab_hash)
            except Exception as e:  # the node restarting, or a task gone: try again
                if not self.stopping.is_set() and str(e) != str(self.problem):
                    self.on_line(f"WARNING :   the app gate: {type(e).__name__}: {e}")
                self.problem = e
                self.stopping.wait(1.0)

    def _wait_for_node(self) -> None:
        """Until the SuperNode's Runtime API accepts connections (or :meth:`stop`)."""
        host, _, port = self.address.rpartition(":")
        while not self.stopping.is_set():
            try:
                socket.create_connection((host, int(port)), timeout=1.0).close()
                return
            except OSError:
                self.stopping.wait(POLL_S)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop claiming tasks and end the ClientApp processes this executor started."""
        self.stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(min(timeout, 2.0))  # let a claim in progress finish first
        for child in self.children:
            if child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + timeout
        for child in self.children:
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

    def _refuse(self, token: str, fab_hash: str) -> None:
        """Answer the task's message with an error reply, never touching the app."""
        from flwr.app import Error, Message
        from flwr.common.constant import ErrorCode, SubStatus
        from flwr.supernode.runtime.run_clientapp import (
            pull_task_input,
            push_message,
            push_task_output,
        )

        reason = refusal_reason(fab_hash, self.approved, self.holder)
        client = _runtime_client(self.address, token)
        try:
            message, context, run, _fab = pull_task_input(client)
            self.on_decision(Decision(False, fab_hash, int(run.run_id), reason))
            detail = f"app {fab_hash} is not the app it approved ({', '.join(self.approved)})"
            signed = signed_refusal(self.sign, message.content, detail)
            reason = m.append_signed_refusal(reason, signed)
            reply = Message(Error(ErrorCode.INVALID_FAB, reason), reply_to=message)
            push_message(client, reply, context)
            push_task_output(client, context, SubStatus.FAILED, reason)
        finally:
            client.close()

    def _launch(self, token: str) -> subprocess.Popen[bytes]:
        """The ClientApp process of an approved task: a clean environment, secrets on a pipe."""
        read_fd, write_fd = os.pipe()
        os.write(write_fd, self._secrets)  # far below a pipe's buffer: never blocks
        os.close(write_fd)
        env = {name: os.environ[name] for name in KEPT_ENV if name in os.environ}
        env.update(
            {
                "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
                "FLWR_HOME": str(self.flwr_home),
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                "PYTHONUNBUFFERED": "1",
                SECRET_FD_ENV: str(read_fd),
            }
        )
        approved = ",".join(sorted(self.approved))
        command = [sys.executable, "-m", __name__, "--clientapp", self.address, token, approved]
        try:
            child = subprocess.Popen(  # noqa: S603 - argv list, no shell
                command,
                env=env,
                pass_fds=(read_fd,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C reaches join, which stops it
            )
        finally:
            os.close(read_fd)
        assert child.stdout is not None
        copy_output(child.stdout, self.log_path, self.on_line, "output of a ClientApp")
        return child


def run_checked_clientapp(address: str, token: str, approved: set[str]) -> None:
    """An approved ClientApp process: read the holder's secrets from the pipe, then run
    Flower's ClientApp runtime (never installing the FAB's dependencies) with one more check
    after it pulls the task's input and before it installs or loads the FAB: the FAB's content
    hashes to an approved digest, and the run's ``fab_id``/``fab_version`` (which Flower uses to
    find the installed app's folder) are the FAB's own. A failure ends the process before any
    app code runs (no reply: fail closed)."""
    from flwr.common.config import get_fab_config, get_metadata_from_config
    from flwr.supernode.runtime import run_clientapp as clientapp_runtime

    from fedchain.data.holder import provide_secrets

    fd = int(os.environ.pop(SECRET_FD_ENV))
    with os.fdopen(fd, "rb") as pipe:
        provide_secrets(*decode_secrets(pipe.read()))
    pull = clientapp_runtime.pull_task_input

    def checked_pull(client: Any) -> tuple[Any, Any, Any, Any]:
        message, context, run, fab = pull(client)
        digest = hashlib.sha256(fab.content).hexdigest()
        metadata = get_metadata_from_config(get_fab_config(fab.content))
        if digest not in approved or (run.fab_id, run.fab_version) != metadata:
            raise SystemExit(f"app {digest} ({run.fab_id} {run.fab_version}) is not approved")
        return message, context, run, fab

    clientapp_runtime.pull_task_input = checked_pull
    clientapp_runtime.run_clientapp(
        runtime_api_address=address,
        token=token,
        insecure=True,
        parent_pid=os.getppid(),
        runtime_dependency_install=False,
    )


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] != "--clientapp":
        raise SystemExit("usage: python -m fedchain.deploy.gate --clientapp ADDRESS TOKEN SHA256")
    run_checked_clientapp(sys.argv[2], sys.argv[3], set(sys.argv[4].split(",")))
