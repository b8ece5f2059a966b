"""The site runtime's own messages: what Flower carries, without needing Flower.

Every exchange between the coordinator and a site is one :class:`SiteMessage`
whose ``record`` is a flat mapping from field names to values of the types a
Flower ``ConfigRecord`` holds (``str``, ``int``, ``float``, ``bool``,
``bytes`` and lists of one of these; see :mod:`securefed.transport.flower_wire`
for the fields of each stage). The site's handler
(:func:`securefed.transport.site_runtime.handle`) and the coordinator's
engine (:class:`~securefed.transport.flower_server.FlowerEngine`) speak only
these types, so the in-process loopback (:mod:`securefed.transport.loopback`)
runs without Flower installed; the Flower adapters
(:mod:`securefed.transport.flower_client`, :mod:`securefed.transport.flower_grid`)
convert at the edge, field for field.

A node keeps what must last between its messages in
:attr:`NodeContext.state` (over Flower: a ``ConfigRecord`` of the SuperNode's
``Context.state``; in-process: a dict).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["SiteMessage", "NodeContext", "SiteGrid", "Node"]


@dataclass(frozen=True)
class SiteMessage:
    """One message: a request for node ``node_id``, or a reply from it.

    ``record`` holds the ``securefed`` record's fields (``None`` for a reply
    that carried no such record: a malformed reply); ``reply_to`` names the
    request a reply answers; ``error`` is the transport's own failure (Flower's
    ``Message.error``), never a site's refusal, which travels in ``record``.
    """

    record: Mapping[str, Any] | None
    node_id: int
    message_id: str = ""
    reply_to: str = ""
    error: str | None = None

    def reply(self, record: Mapping[str, Any]) -> SiteMessage:
        """The answer to this request (same node, ``reply_to`` set)."""
        return SiteMessage(record, self.node_id, reply_to=self.message_id)


@dataclass
class NodeContext:
    """What one node knows besides the message: its config and its lasting state.

    ``resident``: objects one process keeps between the messages it serves
    (parsed keys, the policy guard and, for a simulated site, its in-memory
    release record); ``None`` for a SuperNode, whose process is fresh for
    every message and rebuilds them from its files.
    """

    node_config: Mapping[str, Any]
    state: dict[str, Any] = field(default_factory=dict)
    resident: dict[str, Any] | None = None


@dataclass(frozen=True)
class Node:
    """A connected node: its transport id and the registry name it is known by."""

    node_id: int
    name: str


class SiteGrid(Protocol):
    """The coordinator's view of the connected nodes (a Flower ``Grid``, or the loopback)."""

    def nodes(self) -> Sequence[Node]: ...

    def push(self, messages: Sequence[SiteMessage], ttl: float) -> list[str]: ...

    def pull(self, message_ids: Sequence[str]) -> list[SiteMessage]: ...
