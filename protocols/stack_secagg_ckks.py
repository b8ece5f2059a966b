"""Secure aggregation whose masked inputs travel under CKKS (``--protect secagg,ckks``).

TenSEAL has no threshold decryption, so under plain CKKS a key holder who
colludes with the coordinator decrypts any one site's vector. Here the
secure-aggregation protocol runs unchanged (keys, Shamir shares, consistency
check, unmasking, dropouts at every phase), but each site's masked input

    y_u = q(x_u) + PRG(b_u) ± Σ_v PRG(s_uv)   in Z_{2^64}

leaves the site only as a CKKS ciphertext of its 16-bit limbs, signed in
the site's envelope. The coordinator checks each ciphertext against the
public context on arrival, adds those of the sites whose input arrived (U3)
with the public context, and the key holder decrypts only that sum,
Σ_{u∈U3} y_u (exactly: limb sums are integers); the coordinator then removes
the masks with the unmask-phase shares as in :mod:`protocols.secagg_server`.

What each party sees: the coordinator, ciphertexts and Σ y_u (never one y_u);
the key holder, one encrypted sum and Σ y_u, which is uniformly masked by
Σ PRG(b_u). A key holder colluding with the coordinator that decrypts one
site's ciphertext gets y_u, still uniformly masked; to learn x_u it also
needs b_u and u's pair seeds of that round, i.e. the SecAgg collusion threshold
(``threat_model/secagg.md`` §3, §4a).
See ``threat_model/ckks_dp.md``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from protocols.ckks import CkksAggregate, CkksKeyHolder
from protocols.stack import (
    DEFAULT_BOUND,
    AggregateResult,
    DropPlan,
    SecAggRuns,
    _check_bound,
    check_vectors,
    dropout_reasons,
    dropouts,
)

__all__ = ["SecAggCkksSum"]


class SecAggCkksSum:
    """Secure aggregation (SecAgg, or SecAgg+ with ``neighbours``) with CKKS-encrypted inputs.

    Same interface and options as :class:`protocols.stack.SecAggSum`; the
    released total is bit for bit the one ``SecAggSum`` releases for the same
    contributors (the same fixed-point encoding, exact ring sums). The key
    holder is a separate party (in-process: an object the coordinator only
    asks to decrypt); it is generated here unless one is passed in.
    """

    name = "secagg,ckks"

    def __init__(self, *, bound: float = DEFAULT_BOUND, neighbours: int | None = None,
                 threshold: int | None = None, min_contributors: int = 3,
                 drop: DropPlan | None = None, key_holder: CkksKeyHolder | None = None,
                 per_run: bool = True) -> None:
        self.bound = float(bound)
        self.neighbours = neighbours
        self.threshold = threshold
        self.min_contributors = min_contributors
        self.drop = drop
        self._key_holder = key_holder if key_holder is not None else CkksKeyHolder.generate()
        self.public_context = self._key_holder.public_context()
        self.runs = SecAggRuns(per_run=per_run, threshold=threshold, neighbours=neighbours,
                               min_contributors=min_contributors,
                               ckks_context=self.public_context)
        self._ids: dict[str, int] = {}

    def _purpose(self, purpose: str) -> str:
        """The round's purpose, also bound to the key holder's public key."""
        return f"secagg,ckks/v1/{self._key_holder.fingerprint}/{purpose}"

    def aggregate(self, vectors: Mapping[str, np.ndarray], *, round_id: int,
                  purpose: str) -> AggregateResult:
        """Σ of the contributors' vectors; AbortError (nothing released) below t or m."""
        from protocols.secagg import DropPhase

        check_vectors(vectors)
        _check_bound(vectors, self.bound)
        names = sorted(vectors)
        for name in names:
            self._ids.setdefault(name, len(self._ids) + 1)
        by_id = {self._ids[n]: np.asarray(vectors[n], dtype=float) for n in names}
        plan = self.drop if self.drop is not None and self.drop.round_id == round_id else None
        drop_sites = tuple(self._ids[s] for s in plan.sites if s in vectors) if plan else ()
        key_holder = _KeyHolderCalls(self._key_holder)
        result = self.runs.round(
            by_id, round_id=round_id, purpose=self._purpose(purpose), bounds=self.bound,
            drop_sites=drop_sites,
            drop_phase=DropPhase.from_cli(plan.phase) if drop_sites else None,
            decrypt_masked_total=key_holder.decrypt)
        site_of = {u: n for n, u in self._ids.items()}
        return AggregateResult(
            result.total, tuple(site_of[u] for u in result.contributors),
            dropouts(result, site_of),
            {site_of[u]: b for u, b in result.bytes_sent_per_site.items()},
            {"seconds_site": result.seconds_site, "seconds_server": result.seconds_server,
             "seconds_key_holder": key_holder.seconds, "bytes_to_key_holder": key_holder.bytes_in,
             "key_holder_summands": key_holder.summands, **dropout_reasons(result, site_of)})


class _KeyHolderCalls:
    """The coordinator's line to the key holder for one round: decrypt, and count."""

    def __init__(self, key_holder: CkksKeyHolder) -> None:
        self._key_holder = key_holder
        self.seconds = 0.0
        self.bytes_in = 0
        self.summands: tuple[int, ...] = ()

    def decrypt(self, aggregate: CkksAggregate) -> np.ndarray:
        """Σ_{u∈U3} y_u mod 2^64 from the encrypted sum (exact, or CkksError)."""
        start = time.perf_counter()
        try:
            return self._key_holder.decrypt_ring_sum(aggregate, aggregate.n_values)
        finally:
            self.seconds += time.perf_counter() - start
            self.bytes_in += aggregate.nbytes
            self.summands += (aggregate.n_summands,)
