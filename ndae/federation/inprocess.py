"""A Flower `Grid` that delivers messages to the real ClientApp in this process.

What the Flower simulation engine does, minus Ray and the SuperLink: every node gets its own
`Context` (node config with its `manifest`, persistent `state`), a handler that raises becomes an
error reply (`CLIENT_APP_RAISED_EXCEPTION`), as in Flower. Used by the tests and the benchmark
to run the same ServerApp/ClientApp code without starting processes.
"""

from __future__ import annotations

import traceback
import uuid
from pathlib import Path
from typing import Iterable, Mapping

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid

CLIENT_APP_RAISED_EXCEPTION = 2
SUPERLINK_NODE_ID = 1


class InProcessGrid(Grid):
    def __init__(self, manifests: Mapping[str, str | Path] | list[str | Path], run_config: Mapping, client_app=None,
                 node_config: Mapping | None = None):
        """`node_config`: what each site's administrator would set on its SuperNode (the site
        policy, `ndae.federation.site.policy`), the same for every node; tests change a single
        node's through `contexts[node].node_config`."""
        from ndae.federation.site.handlers import build_client_app

        paths = list(manifests.values()) if isinstance(manifests, Mapping) else list(manifests)
        self.client_app = client_app or build_client_app()
        # Node ids are arbitrary in Flower; large and unordered here, so nothing relies on them.
        self.contexts = {
            1000 + 7 * (len(paths) - i) + 1: Context(run_id=1, node_id=1000 + 7 * (len(paths) - i) + 1,
                                                    node_config={**dict(node_config or {}), "manifest": str(p)},
                                                    state=RecordDict(),
                                                    run_config=dict(run_config))
            for i, p in enumerate(paths)}
        self.messages_sent = 0
        _set_task_identity()

    # Grid's abstract API ---------------------------------------------------------------------
    def set_run(self, run) -> None:  # pragma: no cover - not needed in process
        pass

    @property
    def run(self):  # pragma: no cover
        return None

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:  # pragma: no cover
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def get_nodes(self):  # pragma: no cover
        return []

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # pragma: no cover
        raise NotImplementedError("InProcessGrid answers in send_and_receive")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # pragma: no cover
        raise NotImplementedError("InProcessGrid answers in send_and_receive")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            message.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
            context = self.contexts[message.metadata.dst_node_id]
            self.messages_sent += 1
            try:
                reply = self.client_app(message, context)
            except Exception as error:  # what the SuperNode does with a raising ClientApp
                reason = f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=3)}"
                reply = Message(Error(CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=message)
            replies.append(reply)
        return replies


def _set_task_identity() -> None:
    """Messages read the sender from the process's task identity, which Flower sets in a
    ServerApp process; in a plain process it is set here, as for the SuperLink's node."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 1), ("_node_id", SUPERLINK_NODE_ID), ("_task_id", 1)):
        if getattr(TaskIdentity, name) is None:
            setattr(TaskIdentity, name, value)
