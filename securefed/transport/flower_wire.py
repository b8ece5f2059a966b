"""What the coordinator's ServerApp and a site's ClientApp put in Flower messages.

Every message is a Flower ``query.securefed`` message whose ``RecordDict``
holds one ``ConfigRecord`` named ``securefed``. Protocol bytes travel as
``bytes`` values in it, untouched; Flower carries them over TLS between
authenticated SuperNodes and the SuperLink.

======================  =======================================  ==========================
stage                   coordinator → site                       site → coordinator
======================  =======================================  ==========================
``open``                ``round`` (public round parameters,      ``length`` and ``payload``
                        JSON), ``call`` (a release call) and     (AdvertiseKeys bytes in a
                        ``setup`` (setup calls to apply first)   run's first round, else
                                                                 ShareKeys), or ``vector``
                                                                 (layer ``none``)
``share_keys``          ``payload`` (KeyList bytes; a run's      ``payload`` (ShareKeys)
                        first round only)
``masked_input``        ``payload`` (ShareBundle bytes)          ``payload`` (MaskedInput)
``consistency``         ``payload`` (ConsistencyRequest bytes)   ``payload`` (signature)
``unmask``              ``payload`` (UnmaskRequest bytes)        ``payload`` (UnmaskShares)
``countersign``         ``checkpoint`` (run, entry count, head   ``countersignature`` (JSON)
                        hash) and ``log`` (the coordinator's
                        audit log lines)
``variable_report``     ``formula`` (text) and ``sites`` (the    ``report`` (JSON: each
                        roster, JSON)                            variable's kind, the labels
                                                                 of a text column's levels)
======================  =======================================  ==========================

``variable_report`` is the factor-levels round before a fit: the site reads the
formula with the project's parser (data, never code) and reports which of its
variables are numbers and which categories its text columns hold, never
counts; its policy decides first (:meth:`securefed.policy.guard.SiteGuard.report`).
A study run's ``open`` also carries ``study`` (the study file's text): a
site whose policy pins the study's SHA-256 (``study_sha256``) refuses a round
without it, and any call whose model is not the study's.

With an audit trail, ``open`` also carries ``audit`` (the run id and layers,
JSON) and the site's reply adds ``release``: its signed release record (a
commitment to the vector, never the vector), already in the site's own log.

Every request after ``open`` names its round (``round_key``); a site answers
a request it cannot serve with ``error`` (one line) instead of a payload.

Layer ``ckks`` (:mod:`securefed.transport.flower_ckks`) adds the key holder's
stages ``ckks_context`` (its signed public context) and ``decrypt`` (one
aggregate per round); ``open`` then also carries the signed context, and a
site answers with its ciphertext and a signed receipt.
"""

from __future__ import annotations

import enum
import functools
import json
from dataclasses import dataclass

__all__ = ["Stage", "RoundParams", "RECORD", "MESSAGE_TYPE", "round_key"]

RECORD = "securefed"
MESSAGE_TYPE = "query.securefed"


class Stage(enum.Enum):
    """One message exchange between the coordinator and the live sites."""

    OPEN = "open"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    CONSISTENCY = "consistency"
    UNMASK = "unmask"
    COUNTERSIGN = "countersign"
    REPORT = "variable_report"  # the factor-levels round (labels only, never counts)
    CKKS_CONTEXT = "ckks_context"  # key holder only (layer ckks)
    DECRYPT = "decrypt"  # key holder only (layer ckks)


def round_key(session_id: bytes, round_id: int) -> str:
    """The name of one protocol instance: session and round."""
    return f"{session_id.hex()}:{round_id}"


@dataclass(frozen=True)
class RoundParams:
    """The public parameters of one round, as every site must see them.

    ``sites`` maps each site name of the round to its protocol id; ``layer``
    is ``"secagg"``, ``"ckks"`` or ``"none"``. Under ``secagg`` the round
    belongs to a run (``run_session``, ``run_sites``: its session id and
    roster, name → id): ``setup`` marks the run's first round, in which keys
    are advertised and agreed; a later round reuses them, lists only sites of
    the run that completed its previous round, and each site refuses a round
    of a run it has not agreed to (:mod:`protocols.secagg_run`). Without them
    the round is a run of its own.
    """

    layer: str
    session_id: bytes
    round_id: int
    purpose: str
    sites: dict[str, int]
    bound: float
    threshold: int | None = None
    neighbours: int | None = None
    min_contributors: int = 3
    run_session: bytes | None = None
    run_sites: dict[str, int] | None = None
    setup: bool = True

    @property
    def key(self) -> str:
        return round_key(self.session_id, self.round_id)

    def to_json(self) -> str:
        return self._json

    @functools.cached_property
    def _json(self) -> str:  # built once per instance: every message of a round needs it
        run = {} if self.run_session is None else {
            "run_session": self.run_session.hex(), "run_sites": self.run_sites,
            "setup": self.setup}
        return json.dumps({"layer": self.layer, "session_id": self.session_id.hex(),
                           "round_id": self.round_id, "purpose": self.purpose,
                           "sites": self.sites, "bound": self.bound,
                           "threshold": self.threshold, "neighbours": self.neighbours,
                           "min_contributors": self.min_contributors, **run}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RoundParams:
        """Parse (and check) round parameters; a text seen before is parsed once per
        process (the result is frozen; its dicts are never changed by any caller)."""
        return _parsed(str(text)) if cls is RoundParams else cls._parse(str(text))

    @classmethod
    def _parse(cls, text: str) -> RoundParams:
        data = json.loads(text)
        if data["layer"] not in ("secagg", "ckks", "none"):
            raise ValueError(f"unknown protection layer {data['layer']!r}")
        sites = {str(name): int(uid) for name, uid in data["sites"].items()}
        if len(set(sites.values())) != len(sites):
            raise ValueError("two sites share a protocol id")
        run_sites = None
        if "run_session" in data:
            run_sites = {str(name): int(uid) for name, uid in data["run_sites"].items()}
            if any(run_sites.get(name) != uid for name, uid in sites.items()):
                raise ValueError("a round's sites must be sites of its run")
        return cls(data["layer"], bytes.fromhex(data["session_id"]), int(data["round_id"]),
                   str(data["purpose"]), sites, float(data["bound"]),
                   None if data["threshold"] is None else int(data["threshold"]),
                   None if data["neighbours"] is None else int(data["neighbours"]),
                   int(data["min_contributors"]),
                   None if run_sites is None else bytes.fromhex(data["run_session"]),
                   run_sites, bool(data.get("setup", True)))

    def config(self, vector_length: int):
        """The :class:`~protocols.secagg_config.SecAggConfig` both sides build."""
        return _config(self.to_json(), int(vector_length))


@functools.lru_cache(maxsize=64)
def _parsed(text: str) -> RoundParams:
    return RoundParams._parse(text)


@functools.lru_cache(maxsize=64)
def _config(params_json: str, vector_length: int):
    """One frozen config per round and length (its neighbour graph is costly to build)."""
    from protocols.secagg_config import SecAggConfig

    params = RoundParams.from_json(params_json)
    run_sites = None if params.run_sites is None else tuple(sorted(params.run_sites.values()))
    return SecAggConfig(session_id=params.session_id, round_id=params.round_id,
                        site_ids=tuple(sorted(params.sites.values())),
                        vector_length=vector_length, bounds=params.bound,
                        threshold=params.threshold, neighbours=params.neighbours,
                        min_contributors=params.min_contributors,
                        run_session=params.run_session, run_sites=run_sites)
