"""securefed over Flower: the two apps a consortium names in its app's ``pyproject.toml``.

::

    [tool.flwr.app.components]
    serverapp = "securefed.transport.flower:server_app"   # the coordinator: runs a study file
    clientapp = "securefed.transport.flower:client_app"   # every site (and the CKKS key holder)

The server app is :mod:`securefed.transport.flower_study` (its run config:
``study``, ``registry``, ``coordinator-key``, ...); the client app is
:mod:`securefed.transport.flower_client` (its node config: ``site-name``,
``data-path``, ``identity-key``, ``registry``, ``audit-dir``, ...). Both
drive the same protocol code as the in-process runs; ``docs/deployment.md``
walks through a deployment.
"""

from securefed.transport.flower_client import client_app
from securefed.transport.flower_study import server_app

__all__ = ["server_app", "client_app"]
