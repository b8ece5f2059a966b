"""The coordinator's side over Flower: one protected sum per call, inside a ServerApp.

:class:`FlowerEngine` does over Flower messages exactly what
:func:`protocols.secagg.secure_sum` does in-process: it drives a
:class:`~protocols.secagg_server.SecAggServer` and exchanges only its bytes
with each site's ClientApp (:mod:`securefed.transport.flower_client`), one
message exchange per protocol stage (:mod:`securefed.transport.flower_wire`).

A stage closes when every asked site has answered, or ``grace`` seconds after
the first answer, or after ``stage`` seconds; a site that has not answered by
then has dropped out and the protocol's recovery takes over. Replies are
pulled only for the current stage's message ids, so a late reply to an
earlier stage or round is never read.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocols.errors import EncodingError, ProtocolError
from protocols.stack import AggregateResult
from securefed.keys import Registry, public_key_from_hex
from securefed.privacy import DpQuery
from securefed.transport.calls import RemoteCallError, SiteCall
from securefed.transport.flower_wire import RoundParams, Stage
from securefed.transport.messages import SiteGrid, SiteMessage
from securefed.transport.replies import byte_field, json_field, screen_lengths, screen_vectors
from securefed.transport.site_privacy import (
    check_receipts,
    noise_contributors,
    query_to_json,
    raise_budget_refusals,
)

__all__ = ["FlowerEngine", "StageTimeouts", "SiteRefused"]

Observer = Callable[[Stage, tuple[str, ...]], None]


class SiteRefused(ProtocolError):
    """A site could not compute what the round asked (nothing was released)."""


class OutOfBound(SiteRefused, EncodingError):
    """Every refusing site had a value above the round's declared bound."""


class RowsCannotServe(SiteRefused, EncodingError):
    """Every refusing site's rows cannot give the statistic (an input problem: exit 2)."""


@dataclass(frozen=True)
class StageTimeouts:
    """How long one stage waits: ``stage`` at most, ``grace`` after the first reply."""

    stage: float = 300.0
    grace: float = 60.0
    poll: float = 0.1


@dataclass
class _Exchange:
    replies: dict[str, Mapping] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)  # malformed replies, set aside
    seconds: float = 0.0  # from sending to the stage's close
    spread: float = 0.0  # from the first reply to the last


def _reasons(rejected: Mapping[str, str]) -> dict[str, object]:
    """``{"dropout_reasons": ...}`` for a result's details when a reply was set aside."""
    return {"dropout_reasons": dict(sorted(rejected.items()))} if rejected else {}


def _raise_refusals(errors: Mapping[str, str]) -> None:
    """Raise what the sites' refusals mean (budget, bound, rows, or any other refusal)."""
    raise_budget_refusals(errors)
    text = "; ".join(f"{n}: {e}" for n, e in sorted(errors.items()))
    if all(e.startswith("above-bound:") for e in errors.values()):
        # a value to fix (standardise, raise the bound): exit 2, as in-process
        raise OutOfBound(text)
    if all(e.startswith("cannot-compute:") for e in errors.values()):
        raise RowsCannotServe("; ".join(  # the data to fix (a one-row site): exit 2
            f"site {n}: {e}" for n, e in sorted(errors.items())))
    raise SiteRefused(text)


