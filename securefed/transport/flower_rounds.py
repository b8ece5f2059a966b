"""The coordinator's rounds over Flower, in the shape ``Coordinator`` uses them.

In-process, :meth:`securefed.coordinator.Coordinator.secure_sum` computes every
live site's vector and hands the vectors to the protection layer::

    vectors = {site.name: compute(site) for site in self.live_sites}
    result = self.protection.aggregate(vectors, round_id=self.round_id, purpose=purpose)

Over Flower no vector exists at the coordinator: :meth:`FlowerRounds.aggregate`
replaces both lines, taking the same ``compute`` closure and returning the
same :class:`~protocols.stack.AggregateResult`. Setup closures (``prepare_glmm``)
go through :meth:`FlowerRounds.setup` and travel with the next round.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from protocols.stack import AggregateResult
from securefed.transport.calls import record_call
from securefed.transport.flower_server import FlowerEngine

__all__ = ["FlowerRounds"]


class FlowerRounds:
    """Coordinator-facing adapter around a :class:`FlowerEngine`."""

    def __init__(self, engine: FlowerEngine) -> None:
        self.engine = engine

    def setup(self, compute: Callable[[Any], Any], site_names: Sequence[str]) -> None:
        """Every site applies ``compute``'s setup call before its next vector."""
        self.engine.setup(record_call(compute, list(site_names)))

    def aggregate(self, purpose: str, compute: Callable[[Any], Any], site_names: Sequence[str],
                  round_id: int, *, dp: Any = None, audit: dict | None = None) -> AggregateResult:
        """The protected sum of ``compute(site)`` over ``site_names``, computed at the sites.

        ``audit``: the run's audit context (each site logs its release);
        ``dp``: the release's differential-privacy query (each site noises).
        """
        names = list(site_names)
        kwargs: dict[str, Any] = {"audit": audit}
        if dp is not None:
            kwargs["dp"] = dp
        return self.engine.run_round(round_id, purpose, record_call(compute, names), names,
                                     **kwargs)

    def variable_reports(self, formula: str, site_names: Sequence[str], *,
                         audit: dict | None = None) -> dict[str, dict]:
        """Every site's variable report for ``formula`` (the factor-levels round)."""
        return self.engine.variable_reports(formula, list(site_names), audit=audit)

    def countersign(self, request: Any, log_lines: list[str],
                    site_names: Sequence[str]) -> list:
        """The sites' countersignatures of a checkpoint of the coordinator's audit log."""
        from dataclasses import asdict

        from securefed.audit_log import Countersignature

        signed = self.engine.countersign(asdict(request), log_lines, site_names)
        return [Countersignature(str(p["site"]), str(p["signature"]))
                for _, p in sorted(signed.items())]
