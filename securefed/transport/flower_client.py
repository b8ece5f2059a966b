"""A site's Flower ClientApp: Flower's messages in, the site runtime's handler, out.

The site's logic lives in :mod:`securefed.transport.site_runtime` (which needs
no Flower); this module only converts at the edge: the request's
``securefed`` ``ConfigRecord`` becomes the runtime's record, the SuperNode's
``Context.state`` record the runtime's lasting state, and the reply record a
``ConfigRecord`` again, field for field. The node config keys are listed in
:mod:`securefed.transport.site_runtime`.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from securefed.transport import site_runtime
from securefed.transport.flower_wire import RECORD
from securefed.transport.messages import NodeContext

__all__ = ["client_app", "handle"]

client_app = ClientApp()
_STATE = "securefed"


@client_app.query("securefed")
def handle(message: Message, context: Context) -> Message:
    """Serve one stage through the site runtime (:func:`site_runtime.serve_record`)."""
    records = context.state.config_records
    node = NodeContext(context.node_config,
                       dict(records[_STATE]) if _STATE in records else {})
    request = message.content.config_records.get(RECORD)
    reply = site_runtime.serve_record({} if request is None else dict(request), node)
    records[_STATE] = ConfigRecord(node.state)
    return Message(RecordDict({RECORD: ConfigRecord(reply)}), reply_to=message)