class FlowerEngine:
    """Runs protected sums over the sites' ClientApps.

    Parameters
    ----------
    grid : SiteGrid or flwr.serverapp.Grid
        The connected nodes: the runtime's own grid (the in-process loopback)
        or a ServerApp's Flower ``Grid`` (adapted by
        :class:`~securefed.transport.flower_grid.FlowerGrid`).
    identity : Ed25519PrivateKey
        The coordinator's signing key (registered as ``"coordinator"``).
    registry : Registry
        The consortium's public keys; a SuperNode is a site if it was
        registered (``flwr supernode register --name``) under a name found here.
    protection : object
        A ``protocols.stack`` layer whose parameters this engine uses:
        ``SecAggSum`` (``bound``, ``neighbours``, ``threshold``,
        ``min_contributors``), ``PlaintextSum``, or
        :class:`~securefed.transport.flower_ckks.RemoteCkksSum` (``ckks``;
        never ``CkksSum``, whose key holder lives in this process); the first
        two may be wrapped in :class:`~securefed.protection.PrivateSum`
        (``secagg,dp``, ``dp``): then every round needs a ``dp`` query, and
        each site adds its own noise and charges its own budget
        (:mod:`securefed.transport.site_privacy`).
    timeouts : StageTimeouts
    observer : callable, optional
        Called as ``observer(stage, sites_that_answered)`` after each stage.
    key_holder : str, optional
        The registry name of the CKKS key holder's SuperNode (required for
        ``ckks``); it is never treated as a site.
    """

    def __init__(self, grid: SiteGrid | object, identity: Ed25519PrivateKey, registry: Registry,
                 protection: object, timeouts: StageTimeouts = StageTimeouts(),
                 observer: Observer | None = None, key_holder: str | None = None) -> None:
        self.privacy = getattr(protection, "privacy", None)  # PrivacyGuard under ...,dp
        if self.privacy is not None:
            protection = protection.inner
            if getattr(protection, "name", None) == "ckks":
                raise ValueError("protection 'ckks,dp' does not run over Flower yet "
                                 "(available: secagg,dp, dp)")
        layer = getattr(protection, "name", None)
        if layer not in ("secagg", "none", "ckks"):
            raise ValueError(f"protection {layer!r} does not run over Flower yet "
                             "(available: secagg, ckks, none)")
        self._grid = _site_grid(grid)
        self._identity = identity
        self._registry = registry
        self._protection = protection
        self._layer = layer
        self._session = secrets.token_bytes(16)
        self._runs = 0  # secure-aggregation runs begun (one key agreement each)
        self._run = None  # the current run: protocols.secagg_run.ServerRun
        self._run_session = b""
        self._run_sites: dict[str, int] = {}
        self.timeouts = timeouts
        self.observer = observer
        self._setup: list[str] = []
        #: the study file's text, sent with every ``open`` (a site whose policy pins the
        #: study's SHA-256 refuses a round without it, or under another model)
        self.study_text: str | None = None
        self.current_round = 0  # the round being run (observers read it)
        self._masked: dict[str, Mapping] = {}  # the last round's masked-input replies
        #: (stage, seconds, spread of the replies) of every exchange so far
        self.stage_log: list[tuple[str, float, float]] = []
        self._ids = {name: uid for uid, name in enumerate(sorted(registry.parties), start=1)}
        self.key_holder = key_holder
        self._ckks = None
        if layer == "ckks":
            from securefed.transport.flower_ckks import ckks_rounds

            self._ckks = ckks_rounds(self._exchange, registry, key_holder, protection)

    # ------------------------------------------------------------- sites
    def _nodes(self) -> dict[str, int]:
        """Party name → Flower node id of every connected registered SuperNode."""
        nodes = {}
        for node in self._grid.nodes():
            name = str(node.name)
            if name in self._registry and name != "coordinator":
                nodes[name] = int(node.node_id)
        return nodes

    def sites(self) -> dict[str, int]:
        """Site name → Flower node id of every connected SuperNode registered as a site."""
        return {n: i for n, i in self._nodes().items() if n != self.key_holder}

    def wait_for_sites(self, names: Iterable[str], timeout: float = 60.0) -> dict[str, int]:
        """Block until every site in ``names`` (and, under ``ckks``, the key holder) is connected.

        TimeoutError otherwise.
        """
        wanted = set(names) | ({self.key_holder} if self._ckks is not None else set())
        deadline = time.monotonic() + timeout
        while not wanted <= set(nodes := self._nodes()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"sites not connected: {sorted(wanted - set(nodes))}")
            time.sleep(self.timeouts.poll)
        return self.sites()

    # ------------------------------------------------------------ rounds
    def setup(self, call: SiteCall) -> None:
        """Queue a setup call; every site applies it before computing its next vector.

        It travels with the next round's first message, so setup costs no
        message exchange of its own; a site that cannot apply it refuses
        that round (:class:`SiteRefused`).
        """
        if call.releases:
            raise RemoteCallError(f"Site.{call.method} releases a vector: use run_round")
        self._setup.append(call.to_json())

    def run_round(self, round_id: int, purpose: str, call: SiteCall,
                  site_names: Iterable[str], *, dp: DpQuery | None = None,
                  audit: dict | None = None) -> AggregateResult:
        """One protected sum of ``call``'s vector over ``site_names``.

        Returns the sum over the contributors (sites whose input is in it);
        ``dropped`` lists the asked sites that missed a stage (a site not
        connected when the round opens has missed it). Under DP
        (``protection.privacy``) ``dp`` states the release's Δ and ρ; the
        sites check it, add their noise and charge their own ledgers. With
        ``audit`` (the run's id and layers,
        :meth:`~securefed.audit_trail.AuditTrail.remote_context`) every site
        logs its release (under DP: the noisy vector, when it is masked) in
        its own log and returns the signed record, found in
        ``details["releases"]`` (site → payload); when the round aborts after
        the sites logged, the error's ``released`` holds ``(length, releases)``.

        Raises
        ------
        SiteRefused
            A site could not compute its vector (bad call, bound, non-finite).
        SiteBudgetExceeded
            A site refused over its own privacy budget; nothing is released.
        DpRefused
            A site refused the round's DP terms, or did not confirm its noise.
        AbortError
            Too few sites left for the protocol; nothing is released.
        """
        if not call.releases:
            raise RemoteCallError(f"Site.{call.method} releases nothing: use setup")
        names = sorted(site_names)
        self.current_round = round_id
        self._masked = {}
        gone: tuple[str, ...] = ()
        if self._layer == "secagg":
            names, gone = self._join_run(round_id, names)
        params = self._params(round_id, purpose, names)
        request = {"round": params.to_json(), "call": call.to_json()}
        if self._setup:
            request["setup"] = list(self._setup)
        if self.study_text is not None:
            request["study"] = self.study_text
        if audit is not None:
            request["audit"] = json.dumps(audit, sort_keys=True)
        if self._ckks is not None:
            request.update(self._ckks.open_fields())
        m = self._dp_contributors(dp)
        if dp is not None:
            request["dp"] = query_to_json(dp, m, self.privacy.plan_rho_left())
        opened = self._exchange(Stage.OPEN, dict.fromkeys(names, request))
        self._setup.clear()
        if opened.errors:
            _raise_refusals(opened.errors)
        length = self._screen_open(opened)
        if dp is not None:
            self._admit_dp(dp, round_id, opened, m, length)
        try:
            if self._layer == "none":
                result = self._plain_sum(names, opened)
            elif self._ckks is not None:
                result = self._ckks.finish(params, names, opened.replies)
            else:
                result = self._secagg(params, names, opened, length)
        except ProtocolError as err:  # aborted: what the sites logged is still theirs
            if audit is not None:
                err.released = (length, self._releases(opened, dp))  # type: ignore[attr-defined]
            raise
        if gone:  # left the run earlier: never asked again, and not counted
            result = AggregateResult(result.total, result.contributors,
                                     tuple(sorted({*result.dropped, *gone})),
                                     result.bytes_sent_per_site, result.details)
        reasons = {**opened.rejected, **result.details.get("dropout_reasons", {})}
        if reasons:
            result.details["dropout_reasons"] = dict(sorted(reasons.items()))
        if audit is not None:
            result.details["releases"] = self._releases(opened, dp)
        return result

    def variable_reports(self, formula: str, site_names: Iterable[str], *,
                         audit: dict | None = None) -> dict[str, dict]:
        """The factor-levels round: each site's variable report for ``formula``.

        Each site's policy decides first (labels only, never counts; see
        :meth:`securefed.policy.guard.SiteGuard.report`). Raises
        :class:`SiteRefused` if a site refuses, and :class:`RowsCannotServe`
        if one does not answer: levels agreed without a site could change its
        columns. ``audit``: the run's audit context (a site that pins its
        registry checks the run's against it first).
        """
        names = sorted(site_names)
        request = {"formula": str(formula), "sites": json.dumps(names)}
        if audit is not None:
            request["audit"] = json.dumps(audit, sort_keys=True)
        exchange = self._exchange(Stage.REPORT, dict.fromkeys(names, request))
        if exchange.errors:
            _raise_refusals(exchange.errors)
        reports = {n: json_field(r, "report") for n, r in exchange.replies.items()}
        missing = [n for n in names if not isinstance(reports.get(n), dict)]
        if missing:
            raise SiteRefused("no variable report from site(s) " + ", ".join(missing)
                              + ": the factor levels cannot be agreed without them")
        return {n: reports[n] for n in names}
    def _releases(self, opened: _Exchange, dp: DpQuery | None) -> dict[str, dict]:
        """Site → the signed release record it logged this round (under DP and a masking
        layer a site logs its release as it masks it)."""
        logged = opened.replies if dp is None or self._layer == "none" else self._masked
        releases = {n: json_field(r, "release") for n, r in sorted(logged.items())}
        return {n: r for n, r in releases.items() if r is not None}

    def countersign(self, request: dict, log_lines: list[str],
                    site_names: Iterable[str]) -> dict[str, dict]:
        """Each site checks the coordinator's log against its own and countersigns its head.

        Returns site → countersignature payload; a site that refuses or does
        not answer is missing from it (the checkpoint then lacks its signature).
        """
        exchange = self._exchange(Stage.COUNTERSIGN, dict.fromkeys(sorted(site_names), {
            "checkpoint": json.dumps(request, sort_keys=True), "log": "\n".join(log_lines)}))
        return {n: json.loads(str(r["countersignature"])) for n, r in exchange.replies.items()}

    def _dp_contributors(self, dp: DpQuery | None) -> int:
        """m the noise is sized for (1 when the coordinator sees single vectors)."""
        if self.privacy is None:
            if dp is not None:
                raise ValueError("a DP query needs the protection wrapped in PrivateSum")
            return 0
        if dp is None:
            raise ProtocolError("this release has no stated sensitivity; under DP nothing "
                                "leaves a site without one")
        if dp.local_length is not None:  # noised at each site for itself: the whole noise
            return 1
        return noise_contributors(self._layer, int(self.privacy.min_contributors),
                                  len(self._ids))

    def _admit_dp(self, dp: DpQuery, round_id: int, opened: _Exchange, m: int,
                  length: int) -> None:
        """Every site's receipt matches the coordinator's calibration; record the release."""
        if dp.local_length is not None:  # the sites noised their own copies, of this length
            length = dp.local_length
        check_receipts(opened.replies, dp, m, length)
        self.privacy.admit_remote(dp, round_id, sorted(opened.replies), length, m)

    def _screen_open(self, opened: _Exchange) -> int:
        """Keep the well-formed ``open`` replies of the majority length; that length.

        A malformed reply is its site's dropout (``opened.rejected`` says why).
        """
        from protocols.errors import AbortError

        if self._layer == "none":
            vectors, rejected = screen_vectors(opened.replies)
            length = len(next(iter(vectors.values()))) if vectors else None
            kept = {n: opened.replies[n] for n in vectors}
        else:
            length, screened = screen_lengths(opened.replies)
            kept, rejected = screened.replies, screened.rejected
        opened.replies = kept
        opened.rejected.update(rejected)
        if length is None:
            raise AbortError("no well-formed vector length among the sites' replies: "
                             "nothing is released")
        return length

    def _join_run(self, round_id: int, names: list[str]) -> tuple[list[str], tuple[str, ...]]:
        """The round's sites in the current secure-aggregation run, and those that left it.

        A run begins with the first round (or when round ids start again, or
        the last run ended); its keys serve every later round. A site that did
        not complete the run's previous round is not asked again in that run.
        """
        run = self._run
        if run is None or run.closed or run.last_round is None or round_id <= run.last_round:
            self._runs += 1
            self._run = None
            self._run_session = hashlib.sha256(
                self._session + b"/run/" + self._runs.to_bytes(8, "big")).digest()[:16]
            self._run_sites = {n: self._ids[n] for n in names if n in self._ids}
            return names, ()
        eligible = {n for n, uid in self._run_sites.items() if uid in run.eligible}
        return [n for n in names if n in eligible], tuple(n for n in names if n not in eligible)

    def _params(self, round_id: int, purpose: str, names: list[str]) -> RoundParams:
        unknown = [n for n in names if n not in self._ids]
        if unknown:
            raise ValueError(f"sites not in the registry: {unknown}")
        if self.key_holder in names:
            raise ValueError(f"{self.key_holder!r} is the key holder, not a site")
        protection = self._protection
        run = {}
        if self._layer == "secagg":
            run = {"run_session": self._run_session, "run_sites": dict(self._run_sites),
                   "setup": self._run is None}
            session = hashlib.sha256(self._run_session + purpose.encode()).digest()[:16]
        else:
            session = hashlib.sha256(self._session + purpose.encode()).digest()[:16]
        return RoundParams(self._layer, session, round_id, purpose,
                           {n: self._ids[n] for n in names},
                           float(getattr(protection, "bound", 0.0)),
                           getattr(protection, "threshold", None),
                           getattr(protection, "neighbours", None),
                           int(getattr(protection, "min_contributors", 1)), **run)

    def _plain_sum(self, names: list[str], opened: _Exchange) -> AggregateResult:
        from protocols.stack import PlaintextSum

        vectors, _ = screen_vectors(opened.replies)  # screened already: none is set aside
        result = PlaintextSum().aggregate(vectors, round_id=0, purpose="")
        dropped = tuple(n for n in names if n not in vectors)
        return AggregateResult(result.total, result.contributors, dropped,
                               {n: 8 * len(v) for n, v in vectors.items()}, {})

    def _secagg(self, params: RoundParams, names: list[str], opened: _Exchange,
                length: int) -> AggregateResult:
        from protocols.secagg_server import SecAggServer

        rejected: dict[str, str] = {}
        roster = {uid: public_key_from_hex(self._registry.public_key_hex(n))
                  for n, uid in params.sites.items()}
        server = SecAggServer(params.config(length), self._identity, roster, run=self._run)
        self._run = server.run  # the run's keys and who may take part next
        by_id = {uid: n for n, uid in params.sites.items()}
        sent = dict.fromkeys(names, 0)
        seconds = 0.0
        replies = opened.replies
        # a run's first round opens with the keys; later rounds with this round's shares
        first = (Stage.SHARE_KEYS,) if params.setup else ()
        for stage in (*first, Stage.MASKED_INPUT, Stage.CONSISTENCY, Stage.UNMASK, None):
            started = time.perf_counter()
            for name, reply in sorted(replies.items()):
                payload = byte_field(reply, "payload")
                if payload is None:
                    rejected.setdefault(name, "reply has no byte 'payload'")
                    continue
                try:
                    server.receive(payload)
                    sent[name] += len(payload)
                except ProtocolError as exc:  # no valid message: that site has dropped
                    why = server.rejected.get(params.sites[name], f"message rejected: {exc}")
                    rejected.setdefault(name, why)
            outgoing = server.advance()  # AbortError propagates: nothing released
            seconds += time.perf_counter() - started
            if stage is None:
                break
            exchange = self._exchange(stage, {
                by_id[uid]: {"round_key": params.key, "payload": data}
                for uid, data in outgoing.items()})
            replies = exchange.replies
            if stage is Stage.MASKED_INPUT:
                self._masked = replies
        outcome = server.outcome
        for uid, why in outcome.rejected.items():  # e.g. a share off the others' polynomial
            rejected.setdefault(by_id[uid], why)
        contributors = tuple(sorted(by_id[u] for u in outcome.contributors))
        answered_all = set(replies) - set(rejected)
        dropped = tuple(n for n in names if n not in answered_all)
        return AggregateResult(outcome.total, contributors, dropped, sent,
                               {"seconds_server": seconds, **_reasons(rejected)})

    # ---------------------------------------------------------- messages
    def _exchange(self, stage: Stage, contents: Mapping[str, dict]) -> _Exchange:
        """Send one message per site, collect the replies of this stage only."""
        nodes = self._nodes()
        result = _Exchange()
        messages = []
        for name, content in contents.items():
            if name not in nodes:
                continue  # not connected: it sends no reply, so it has dropped out
            messages.append(SiteMessage({"stage": stage.value, **content}, nodes[name]))
        names_by_node = {node: name for name, node in nodes.items()}
        pending = (set(self._grid.push(messages, self.timeouts.stage + 60.0)) if messages
                   else set())
        started = time.monotonic()
        first_reply: float | None = None
        last_reply = started
        while pending:
            for reply in self._grid.pull(list(pending)):
                pending.discard(reply.reply_to)
                name = names_by_node.get(reply.node_id)
                if name is None:
                    continue
                last_reply = time.monotonic()
                first_reply = first_reply or last_reply
                record = reply.record
                if reply.error is not None:
                    result.errors[name] = str(reply.error)
                elif record is None:  # a malformed reply: that site has dropped out
                    result.rejected[name] = "reply has no securefed record"
                elif "error" in record:
                    result.errors[name] = str(record["error"])
                else:
                    result.replies[name] = record
            now = time.monotonic()
            if not pending or now - started > self.timeouts.stage or (
                    first_reply is not None and now - first_reply > self.timeouts.grace):
                break
            time.sleep(self.timeouts.poll)
        result.seconds = time.monotonic() - started
        result.spread = last_reply - (first_reply or last_reply)
        self.stage_log.append((stage.value, round(result.seconds, 2), round(result.spread, 2)))
        if self.observer is not None:
            self.observer(stage, tuple(sorted(result.replies)))
        return result


def _site_grid(grid: object) -> SiteGrid:
    """The runtime's grid for ``grid``: itself, or a Flower ``Grid`` behind its adapter."""
    if hasattr(grid, "push_messages"):  # a Flower Grid (a ServerApp's, or a test's)
        from securefed.transport.flower_grid import FlowerGrid

        return FlowerGrid(grid)
    return grid  # type: ignore[return-value]
