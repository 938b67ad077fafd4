"""A prototype SuperExec that runs only approved Flower apps (the proof in test_app_approval.py).

Usage: ``python tests/approval_gate.py RUNTIME_ADDRESS APPROVED_SHA256[,...] EVENTS_FILE``
(and, as its own ClientApp launcher, ``... --clientapp RUNTIME_ADDRESS TOKEN APPROVED``)

A Flower 1.41 SuperNode started with ``--isolation process`` starts no ClientApp itself: it
creates a task per message (``flwr/supernode/start_client_internal.py``, ``create_task`` with
the run's ``fab_hash``) and waits for an executor to claim it on its Runtime API
(``AcquireTask``, ``flwr/supercore/servicer/runtime/runtime_handlers.py``). Flower's own
executor (``flower-superexec``) launches ``flwr-clientapp`` for every task. This one first
compares the task's ``fab_hash`` with the approved digests:

* approved: it launches Flower's ClientApp runtime (``run_clientapp``, what ``flwr-clientapp``
  runs) with an environment built from scratch (no secret in it) and hands the secret over an
  inherited pipe (``FEDCHAIN_SECRET_FD`` names the fd). That process checks once more, on the
  content, before Flower installs or loads anything (:func:`run_checked_clientapp`);
* anything else (another digest, or an AgentApp task): it never installs, imports or starts
  the app. It claims the task's input the way ``flwr-clientapp`` does (``pull_task_input``),
  answers the coordinator with an error reply naming both digests (``ErrorCode.INVALID_FAB``)
  and closes the task as failed, so the refusal shows on both sides.

Each decision is appended to EVENTS_FILE as one JSON line. The secret comes from the
``APPROVAL_GATE_SECRET`` variable of this process (in fedchain it would be ``fedchain join``'s
memory). Stopped by SIGTERM (it is started and stopped by PID by the test).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from flwr.app import Error, Message
from flwr.common.config import get_fab_config, get_metadata_from_config
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest
from flwr.supercore.constant import TaskType
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.protobuf.client import ProtobufClientInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime import run_clientapp as clientapp_runtime
from flwr.supernode.runtime.run_clientapp import (
    pull_task_input,
    push_message,
    push_task_output,
)

SECRET_ENV = "APPROVAL_GATE_SECRET"
SECRET_FD_ENV = "FEDCHAIN_SECRET_FD"
POLL_S = 0.2
TASK_TYPES = [TaskType.CLIENT_APP, TaskType.AGENT_APP]  # what a SuperNode creates per message
KEPT_ENV = ("PATH", "PYTHONPATH", "FLWR_HOME", "HOME", "LANG", "FLWR_TELEMETRY_ENABLED")


def _client(address: str, token: str | None = None) -> RuntimeHttpClient:
    interceptors: list[ProtobufClientInterceptor] = [
        RuntimeVersionHttpInterceptor(component_name="SuperExec")
    ]
    if token is not None:
        interceptors = [
            RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
            RuntimeTokenHttpInterceptor(token),
        ]
    client: RuntimeHttpClient = RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,
        root_certificates=None,
        interceptors=interceptors,
        retry_invoker=make_simple_http_retry_invoker(),
    )
    return client


def refuse(address: str, token: str, reason: str) -> int:
    """Answer the task's message with an error reply, never touching the app; the run id."""
    client = _client(address, token)
    try:
        message, context, run, _fab = pull_task_input(client)
        push_message(
            client, Message(Error(ErrorCode.INVALID_FAB, reason), reply_to=message), context
        )
        push_task_output(client, context, SubStatus.FAILED, reason)
        return int(run.run_id)
    finally:
        client.close()


def launch(address: str, token: str, approved: set[str], secret: bytes) -> subprocess.Popen[bytes]:
    """The ClientApp process for an approved task: a clean environment, the secret on a pipe."""
    read_fd, write_fd = os.pipe()
    os.write(write_fd, secret)  # far below a pipe's buffer: never blocks
    os.close(write_fd)
    env = {name: os.environ[name] for name in KEPT_ENV if name in os.environ}
    env[SECRET_FD_ENV] = str(read_fd)
    command = [sys.executable, __file__, "--clientapp", address, token, ",".join(approved)]
    try:
        return subprocess.Popen(command, env=env, pass_fds=(read_fd,))
    finally:
        os.close(read_fd)


def run_checked_clientapp(address: str, token: str, approved: set[str]) -> None:
    """Flower's ClientApp runtime (as ``flwr-clientapp`` runs it, never installing the FAB's
    dependencies), with one more check after it pulls the task's input and before it installs
    or loads the FAB: the FAB's content hashes to an approved digest, and the run's
    ``fab_id``/``fab_version`` (which Flower uses to find the installed app's folder) are the
    FAB's own. A failure ends the process before any app code runs (no reply: fail closed)."""
    pull = clientapp_runtime.pull_task_input

    def checked_pull(client: RuntimeHttpClient) -> tuple[Message, Any, Any, Any]:
        message, context, run, fab = pull(client)
        digest = hashlib.sha256(fab.content).hexdigest()
        metadata = get_metadata_from_config(get_fab_config(fab.content))
        if digest not in approved or (run.fab_id, run.fab_version) != metadata:
            raise RuntimeError(f"app {digest} ({run.fab_id} {run.fab_version}) not approved")
        return message, context, run, fab

    clientapp_runtime.pull_task_input = checked_pull
    clientapp_runtime.run_clientapp(
        runtime_api_address=address,
        token=token,
        insecure=True,
        parent_pid=os.getppid(),
        runtime_dependency_install=False,
    )


def main(address: str, approved: set[str], events: Path) -> None:
    secret = os.environ.pop(SECRET_ENV, "").encode()
    client = _client(address)
    children: list[subprocess.Popen[bytes]] = []
    while True:
        children = [child for child in children if child.poll() is None]
        answer = client.AcquireTask(AcquireTaskRequest(supported_task_types=TASK_TYPES))
        if not (answer.HasField("task") and answer.token):
            time.sleep(POLL_S)
            continue
        task = answer.task
        if task.type == TaskType.CLIENT_APP and task.fab_hash in approved:
            children.append(launch(address, answer.token, approved, secret))
            event = {"decision": "ran", "fab_hash": task.fab_hash, "run_id": task.run_id}
        else:
            reason = (
                f"refused by the data holder: app {task.fab_hash} is not the approved "
                f"{', '.join(sorted(approved))}"
            )
            run_id = refuse(address, answer.token, reason)
            event = {"decision": "refused", "fab_hash": task.fab_hash, "run_id": run_id}
        with events.open("a") as f:
            f.write(json.dumps(event) + "\n")


if __name__ == "__main__":
    if sys.argv[1] == "--clientapp":
        run_checked_clientapp(sys.argv[2], sys.argv[3], set(sys.argv[4].split(",")))
    else:
        main(sys.argv[1], set(sys.argv[2].split(",")), Path(sys.argv[3]))
