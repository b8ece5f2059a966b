"""Each kind of tampering gets its own diagnosis; ``audit report`` fails and marks it.

Uses the three-site run of ``test_audit.py`` (19 entries, checkpoints at 6 and 18).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from test_audit import SITES, Run, build_run, read, resign, write

from securefed.audit import FailureReason, verify_log
from securefed.cli import main
from securefed.keys import Identity, Registry


@pytest.fixture
def run(tmp_path: Path) -> Run:
    return build_run(tmp_path)


def edited(run: Run) -> Registry:
    items = read(run.log)
    items[9]["payload"]["release"]["shape"] = [5]
    write(run.log, items)
    return run.registry


def removed(run: Run) -> Registry:
    items = read(run.log)
    write(run.log, items[:8] + items[9:])
    return run.registry


def reordered(run: Run) -> Registry:
    items = read(run.log)
    items[8], items[9] = items[9], items[8]
    write(run.log, items)
    return run.registry


def truncated(run: Run) -> Registry:
    write(run.log, read(run.log)[:-2])
    return run.registry


def countersignature_missing(run: Run) -> Registry:
    items = read(run.log)
    del items[18]["payload"]["countersignatures"]["site-b"]
    resign(items, 18, {"coordinator": run.coordinator})
    write(run.log, items)
    return run.registry


def wrong_registry(run: Run) -> Registry:
    """The log is intact; the reviewer was handed another consortium's registry."""
    return Registry.of(*(Identity.generate(name) for name in ("coordinator", *SITES)))


KINDS: dict[str, tuple[Callable[[Run], Registry], FailureReason, int, str]] = {
    "edited": (edited, FailureReason.EDITED, 9, "entry edited"),
    "removed": (removed, FailureReason.DELETED, 8, "entry removed"),
    "reordered": (reordered, FailureReason.REORDERED, 8, "entries reordered"),
    "truncated": (truncated, FailureReason.TRUNCATED, 17, "log truncated"),
    "countersignature missing": (countersignature_missing,
                                 FailureReason.MISSING_COUNTERSIGNATURE, 18,
                                 "checkpoint countersignature missing"),
    "wrong registry": (wrong_registry, FailureReason.WRONG_REGISTRY, 0,
                       "signed by a key not in this registry: wrong or substituted registry"),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_of_tampering_has_its_own_diagnosis(run: Run, kind: str) -> None:
    tamper, reason, seq, words = KINDS[kind]
    report = verify_log(run.log, tamper(run), run.site_log_paths)
    assert (report.ok, report.reason, report.first_bad_seq) == (False, reason, seq), \
        report.summary()
    assert f"{reason.value} ({words})" in report.summary()
    others = [w for k, (_, _, _, w) in KINDS.items() if k != kind]
    assert not any(f"({w})" in report.summary() for w in others)


def test_the_meanings_of_all_reasons_differ() -> None:
    meanings = [reason.meaning for reason in FailureReason]
    assert len(set(meanings)) == len(meanings) and all(meanings)


def test_an_intact_log_against_the_wrong_registry_is_not_called_edited(run: Run) -> None:
    impostor = Registry.of(run.coordinator, *(Identity.generate(n) for n in SITES))
    report = verify_log(run.log, impostor)
    assert report.reason is FailureReason.WRONG_REGISTRY and "EDITED" not in report.summary()
    assert "site-a, site-b, site-c" in report.message
    # the same keys in a registry that is not the run's: told apart, too
    bigger = Registry.of(run.coordinator, *run.sites.values(), Identity.generate("extra"))
    report = verify_log(run.log, bigger)
    assert report.reason is FailureReason.WRONG_REGISTRY and "started under" in report.message


# ---------------------------------------------------------------- audit report

def report_cli(capsys, *args: str | Path) -> tuple[int, str, str]:
    code = main(["audit", "report", *(str(arg) for arg in args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("fmt", ["table", "json", "html"])
def test_audit_report_exits_as_verify_does_in_every_format(run: Run, capsys, fmt: str) -> None:
    registry = run.registry.save(run.directory / "registry.json")
    for out in ((), ("--out", run.directory / f"intact.{fmt}")):
        code, _, err = report_cli(capsys, run.log, "--keys", registry, "--format", fmt, *out)
        assert code == 0 and "nothing was pinned" in err
    code, _, err = report_cli(capsys, run.log, "--keys", registry, "--format", fmt,
                              "--expect-fingerprint", run.registry.fingerprint)
    assert code == 0 and err == ""
    edited(run)
    for out in ((), ("--out", run.directory / f"tampered.{fmt}")):
        code, stdout, err = report_cli(capsys, run.log, "--keys", registry, "--format", fmt, *out)
        assert code == 1 and "FAIL at seq 9" in err and "EDITED" in err
    if fmt == "json":
        data = json.loads((run.directory / "tampered.json").read_text())
        assert data["verification"]["ok"] is False
        assert data["verification"]["first_bad_seq"] == 9
    code, _, _ = report_cli(capsys, run.log, "--format", fmt)  # keys from the log: still 1
    assert code == 1


def test_a_report_of_a_log_that_cannot_be_summarised_still_exits_1(run: Run, capsys) -> None:
    registry = run.registry.save(run.directory / "registry.json")
    write(run.log, read(run.log)[1:])  # RUN_START removed
    code, out, _ = report_cli(capsys, run.log, "--keys", registry, "--format", "html")
    assert code == 1 and "DELETED" in out


def _rows(page: str, heading: str) -> list[tuple[str, str]]:
    """(class, first cell) of every row of the table after ``heading``."""
    section = page.split(f"<h2>{heading}</h2>")[1].split("<h2>")[0]
    return re.findall(r'<tr(?: class="([^"]*)")?><td>([^<]*)</td>', section)


def test_the_html_marks_the_first_bad_entry_and_everything_after(run: Run, capsys) -> None:
    registry = run.registry.save(run.directory / "registry.json")
    edited(run)
    page_path = run.directory / "report.html"
    assert report_cli(capsys, run.log, "--keys", registry, "--format", "html", "--out",
                      page_path)[0] == 1
    page = page_path.read_text()
    entries = _rows(page, "Every log entry")
    assert [seq for _, seq in entries] == [str(i) for i in range(19)]
    assert [mark for mark, _ in entries] == [""] * 9 + ["first-bad"] + ["untrusted"] * 9
    assert "FIRST BAD ENTRY" in page and "seq 9, and everything after it" in page
    releases = _rows(page, "Every release")
    assert [m for m, seq in releases if int(seq) < 9] == [""] * 4  # seq 2, 3, 4, 8
    assert {m for m, seq in releases if int(seq) > 9} == {"untrusted"}
    assert ("first-bad", "9") in releases
    # every table scrolls inside its own box, and long cells wrap: the page keeps its width
    assert page.count("<table>") == page.count('<div class="scroll"><table>') == 4
    assert ".scroll{max-width:100%;overflow-x:auto" in page and "overflow-wrap:break-word" in page
    assert re.search(r"<td><code>[0-9a-f]{64}</code></td>", page)  # hashes break anywhere
    assert "code{font-size:.85em;word-break:break-all}" in page


def test_an_intact_report_marks_nothing(run: Run, capsys) -> None:
    registry = run.registry.save(run.directory / "registry.json")
    page_path = run.directory / "report.html"
    assert report_cli(capsys, run.log, "--keys", registry, "--format", "html", "--out",
                      page_path)[0] == 0
    page = page_path.read_text()
    assert "untrusted" not in page.split("</style>")[1] and "FIRST BAD" not in page
