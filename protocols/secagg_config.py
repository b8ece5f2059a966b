"""Public parameters of one secure-aggregation round, shared by sites and server.

Both sides build the same :class:`SecAggConfig` from public information
(roster, session and round ids, vector layout, bounds); everything derived
from it (graph, thresholds, encoding) is therefore identical everywhere and
never negotiated by the server.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

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

    def __post_init__(self) -> None:
        ids = tuple(int(u) for u in self.site_ids)
        object.__setattr__(self, "site_ids", tuple(sorted(ids)))
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
    def holder_count(self) -> int:
        """Size m of every share-holder set H(u) = N(u) ∪ {u}."""
        if self.neighbours is None or self.neighbours >= self.n_sites - 1:
            return self.n_sites
        return self.neighbours + 1

    @property
    def t(self) -> int:
        """The Shamir threshold in force."""
        return (
            self.threshold if self.threshold is not None else default_threshold(self.holder_count)
        )

    @cached_property
    def graph(self) -> dict[int, frozenset[int]]:
        """Neighbours N(u) of every site (public, derived from session, round, roster)."""
        return neighbourhoods(
            self.site_ids, self.neighbours, session_id=self.session_id, round_id=self.round_id
        )

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
