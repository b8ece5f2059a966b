"""A ServerApp's Flower ``Grid`` as the site runtime's grid (the coordinator's edge).

:class:`~securefed.transport.flower_server.FlowerEngine` speaks the runtime's
own messages (:mod:`securefed.transport.messages`); :class:`FlowerGrid`
converts them to Flower ``query.securefed`` messages holding one
``ConfigRecord`` named ``securefed`` (:mod:`securefed.transport.flower_wire`)
and Flower's replies back, field for field.
"""

from __future__ import annotations

from collections.abc import Sequence

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from securefed.transport.flower_wire import MESSAGE_TYPE, RECORD
from securefed.transport.messages import Node, SiteMessage

__all__ = ["FlowerGrid"]


class FlowerGrid:
    """The runtime's :class:`~securefed.transport.messages.SiteGrid` over a Flower ``Grid``."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    def nodes(self) -> list[Node]:
        """Every connected SuperNode with the name it was registered under."""
        return [Node(int(node.node_id), str(node.name)) for node in self.grid.get_nodes()]

    def push(self, messages: Sequence[SiteMessage], ttl: float) -> list[str]:
        """Send each message as a Flower message; their message ids."""
        return list(self.grid.push_messages([
            Message(RecordDict({RECORD: ConfigRecord(dict(m.record or {}))}),
                    dst_node_id=m.node_id, message_type=MESSAGE_TYPE, ttl=ttl)
            for m in messages]))

    def pull(self, message_ids: Sequence[str]) -> list[SiteMessage]:
        """The replies that have arrived among ``message_ids``, as runtime messages."""
        replies = []
        for reply in self.grid.pull_messages(list(message_ids)):
            error = str(reply.error.reason) if reply.has_error() else None
            record = None if error is not None else reply.content.config_records.get(RECORD)
            replies.append(SiteMessage(None if record is None else dict(record),
                                       int(reply.metadata.src_node_id),
                                       reply_to=str(reply.metadata.reply_to_message_id),
                                       error=error))
        return replies
