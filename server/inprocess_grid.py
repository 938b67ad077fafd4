"""An in-process Flower Grid: the real ServerApp logic and ClientApp code, without Ray (fast tests
and benchmarks; Flower's simulation engine is the real thing for users).

Messages are delivered by calling the ClientApp directly with a per-node ``Context`` that
persists across rounds (as a SuperNode's does). A ClientApp that raises produces an error
reply, as Flower's runtime does, and a node in ``down`` never answers (a dead client).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

NODE_BASE = 1000


class InProcessGrid(Grid):
    def __init__(self, client_app: ClientApp | Callable[[int], ClientApp], num_nodes: int) -> None:
        self.apps = {
            NODE_BASE + i: client_app(i) if not isinstance(client_app, ClientApp) else client_app
            for i in range(num_nodes)
        }
        self.contexts = {
            node: Context(
                run_id=1,
                node_id=node,
                node_config={"partition-id": node - NODE_BASE, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config={},
            )
            for node in self.apps
        }
        self.down: set[int] = set()
        self.sent: list[Message] = []
        self._ids = itertools.count(1)
        self._act_as_server()

    @staticmethod
    def _act_as_server() -> None:
        """Messages made outside a Flower runtime need a task identity (FLOWER.md)."""
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0

    # -- the parts of Grid the strategies use ------------------------------------------------------

    def get_node_ids(self) -> Iterable[int]:
        return list(self.apps)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            message.metadata.__dict__["_message_id"] = f"msg-{next(self._ids)}"
            self.sent.append(message)
            if node in self.down:
                continue
            TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = (
                1,
                node,
                next(self._ids),
            )
            try:
                reply = self.apps[node](message, self.contexts[node])
                if not isinstance(reply, Message):
                    raise TypeError(f"the ClientApp returned a {type(reply).__name__}")
            except Exception as e:  # what Flower's runtime turns into an error reply
                reply = Message(
                    Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, _describe_exception(e)),
                    reply_to=message,
                )
            finally:
                self._act_as_server()
            reply.metadata.__dict__["_src_node_id"] = node
            replies.append(reply)
        return replies

    # -- not needed in process -------------------------------------------------------------------

    def set_run(self, run_id: int) -> None:  # type: ignore[override]
        pass

    @property
    def run(self):  # type: ignore[no-untyped-def,override]
        raise NotImplementedError

    def create_message(self, *args, **kwargs):  # type: ignore[no-untyped-def,override]
        raise NotImplementedError

    def get_nodes(self):  # type: ignore[no-untyped-def,override]
        raise NotImplementedError

    def push_messages(self, messages):  # type: ignore[no-untyped-def,override]
        raise NotImplementedError

    def pull_messages(self, message_ids):  # type: ignore[no-untyped-def,override]
        raise NotImplementedError


def _describe_exception(error: Exception) -> str:
    """``Type: message``, as Flower's runtime reports a ClientApp's exception (an exception
    whose ``str`` itself fails is named by its type)."""
    try:
        return f"{type(error).__name__}: {error}"
    except Exception:
        return type(error).__name__
