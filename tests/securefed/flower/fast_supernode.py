"""``flower-supernode`` with a shorter idle poll, for the tests only.

Flower 1.41's SuperNode sleeps a hard-coded 3 s whenever it polls the
SuperLink and finds no message (``start_client_internal``); it has no flag
for it. In a deployment that latency is harmless; in a test that runs dozens
of message exchanges it is most of the wall time. This wrapper caps every
sleep of that one module at 0.1 s and then runs the stock SuperNode CLI with
the same arguments: nothing else of Flower (TLS, node authentication, the
ClientApp processes, the messages) changes. The benchmarks use the stock
``flower-supernode``.
"""

from __future__ import annotations

import sys
import time
import types

import flwr.supernode.start_client_internal as internal
from flwr.supernode.cli import flower_supernode

internal.time = types.SimpleNamespace(
    **{name: getattr(time, name) for name in dir(time) if not name.startswith("_")})
internal.time.sleep = lambda seconds: time.sleep(min(seconds, 0.1))

if __name__ == "__main__":
    sys.argv[0] = "flower-supernode"
    sys.exit(flower_supernode())
