"""The ``ckks`` layer over the Flower engine, with an in-memory grid.

The key holder is a node of the loopback grid whose node config names its
secret context (made by ``securefed.transport.ckks_keys``, as a deployment
does); the engine holds only what the key holder signed. Real processes and
TLS are in ``flower/test_flower_ckks.py``.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import tenseal as ts
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.supercore.task_identity import TaskIdentity
from test_flower_engine import DESIGN, LoopbackGrid, expected_summary

from protocols.ckks import CkksKeyHolder, add_ciphertexts
from protocols.encoding import FixedPointEncoder
from protocols.errors import AbortError
from protocols.stack import CkksSum, SecAggSum
from securefed.keys import Identity, Registry
from securefed.site import Site
from securefed.transport.calls import record_call
from securefed.transport.ckks_keys import PUBLIC_FILE, SECRET_FILE, generate
from securefed.transport.flower_ckks import (
    KEY_HOLDER,
    DecryptionRefused,
    KeyHolderNode,
    RemoteCkksSum,
    SignedContext,
    UntrustedContext,
    encrypt_for_round,
    serve_key_holder,
    sign_public_context,
    trusted_context,
    verify_public_context,
)
from securefed.transport.flower_server import FlowerEngine, SiteRefused, StageTimeouts
from securefed.transport.flower_wire import RoundParams, Stage

SITES = ("A", "B", "C", "D")
FAST = StageTimeouts(stage=0.5, grace=0.2, poll=0.01)


@pytest.fixture
def world(tmp_path, monkeypatch):
    for attr in ("_run_id", "_node_id", "_task_id"):  # Flower sets these in a ServerApp
        monkeypatch.setattr(TaskIdentity, attr, 1)
    rng = np.random.default_rng(11)
    identities = {name: Identity.generate(name) for name in ("coordinator", *SITES, KEY_HOLDER)}
    for identity in identities.values():
        identity.save_private_key(tmp_path / f"{identity.name}.key")
    registry = Registry.of(*identities.values())
    registry.save(tmp_path / "registry.json")
    secret, _ = generate(tmp_path / KEY_HOLDER)
    frames, configs = {}, {}
    for name in SITES:
        frames[name] = pd.DataFrame({"y": rng.normal(size=12), "x": rng.normal(size=12),
                                     "g": np.repeat([1, 2, 3], 4)})
        frames[name].to_csv(tmp_path / f"{name}.csv", index=False)
        configs[name] = {"site-name": name, "data-path": str(tmp_path / f"{name}.csv"),
                         "identity-key": str(tmp_path / f"{name}.key"),
                         "registry": str(tmp_path / "registry.json")}
    configs[KEY_HOLDER] = {"site-name": KEY_HOLDER, "ckks-key": str(secret),
                           "identity-key": str(tmp_path / f"{KEY_HOLDER}.key"),
                           "registry": str(tmp_path / "registry.json")}
    keys = {name: Ed25519PrivateKey.from_private_bytes(i.export_private_key_raw())
            for name, i in identities.items()}
    return SimpleNamespace(grid=LoopbackGrid(configs), keys=keys, registry=registry,
                           frames=frames, secret=secret, root=tmp_path)


def ckks_engine(world, **kwargs) -> FlowerEngine:
    engine = FlowerEngine(world.grid, world.keys["coordinator"], world.registry,
                          RemoteCkksSum(**kwargs), FAST, key_holder=KEY_HOLDER)
    engine.setup(record_call(lambda s: s.prepare_glmm(DESIGN), SITES))
    return engine


def summary_call():
    return record_call(lambda s: s.design_summary_vector(), SITES)


def site_vectors(frames, names) -> dict[str, np.ndarray]:
    vectors = {}
    for name in names:
        site = Site(name, frames[name])
        site.prepare_glmm(DESIGN)
        vectors[name] = site.design_summary_vector()
    return vectors


def ledger(world) -> list[str]:
    path = world.secret.with_name(world.secret.name + ".rounds")
    return path.read_text().split() if path.exists() else []


def test_ckks_sum_equals_the_in_process_ckks_sum_and_the_plaintext_sum(world):
    engine = ckks_engine(world)
    result = engine.run_round(1, "summary", summary_call(), SITES)
    assert result.contributors == SITES and result.dropped == ()
    vectors = site_vectors(world.frames, SITES)
    in_process = CkksSum().aggregate(vectors, round_id=1, purpose="summary")
    np.testing.assert_allclose(result.total, in_process.total, rtol=0, atol=1e-10)
    np.testing.assert_allclose(result.total, expected_summary(world.frames, SITES), atol=1e-10)
    again = engine.run_round(2, "summary", summary_call(), SITES)
    np.testing.assert_array_equal(again.total, result.total)
    stages = [stage for stage, _, _ in engine.stage_log]
    assert stages == ["ckks_context", "open", "decrypt", "open", "decrypt"]  # context once
    assert len(ledger(world)) == 2  # one decryption per round, recorded at the key holder


def test_the_coordinator_holds_only_ciphertexts_of_the_key_holders_key(world):
    engine = ckks_engine(world)
    engine.run_round(1, "summary", summary_call(), SITES)
    public = engine._ckks.signed_context().public_context
    assert public == (world.root / KEY_HOLDER / PUBLIC_FILE).read_bytes()
    context = ts.context_from(public)
    assert not context.is_private()
    received = engine._ckks.received
    assert sorted(received) == list(SITES)
    chunk = ts.ckks_vector_from(context, received["A"].chunks[0])
    with pytest.raises(ValueError):  # no secret key in the coordinator's context
        chunk.decrypt()
    # only the key holder's secret opens them: A's ciphertext is A's encoded vector
    holder = CkksKeyHolder.load(world.root / KEY_HOLDER / SECRET_FILE)
    vector = site_vectors(world.frames, "A")["A"]
    encoder = FixedPointEncoder.for_sum(2.0**40, len(SITES), len(vector))
    single = add_ciphertexts(public, [received["A"]])
    np.testing.assert_array_equal(holder.decrypt_ring_sum(single, encoder.n_words),
                                  encoder.encode(vector))


def test_a_ckks_engine_needs_a_remote_key_holder(world):
    grid, key, registry = world.grid, world.keys["coordinator"], world.registry
    with pytest.raises(ValueError, match="key_holder"):
        FlowerEngine(grid, key, registry, RemoteCkksSum())
    with pytest.raises(ValueError, match="holds a secret key in this process"):
        FlowerEngine(grid, key, registry, CkksSum(), key_holder=KEY_HOLDER)
    for name in ("coordinator", "nobody"):
        with pytest.raises(ValueError, match="registered party other than the coordinator"):
            FlowerEngine(grid, key, registry, RemoteCkksSum(), key_holder=name)


def test_the_key_holder_is_not_a_site(world):
    engine = ckks_engine(world)
    assert sorted(engine.sites()) == list(SITES)
    with pytest.raises(ValueError, match="key holder, not a site"):
        engine.run_round(1, "summary", summary_call(), [*SITES, KEY_HOLDER])
    secagg = FlowerEngine(world.grid, world.keys["coordinator"], world.registry, SecAggSum(),
                          FAST, key_holder=KEY_HOLDER)
    assert KEY_HOLDER not in secagg.sites()


def test_the_key_holder_serves_no_site_stage(world):
    engine = FlowerEngine(world.grid, world.keys["coordinator"], world.registry, SecAggSum(),
                          FAST)  # a careless engine that takes the key holder for a site
    with pytest.raises(SiteRefused, match="it holds no data"):
        engine.run_round(1, "summary", summary_call(), [*SITES, KEY_HOLDER])


def forged_contexts(world) -> dict[str, SignedContext]:
    """Contexts a coordinator could substitute, each with a secret key it knows."""
    attacker = CkksKeyHolder.generate().public_context()
    genuine = CkksKeyHolder.load(world.secret).public_context()
    coordinator, key_holder = world.keys["coordinator"], world.keys[KEY_HOLDER]
    signed_by_key_holder = sign_public_context(key_holder, KEY_HOLDER, genuine)
    secret_ctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40, 60])
    secret_ctx.global_scale = 2.0**40
    return {
        "signed by the coordinator as the key holder":
            sign_public_context(coordinator, KEY_HOLDER, attacker),
        "signed by the coordinator under its own name":
            sign_public_context(coordinator, "coordinator", attacker),
        "the key holder's signature on another context":
            SignedContext(KEY_HOLDER, attacker, signed_by_key_holder.signature),
        "signed by a site": sign_public_context(world.keys["A"], KEY_HOLDER, attacker),
        "a context with a secret key, signed by the key holder":
            sign_public_context(key_holder, KEY_HOLDER, secret_ctx.serialize(
                save_secret_key=True)),
    }


def test_the_site_check_refuses_every_substituted_context(world):
    for why, forged in forged_contexts(world).items():
        with pytest.raises(UntrustedContext):
            verify_public_context(forged, world.registry, KEY_HOLDER)
            pytest.fail(f"accepted a context {why}")
    genuine = CkksKeyHolder.load(world.secret).public_context()
    signed = sign_public_context(world.keys[KEY_HOLDER], KEY_HOLDER, genuine)
    assert verify_public_context(signed, world.registry, KEY_HOLDER) == genuine
    params = RoundParams("ckks", b"s" * 16, 1, "p", {"A": 1, KEY_HOLDER: 2}, 2.0**40)
    with pytest.raises(UntrustedContext, match="is a site"):  # a key holder must hold no data
        trusted_context(params, signed.to_record(), world.registry, KEY_HOLDER)


def test_sites_refuse_a_substituted_context_before_releasing(world):
    engine = ckks_engine(world)
    engine._ckks._signed = forged_contexts(world)["signed by the coordinator as the key holder"]
    with pytest.raises(SiteRefused, match="untrusted-context") as refused:
        engine.run_round(1, "summary", summary_call(), SITES)
    assert all(f"{name}: untrusted-context: the CKKS public context is not signed"
               in str(refused.value) for name in SITES)
    assert engine._ckks.received == {} and ledger(world) == []


def test_a_site_missing_the_round_is_dropped(world):
    world.grid.silent["C"] = Stage.OPEN
    result = ckks_engine(world).run_round(1, "summary", summary_call(), SITES)
    assert result.contributors == ("A", "B", "D") and result.dropped == ("C",)
    np.testing.assert_allclose(result.total, expected_summary(world.frames, "ABD"), atol=1e-10)


def test_too_few_sites_abort_before_anything_is_decrypted(world):
    world.grid.silent.update({"C": Stage.OPEN, "D": Stage.OPEN})
    engine = ckks_engine(world)
    with pytest.raises(AbortError, match="nothing is decrypted"):
        engine.run_round(1, "summary", summary_call(), SITES)
    assert "decrypt" not in [stage for stage, _, _ in engine.stage_log] and ledger(world) == []


@pytest.mark.parametrize("field, value", [("chunks", ["AAAA"]), ("chunks", [12]),
                                          ("receipt", "AAAA"), ("length", "12"),
                                          ("fingerprint", 7)])
def test_a_malformed_ciphertext_reply_is_that_sites_dropout(world, field, value):
    from test_robust_rounds import TamperingGrid, set_field

    world.grid = TamperingGrid(world.grid, Stage.OPEN, set_field(field, value))
    result = ckks_engine(world).run_round(1, "summary", summary_call(), SITES)
    assert result.contributors == ("A", "C", "D") and result.dropped == ("B",)
    assert list(result.details["dropout_reasons"]) == ["B"]
    np.testing.assert_allclose(result.total, expected_summary(world.frames, "ACD"), atol=1e-10)


# ---------------------------------------------------------------- key holder
def decrypt_request(world, names=SITES, round_id=1, min_contributors=3):
    """A coordinator's decrypt request for ``names``' encrypted summaries."""
    public = CkksKeyHolder.load(world.secret).public_context()
    params = RoundParams("ckks", b"k" * 16, round_id, "summary",
                         {n: i for i, n in enumerate(SITES, 1)}, 2.0**40,
                         min_contributors=min_contributors)
    vectors = site_vectors(world.frames, names)
    replies = {n: encrypt_for_round(params, public, vectors[n], n, world.keys[n])
               for n in names}
    from securefed.transport.flower_ckks import _ciphertext_from, ciphertext_digest

    cts = [_ciphertext_from(replies[n]) for n in names]
    aggregate = add_ciphertexts(public, cts)
    return {"round": params.to_json(), "fingerprint": aggregate.fingerprint,
            "n_values": aggregate.n_values, "chunks": list(aggregate.chunks),
            "n_summands": aggregate.n_summands, "receipt_sites": list(names),
            "receipt_digests": [ciphertext_digest(c) for c in cts],
            "receipts": [replies[n]["receipt"] for n in names]}, vectors


def key_holder(world, floor=3) -> KeyHolderNode:
    return KeyHolderNode(KEY_HOLDER, world.keys[KEY_HOLDER], world.registry, world.secret,
                         world.secret.with_name("ledger"), floor)


def test_the_key_holder_decrypts_a_round_once(world):
    request, vectors = decrypt_request(world)
    node = key_holder(world)
    reply = serve_key_holder(Stage.DECRYPT, request, node)
    encoder = FixedPointEncoder.for_sum(2.0**40, len(SITES), len(vectors["A"]))
    total = encoder.decode(np.frombuffer(reply["ring_sum"], dtype="<u8").astype(np.uint64))
    np.testing.assert_allclose(total, sum(vectors.values()), rtol=0, atol=1e-10)
    with pytest.raises(DecryptionRefused, match="decrypted already"):
        serve_key_holder(Stage.DECRYPT, request, node)


def test_concurrent_decrypt_requests_for_one_round_decrypt_once(world):
    import threading

    node = key_holder(world)
    for round_id in range(1, 4):  # three rounds, each asked twice at the same moment
        request, _ = decrypt_request(world, round_id=round_id)
        start, outcomes = threading.Barrier(2), []

        def ask(request=request, start=start, outcomes=outcomes):
            start.wait(timeout=30)
            try:
                outcomes.append(bool(serve_key_holder(Stage.DECRYPT, request, node)))
            except DecryptionRefused:
                outcomes.append(False)

        threads = [threading.Thread(target=ask) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert sorted(outcomes) == [False, True]
    assert len(node.ledger_path.read_text().split()) == 3


def test_the_key_holder_refuses_aggregates_without_enough_valid_receipts(world):
    node = key_holder(world)
    few, _ = decrypt_request(world, names=("A", "B"), min_contributors=2)
    with pytest.raises(DecryptionRefused, match="at least 3"):  # its own floor
        serve_key_holder(Stage.DECRYPT, few, node)
    request, _ = decrypt_request(world)
    tampered = [
        ({"n_summands": 3}, "declares 3 summands"),
        ({"receipt_sites": ["A", "B", "C", "C"]}, "duplicated"),
        ({"receipt_sites": ["B", "A", "C", "D"]}, "no valid receipt"),
        ({"receipt_digests": [b"\0" * 32] * 4}, "no valid receipt"),
        ({"round": request["round"].replace('"round_id": 1', '"round_id": 2')},
         "no valid receipt"),  # receipts of round 1 replayed for round 2
    ]
    for change, message in tampered:
        with pytest.raises(DecryptionRefused, match=message):
            serve_key_holder(Stage.DECRYPT, {**request, **change}, node)
    assert not node.ledger_path.exists()  # none of them was decrypted
    with pytest.raises(DecryptionRefused, match="serves only"):
        serve_key_holder(Stage.OPEN, request, node)


def test_only_a_ckks_engine_waits_for_the_key_holder(world):
    (node,) = [n for n, name in world.grid.names.items() if name == KEY_HOLDER]
    del world.grid.names[node]  # the key holder's SuperNode is not connected
    secagg = FlowerEngine(world.grid, world.keys["coordinator"], world.registry, SecAggSum(),
                          FAST, key_holder=KEY_HOLDER)
    assert sorted(secagg.wait_for_sites(SITES, timeout=0.1)) == list(SITES)
    with pytest.raises(TimeoutError, match=KEY_HOLDER):
        ckks_engine(world).wait_for_sites(SITES, timeout=0.1)
