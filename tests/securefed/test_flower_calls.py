"""Remote site calls, their JSON codec, and the secure-aggregation state carried
between ClientApp processes (no Flower processes here; see ``flower/``)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from core_stats.families import get_family
from core_stats.formula import agree_schema, parse_formula, variable_report
from core_stats.glmm import ParameterLayout
from protocols.errors import AbortError
from protocols.secagg_config import SecAggConfig
from protocols.secagg_server import SecAggServer
from protocols.secagg_site import SecAggSite
from securefed.site import GLMMSiteDesign, Site
from securefed.transport.calls import RemoteCallError, SiteCall, apply_call, record_call
from securefed.transport.codec import CodecError, decode_value, encode_value
from securefed.transport.release import release
from securefed.transport.secagg_state import (
    StateError,
    export_run,
    export_site,
    restore_run,
    restore_site,
)


def frame(seed: int = 3, n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"y": rng.integers(0, 2, n).astype(float), "x": rng.normal(size=n),
                         "c": rng.choice(["a", "b", "c"], n),
                         "g": np.repeat(np.arange(n // 5), 5)})


def test_codec_round_trips_every_allowed_type():
    rng = np.random.default_rng(11)
    value = {"f": 0.1, "i": -3, "b": True, "s": "x", "n": None, "l": [1, 2.5],
             "t": (1, ("a",)), "a": np.arange(6.0).reshape(2, 3) / 7, "ai": np.arange(3),
             "ab": np.array([True, False]), "np": np.float64(1 / 3), "ni": np.int64(5),
             "rng": rng}
    back = decode_value(json.loads(json.dumps(encode_value(value))))
    assert back["t"] == (1, ("a",)) and back["l"] == [1, 2.5] and back["np"] == 1 / 3
    assert back["ni"] == 5 and type(back["ni"]) is int
    np.testing.assert_array_equal(back["a"], value["a"])
    assert back["a"].dtype == np.float64 and back["ai"].dtype == value["ai"].dtype
    np.testing.assert_array_equal(back["ab"], value["ab"])
    assert back["rng"].random() == rng.random()  # the site continues the coordinator's stream


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), {1, 2}, {1: "a"},
                                 np.array([1.0, np.nan]), np.array(["a"], dtype=object),
                                 object(), np.random.Generator(np.random.MT19937(1))])
def test_codec_refuses_what_cannot_travel(bad):
    with pytest.raises(CodecError):
        encode_value(bad)


@pytest.mark.parametrize("data", [{"$pickle": "gASV"}, {"$dataclass": "os.system", "fields": {}},
                                  {"$array": {"dtype": "|O", "shape": [1], "data": ""}},
                                  {"$array": {"dtype": "<f8", "shape": [2], "data": "AAAA"}},
                                  {"$tuple": [1], "extra": 2}, {"plain": "dict"}])
def test_codec_refuses_unknown_or_malformed_encodings(data):
    with pytest.raises(CodecError):
        decode_value(data)


def test_call_from_json_refuses_non_whitelisted_methods_and_arguments():
    with pytest.raises(RemoteCallError):
        SiteCall.from_json('{"method": "_require_rows", "kwargs": {}}')
    with pytest.raises(RemoteCallError):
        SiteCall.from_json('{"method": "design_summary_vector", "kwargs": {"evil": 1}}')
    with pytest.raises(CodecError):
        SiteCall.from_json('{"method": "glmm_terms_vector", "kwargs": {"theta": NaN}}')


def test_recorded_closures_run_remotely_exactly_as_in_process():
    data = frame()
    formula = "y ~ x + c + (1 | g)"
    schema = agree_schema(formula, [variable_report(parse_formula(formula), data)])
    design = GLMMSiteDesign(schema, get_family("binomial"), 3)
    layout = ParameterLayout(("(Intercept)", "x", "cb", "cc"), ("(Intercept)",), "g", False)
    theta = np.array([0.1, 0.2, 0.0, 0.1, -0.5])
    prepare = lambda s: s.prepare_glmm(design, None, 0.3, 5)  # noqa: E731
    terms = lambda s: s.glmm_terms_vector(layout, theta, True)  # noqa: E731
    part = data[data.c != "b"]  # a site that lacks one level still builds every column
    local, remote = Site("A", part), Site("A", part)
    prepare(local)
    apply_call(remote, SiteCall.from_json(record_call(prepare, ["A", "B"]).to_json()))
    call = SiteCall.from_json(record_call(terms, ["A", "B"]).to_json())
    assert call == record_call(terms, ["B"])
    np.testing.assert_array_equal(release(remote, call, 1, "terms"), terms(local))
    np.testing.assert_array_equal(remote.validation_loglik_vector(layout, theta),
                                  local.validation_loglik_vector(layout, theta))


@pytest.mark.parametrize("closure", [lambda s: np.array([s.n_rows]), lambda s: s._frame,
                                     lambda s: s.name, lambda s: [s.design_summary_vector()]])
def test_recording_refuses_closures_that_compute_at_the_coordinator(closure):
    with pytest.raises(RemoteCallError):
        record_call(closure, ["A"])


def test_recording_refuses_site_specific_calls_and_setup_releases():
    with pytest.raises(RemoteCallError):
        record_call(lambda s: s.validation_histograms(None, np.zeros(1), len(s.name)),
                    ["A", "BB"])
    with pytest.raises(RemoteCallError):
        release(Site("A", frame()), SiteCall("prepare_glmm", {"design": None}), 1, "x")


# ------------------------------------------------- state between processes
def _round(vectors, stop_after: dict[int, str], carry: bool, rounds: int = 1):
    """SecAgg rounds of one run in which every site step may rebuild the site (and its run)
    from saved state; ``stop_after`` applies to the last round."""
    ids = sorted(vectors)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    identities = {u: Ed25519PrivateKey.generate() for u in ids}
    roster = {u: k.public_key() for u, k in identities.items()}
    server_key = Ed25519PrivateKey.generate()
    server_run, runs = None, {}
    for round_id in range(4, 4 + rounds):
        last = round_id == 3 + rounds
        config = SecAggConfig(session_id=b"s" * 16, round_id=round_id, site_ids=tuple(ids),
                              vector_length=len(vectors[ids[0]]), bounds=100.0,
                              run_session=b"r" * 16)
        server = SecAggServer(config, server_key, roster, run=server_run)
        server_run = server.run
        saved = {}
        for u in ids:
            run = restore_run(runs[u]) if u in runs and carry else runs.get(u)
            site = SecAggSite(u, config, identities[u], roster, server_key.public_key(), run=run)
            if not site.run.keyed:
                server.receive(site.advertise_keys())
            saved[u] = (export_run(site.run), export_site(site)) if carry else site
        outgoing = server.advance() if server.stage.value == "collect-keys" else {
            u: None for u in ids}
        steps = [("share_keys", lambda s, m: s.share_keys(m)),
                 ("masked_input", lambda s, m: s.masked_input(m, vectors[s.site_id])),
                 ("consistency", lambda s, m: s.sign_consistency(m)),
                 ("unmask", lambda s, m: s.unmask(m))]
        stopped: set[int] = set()
        for name, step in steps:
            for u, message in outgoing.items():
                if u in stopped:
                    continue
                site = (restore_site(saved[u][1], restore_run(saved[u][0]), u, config,
                                     identities[u], roster, server_key.public_key())
                        if carry else saved[u])
                server.receive(step(site, message))
                saved[u] = (export_run(site.run), export_site(site)) if carry else site
                if last and stop_after.get(u) == name:
                    stopped.add(u)
            outgoing = server.advance()
        runs = {u: saved[u][0] if carry else saved[u].run for u in ids}
    return server.outcome


@pytest.mark.parametrize("rounds", [1, 3])
@pytest.mark.parametrize("stop_after", [{}, {2: "share_keys"}, {5: "masked_input"},
                                        {1: "share_keys", 4: "unmask"}])
def test_state_carried_between_processes_gives_the_contributors_sum(stop_after, rounds):
    rng = np.random.default_rng(len(stop_after))
    vectors = {u: rng.normal(size=7) for u in range(1, 8)}  # n = 7, t = 5
    outcome = _round(vectors, stop_after, carry=True, rounds=rounds)
    expected = [u for u in vectors if stop_after.get(u) != "share_keys"]
    assert list(outcome.contributors) == expected
    np.testing.assert_allclose(outcome.total, sum(vectors[u] for u in expected), atol=1e-10)


def test_a_counted_site_that_masked_with_a_dropout_must_answer_unmask():
    """Site 4 masked with site 1, which dropped before its input; only site 4 can reveal
    that round's pair seed, so when it goes silent too the round aborts (nothing released)."""
    vectors = {u: np.ones(3) for u in range(1, 8)}
    with pytest.raises(AbortError, match="pair seed"):
        _round(vectors, {1: "share_keys", 4: "masked_input"}, carry=True, rounds=2)


