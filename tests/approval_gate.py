"""A prototype SuperExec that runs only approved Flower apps (the proof in test_app_approval.py).

Usage: ``python tests/approval_gate.py RUNTIME_ADDRESS APPROVED_SHA256[,...] EVENTS_FILE``

A Flower 1.41 SuperNode started with ``--isolation process`` starts no ClientApp itself: it
creates a task per message (``flwr/supernode/start_client_internal.py``, ``create_task`` with
the run's ``fab_hash``) and waits for an executor to claim it on its Runtime API
(``AcquireTask``, ``flwr/supercore/servicer/runtime/runtime_handlers.py``). Flower's own
executor (``flower-superexec``) launches ``flwr-clientapp`` for every task. This one first
compares the task's ``fab_hash`` with the approved digests:

* approved: it launches ``flwr-clientapp`` with an environment built from scratch (no secret
  in it) and hands the secret over an inherited pipe (``FEDCHAIN_SECRET_FD`` names the fd);
* anything else (another digest, or an AgentApp task): it never installs, imports or starts
  the app. It claims the task's input the way ``flwr-clientapp`` does (``pull_task_input``),
  answers the coordinator with an error reply naming both digests (``ErrorCode.INVALID_FAB``)
  and closes the task as failed, so the refusal shows on both sides.

Each decision is appended to EVENTS_FILE as one JSON line. The secret comes from the
``APPROVAL_GATE_SECRET`` variable of this process (in fedchain it would be ``fedchain join``'s
memory). Stopped by SIGTERM (it is started and stopped by PID by the test).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from flwr.app import Error, Message
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest
from flwr.supercore.constant import TaskType
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.protobuf.client import ProtobufClientInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
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


def launch(address: str, token: str, secret: bytes) -> subprocess.Popen[bytes]:
    """``flwr-clientapp`` for an approved task: a clean environment, the secret on a pipe."""
    read_fd, write_fd = os.pipe()
    os.write(write_fd, secret)  # far below a pipe's buffer: never blocks
    os.close(write_fd)
    env = {name: os.environ[name] for name in KEPT_ENV if name in os.environ}
    env[SECRET_FD_ENV] = str(read_fd)
    bin_dir = Path(sys.executable).parent
    command = [str(bin_dir / "flwr-clientapp"), "--runtime-api-address", address]
    command += ["--token", token, "--insecure", "--parent-pid", str(os.getpid())]
    try:
        return subprocess.Popen(command, env=env, pass_fds=(read_fd,))
    finally:
        os.close(read_fd)


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
            children.append(launch(address, answer.token, secret))
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
    main(sys.argv[1], set(sys.argv[2].split(",")), Path(sys.argv[3]))
