"""Trails a reviewer can trust: persistent keys, pinned registries, and the forgery they stop.

A run signed with ``securefed keygen``'s keys (``--site-keys DIR``) is re-forged
here as the issue describes it (RESULT hash and protection field doctored, every
entry re-signed with fresh keys, a matching registry written): it verifies as
self-consistent, and fails once the reviewer pins the fingerprint obtained out
of band. Without persistent keys the run and ``audit verify`` say the trail is
only self-consistent.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from securefed.audit import FailureReason, verify_log
from securefed.audit_log import parse_entry
from securefed.audit_trail import trail_paths
from securefed.canonical import canonical_bytes
from securefed.cli import main
from securefed.keys import Identity, Registry, key_fingerprint

SITES = ("A", "B", "C")


@pytest.fixture
def run_cli(capsys):
    def invoke(*args: str | Path) -> tuple[int, str, str]:
        code = main([str(arg) for arg in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke


@pytest.fixture
def data(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    n = 40 * len(SITES)
    x = rng.normal(size=n)
    frame = pd.DataFrame({"site": np.repeat(SITES, 40), "x": x,
                          "y": (rng.random(n) < 1 / (1 + np.exp(-0.8 * x))).astype(int)})
    path = tmp_path / "data.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def keys(tmp_path: Path, run_cli) -> Path:
    folder = tmp_path / "keys"
    for name in ("coordinator", *SITES):
        code, _, _ = run_cli("keygen", "--site", name, "--out", folder, "--registry",
                             folder / "registry.json")
        assert code == 0
    return folder


def bfi(run_cli, data: Path, log: Path, *extra: str | Path) -> tuple[int, str, str]:
    return run_cli("bfi", data, "--formula", "y ~ x", "--site-column", "site", "--audit-log",
                   log, "--quiet", *extra)


def site_logs(log: Path) -> list[Path]:
    return [trail_paths(log, name)[0] for name in SITES]


def site_log_args(log: Path) -> list[str | Path]:
    return [arg for path in site_logs(log) for arg in ("--site-log", path)]


# ---------------------------------------------------------------- keygen

def test_keygen_prints_the_keys_and_the_registrys_full_fingerprints(tmp_path, run_cli) -> None:
    folder, registry = tmp_path / "k", tmp_path / "k" / "registry.json"
    for name in ("coordinator", "A"):
        code, out, _ = run_cli("keygen", "--site", name, "--out", folder, "--registry",
                               registry)
        assert code == 0
    identity = Identity.load(folder / "A.key")
    raw = bytes.fromhex(identity.public_key_hex)
    assert f"key fingerprint of A (SHA-256 of its public key): " \
           f"{hashlib.sha256(raw).hexdigest()}" in out
    assert identity.fingerprint == key_fingerprint(identity.public_key_hex)
    loaded = Registry.load(registry)
    assert f"registry fingerprint (SHA-256 of its canonical parties): {loaded.fingerprint}" \
        in out and len(loaded.fingerprint) == 64
    # the registry fingerprint is SHA-256 over the canonical JSON of the parties alone
    parties = json.loads(registry.read_text())["parties"]
    text = json.dumps(parties, sort_keys=True, separators=(",", ":"))
    assert loaded.fingerprint == hashlib.sha256(text.encode()).hexdigest()
    code, out, _ = run_cli("keygen", "--site", "B", "--out", folder)  # no registry: its key
    assert code == 0 and Identity.load(folder / "B.key").fingerprint in out
    assert "registry fingerprint" not in out


# ---------------------------------------------------------------- persistent keys

def test_a_run_with_site_keys_signs_with_them_and_verifies_pinned(tmp_path, data, keys,
                                                                  run_cli) -> None:
    log = tmp_path / "run.jsonl"
    code, out, _ = bfi(run_cli, data, log, "--site-keys", keys)
    registry = Registry.load(keys / "registry.json")
    assert code == 0 and f"registry fingerprint {registry.fingerprint}" in out
    assert Registry.load(log.with_suffix(".registry.json")) == registry
    start = json.loads(log.read_text().splitlines()[0])["payload"]
    assert start["key_origin"] == "consortium"
    assert start["sites"]["A"] == Identity.load(keys / "A.key").public_key_hex
    code, out, err = run_cli("audit", "verify", log, "--keys", keys / "registry.json",
                             "--expect-fingerprint", registry.fingerprint, *site_log_args(log))
    assert code == 0 and f"pinned to registry {registry.fingerprint}" in out
    assert "warning" not in err
    code, out, err = run_cli("audit", "verify", log, "--keys", keys / "registry.json")
    assert code == 0 and "nothing pinned" in out
    assert err.count("\n") == 1 and err.startswith("warning: nothing was pinned")


def test_a_run_without_site_keys_says_its_trail_is_only_self_consistent(tmp_path, data,
                                                                        run_cli) -> None:
    log = tmp_path / "run.jsonl"
    code, out, _ = bfi(run_cli, data, log)
    assert code == 0 and "only self-consistent, nothing can be pinned" in out
    code, out, err = run_cli("audit", "verify", log, "--keys", log.with_suffix(".registry.json"))
    assert code == 0 and "signed with keys made for the run" in err


def test_wrong_site_keys_and_a_wrong_pin_are_refused_before_the_run(tmp_path, data, keys,
                                                                    run_cli) -> None:
    log = tmp_path / "run.jsonl"
    code, _, err = bfi(run_cli, data, log, "--site-keys", keys, "--expect-fingerprint",
                       "ef" * 32)
    assert code == 2 and err.count("\n") == 1 and "not the pinned efefefefefefefef" in err
    assert not log.exists()
    code, _, err = bfi(run_cli, data, log, "--site-keys", keys, "--expect-fingerprint", "ef" * 8)
    assert code == 2 and "full fingerprint, 64 hex" in err
    (keys / "C.key").unlink()
    Identity.generate("C").save_private_key(keys / "C.key")  # not the registered key
    code, _, err = bfi(run_cli, data, log, "--site-keys", keys)
    assert code == 2 and "is not the key" in err and "'C'" in err and not log.exists()
    (keys / "C.key").unlink()
    code, _, err = bfi(run_cli, data, log, "--site-keys", keys)
    assert code == 2 and "no signing key for site 'C'" in err
    code, _, err = run_cli("bfi", data, "--formula", "y ~ x", "--site-column", "site",
                           "--site-keys", keys)
    assert code == 2 and "add --audit-log" in err


# ---------------------------------------------------------------- the forgery

def _resign_chain(items: list[dict[str, Any]], signers: dict[str, Identity],
                  run_id: str | None = None) -> None:
    """Re-chain and re-sign; with ``run_id``, countersign each checkpoint anew."""
    from securefed.audit_log import CheckpointRequest

    for i, item in enumerate(items):
        item["seq"] = i
        item["prev_hash"] = parse_entry(canonical_bytes(items[i - 1])).hash if i else "0" * 64
        if run_id is not None and item["kind"] == "CHECKPOINT":
            statement = CheckpointRequest(run_id, i, item["prev_hash"]).statement_bytes()
            item["payload"].update(entry_count=i, head_hash=item["prev_hash"], countersignatures={
                name: signers[name].sign(statement).hex()
                for name in item["payload"]["countersignatures"]})
        item["signature"] = ""
        unsigned = parse_entry(canonical_bytes(item)).signed_bytes()
        item["signature"] = signers[item["actor"]].sign(unsigned).hex()


def _write(path: Path, items: list[dict[str, Any]]) -> None:
    path.write_bytes(b"".join(canonical_bytes(item) + b"\n" for item in items))


def forge(log: Path, forged_registry: Path) -> Registry:
    """Doctor RESULT and the protection field, re-sign everything with fresh keys."""
    from securefed.audit_log import ReleaseRecord

    fresh = {name: Identity.generate(name) for name in ("coordinator", *SITES)}
    registry = Registry.of(*fresh.values())
    items = [json.loads(line) for line in log.read_text().splitlines()]
    start = items[0]["payload"]
    start["protection"]["layers"][0]["name"] = "secagg"  # a protection that never ran
    start["sites"] = {n: fresh[n].public_key_hex for n in start["sites"]}
    start["coordinator_key"] = fresh["coordinator"].public_key_hex
    start["registry_fingerprint"] = registry.fingerprint
    releases = {}
    for item in items:
        payload = item["payload"]
        if item["kind"] == "RESULT":
            payload["result_hash"] = "00" * 32
        if item["kind"] == "RELEASE":
            record = ReleaseRecord.from_json(payload["release"])
            payload["site_signature"] = fresh[record.site].sign(record.signed_bytes()).hex()
            releases[(record.round, record.vector_kind, record.site)] = payload
    _resign_chain(items, fresh, start["run_id"])
    _write(log, items)
    for name in SITES:  # each site log: the same releases, the new countersignatures
        own = trail_paths(log, name)[0]
        mine = [json.loads(line) for line in own.read_text().splitlines()]
        for item in mine:
            payload = item["payload"]
            if item["kind"] == "RELEASE":
                release = payload["release"]
                item["payload"] = releases[(release["round"], release["vector_kind"], name)]
            else:
                theirs = items[payload["entry_count"]]
                payload.update(head_hash=theirs["prev_hash"], countersignatures={
                    name: theirs["payload"]["countersignatures"][name]})
        _resign_chain(mine, fresh)
        _write(own, mine)
    registry.save(forged_registry)
    return registry


def test_a_fully_reforged_trail_is_self_consistent_but_fails_the_pinned_fingerprint(
        tmp_path, data, keys, run_cli) -> None:
    log = tmp_path / "run.jsonl"
    assert bfi(run_cli, data, log, "--site-keys", keys)[0] == 0
    agreed = Registry.load(keys / "registry.json").fingerprint  # obtained out of band
    forged = forge(log, log.with_suffix(".registry.json"))
    # the forgery is self-consistent: exit 0, but only with the warning that nothing is pinned
    code, out, err = run_cli("audit", "verify", log, "--keys", log.with_suffix(".registry.json"),
                             *site_log_args(log))
    assert code == 0 and out.startswith("OK") and "nothing pinned" in out
    assert "warning: nothing was pinned" in err
    first = json.loads(log.read_text().splitlines()[0])["payload"]
    assert first["protection"]["layers"][0]["name"] == "secagg"
    # pinned to the fingerprint the sites agreed on, it fails
    code, out, _ = run_cli("audit", "verify", log, "--keys", log.with_suffix(".registry.json"),
                           "--expect-fingerprint", agreed, *site_log_args(log))
    assert code == 1 and "FINGERPRINT_MISMATCH" in out and "seq 0" in out
    assert f"not the expected {agreed[:16]}" in out
    # and checked against the agreed registry, it is signed by keys not in that registry
    report = verify_log(log, Registry.load(keys / "registry.json"), site_logs(log),
                        expect_fingerprint=agreed)
    assert (report.ok, report.reason, report.first_bad_seq) == \
        (False, FailureReason.WRONG_REGISTRY, 0)
    assert "wrong or substituted registry" in report.summary()
    assert forged.fingerprint != agreed
    # every report format fails too
    for fmt in ("table", "json", "html"):
        code, _, err = run_cli("audit", "report", log, "--keys", keys / "registry.json",
                               "--format", fmt, "--out", tmp_path / f"r.{fmt}")
        assert code == 1 and "WRONG_REGISTRY" in err


def test_expect_fingerprint_needs_a_registry_and_64_hex(tmp_path, data, keys, run_cli) -> None:
    log = tmp_path / "run.jsonl"
    assert bfi(run_cli, data, log, "--site-keys", keys)[0] == 0
    code, _, err = run_cli("audit", "verify", log, "--expect-fingerprint", "ab" * 32)
    assert code == 2 and "--keys" in err
    code, _, err = run_cli("audit", "verify", log, "--keys", keys / "registry.json",
                           "--expect-fingerprint", "ab" * 8)
    assert code == 2 and "64 hex" in err


# ---------------------------------------------------------------- study files

def write_study(folder: Path, data: Path, audit: str = "", site_key: str = "") -> Path:
    frame = pd.read_csv(data)
    sites = ""
    for name in SITES:
        frame[frame["site"] == name].drop(columns="site").to_csv(folder / f"{name}.csv",
                                                                 index=False)
        key = f'key = "{site_key}"\n' if site_key and name == "A" else ""
        sites += f'\n[[sites]]\nname = "{name}"\ndata = "{name}.csv"\n{key}'
    path = folder / "study.toml"
    path.write_text('[model]\nkind = "bfi"\nformula = "y ~ x"\nfamily = "binomial"\n'
                    f"{sites}\n[output]\ndir = \"out\"\n{audit}")
    return path


def test_a_study_signs_with_its_named_keys_and_refuses_another_pinned_registry(
        tmp_path, data, keys, run_cli) -> None:
    agreed = Registry.load(keys / "registry.json").fingerprint
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (keys / "A.key").rename(moved / "A.key")  # a site's key named by the study itself
    study = write_study(tmp_path, data, f'\n[audit]\nsite_keys = "keys"\n'
                        f'expect_fingerprint = "{agreed}"\n', site_key="elsewhere/A.key")
    code, out, err = run_cli("run", study)
    assert code == 0, err
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert f"consortium keys of registry fingerprint {agreed}" in summary
    assert f"--expect-fingerprint {agreed}" in err  # the command to check it, pinned
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["study"]["registry_fingerprint"] == agreed
    log = tmp_path / "out" / "audit.jsonl"
    report = verify_log(log, Registry.load(keys / "registry.json"), site_logs(log),
                        expect_fingerprint=agreed)
    assert report.ok and report.key_origin == "consortium", report.summary()
    # the sites agreed on another registry: refused before anything runs, in one line
    study.write_text(study.read_text().replace(agreed, "12" * 32).replace('"out"', '"out2"'))
    code, _, err = run_cli("run", study)
    assert code == 2 and err.count("\n") == 1 and "line" in err
    assert "not the pinned 1212121212121212" in err and not (tmp_path / "out2").exists()


def test_a_study_without_keys_says_so_and_a_pin_needs_keys(tmp_path, data, run_cli) -> None:
    study = write_study(tmp_path, data)
    code, _, err = run_cli("run", study, "--quiet")
    assert code == 0, err
    assert "only self-consistent" in (tmp_path / "out" / "summary.txt").read_text()
    study.write_text(study.read_text().replace('"out"', '"out2"')
                     + f'\n[audit]\nexpect_fingerprint = "{"ab" * 32}"\n')
    code, _, err = run_cli("run", study)
    assert code == 2 and "add [audit] site_keys" in err
    study.write_text(study.read_text().replace("ab" * 32, "ab" * 30))
    code, _, err = run_cli("run", study)
    assert code == 2 and "64 hex" in err and "line" in err



def test_over_flower_a_study_pins_but_names_no_key_files(tmp_path) -> None:
    from securefed.errors import InputError
    from securefed.study import load_study

    path = tmp_path / "remote.toml"
    base = ('[model]\nkind = "bfi"\nformula = "y ~ x"\nfamily = "binomial"\n'
            + "".join(f'\n[[sites]]\nname = "{n}"\n' for n in SITES))
    path.write_text(base + f'\n[audit]\nexpect_fingerprint = "{"AB" * 32}"\n')
    assert load_study(path, remote=True).audit.expect_fingerprint == "ab" * 32
    path.write_text(base + '\n[audit]\nsite_keys = "keys"\n')
    with pytest.raises(InputError, match="remove 'site_keys' from \\[audit\\]"):
        load_study(path, remote=True)
    path.write_text(base.replace('name = "A"\n', 'name = "A"\nkey = "A.key"\n'))
    with pytest.raises(InputError, match="signing key is in its own SuperNode"):
        load_study(path, remote=True)


def test_audit_fingerprint_prints_what_to_compare_out_of_band(keys, run_cli) -> None:
    registry = Registry.load(keys / "registry.json")
    code, out, _ = run_cli("audit", "fingerprint", keys / "registry.json")
    assert code == 0 and out.splitlines()[0] == f"registry fingerprint: {registry.fingerprint}"
    assert f"A: key fingerprint {Identity.load(keys / 'A.key').fingerprint}" in out


def test_a_site_countersigns_only_a_run_started_under_its_own_pinned_registry(tmp_path) -> None:
    from test_audit import build_run

    from protocols.errors import InvalidMessage
    from securefed.transport.site_audit import check_registry, countersign

    run = build_run(tmp_path)
    log_text = run.log.read_text()
    checkpoint = {"run_id": "r1", "entry_count": 19, "head_hash": "0" * 64}
    other = Registry.of(run.coordinator, *run.sites.values(), Identity.generate("extra"))
    with pytest.raises(InvalidMessage, match="is not this site's own copy"):
        countersign(tmp_path, run.sites["site-a"], checkpoint, log_text, other)
    pin = {"expect-fingerprint": other.fingerprint}
    with pytest.raises(InvalidMessage, match="not the pinned"):
        countersign(tmp_path, run.sites["site-a"], checkpoint, log_text, run.registry, pin)
    check_registry(run.registry, {"expect-fingerprint": run.registry.fingerprint},
                   run.registry.fingerprint)  # the agreed registry, the run's: accepted
    with pytest.raises(InvalidMessage, match="does not state its registry"):
        check_registry(run.registry, {"expect-fingerprint": run.registry.fingerprint})


def test_fit_takes_site_keys_too(tmp_path, data, keys, run_cli) -> None:
    log = tmp_path / "fit.jsonl"
    registry = Registry.load(keys / "registry.json")
    code, out, err = run_cli("fit", data, "--formula", "y ~ x + (1 | site)", "--site-column",
                             "site", "--audit-log", log, "--site-keys", keys,
                             "--expect-fingerprint", registry.fingerprint, "--quiet")
    assert code == 0, err
    assert f"registry fingerprint {registry.fingerprint}" in out
    report = verify_log(log, registry, site_logs(log), expect_fingerprint=registry.fingerprint)
    assert report.ok and report.key_origin == "consortium", report.summary()
