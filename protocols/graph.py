"""Communication graphs for secure aggregation: complete (SecAgg) or random k-regular (SecAgg+).

Bell et al. (CCS 2020) replace the complete graph of Bonawitz et al. by a
random Harary graph: the sites are placed on a ring in a random order and
each is joined to its k/2 nearest sites on either side (plus the opposite
site when k is odd and n even). Pairwise masks and Shamir shares travel only
along edges, so a round costs O(k) per site instead of O(n).

The random order is *not* chosen by the server: it is a pure function of the
session id, round id and roster, expanded with ChaCha20 from an HKDF key, so
every site recomputes its own neighbourhood and the server cannot steer a
target site into a neighbourhood of colluders for a given session id (it
could only grind session ids; see threat_model/secagg.md).

Choice of k (:func:`recommended_neighbours`, after Bell et al. §3–4). Each
site's secrets are shared among its holders H(u) = N(u) ∪ {u} (m = k + 1
sites) with threshold t = ⌊2m/3⌋ + 1. With a fraction δ of sites dropping out
and a fraction γ corrupted (colluding with the server), union bounds over the
n sites give, for a statistical security parameter σ (privacy) and a
correctness parameter η (liveness; a failure only aborts the round),

    n · P[Binom(m, γ) ≥ t]      ≤ 2^{−σ}   no neighbourhood holds t colluders
    n · (γ + δ)^{k/2}           ≤ 2^{−σ}   no run of k/2 removed sites on the
                                            ring, so the honest survivors stay
                                            connected and only the full sum leaks
    n · P[Binom(m, 1 − δ) < t]  ≤ 2^{−η}   every site's secrets recoverable

and we return the smallest even k meeting all three (binomial rather than the
hypergeometric law of a random neighbourhood: conservative for γ, δ < 1/2).
Defaults σ = 40, η = 20, γ = δ = 0.05 give k = 40, 42, 46 for n = 100, 500,
1000: k grows like log n.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import numpy as np

from protocols.errors import ProtocolError
from protocols.primitives import hkdf_sha256, prg_words

__all__ = [
    "GraphError",
    "neighbourhoods",
    "complete_graph",
    "harary_graph",
    "recommended_neighbours",
    "binomial_upper_tail",
    "default_threshold",
]


class GraphError(ProtocolError):
    """No graph with the requested degree exists for this roster."""


def default_threshold(holders: int) -> int:
    """t = ⌊2m/3⌋ + 1 for a share-holder set of size m."""
    return (2 * holders) // 3 + 1


def complete_graph(site_ids: Sequence[int]) -> dict[int, frozenset[int]]:
    """Every site is a neighbour of every other site (classic SecAgg)."""
    ids = frozenset(site_ids)
    return {u: ids - {u} for u in ids}


def _ring_order(site_ids: Sequence[int], session_id: bytes, round_id: int) -> list[int]:
    ids = sorted(site_ids)
    info = b"securefed/secagg/v1/graph" + struct.pack(">QI", round_id, len(ids))
    info += b"".join(struct.pack(">q", u) for u in ids)
    seed = hkdf_sha256(session_id, length=32, salt=b"securefed-graph", info=info)
    keys = prg_words(seed, len(ids))
    return [ids[i] for i in np.lexsort((np.arange(len(ids)), keys))]


def harary_graph(
    site_ids: Sequence[int], k: int, *, session_id: bytes, round_id: int
) -> dict[int, frozenset[int]]:
    """Random k-regular Harary graph on ``site_ids`` (k ≥ n − 1 gives the complete graph).

    Raises
    ------
    GraphError
        k < 2, or k odd with n odd (no k-regular graph exists).
    """
    n = len(site_ids)
    if k < 2:
        raise GraphError("SecAgg+ needs at least 2 neighbours per site")
    if k >= n - 1:
        return complete_graph(site_ids)
    if k % 2 == 1 and n % 2 == 1:
        raise GraphError("a k-regular graph with k odd needs an even number of sites")
    order = _ring_order(site_ids, session_id, round_id)
    graph: dict[int, set[int]] = {u: set() for u in order}
    for position, u in enumerate(order):
        for step in range(1, k // 2 + 1):
            v = order[(position + step) % n]
            graph[u].add(v)
            graph[v].add(u)
        if k % 2 == 1:
            v = order[(position + n // 2) % n]
            graph[u].add(v)
            graph[v].add(u)
    return {u: frozenset(vs) for u, vs in graph.items()}


def neighbourhoods(
    site_ids: Sequence[int], neighbours: int | None, *, session_id: bytes, round_id: int
) -> dict[int, frozenset[int]]:
    """The complete graph when ``neighbours`` is None, else :func:`harary_graph`."""
    if neighbours is None:
        return complete_graph(site_ids)
    return harary_graph(site_ids, neighbours, session_id=session_id, round_id=round_id)


def binomial_upper_tail(trials: int, probability: float, at_least: int) -> float:
    """P[Binom(trials, probability) ≥ at_least], summed in log space (no scipy needed)."""
    if at_least <= 0:
        return 1.0
    if at_least > trials or probability <= 0.0:
        return 0.0
    if probability >= 1.0:
        return 1.0
    log_p, log_q = math.log(probability), math.log1p(-probability)
    log_norm = math.lgamma(trials + 1)
    return math.fsum(
        math.exp(
            log_norm
            - math.lgamma(j + 1)
            - math.lgamma(trials - j + 1)
            + j * log_p
            + (trials - j) * log_q
        )
        for j in range(at_least, trials + 1)
    )


def recommended_neighbours(
    n_sites: int,
    *,
    dropout: float = 0.05,
    corrupt: float = 0.05,
    sigma: int = 40,
    eta: int = 20,
) -> int:
    """Smallest even k meeting the three union bounds in the module docstring.

    Parameters
    ----------
    n_sites : int
        Number of sites n.
    dropout : float
        Fraction δ of sites expected to drop out (δ < 1/3).
    corrupt : float
        Fraction γ of sites colluding with the server (γ < 2/3).
    sigma : int
        Statistical security parameter σ (privacy failure probability 2^{−σ}).
    eta : int
        Correctness parameter η (abort probability 2^{−η}).

    Returns
    -------
    int
        k, capped at n − 1 (the complete graph).
    """
    if not (0 <= dropout < 1 / 3 and 0 <= corrupt < 2 / 3 and dropout + corrupt < 1):
        raise GraphError("need dropout < 1/3, corrupt < 2/3 and dropout + corrupt < 1")
    for k in range(2, n_sites - 1, 2):
        holders = k + 1
        t = default_threshold(holders)
        colluding = n_sites * binomial_upper_tail(holders, corrupt, t)
        disconnected = n_sites * (corrupt + dropout) ** (k / 2)
        # fewer than t of m alive  ⇔  at least m − t + 1 of m dropped
        unrecoverable = n_sites * binomial_upper_tail(holders, dropout, holders - t + 1)
        if (
            colluding <= 2.0**-sigma
            and disconnected <= 2.0**-sigma
            and (unrecoverable <= 2.0**-eta)
        ):
            return k
    return n_sites - 1
