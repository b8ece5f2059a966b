"""The coordinator: runs protected-sum rounds over the live sites.

It never sees a site's rows, and under a protection layer not even one site's
vector: each round it asks every live site for one vector, hands them to the
protection stack, and gets back their sum plus who contributed.

In-process (the default) the coordinator holds the :class:`Site` objects and
applies each round's ``compute`` closure to them. With a ``transport`` (e.g.
:class:`securefed.transport.flower_rounds.FlowerRounds`) the sites are remote:
the coordinator knows only their names, and the transport carries the same
closure to each site (as a recorded :class:`~securefed.transport.calls.SiteCall`),
where the site computes, noises, logs and protects its vector itself.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from protocols.errors import DifferencingRefused, ProtocolError
from protocols.stack import ProtectedSum
from securefed.audit_trail import AuditTrail
from securefed.privacy import DpQuery, PrivacyGuard
from securefed.site import Site

__all__ = ["Coordinator", "RemoteSite", "RoundRecord", "Transport"]


@dataclass(frozen=True)
class RoundRecord:
    round_id: int
    purpose: str
    length: int
    contributors: tuple[str, ...]
    dropped: tuple[str, ...]


@dataclass(frozen=True)
class RemoteSite:
    """A site the coordinator knows by name only (its data and code run elsewhere)."""

    name: str


class Transport(Protocol):
    """Carries rounds to remote sites (see :mod:`securefed.transport.flower_rounds`)."""

    def setup(self, compute: Callable[[Any], Any], site_names: Sequence[str]) -> None: ...

    def aggregate(self, purpose: str, compute: Callable[[Any], Any],
                  site_names: Sequence[str], round_id: int, *, dp: DpQuery | None = None,
                  audit: dict | None = None) -> Any: ...


class Coordinator:
    """Drives rounds; keeps the list of live sites and the traffic count."""

    def __init__(self, sites: Sequence[Site | RemoteSite], protection: ProtectedSum,
                 on_round: Callable[[RoundRecord], None] | None = None,
                 audit: AuditTrail | None = None, transport: Transport | None = None) -> None:
        names = [s.name for s in sites]
        if len(set(names)) != len(names):
            raise ValueError("two sites have the same name")
        if transport is None and any(isinstance(s, RemoteSite) for s in sites):
            raise ValueError("remote sites need a transport")
        self._sites = {s.name: s for s in sites}
        self.transport = transport
        self.protection = protection
        self.round_id = 0
        self.bytes_sent: Counter[str] = Counter()
        self.dropped: list[str] = []
        self.rounds: list[RoundRecord] = []
        self.site_set_version = 0
        self.seconds: Counter[str] = Counter()
        self._answers: dict[Hashable, tuple[frozenset[str], np.ndarray]] = {}
        self._on_round = on_round
        self.audit = audit

    @property
    def privacy(self) -> PrivacyGuard | None:
        """The DP step of the protection stack, if any."""
        return getattr(self.protection, "privacy", None)

    @property
    def live_sites(self) -> list[Site | RemoteSite]:
        return [s for name, s in self._sites.items() if name not in self.dropped]

    def counted_sites(self, *purposes: str) -> int:
        """How many sites the last round (of one of ``purposes``) summed: the sites a result
        counts.

        A site that dropped out after its masked input arrived is counted (its data is in
        the sum) although it is no longer live; a site that dropped before is not. Without
        such a round, the live sites.
        """
        for record in reversed(self.rounds):
            if not purposes or record.purpose in purposes:
                return len(record.contributors)
        return len(self.live_sites)

    def setup(self, compute: Callable[[Site], None]) -> None:
        """Every live site applies ``compute`` (e.g. ``prepare_glmm``); nothing is released."""
        if self.transport is not None:
            self.transport.setup(compute, [s.name for s in self.live_sites])
            return
        for site in self.live_sites:
            compute(site)

    def secure_sum(self, purpose: str, compute: Callable[[Site], np.ndarray],
                   key: Hashable | None = None, dp: DpQuery | None = None) -> np.ndarray:
        """One round: every live site computes its vector; returns the protected sum.

        A site that drops out stays out for the rest of the run. The round's
        sum is used as the protocol delivered it: it counts a dropped site
        whose masked input had arrived. Rounds are never re-run without a site,
        because two sums of the same query over site sets that differ by one
        site reveal that site's vector. ``key`` names the query (purpose and
        parameters): asked again over the same sites, the sum is returned
        without a new round; over different sites, it is refused
        (:class:`DifferencingRefused`). ``site_set_version`` counts dropouts,
        so an iterative fit knows its objective changed.

        Under differential privacy (``protection.privacy``) every release
        needs ``dp`` (its sensitivity and budget): each site's ledger is
        charged and its noise added before the vector is logged or sent; a
        release over any site's budget raises before anything leaves.
        """
        live = frozenset(s.name for s in self.live_sites)
        if key is not None and key in self._answers:
            sites, total = self._answers[key]
            if sites == live:
                return total.copy()
            raise DifferencingRefused(
                f"{purpose}: this query was answered over another set of sites; answering it "
                "again would reveal the difference")
        self.round_id += 1
        if self.transport is not None:
            result = self._remote_round(purpose, compute, dp)
        else:
            result = self._local_round(purpose, compute, dp)
        for name, count in result.bytes_sent_per_site.items():
            self.bytes_sent[name] += count
        record = RoundRecord(self.round_id, purpose, len(result.total), result.contributors,
                             result.dropped)
        self.rounds.append(record)
        if self._on_round is not None:
            self._on_round(record)
        newly = [name for name in result.dropped if name not in self.dropped]
        if newly:
            self.dropped.extend(newly)
            self.site_set_version += 1
        if key is not None:
            self._answers[key] = (frozenset(result.contributors), result.total.copy())
        return result.total

    def _local_round(self, purpose: str, compute: Callable[[Site], np.ndarray],
                     dp: DpQuery | None):
        """Compute, noise and log every live site's vector here; aggregate them."""
        started = time.perf_counter()
        vectors = {site.name: np.asarray(compute(site), dtype=float) for site in self.live_sites}
        self.seconds["sites_statistics"] += time.perf_counter() - started
        privacy = self.privacy
        if privacy is not None:
            started = time.perf_counter()
            vectors = privacy.apply(vectors, dp, self.round_id)
            self.seconds["privacy_noise"] += time.perf_counter() - started
        if self.audit is not None:
            self.audit.round_spec(self.round_id, purpose, len(next(iter(vectors.values()))))
            for name, vector in vectors.items():
                fields = privacy.privacy_fields(name) if privacy is not None else None
                self.audit.release(name, vector, self.round_id, purpose, fields)
        started = time.perf_counter()
        result = self.protection.aggregate(vectors, round_id=self.round_id, purpose=purpose)
        self.seconds["protection_total"] += time.perf_counter() - started
        for side in ("site", "server"):
            if f"seconds_{side}" in result.details:
                self.seconds[f"protection_{side}"] += float(result.details[f"seconds_{side}"])
        if self.audit is not None:
            self.audit.aggregation(self.round_id, purpose, result.contributors, result.dropped,
                                   result.details.get("dropout_reasons"))
        return result

    def _remote_round(self, purpose: str, compute: Callable[[Site], np.ndarray],
                      dp: DpQuery | None):
        """The transport runs the round at the sites; each site logs its own release.

        The sites return their signed release records (commitments, no
        values) with the round; the coordinator's log gets them after the
        round, between its ROUND_SPEC and AGGREGATION entries.
        """
        started = time.perf_counter()
        audit = None if self.audit is None else self.audit.remote_context()
        try:
            result = self.transport.aggregate(purpose, compute,
                                              [s.name for s in self.live_sites], self.round_id,
                                              audit=audit,
                                              dp=dp if self.privacy is not None else None)
        except ProtocolError as err:  # aborted after the sites logged: the log says so too
            released = getattr(err, "released", None)
            if self.audit is not None and released is not None:
                self.audit.round_spec(self.round_id, purpose, released[0])
                self._log_releases(released[1])
            raise
        elapsed = time.perf_counter() - started
        sites = float(result.details.get("seconds_sites", 0.0))  # in-process: the sites' time
        if "seconds_sites" in result.details:
            self.seconds["sites_statistics"] += sites
        self.seconds["protection_total"] += max(elapsed - sites, 0.0)
        for side in ("site", "server"):
            if f"seconds_{side}" in result.details:
                self.seconds[f"protection_{side}"] += float(result.details[f"seconds_{side}"])
        if self.audit is not None:
            self.audit.round_spec(self.round_id, purpose, len(result.total))
            self._log_releases(result.details.get("releases", {}))
            self.audit.aggregation(self.round_id, purpose, result.contributors, result.dropped,
                                   result.details.get("dropout_reasons"))
        return result

    def _log_releases(self, releases: dict) -> None:
        """The sites' signed release records, in the coordinator's order of its sites."""
        for site in self.live_sites:
            if site.name in releases:
                self.audit.remote_release(releases[site.name])

    def abort_audit(self, error: Exception) -> None:
        """Log why the run stopped (REFUSAL) and close the log with a checkpoint."""
        if self.audit is None:
            return
        from protocols.errors import PrivacyBudgetExceeded
        from securefed.plausibility import ImplausibleAggregate

        reason = ("IMPLAUSIBLE" if isinstance(error, ImplausibleAggregate)
                  else "BUDGET" if isinstance(error, PrivacyBudgetExceeded) else "ABORT")
        self.audit.refusal(self.round_id, reason, str(error))
        self.audit.close([s.name for s in self.live_sites])

    def finish_audit(self, result: dict, kind: str) -> None:
        """Log the result and a checkpoint countersigned by the surviving sites."""
        if self.audit is not None:
            self.audit.finish(result, kind, [s.name for s in self.live_sites])

    def timings(self, total_seconds: float) -> dict[str, float]:
        """Seconds per stage: sites' statistics, protection (site and server side), rest."""
        out = {k: round(v, 6) for k, v in sorted(self.seconds.items())}
        spent = (self.seconds["sites_statistics"] + self.seconds["protection_total"]
                 + self.seconds["privacy_noise"])
        out["coordinator_statistics_and_io"] = round(max(total_seconds - spent, 0.0), 6)
        out["total"] = round(total_seconds, 6)
        return out

    def release_list(self) -> tuple[dict, ...]:
        """Every round so far: its id, purpose, vector length and number of contributors."""
        return tuple({"round": r.round_id, "purpose": r.purpose, "length": r.length,
                      "contributors": len(r.contributors)} for r in self.rounds)

    def mean_bytes_per_site(self) -> int:
        if not self.bytes_sent:
            return 0
        return int(round(sum(self.bytes_sent.values()) / len(self.bytes_sent)))
