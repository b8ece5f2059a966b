"""The audit log end to end: a clean run verifies; each kind of tampering is caught.

``build_run`` writes a small three-site run with the public API, as the
coordinator and sites would (seq numbers in brackets)::

    [0] RUN_START
    round 0: [1] ROUND_SPEC [2-4] RELEASE a, b, c [5] AGGREGATION [6] CHECKPOINT (a, b, c)
    round 1: [7] ROUND_SPEC [8-10] RELEASE a, b, c [11] AGGREGATION
    round 2: [12] ROUND_SPEC [13-14] RELEASE a, b [15] REFUSAL c (budget)
             [16] AGGREGATION (c dropped out)
    [17] RESULT [18] CHECKPOINT (a, b)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from protocols.errors import InvalidMessage, ReplayError
from securefed.audit import (
    AuditLog,
    CheckpointRequest,
    Countersignature,
    Entry,
    EventKind,
    FailureReason,
    RefusalReason,
    SiteLog,
    build_report,
    read_entries,
    render_report,
    run_start_payload,
    scan_for_secrets,
    verify_log,
)
from securefed.audit_log import parse_entry
from securefed.canonical import canonical_bytes
from securefed.errors import InputError
from securefed.keys import Identity, Registry

RUN_ID = "run-0001"
SITES = ("site-a", "site-b", "site-c")
LAYERS = [{"name": "clip", "bound": 2.0}, {"name": "dp_gaussian", "sigma": 0.75},
          {"name": "encode", "bits": 40}, {"name": "secagg"}]


@dataclass
class Run:
    """Paths and parties of one written run."""

    directory: Path
    coordinator: Identity
    sites: dict[str, Identity]
    registry: Registry
    log: Path
    site_logs: dict[str, SiteLog]
    vectors: dict[tuple[str, int], np.ndarray]

    @property
    def site_log_paths(self) -> list[Path]:
        return [site_log.path for site_log in self.site_logs.values()]

    @property
    def identities(self) -> list[Identity]:
        return [self.coordinator, *self.sites.values()]


def build_run(directory: Path, omit: tuple[str, int] | None = None,
              sites_check: bool = True) -> Run:
    """Write the run in the module docstring; ``omit`` a (site, round) release.

    With ``sites_check`` each site reads the coordinator's log before countersigning.
    """
    coordinator = Identity.generate("coordinator")
    sites = {name: Identity.generate(name) for name in SITES}
    registry = Registry.of(coordinator, *sites.values())
    log = AuditLog.create(directory / "coordinator.jsonl")
    log.append(EventKind.RUN_START, coordinator, run_start_payload(
        run_id=RUN_ID, study_config_hash="c0" * 32, model="binomial GLMM, adaptive GH (5)",
        protection={"layers": LAYERS}, registry=registry, sites=list(SITES),
        budget={"epsilon": 1.0, "delta": 1e-6}))
    site_logs = {name: SiteLog.create(directory / f"{name}.jsonl", identity,
                                      directory / f"{name}.salts.jsonl", RUN_ID)
                 for name, identity in sites.items()}
    rng = np.random.default_rng(7)
    vectors = {}
    for round_id in range(3):
        active = SITES if round_id < 2 else SITES[:2]
        log.append(EventKind.ROUND_SPEC, coordinator, {
            "run_id": RUN_ID, "round": round_id, "spec_hash": f"{round_id:064x}",
            "vector_kind": "glmm_terms", "length": 6, "layers": [x["name"] for x in LAYERS]})
        for name in active:
            vector = rng.normal(size=6)
            vectors[(name, round_id)] = vector
            release = site_logs[name].record_release(
                vector, round_id=round_id, vector_kind="glmm_terms", layers=LAYERS,
                privacy={"epsilon_spent": 0.25 * (round_id + 1),
                         "epsilon_remaining": 1.0 - 0.25 * (round_id + 1),
                         "delta_spent": 1e-7 * (round_id + 1)})
            if (name, round_id) != omit:
                log.append_release(coordinator, release, registry)
        if round_id == 2:
            log.append(EventKind.REFUSAL, coordinator, {
                "run_id": RUN_ID, "round": 2, "site": "site-c",
                "reason": RefusalReason.BUDGET, "detail": "epsilon 1.0 would exceed 0.75 left"})
        log.append(EventKind.AGGREGATION, coordinator, {
            "run_id": RUN_ID, "round": round_id, "vector_kind": "glmm_terms",
            "contributors": list(active), "dropouts": sorted(set(SITES) - set(active)),
            "recovery": {"method": "shamir", "recovered": sorted(set(SITES) - set(active))}})
        if round_id == 2:
            log.append(EventKind.RESULT, coordinator, {
                "run_id": RUN_ID, "result_kind": "GLMMFit", "result_hash": "ab" * 32})
        if round_id in (0, 2):
            request = log.checkpoint_request()
            seen = read_entries(log.path) if sites_check else None
            counters = [site_logs[name].countersign(request, seen) for name in active]
            log.append_checkpoint(coordinator, request, counters, registry)
    return Run(directory, coordinator, sites, registry, log.path, site_logs, vectors)


@pytest.fixture
def run(tmp_path: Path) -> Run:
    return build_run(tmp_path)


# ---------------------------------------------------------------- tampering tools

def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def write(path: Path, items: list[dict[str, Any]]) -> None:
    path.write_bytes(b"".join(canonical_bytes(item) + b"\n" for item in items))


def entry_of(item: dict[str, Any]) -> Entry:
    return parse_entry(canonical_bytes(item))


def resign(items: list[dict[str, Any]], start: int, signers: dict[str, Identity],
           site_log: bool = False) -> None:
    """Rewrite from ``start`` as a key holder would: renumber, re-chain, re-sign.

    A coordinator's checkpoints are restated for the new chain (their countersignatures
    are kept: nobody but the sites can make new ones).
    """
    for i in range(start, len(items)):
        items[i]["seq"] = i
        items[i]["prev_hash"] = entry_of(items[i - 1]).hash if i else "0" * 64
        if items[i]["kind"] == "CHECKPOINT" and not site_log:
            items[i]["payload"].update(entry_count=i, head_hash=items[i]["prev_hash"])
        items[i]["signature"] = ""
        unsigned = entry_of(items[i]).signed_bytes()
        items[i]["signature"] = signers[items[i]["actor"]].sign(unsigned).hex()


def check(run: Run, reason: FailureReason, seq: int, *, site_logs: bool = False,
          registry: Registry | None = None, bad_log: Path | None = None) -> None:
    report = verify_log(run.log, registry or run.registry,
                        run.site_log_paths if site_logs else ())
    assert not report.ok
    assert (report.reason, report.first_bad_seq) == (reason, seq), report.summary()
    assert report.bad_log == str(bad_log or run.log)
    assert f"seq {seq}" in report.summary() and reason.value in report.summary()


# ---------------------------------------------------------------- clean runs

def test_clean_run_verifies_with_and_without_site_logs(run: Run) -> None:
    items = read(run.log)
    kinds = [item["kind"][:3] for item in items]
    assert kinds == ["RUN", "ROU", "REL", "REL", "REL", "AGG", "CHE", "ROU", "REL", "REL",
                     "REL", "AGG", "ROU", "REL", "REL", "REF", "AGG", "RES", "CHE"]
    for site_logs in ((), run.site_log_paths):
        report = verify_log(run.log, run.registry, site_logs)
        assert report.ok, report.summary()
        assert (report.entries, report.first_bad_seq, report.reason) == (19, None, None)
        assert report.keys_from == "registry"
    assert "countersigned by site-a, site-b" in report.message


def test_without_a_registry_the_keys_come_from_run_start(run: Run) -> None:
    report = verify_log(run.log)
    assert report.ok and report.keys_from == "log"


def test_a_dispute_opens_the_commitment_with_the_kept_salt(run: Run) -> None:
    site = run.site_logs["site-b"]
    vector = run.vectors[("site-b", 1)]
    assert site.open_release(vector, 1, "glmm_terms")
    assert not site.open_release(vector + 1e-12, 1, "glmm_terms")
    assert not site.open_release(run.vectors[("site-a", 1)], 1, "glmm_terms")
    with pytest.raises(InputError, match="no salt"):
        site.open_release(vector, 7, "glmm_terms")
    salts = [json.loads(line)["salt"] for line in site.salt_path.read_bytes().splitlines()]
    assert len(salts) == 3 and oct(site.salt_path.stat().st_mode)[-3:] == "600"
    for path in (run.log, site.path):
        assert not any(salt in path.read_text() for salt in salts)


# ---------------------------------------------------------------- tampering

def test_an_edited_field_is_edited_at_that_seq(run: Run) -> None:
    items = read(run.log)
    items[9]["payload"]["release"]["shape"] = [5]
    write(run.log, items)
    check(run, FailureReason.EDITED, 9)


def test_an_edit_with_the_next_link_patched_is_still_edited(run: Run) -> None:
    items = read(run.log)
    items[5]["payload"]["dropouts"] = ["site-b"]
    items[6]["prev_hash"] = entry_of(items[5]).hash
    write(run.log, items)
    check(run, FailureReason.EDITED, 5)


def test_a_rewritten_entry_validly_resigned_is_edited(run: Run) -> None:
    items = read(run.log)
    items[11]["payload"]["dropouts"] = ["site-a"]
    items[11]["signature"] = ""
    items[11]["signature"] = run.coordinator.sign(entry_of(items[11]).signed_bytes()).hex()
    write(run.log, items)
    check(run, FailureReason.EDITED, 11)


def test_a_deleted_entry_is_deleted_at_its_seq(run: Run) -> None:
    items = read(run.log)
    write(run.log, items[:8] + items[9:])
    check(run, FailureReason.DELETED, 8)
    write(run.log, items[1:])
    check(run, FailureReason.DELETED, 0)


def test_two_swapped_entries_are_reordered(run: Run) -> None:
    items = read(run.log)
    items[8], items[9] = items[9], items[8]
    write(run.log, items)
    check(run, FailureReason.REORDERED, 8)


def test_a_cut_tail_is_truncated(run: Run) -> None:
    items = read(run.log)
    write(run.log, items[:-2])
    check(run, FailureReason.TRUNCATED, 17)
    check(run, FailureReason.TRUNCATED, 17, site_logs=True)


def test_a_cut_before_any_checkpoint_is_missing_checkpoint_or_truncated(run: Run) -> None:
    items = read(run.log)
    write(run.log, items[:5])
    check(run, FailureReason.MISSING_CHECKPOINT, 5)
    check(run, FailureReason.TRUNCATED, 5, site_logs=True)


def test_a_cut_at_a_checkpoint_is_caught_by_the_site_logs(run: Run) -> None:
    items = read(run.log)
    write(run.log, items[:7])
    assert verify_log(run.log, run.registry).ok  # a sealed prefix, alone, looks complete
    check(run, FailureReason.TRUNCATED, 7, site_logs=True)


def test_swapped_signatures_are_bad_signature(run: Run) -> None:
    items = read(run.log)
    items[8]["signature"], items[9]["signature"] = items[9]["signature"], items[8]["signature"]
    write(run.log, items)
    check(run, FailureReason.BAD_SIGNATURE, 8)


def test_a_signature_by_another_party_is_bad_signature(run: Run) -> None:
    items = read(run.log)
    items[12]["signature"] = run.sites["site-a"].sign(entry_of(items[12]).signed_bytes()).hex()
    write(run.log, items)
    report = verify_log(run.log, run.registry)
    assert (report.reason, report.first_bad_seq) == (FailureReason.BAD_SIGNATURE, 12)
    assert "signed by 'site-a'" in report.message


def test_a_release_record_not_signed_by_its_site_is_bad_signature(run: Run) -> None:
    items = read(run.log)
    items[10]["payload"]["release"]["privacy"]["epsilon_spent"] = "0.0"
    resign(items, 10, {"coordinator": run.coordinator})
    write(run.log, items)
    check(run, FailureReason.BAD_SIGNATURE, 10)


def test_unknown_keys_are_named(run: Run) -> None:
    partial = Registry.of(run.coordinator, run.sites["site-a"], run.sites["site-c"])
    check(run, FailureReason.UNKNOWN_KEY, 0, registry=partial)
    impostor = Registry.of(run.coordinator, run.sites["site-a"], run.sites["site-c"],
                           Identity.generate("site-b"))  # a substituted key: a wrong registry
    check(run, FailureReason.WRONG_REGISTRY, 0, registry=impostor)
    mallory = Identity.generate("mallory")
    items = read(run.log)
    items[5]["actor"] = "mallory"
    resign(items, 5, {"mallory": mallory, "coordinator": run.coordinator})
    write(run.log, items)
    check(run, FailureReason.UNKNOWN_KEY, 5)


def test_a_forged_countersignature_is_caught(run: Run) -> None:
    items = read(run.log)
    request = CheckpointRequest(RUN_ID, 18, items[18]["prev_hash"])
    forged = Countersignature.sign(Identity.generate("site-b"), request)
    items[18]["payload"]["countersignatures"]["site-b"] = forged.signature
    resign(items, 18, {"coordinator": run.coordinator})
    write(run.log, items)
    check(run, FailureReason.BAD_COUNTERSIGNATURE, 18)


def test_a_dropped_countersignature_of_a_surviving_site_is_missing(run: Run) -> None:
    items = read(run.log)
    del items[18]["payload"]["countersignatures"]["site-b"]
    resign(items, 18, {"coordinator": run.coordinator})
    write(run.log, items)
    check(run, FailureReason.MISSING_COUNTERSIGNATURE, 18)


def test_a_coordinator_rewrite_breaks_the_sites_countersignatures(run: Run) -> None:
    items = read(run.log)
    del items[9]  # site-b's round-1 release, then every later entry re-signed
    resign(items, 9, {"coordinator": run.coordinator})
    write(run.log, items)
    check(run, FailureReason.BAD_COUNTERSIGNATURE, 17)
    check(run, FailureReason.BAD_COUNTERSIGNATURE, 17, site_logs=True)


def test_a_rewrite_that_claims_everyone_dropped_out_is_caught(run: Run) -> None:
    items = read(run.log)
    del items[9]
    items[15]["payload"]["dropouts"] = list(SITES)
    items[15]["payload"]["contributors"] = []
    items[17]["payload"]["countersignatures"] = {}
    resign(items, 9, {"coordinator": run.coordinator})
    write(run.log, items)
    check(run, FailureReason.MISSING_COUNTERSIGNATURE, 17)


def test_a_replayed_release_is_caught(run: Run) -> None:
    items = read(run.log)
    items.insert(12, json.loads(json.dumps(items[8])))
    resign(items, 12, {"coordinator": run.coordinator})
    write(run.log, items)
    check(run, FailureReason.REPLAYED, 12)


def test_a_refusal_with_an_unknown_reason_is_malformed(run: Run) -> None:
    items = read(run.log)
    items[15]["payload"]["reason"] = "WHIM"
    resign(items, 15, {"coordinator": run.coordinator})
    write(run.log, items)
    check(run, FailureReason.MALFORMED, 15)


def test_a_site_refuses_to_countersign_a_log_that_does_not_chain(run: Run) -> None:
    entries = read_entries(run.log)
    log = AuditLog.open(run.log)
    log.append(EventKind.RESULT, run.coordinator, {"run_id": RUN_ID, "result_kind": "x",
                                                   "result_hash": "0" * 64})
    request = log.checkpoint_request()
    with pytest.raises(InvalidMessage, match="does not end at the requested head"):
        run.site_logs["site-a"].countersign(request, entries)
    with pytest.raises(InvalidMessage, match="breaks at seq 3"):
        run.site_logs["site-a"].countersign(request, entries[:3] + entries[4:])


def test_a_garbled_line_is_malformed_and_a_non_log_is_bad_input(run: Run) -> None:
    lines = run.log.read_bytes().splitlines()
    run.log.write_bytes(b"\n".join(lines[:7] + [b'{"seq": 7}'] + lines[8:]) + b"\n")
    check(run, FailureReason.MALFORMED, 7)
    run.log.write_text("site,value\na,1\n")
    with pytest.raises(InputError, match="not a securefed audit log"):
        verify_log(run.log, run.registry)
    with pytest.raises(InputError, match="cannot read"):
        verify_log(run.directory / "absent.jsonl", run.registry)


# ---------------------------------------------------------------- site logs

def test_a_release_the_coordinator_never_logged_shows_in_the_site_log(tmp_path: Path) -> None:
    (tmp_path / "checked").mkdir()
    with pytest.raises(InvalidMessage, match="does not hold this site's releases"):
        build_run(tmp_path / "checked", omit=("site-a", 1))
    run = build_run(tmp_path, omit=("site-a", 1), sites_check=False)
    assert verify_log(run.log, run.registry).ok  # alone, the log cannot know
    site_a = run.site_logs["site-a"].path
    check(run, FailureReason.SITE_LOG_MISMATCH, 2, site_logs=True, bad_log=site_a)


def test_a_release_missing_from_the_site_log_is_a_mismatch(run: Run) -> None:
    path = run.site_logs["site-b"].path
    items = read(path)
    assert [item["kind"] for item in items] == ["RELEASE", "CHECKPOINT", "RELEASE",
                                                "RELEASE", "CHECKPOINT"]
    write(path, items[:3])
    check(run, FailureReason.SITE_LOG_MISMATCH, 14, site_logs=True)


def test_an_edited_site_log_is_edited_in_that_log(run: Run) -> None:
    path = run.site_logs["site-c"].path
    items = read(path)
    items[0]["payload"]["release"]["n_values"] = 60
    write(path, items)
    check(run, FailureReason.EDITED, 0, site_logs=True, bad_log=path)


def test_a_site_log_from_another_party_or_signer_is_refused(run: Run) -> None:
    path = run.site_logs["site-c"].path
    items = read(path)
    items[1]["actor"] = "site-a"
    resign(items, 1, run.sites, site_log=True)
    write(path, items)
    check(run, FailureReason.UNKNOWN_KEY, 1, site_logs=True, bad_log=path)


# ---------------------------------------------------------------- writer refusals

def test_writers_refuse_bad_messages_and_replays(run: Run, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    log = AuditLog.open(run.log)
    assert (log.entry_count, log.run_id) == (19, RUN_ID)
    with pytest.raises(InputError, match="never overwritten"):
        AuditLog.create(run.log)
    with pytest.raises(ValueError, match="lacks"):
        log.append(EventKind.AGGREGATION, run.coordinator, {"run_id": RUN_ID})
    site_a = run.site_logs["site-a"]
    with pytest.raises(ReplayError):
        site_a.record_release(np.zeros(6), round_id=0, vector_kind="glmm_terms",
                              layers=LAYERS, privacy={})
    release = site_a.record_release(np.zeros(6), round_id=3, vector_kind="glmm_terms",
                                    layers=LAYERS, privacy={"epsilon_spent": 1.0})
    lying = Registry.of(run.coordinator, Identity.generate("site-a"))
    with pytest.raises(InvalidMessage, match="does not verify"):
        log.append_release(run.coordinator, release, lying)
    stray = SiteLog.create(other / "a.jsonl", run.sites["site-a"], other / "a.salts", "run-x")
    foreign = stray.record_release(np.zeros(2), round_id=0, vector_kind="n", layers=[],
                                   privacy={})
    with pytest.raises(InvalidMessage, match="another run"):
        log.append_release(run.coordinator, foreign, run.registry)
    request = log.checkpoint_request()
    with pytest.raises(InvalidMessage, match="another run"):
        stray.countersign(request)
    with pytest.raises(ReplayError):
        site_a.countersign(CheckpointRequest(RUN_ID, 18, request.head_hash))
    forged = Countersignature("site-b", run.sites["site-a"].sign(request.statement_bytes()).hex())
    with pytest.raises(InvalidMessage, match="'site-b' does not verify"):
        log.append_checkpoint(run.coordinator, request, [forged], run.registry)
    counters = [site_a.countersign(request)]
    log.append(EventKind.RESULT, run.coordinator, {"run_id": RUN_ID, "result_kind": "x",
                                                   "result_hash": "0" * 64})
    with pytest.raises(InvalidMessage, match="stale"):
        log.append_checkpoint(run.coordinator, request, counters, run.registry)


# ---------------------------------------------------------------- reports and secrets

def test_report_counts_releases_dropouts_refusals_and_budget(run: Run) -> None:
    report = build_report(run.log, verify_log(run.log, run.registry))
    by_site = {summary.site: summary for summary in report.sites}
    assert (by_site["site-a"].releases, by_site["site-c"].releases) == (3, 2)
    assert by_site["site-a"].values == 18 and by_site["site-a"].kinds == {"glmm_terms": 3}
    assert (by_site["site-c"].dropouts, by_site["site-c"].refusals) == (1, 1)
    assert by_site["site-c"].refusal_reasons == {"BUDGET": 1}
    assert by_site["site-a"].epsilon_spent == 0.75 and by_site["site-c"].epsilon_spent == 0.5
    assert by_site["site-b"].countersigned_final and not by_site["site-c"].countersigned_final
    assert report.budget == {"epsilon": "1.0", "delta": "1e-06"} and report.rounds == 3
    data = json.loads(render_report(report, "json"))
    assert data["verification"]["ok"] and len(data["releases"]) == 8
    table = render_report(report, "table")
    assert "0.75 / 1.0" in table and "OK:" in table


def test_html_report_is_self_contained_and_escaped(run: Run) -> None:
    report = build_report(run.log, verify_log(run.log, run.registry))
    page = render_report(report, "html")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "http" not in page and "<script" not in page
    assert "site-c" in page and "clip → dp_gaussian → encode → secagg" in page
    assert "clip(bound=2.0) → dp_gaussian(sigma=0.75) → encode(bits=40) → secagg" in page
    items = read(run.log)
    assert items[2]["payload"]["release"]["commitment"] in page
    assert "not verified" in render_report(build_report(run.log, None), "html")
    items = read(run.log)
    del items[3]["payload"]["release"]["layers"]
    write(run.log, items)
    with pytest.raises(InputError, match="cannot be summarised"):
        build_report(run.log)


def test_no_private_key_material_in_any_artefact(run: Run, tmp_path: Path) -> None:
    report = build_report(run.log, verify_log(run.log, run.registry))
    for fmt in ("table", "json", "html"):
        (run.directory / f"report.{fmt}").write_text(render_report(report, fmt))
    run.registry.save(run.directory / "registry.json")
    salt_files = [site_log.salt_path for site_log in run.site_logs.values()]
    salts = [bytes.fromhex(json.loads(line)["salt"]) for path in salt_files
             for line in path.read_bytes().splitlines()]
    assert scan_for_secrets([run.directory], run.identities, salts=salts,
                            salt_files=salt_files) == []
    assert scan_for_secrets(salt_files, [], salts=salts)  # salts are found outside their file


@pytest.mark.parametrize("form", ["hex", "HEX", "base64", "base64url", "raw bytes", "PEM"])
def test_the_scan_finds_a_leaked_private_key(tmp_path: Path, form: str) -> None:
    import base64

    site = Identity.generate("site-a")
    raw = site.export_private_key_raw()
    leaks = {"hex": raw.hex().encode(), "HEX": raw.hex().upper().encode(),
             "base64": base64.b64encode(b"pre" + raw + b"post"),
             "base64url": base64.urlsafe_b64encode(b"xy" + raw), "raw bytes": raw,
             "PEM": site.export_private_key_pem()}
    (tmp_path / "artefact.log").write_bytes(b"noise " + leaks[form] + b" noise")
    findings = scan_for_secrets([tmp_path], [site, Identity.generate("site-b")])
    assert findings and all("'site-a'" in finding for finding in findings)


# ---------------------------------------------------------------- command line

@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """``securefed.cli.main`` on an app with exactly the audit commands registered."""
    import typer

    import securefed.cli
    from securefed.cli_audit import register

    app = typer.Typer(add_completion=False, no_args_is_help=True)
    register(app)
    register(app)  # idempotent
    assert len(app.registered_groups) == len(app.registered_commands) == 1
    monkeypatch.setattr(securefed.cli, "app", app)
    monkeypatch.setattr(securefed.cli, "_register", lambda: None)

    def invoke(*args: str | Path) -> tuple[int, str, str]:
        code = securefed.cli.main([str(arg) for arg in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke


def test_cli_keygen_writes_keys_and_the_registry(cli, tmp_path: Path) -> None:
    keys, registry = tmp_path / "keys", tmp_path / "registry.json"
    for name in ("coordinator", "site-a", "site-b"):
        code, out, _ = cli("keygen", "--site", name, "--out", keys, "--registry", registry)
        assert code == 0 and "mode 0600" in out
    assert oct((keys / "site-a.key").stat().st_mode)[-3:] == "600"
    loaded = Registry.load(registry)
    assert sorted(loaded.parties) == ["coordinator", "site-a", "site-b"]
    site = Identity.load(keys / "site-a.key")
    assert loaded.public_key_hex("site-a") == site.public_key_hex
    assert (keys / "site-a.pub").read_text().strip() == site.public_key_hex
    code, _, err = cli("keygen", "--site", "site-a", "--out", keys, "--registry", registry)
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1
    assert cli("keygen", "--site", "bad name", "--out", keys)[0] == 2
    assert scan_for_secrets([registry, keys / "site-a.pub"], [site]) == []


def test_cli_verify_exit_codes(cli, run: Run) -> None:
    registry = run.registry.save(run.directory / "registry.json")
    site_args = [arg for path in run.site_log_paths for arg in ("--site-log", path)]
    code, out, _ = cli("audit", "verify", run.log, "--keys", registry, *site_args)
    assert code == 0 and out.startswith("OK: 19 entries, 3 site log(s)")
    code, _, err = cli("audit", "verify", run.log)
    assert code == 0 and "no --keys" in err
    items = read(run.log)
    items[9]["payload"]["release"]["shape"] = [5]
    write(run.log, items)
    code, out, _ = cli("audit", "verify", run.log, "--keys", registry)
    assert code == 1 and "seq 9" in out and "EDITED" in out
    assert cli("audit", "verify", run.directory / "absent.jsonl")[0] == 2
    (run.directory / "bad.json").write_text("{oops")
    code, _, err = cli("audit", "verify", run.log, "--keys", run.directory / "bad.json")
    assert code == 2 and "not JSON" in err


def test_cli_report_formats(cli, run: Run) -> None:
    registry = run.registry.save(run.directory / "registry.json")
    code, out, _ = cli("audit", "report", run.log, "--keys", registry)
    assert code == 0 and "site-c" in out and "0.75 / 1.0" in out
    for fmt in ("json", "html"):
        target = run.directory / f"report.{fmt}"
        code, out, _ = cli("audit", "report", run.log, "--format", fmt, "--out", target)
        assert code == 0 and f"wrote {target}" in out
    assert json.loads((run.directory / "report.json").read_text())["run_id"] == RUN_ID
    assert "<table>" in (run.directory / "report.html").read_text()
    assert cli("audit", "report", run.log, "--format", "pdf")[0] == 2