def test_restored_state_is_still_checked_by_the_protocol():
    vectors = {u: np.ones(3) for u in range(1, 4)}
    with pytest.raises(AbortError):  # three sites, t = 3: one silent site aborts the round
        _round(vectors, {2: "share_keys"}, carry=True)


def _fresh_site() -> tuple[SecAggSite, tuple]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    config = SecAggConfig(session_id=b"s", round_id=1, site_ids=(1, 2, 3), vector_length=1,
                          bounds=1.0)
    args = (1, config, key, {u: key.public_key() for u in (1, 2, 3)}, key.public_key())
    return SecAggSite(*args), args


def test_saved_state_that_does_not_fit_is_refused():
    site, args = _fresh_site()
    site.advertise_keys()
    saved_run, saved = export_run(site.run), export_site(site)
    assert restore_site(saved, restore_run(saved_run), *args).stage is site.stage
    for broken in (b"", saved[:3], saved + b"\x00", b"\x00\x00\x00\x02{}"):
        with pytest.raises(StateError):
            restore_site(broken, restore_run(saved_run), *args)
        with pytest.raises(StateError):
            restore_run(broken)
    other = dataclasses.replace(args[1], round_id=2)  # no open round of this id
    with pytest.raises(StateError):
        restore_site(saved, restore_run(saved_run), args[0], other, *args[2:])
    site._new_secret = b"x"  # the protocol code gained state this adapter does not carry
    with pytest.raises(StateError):
        export_site(site)


@pytest.mark.parametrize(("name", "link"), [("negative_binomial", "log"), ("Gamma", "log"),
                                            ("Gamma", "inverse"), ("binomial", "probit")])
def test_every_family_and_its_dispersion_layout_travel(name, link):
    family = get_family(name, link)
    layout = ParameterLayout.for_family(("(Intercept)", "x"), ("(Intercept)",), "g", family)
    back = decode_value(json.loads(json.dumps(encode_value({"f": family, "l": layout}))))
    assert back["f"] == family and back["l"] == layout
    assert back["l"].parameter_names() == layout.parameter_names()
