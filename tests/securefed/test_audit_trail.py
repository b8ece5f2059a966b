"""Runs with --audit-log leave a trail that verifies, detects tampering, holds no secret."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from protocols.stack import DropPlan, SecAggSum
from securefed.audit import scan_for_secrets, verify_log
from securefed.audit_trail import AuditTrail, trail_paths
from securefed.cli import main
from securefed.coordinator import Coordinator
from securefed.data import builtin_path
from securefed.keys import Registry
from securefed.site import Site


def _site_logs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("run.site-*.jsonl") if "salts" not in p.name)


def _verify(folder: Path):
    return verify_log(folder / "run.jsonl", Registry.load(folder / "run.registry.json"),
                      site_logs=_site_logs(folder))


def test_bfi_run_trail_verifies_and_records_the_dropout(tmp_path, capsys) -> None:
    code = main(["bfi", str(builtin_path("Nurses")), "--formula", "stress ~ age + gender",
                 "--site-column", "hospital", "--protect", "secagg", "--drop-sites", "3",
                 "--drop-phase", "after-key-sharing", "--audit-log", str(tmp_path / "run.jsonl"),
                 "--quiet"])
    capsys.readouterr()
    assert code == 0
    report = _verify(tmp_path)
    assert report.ok, report.summary()
    assert len(_site_logs(tmp_path)) == 25
    assert main(["audit", "verify", str(tmp_path / "run.jsonl"), "--keys",
                 str(tmp_path / "run.registry.json")]) == 0
    capsys.readouterr()


def test_glmm_run_trail_verifies_and_tampering_is_caught(tmp_path, capsys) -> None:
    frame = pd.read_csv(builtin_path("trauma"))
    data = tmp_path / "trauma.csv"
    frame.to_csv(data, index=False)
    code = main(["fit", str(data), "--formula", "mortality ~ age + GCS + (1 | hospital)",
                 "--site-column", "hospital", "--protect", "secagg", "--audit-log",
                 str(tmp_path / "run.jsonl"), "--quiet"])
    capsys.readouterr()
    assert code == 0 and _verify(tmp_path).ok
    lines = (tmp_path / "run.jsonl").read_bytes().splitlines(keepends=True)
    (tmp_path / "run.jsonl").write_bytes(b"".join(lines[:-3] + lines[-2:]))  # delete one
    report = _verify(tmp_path)
    assert not report.ok and report.first_bad_seq is not None
    assert main(["audit", "verify", str(tmp_path / "run.jsonl"), "--keys",
                 str(tmp_path / "run.registry.json")]) == 1
    capsys.readouterr()


def test_no_key_material_in_any_artefact(tmp_path) -> None:
    sites = [Site(f"s{i}", pd.DataFrame({"v": [1.0]})) for i in range(5)]
    trail = AuditTrail.start(tmp_path / "run.jsonl", site_names=[s.name for s in sites],
                             model="test", config={"x": 1.5}, protection={"name": "secagg"})
    coordinator = Coordinator(sites, SecAggSum(drop=DropPlan(("s1",), "after-masked-input")),
                              audit=trail)
    coordinator.secure_sum("q", lambda s: np.array([1.0, 2.0]))
    coordinator.finish_audit({"estimate": 1.0}, "test")
    artefacts = [p for p in tmp_path.iterdir() if "salts" not in p.name]
    assert scan_for_secrets(artefacts, trail.parties()) == []
    assert verify_log(tmp_path / "run.jsonl", Registry.load(tmp_path / "run.registry.json"),
                      site_logs=[trail_paths(tmp_path / "run.jsonl", s.name)[0]
                                 for s in sites]).ok


def test_an_existing_trail_is_never_overwritten(tmp_path) -> None:
    from securefed.errors import InputError

    (tmp_path / "run.jsonl").write_text("")
    with pytest.raises(InputError, match="never overwritten"):
        AuditTrail.start(tmp_path / "run.jsonl", site_names=["a", "b", "c"], model="m",
                         config={}, protection={"name": "none"})


def test_an_aborted_run_logs_the_refusal_and_still_verifies(tmp_path, capsys) -> None:
    from securefed.audit import read_entries

    code = main(["bfi", str(builtin_path("trauma")), "--formula", "mortality ~ age + ISS",
                 "--family", "binomial", "--site-column", "hospital", "--protect", "secagg",
                 "--drop-sites", "1", "--drop-phase", "after-key-exchange", "--audit-log",
                 str(tmp_path / "run.jsonl"), "--quiet"])
    capsys.readouterr()
    assert code == 1
    kinds = [e.kind.value for e in read_entries(tmp_path / "run.jsonl")]
    assert kinds[-2:] == ["REFUSAL", "CHECKPOINT"] and "RESULT" not in kinds
    refusal = read_entries(tmp_path / "run.jsonl")[-2].payload
    assert refusal["reason"] == "ABORT" and "fewer than" in refusal["detail"]
    assert _verify(tmp_path).ok


def test_every_artefact_of_a_protected_run_is_free_of_secrets(tmp_path, monkeypatch, capsys):
    """fit --protect secagg --audit-log --json, then report: scan all files for every
    private key of the run (raw, hex, base64, PEM) and every commitment salt outside
    the sites' own salt files."""
    import json

    from securefed import audit_trail
    from securefed.keys import Identity

    made: list[Identity] = []
    original = Identity.generate.__func__

    def recording(cls, name):
        identity = original(cls, name)
        made.append(identity)
        return identity

    monkeypatch.setattr(audit_trail.Identity, "generate", classmethod(recording))
    data = tmp_path / "trauma.csv"
    pd.read_csv(builtin_path("trauma")).to_csv(data, index=False)
    assert main(["fit", str(data), "--formula", "mortality ~ age + GCS + (1 | hospital)",
                 "--site-column", "hospital", "--protect", "secagg", "--audit-log",
                 str(tmp_path / "run.jsonl"), "--json", str(tmp_path / "result.json"),
                 "--quiet"]) == 0
    assert main(["report", str(tmp_path / "result.json"), "--out",
                 str(tmp_path / "report.html")]) == 0
    capsys.readouterr()
    assert len(made) == 4  # coordinator and three hospitals
    salt_files = sorted(tmp_path.glob("*.salts.jsonl"))
    salts = [bytes.fromhex(json.loads(line)["salt"])
             for f in salt_files for line in f.read_text().splitlines()]
    assert salts
    findings = scan_for_secrets([tmp_path], made, salts=salts, salt_files=salt_files)
    assert findings == []
