"""SecAgg+ communication graphs: regular, symmetric, reproducible, and only neighbours talk."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom

from protocols.errors import AbortError
from protocols.graph import (
    GraphError,
    binomial_upper_tail,
    complete_graph,
    default_threshold,
    harary_graph,
    neighbourhoods,
    recommended_neighbours,
)
from protocols.secagg_config import SERVER_ID, SecAggConfig
from protocols.secagg_messages import AdvertiseKeys, KeyList, Message
from protocols.secagg_server import SecAggServer
from protocols.secagg_site import SecAggSite


def connected(graph: dict[int, frozenset[int]], nodes: set[int]) -> bool:
    start = next(iter(nodes))
    seen, todo = {start}, [start]
    while todo:
        for v in graph[todo.pop()] & nodes:
            if v not in seen:
                seen.add(v)
                todo.append(v)
    return seen == nodes


@settings(max_examples=40, deadline=None)
@given(n=st.integers(3, 200), k=st.integers(2, 20), session=st.binary(min_size=1, max_size=8))
def test_harary_graph_is_k_regular_and_symmetric(n: int, k: int, session: bytes) -> None:
    ids = list(range(5, 5 + 3 * n, 3))
    if k % 2 and n % 2 and k < n - 1:
        with pytest.raises(GraphError):
            harary_graph(ids, k, session_id=session, round_id=0)
        return
    graph = harary_graph(ids, k, session_id=session, round_id=0)
    degree = min(k, n - 1)
    assert set(graph) == set(ids)
    for u, neighbours in graph.items():
        assert u not in neighbours and len(neighbours) == degree
        assert all(u in graph[v] for v in neighbours)
    assert connected(graph, set(ids))


def test_graph_is_a_function_of_session_round_and_roster() -> None:
    ids = list(range(50))
    a = harary_graph(ids, 6, session_id=b"s", round_id=1)
    assert a == harary_graph(list(reversed(ids)), 6, session_id=b"s", round_id=1)
    assert a != harary_graph(ids, 6, session_id=b"t", round_id=1)
    assert a != harary_graph(ids, 6, session_id=b"s", round_id=2)


def test_complete_graph_when_k_is_large_or_none() -> None:
    ids = list(range(7))
    assert harary_graph(ids, 6, session_id=b"s", round_id=0) == complete_graph(ids)
    assert neighbourhoods(ids, None, session_id=b"s", round_id=0) == complete_graph(ids)
    with pytest.raises(GraphError):
        harary_graph(ids, 1, session_id=b"s", round_id=0)


def test_recommended_degree_grows_like_log_n() -> None:
    ks = [recommended_neighbours(n) for n in (100, 1000, 10000)]
    assert ks == sorted(ks) and ks[-1] - ks[0] <= 20 and ks[-1] < 100
    assert recommended_neighbours(10) == 9  # small rosters use the complete graph
    assert recommended_neighbours(1000, dropout=0.1, corrupt=0.1) > ks[1]
    with pytest.raises(GraphError):
        recommended_neighbours(100, dropout=0.4)
    k = ks[1]
    assert default_threshold(k + 1) > (k + 1) / 2


@pytest.mark.parametrize(
    ("m", "p", "t"),
    [
        (47, 0.05, 32),
        (47, 0.05, 16),
        (10, 0.5, 5),
        (200, 0.3, 1),
        (5, 0.0, 1),
        (5, 1.0, 5),
        (5, 0.2, 0),
    ],
)
def test_binomial_tail_matches_scipy(m: int, p: float, t: int) -> None:
    assert binomial_upper_tail(m, p, t) == pytest.approx(binom.sf(t - 1, m, p), rel=1e-9, abs=0)


def test_recommended_graph_survives_random_removals() -> None:
    # With 10% of 1000 sites removed at random, a site's 47 holders keep fewer than
    # t = 32 with probability ~3.5e-3 per graph (hypergeometric tail × 1000 windows):
    # none of these five fixed graphs may fail.
    n = 1000
    ids = list(range(n))
    k = recommended_neighbours(n)
    t = default_threshold(k + 1)
    for trial in range(5):
        graph = harary_graph(ids, k, session_id=b"survival-%d" % trial, round_id=0)
        rng = np.random.default_rng(trial)
        removed = set(rng.choice(n, size=n // 10, replace=False).tolist())
        assert connected(graph, set(ids) - removed)
        assert all(len((graph[u] | {u}) - removed) >= t for u in ids)


def test_secagg_plus_site_refuses_keys_from_non_neighbours() -> None:
    ids = tuple(range(12))
    config = SecAggConfig(b"g", 1, ids, 2, 1.0, neighbours=4)
    identities = {u: Ed25519PrivateKey.generate() for u in ids}
    roster = {u: k.public_key() for u, k in identities.items()}
    server_key = Ed25519PrivateKey.generate()
    server = SecAggServer(config, server_key, roster)
    sites = {u: SecAggSite(u, config, identities[u], roster, server_key.public_key()) for u in ids}
    adverts = {u: sites[u].advertise_keys() for u in ids}
    for data in adverts.values():
        server.receive(data)
    lists = server.advance()
    carried = {Message.parse(a).header.sender for a in Message.parse(lists[0]).body.advertisements}
    assert carried == config.holders(0) and len(carried) == 5
    stranger = next(u for u in ids if u not in config.holders(0))
    forged = Message.parse(lists[0]).body.advertisements + (adverts[stranger],)
    bad = Message.build(
        KeyList(tuple(sorted(forged, key=lambda a: Message.parse(a).header.sender))),
        session_id=b"g",
        round_id=1,
        sender=SERVER_ID,
        recipient=0,
        identity=server_key,
    )
    with pytest.raises(AbortError, match="neighbourhood"):
        sites[0].share_keys(bad)
    assert isinstance(Message.parse(adverts[0]).body, AdvertiseKeys)
