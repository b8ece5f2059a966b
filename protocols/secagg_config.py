"""Public parameters of one secure-aggregation round, shared by sites and server.

Both sides build the same :class:`SecAggConfig` from public information
(roster, session and round ids, vector layout, bounds); everything derived
from it (graph, thresholds, encoding) is therefore identical everywhere and
never negotiated by the server.

A round belongs to a *run* (``run_session``, ``run_sites``): keys are agreed
once per run (:mod:`protocols.secagg_run`), the SecAgg+ graph is a function
of the run alone, and a round's roster is a subset of the run's. A config
without them is a run of its own (its first and only round).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

import numpy as np

from protocols.encoding import DEFAULT_TOLERANCE, FixedPointEncoder
from protocols.errors import ProtocolError
from protocols.graph import GraphError, default_threshold, neighbourhoods

__all__ = ["ConfigError", "SecAggConfig", "SERVER_ID", "MAX_SITE_ID", "CKKS_LIMB_BITS"]

SERVER_ID = -1
MAX_SITE_ID = 2**62
#: Masked words travel under CKKS as 16-bit limbs (four slots per 64-bit word).
CKKS_LIMB_BITS = 16


class ConfigError(ProtocolError, ValueError):
    """The round's parameters are unsafe or inconsistent; nothing was run."""


@dataclass(frozen=True, eq=False)
class SecAggConfig:
    """Parameters of one round of SecAgg (``neighbours=None``) or SecAgg+.

    Attributes
    ----------
    session_id, round_id
        Bound into every key derivation, associated data and signature.
    site_ids
        The roster taking part in this round (sorted, distinct, 0 ≤ id < 2^62).
    vector_length
        Number of float values each site contributes.
    bounds
        Scalar or per-coordinate bound on each site's |x_i|.
    threshold
        Shamir threshold t per share-holder set; default ⌊2m/3⌋ + 1 where
        m = n (complete graph) or k + 1 (SecAgg+). Must satisfy m/2 < t ≤ m.
    neighbours
        k for SecAgg+ (random k-regular graph); None for the complete graph.
    min_contributors
        Smallest number of inputs a released sum may contain.
    tolerance
        Target quantisation error of the decoded sum (chooses 1 or 2 words).
    ckks_context
        A CKKS key holder's serialised public context, or None. When set,
        sites send their masked words y_u only as CKKS ciphertexts under it
        (:class:`~protocols.secagg_messages.EncryptedMaskedInput`), the server
        adds them and the key holder decrypts only Σ y_u.
    run_session, run_sites
        The run this round belongs to: its session id (bound into the run's
        pair keys) and its roster (the sites that agreed keys; the SecAgg+
        graph is drawn over them). Default: this round's session and roster.
    """

    session_id: bytes
    round_id: int
    site_ids: tuple[int, ...]
    vector_length: int
    bounds: float | np.ndarray
    threshold: int | None = None
    neighbours: int | None = None
    min_contributors: int = 3
    tolerance: float = field(default=DEFAULT_TOLERANCE)
    ckks_context: bytes | None = field(default=None, repr=False)
    run_session: bytes | None = None
    run_sites: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        ids = tuple(int(u) for u in self.site_ids)
        object.__setattr__(self, "site_ids", tuple(sorted(ids)))
        if self.run_session is None:
            object.__setattr__(self, "run_session", self.session_id)
        run = ids if self.run_sites is None else tuple(int(u) for u in self.run_sites)
        object.__setattr__(self, "run_sites", tuple(sorted(run)))
        if len(set(run)) != len(run) or not set(ids) <= set(run):
            raise ConfigError("a round's sites must be distinct sites of its run")
        if not 1 <= len(self.run_session) <= 255:
            raise ConfigError("run_session must have 1 to 255 bytes")
        if len(set(ids)) != len(ids):
            raise ConfigError("site ids must be distinct")
        if any(not 0 <= u < MAX_SITE_ID for u in ids):
            raise ConfigError("site ids must be in [0, 2^62)")
        if len(ids) < 3:
            raise ConfigError("secure aggregation needs at least 3 sites")
        if not 1 <= len(self.session_id) <= 255:
            raise ConfigError("session_id must have 1 to 255 bytes")
        if not 0 <= self.round_id < 2**63:
            raise ConfigError("round_id must be a non-negative 63-bit integer")
        if self.vector_length < 1:
            raise ConfigError("vector_length must be positive")
        if not 1 <= self.min_contributors <= len(ids):
            raise ConfigError("min_contributors must be between 1 and the number of sites")
        holders = self.holder_count
        t = self.t
        if t < 2:
            raise ConfigError("threshold must be at least 2")
        if not holders / 2 < t <= holders:
            raise ConfigError(
                f"threshold {t} must exceed half of, and not exceed, the {holders} share holders"
            )
        try:
            _ = self.graph  # fail now if no graph of this degree exists
        except GraphError as exc:
            raise ConfigError(str(exc)) from exc
        _ = self.encoder  # fail now on bad bounds
        if self.ckks_context is not None:
            from protocols.ckks import public_context_params

            public_context_params(self.ckks_context)  # fail now on a bad or private context

    @property
    def n_sites(self) -> int:
        """Number of sites n in the roster."""
        return len(self.site_ids)

    @property
    def complete(self) -> bool:
        """True when every site of the run is every other's neighbour (SecAgg)."""
        return self.neighbours is None or self.neighbours >= len(self.run_sites) - 1

    @property
    def holder_count(self) -> int:
        """Size m of the share-holder sets H(u) = N(u) ∪ {u} (in the run's graph)."""
        return self.n_sites if self.complete else self.neighbours + 1

    @property
    def t(self) -> int:
        """The Shamir threshold in force."""
        return (
            self.threshold if self.threshold is not None else default_threshold(self.holder_count)
        )

    @cached_property
    def run_graph(self) -> dict[int, frozenset[int]]:
        """Neighbours of every site of the run (public: a function of run session and roster)."""
        return _run_graph(self.run_sites, self.neighbours, self.run_session)

    @cached_property
    def graph(self) -> dict[int, frozenset[int]]:
        """Neighbours N(u) of every site in this round: its run neighbours in the roster."""
        roster = frozenset(self.site_ids)
        return {u: self.run_graph[u] & roster for u in self.site_ids}

    @cached_property
    def _holder_sets(self) -> dict[int, frozenset[int]]:
        return {u: neighbours | {u} for u, neighbours in self.graph.items()}

    def holders(self, site: int) -> frozenset[int]:
        """H(u) = N(u) ∪ {u}: the sites holding shares of u's secrets."""
        return self._holder_sets[site]

    @cached_property
    def encoder(self) -> FixedPointEncoder:
        """The fixed-point encoding every site uses for this round."""
        return FixedPointEncoder.for_sum(
            self.bounds, self.n_sites, self.vector_length, tolerance=self.tolerance
        )

    def consistency_payload(self, alive: Sequence[int]) -> bytes:
        """Bytes a site signs to confirm the set of sites whose inputs are counted."""
        body = np.sort(np.asarray(alive, dtype=np.int64)).astype(">i8").tobytes()
        return (
            b"securefed/secagg/v1/consistency"
            + len(self.session_id).to_bytes(1, "big")
            + self.session_id
            + self.round_id.to_bytes(8, "big")
            + body
        )


@lru_cache(maxsize=64)
def _run_graph(
    sites: tuple[int, ...], neighbours: int | None, session: bytes
) -> dict[int, frozenset[int]]:
    """The run's graph, drawn once per process for every round of the run."""
    return neighbourhoods(sites, neighbours, session_id=session, round_id=0)
