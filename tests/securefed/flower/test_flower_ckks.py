"""CKKS sums over a real Flower federation, with the key holder on its own SuperNode.

One Flower run (TLS, SuperNode authentication; the session's five sites and
the ``keyholder`` SuperNode, whose secret context was made on its own disk
by ``python -m securefed.transport.ckks_keys``):

1. the coordinator fetches the key holder's signed public context (once);
2. round 1: every site prepares its design (setup) and the design summaries
   are summed under CKKS: sites encrypt, the coordinator adds, the key holder
   decrypts the aggregate (whole GLMM fits under ckks: ``test_flower_study.py``);
3. a forged round: the coordinator substitutes a public context whose
   secret key it generated, signed with its own key as the key holder's; the
   sites refuse it before they release anything.

The ServerApp writes what the coordinator received (ciphertext chunks and the
public context) next to its result file; the test checks those bytes.
A site killed or frozen by another module's test is not asked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tenseal as ts
from conftest import BOUND, KEY_HOLDER, SITES, closures

from protocols.ckks import CkksCiphertext, CkksKeyHolder, CkksParams, PayloadKind, add_ciphertexts
from protocols.encoding import FixedPointEncoder
from protocols.stack import CkksSum, PlaintextSum
from securefed.site import Site
from securefed.transport.calls import record_call
from securefed.transport.ckks_keys import PUBLIC_FILE, SECRET_FILE


@pytest.fixture(scope="module")
def live(federation) -> list[str]:
    return federation.live_sites()


@pytest.fixture(scope="module")
def frames(federation):
    return {name: pd.read_csv(federation.root / "data" / f"{name}.csv") for name in SITES}


@pytest.fixture(scope="module")
def ckks_run(federation, frames, live):
    compute = closures(frames)
    call = {key: record_call(fn, live).to_json() for key, fn in compute.items()}
    steps = [
        {"kind": "sum", "round_id": 1, "purpose": "summary", "call": call["summary"],
         "setup": [call["prepare"]]},
        {"kind": "forged_sum", "round_id": 2, "purpose": "terms", "call": call["terms"]},
    ]
    report = federation.run(steps, layer="ckks", sites=live)
    for step in report["results"]:
        print(f"{step['kind']}: {step['seconds']:.1f} s", step.get("stages", ""))
    report["dir"] = federation.root / f"run{federation.runs}"  # what the ServerApp wrote
    return report


@pytest.fixture(scope="module")
def vectors(frames, live) -> list[dict[str, np.ndarray]]:
    """Each site's vector of round 1, computed in this process."""
    compute = closures(frames)
    sites = [Site(name, frames[name]) for name in live]
    for site in sites:
        compute["prepare"](site)
    return [{site.name: compute[key](site) for site in sites} for key in ("summary",)]


def test_ckks_sums_over_flower_equal_the_in_process_ckks_sums(ckks_run, vectors, live):
    sums = [r for r in ckks_run["results"] if r["kind"] == "sum"]
    assert len(sums) == 1
    for round_id, (result, round_vectors) in enumerate(zip(sums, vectors, strict=True), 1):
        assert result["contributors"] == live and result["dropped"] == []
        in_process = CkksSum(bound=BOUND).aggregate(round_vectors, round_id=round_id,
                                                    purpose="")
        plain = PlaintextSum().aggregate(round_vectors, round_id=round_id, purpose="")
        np.testing.assert_allclose(result["total"], in_process.total, rtol=0, atol=1e-10)
        np.testing.assert_allclose(result["total"], plain.total, rtol=0, atol=1e-10)
    assert sums[0]["total"][0] == 48 * len(live)  # n
    stages = [stage for stage, _, _ in sums[0]["stages"]]
    assert stages == ["ckks_context", "open", "decrypt"]


def test_the_coordinator_received_only_ciphertexts_it_cannot_open(federation, ckks_run,
                                                                  vectors, live):
    key_dir = federation.root / KEY_HOLDER
    public = (ckks_run["dir"] / "coordinator-context.bin").read_bytes()
    assert public == (key_dir / PUBLIC_FILE).read_bytes()  # the key holder's own context
    coordinator_context = ts.context_from(public)
    assert not coordinator_context.is_private()
    holder = CkksKeyHolder.load(key_dir / SECRET_FILE)  # the key holder's side, for the check
    slots = CkksParams().slot_count
    sums = [r for r in ckks_run["results"] if r["kind"] == "sum"]
    for result, round_vectors in zip(sums, vectors, strict=True):
        assert sorted(result["received"]) == sorted(live)
        for name, held in result["received"].items():
            chunks = tuple(Path(p).read_bytes() for p in held["chunks"])
            assert result["bytes"][name] == sum(map(len, chunks)) > 8 * len(round_vectors[name])
            vector = ts.ckks_vector_from(coordinator_context, chunks[0])
            with pytest.raises(ValueError):  # the coordinator's context has no secret key
                vector.decrypt()
            # it is the site's encoded vector, encrypted under the key holder's key
            encoder = FixedPointEncoder.for_sum(BOUND, len(live), len(round_vectors[name]))
            ciphertext = CkksCiphertext(held["fingerprint"], held["n_values"],
                                        PayloadKind.RING_LIMBS, chunks, 64, 16)
            assert len(chunks) == -(-4 * encoder.n_words // slots)
            single = add_ciphertexts(public, [ciphertext])
            np.testing.assert_array_equal(holder.decrypt_ring_sum(single, encoder.n_words),
                                          encoder.encode(round_vectors[name]))


def test_the_secret_context_exists_only_in_the_key_holders_directory(federation, ckks_run):
    secrets_found = []
    for path in federation.root.rglob("*"):
        if not path.is_file() or path.stat().st_size < 100_000:  # a secret context: ~700 kB
            continue
        try:
            if ts.context_from(path.read_bytes()).is_private():
                secrets_found.append(path)
        except Exception:  # not a TenSEAL context
            continue
    assert secrets_found == [federation.root / KEY_HOLDER / SECRET_FILE]
    assert (secrets_found[0].stat().st_mode & 0o777) == 0o600
    ledger = (federation.root / KEY_HOLDER / f"{SECRET_FILE}.rounds").read_text().split()
    assert len(ledger) == 1  # the one decrypted round, at the key holder


def test_sites_refuse_a_context_substituted_by_the_coordinator(ckks_run, live):
    (forged,) = [r for r in ckks_run["results"] if r["kind"] == "forged_sum"]
    assert "released" not in forged
    for name in live:
        assert f"{name}: untrusted-context: the CKKS public context is not signed by the key " \
            "holder this site trusts" in forged["refused"]
