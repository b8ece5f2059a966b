"""A smoke-test ServerApp: one secure sum over every registered site.

It checks a deployment end to end (TLS, SuperNode authentication, each site's
data, keys and registry, secure aggregation) before any study runs: every
site (every registered party but the coordinator and a CKKS key holder named
``keyholder``) prepares the design ``OUTCOME ~ FIXED + (1 | GROUP)`` from its own rows
and the sites' design summaries ``[n, Σy, Σy², X'y, upper(X'X)]`` are summed
under secure aggregation. Only numeric fixed effects (no categorical
columns); the result goes to the ``result`` file as JSON::

    {"contributors": [...], "dropped": [...], "n": ..., "mean_outcome": ...,
     "summary": [...], "seconds": ...}

Run config (``flwr run APP --run-config '...'``): ``registry``,
``coordinator-key``, ``outcome``, ``fixed``, ``group``, ``result`` and
optionally ``wait-seconds`` (how long to wait for all sites, default 120).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from core_stats.families import GAUSSIAN
from protocols.stack import SecAggSum
from securefed.keys import COORDINATOR, Identity, Registry
from securefed.site import GLMMSiteDesign
from securefed.transport.calls import record_call
from securefed.transport.flower_ckks import KEY_HOLDER
from securefed.transport.flower_server import FlowerEngine

__all__ = ["server_app"]

server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    from core_stats.formula import DesignSchema

    config = context.run_config
    started = time.perf_counter()
    identity = Identity.load(str(config["coordinator-key"]), COORDINATOR)
    registry = Registry.load(str(config["registry"]))
    engine = FlowerEngine(grid, Ed25519PrivateKey.from_private_bytes(
        identity.export_private_key_raw()), registry, SecAggSum())
    sites = sorted(name for name in registry.parties if name not in (COORDINATOR, KEY_HOLDER))
    engine.wait_for_sites(sites, float(config.get("wait-seconds", 120)))
    formula = f"{config['outcome']} ~ {config['fixed']} + (1 | {config['group']})"
    design = GLMMSiteDesign(DesignSchema(formula), GAUSSIAN, 1)
    engine.setup(record_call(lambda s: s.prepare_glmm(design), sites))
    result = engine.run_round(1, "smoke-design-summary",
                              record_call(lambda s: s.design_summary_vector(), sites), sites)
    report = {"contributors": list(result.contributors), "dropped": list(result.dropped),
              "n": result.total[0], "mean_outcome": result.total[1] / result.total[0],
              "summary": result.total.tolist(), "seconds": time.perf_counter() - started}
    Path(str(config["result"])).write_text(json.dumps(report, indent=2) + "\n")
