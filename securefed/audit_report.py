"""What each site released, as a reviewer reads it: a table, JSON, or one HTML page.

:func:`build_report` summarises a coordinator's log per site (releases, their kinds
and sizes, dropouts, refusals, privacy spent against the budget) and lists every
release with its commitment; :func:`render_report` writes it out. The report does
not judge integrity itself: pass the :class:`VerifyReport` of the same log.
"""

from __future__ import annotations

import enum
import html
import io
import json
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from securefed.audit_log import Entry, EventKind, read_entries
from securefed.audit_verify import VerifyReport
from securefed.canonical import decode_float
from securefed.errors import InputError

__all__ = ["AuditReport", "EntryLine", "ReportFormat", "ReleaseLine", "SiteSummary",
           "build_report", "render_report"]


class ReportFormat(enum.Enum):
    """Output formats of :func:`render_report`."""

    TABLE = "table"
    JSON = "json"
    HTML = "html"


@dataclass(frozen=True)
class ReleaseLine:
    """One release as logged: who, when, what, how protected, and its commitment."""

    seq: int
    site: str
    round: int
    vector_kind: str
    shape: tuple[int, ...]
    n_values: int
    layers: tuple[str, ...]
    commitment: str
    epsilon_spent: str | None


@dataclass(frozen=True)
class EntryLine:
    """One entry of the coordinator's log as listed in the report."""

    seq: int
    time: str
    kind: str
    actor: str
    what: str


@dataclass(frozen=True)
class SiteSummary:
    """Per-site totals; privacy figures are the largest cumulative value logged."""

    site: str
    public_key: str
    releases: int
    kinds: Mapping[str, int]
    values: int
    dropouts: int
    refusals: int
    refusal_reasons: Mapping[str, int]
    epsilon_spent: float | None
    delta_spent: float | None
    rho_spent: float | None
    countersigned_final: bool


@dataclass(frozen=True)
class AuditReport:
    """Summary of one run's audit log."""

    log: str
    run_id: str
    model: str
    study_config_hash: str
    protection: tuple[str, ...]
    budget: Mapping[str, str]
    entries: int
    rounds: int
    results: tuple[str, ...]
    sites: tuple[SiteSummary, ...]
    releases: tuple[ReleaseLine, ...]
    verification: VerifyReport | None
    entry_lines: tuple[EntryLine, ...] = ()

    def first_bad_here(self) -> int | None:
        """The seq of the first bad entry when it is in this log (not in a site log)."""
        check = self.verification
        if check is None or check.ok or check.bad_log != self.log:
            return None
        return check.first_bad_seq

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data (floats as numbers: this is for reading, not for signing)."""
        data = asdict(self)
        data["verification"] = None if self.verification is None else {
            **asdict(self.verification),
            "reason": self.verification.reason.value if self.verification.reason else None}
        return data


def _largest(values: list[str | None]) -> float | None:
    numbers = [decode_float(v) for v in values if v is not None]
    return max(numbers) if numbers else None


def build_report(path: str | os.PathLike[str],
                 verification: VerifyReport | None = None) -> AuditReport:
    """Summarise the coordinator's log at ``path`` (see :class:`AuditReport`).

    Raises
    ------
    InputError
        If the file is missing, has a line that is not an entry, or does not start
        with RUN_START.
    """
    entries = read_entries(path)
    if not entries or entries[0].kind is not EventKind.RUN_START:
        raise InputError(f"{path} does not start with RUN_START")
    try:
        return _summarise(str(path), entries, verification)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise InputError(f"{path} cannot be summarised ({type(err).__name__}: {err}); "
                         "check it with: securefed audit verify") from None


def _summarise(path: str, entries: list[Entry],
               verification: VerifyReport | None) -> AuditReport:
    run = entries[0].payload
    sites = dict(run["sites"])
    releases: list[ReleaseLine] = []
    privacy: dict[str, dict[str, list[str | None]]] = {s: {} for s in sites}
    dropouts: Counter[str] = Counter()
    refusals: dict[str, Counter[str]] = {s: Counter() for s in sites}
    rounds, results, final = set(), [], {}
    for entry in entries:
        payload = entry.payload
        if entry.kind is EventKind.RELEASE:
            record = payload["release"]
            releases.append(ReleaseLine(
                entry.seq, record["site"], record["round"], record["vector_kind"],
                tuple(record["shape"]), record["n_values"],
                tuple(layer["name"] for layer in record["layers"]), record["commitment"],
                record["privacy"].get("epsilon_spent")))
            for key, value in record["privacy"].items():
                privacy.setdefault(record["site"], {}).setdefault(key, []).append(value)
        elif entry.kind is EventKind.ROUND_SPEC:
            rounds.add(payload["round"])
        elif entry.kind is EventKind.AGGREGATION:
            dropouts.update(payload["dropouts"])
        elif entry.kind is EventKind.REFUSAL:
            refusals.setdefault(payload["site"], Counter())[str(payload["reason"])] += 1
        elif entry.kind is EventKind.RESULT:
            results.append(f"{payload['result_kind']}: {payload['result_hash']}")
        elif entry.kind is EventKind.CHECKPOINT:
            final = payload["countersignatures"]
    summaries = []
    for site, key in sites.items():
        own = [r for r in releases if r.site == site]
        spent = privacy.get(site, {})
        summaries.append(SiteSummary(
            site=site, public_key=key, releases=len(own),
            kinds=dict(Counter(r.vector_kind for r in own)),
            values=sum(r.n_values for r in own), dropouts=dropouts[site],
            refusals=sum(refusals.get(site, Counter()).values()),
            refusal_reasons=dict(refusals.get(site, Counter())),
            epsilon_spent=_largest(spent.get("epsilon_spent", [])),
            delta_spent=_largest(spent.get("delta_spent", [])),
            rho_spent=_largest(spent.get("rho_spent", [])),
            countersigned_final=entries[-1].kind is EventKind.CHECKPOINT and site in final))
    layers = tuple(_layer_text(layer) for layer in run["protection"].get("layers", []))
    return AuditReport(
        log=path, run_id=run["run_id"], model=str(run["model"]),
        study_config_hash=run["study_config_hash"], protection=layers,
        budget={k: str(v) for k, v in run["budget"].items()}, entries=len(entries),
        rounds=len(rounds), results=tuple(results), sites=tuple(summaries),
        releases=tuple(releases), verification=verification,
        entry_lines=tuple(EntryLine(e.seq, e.time, e.kind.value, e.actor, _what(e))
                          for e in entries))


def _what(entry: Entry) -> str:
    """A few words on an entry's content."""
    payload = entry.payload
    if entry.kind is EventKind.RELEASE:
        record = payload["release"]
        return f"{record['site']}: {record['vector_kind']}, round {record['round']}"
    if entry.kind in (EventKind.ROUND_SPEC, EventKind.AGGREGATION):
        return f"round {payload['round']}: {payload['vector_kind']}"
    if entry.kind is EventKind.REFUSAL:
        return f"round {payload['round']}: {payload['site']} ({payload['reason']})"
    if entry.kind is EventKind.RESULT:
        return f"{payload['result_kind']}: {payload['result_hash']}"
    if entry.kind is EventKind.CHECKPOINT:
        return "countersigned by " + (", ".join(sorted(payload["countersignatures"])) or
                                      "no site")
    return f"{payload.get('model', '')}, sites {', '.join(payload.get('sites', {}))}"


def _layer_text(layer: Mapping[str, Any]) -> str:
    """``clip(bound=1.0)``: a layer's name and its logged parameters."""
    params = ", ".join(f"{k}={v}" for k, v in sorted(layer.items()) if k != "name")
    return f"{layer.get('name', '?')}({params})" if params else str(layer.get("name", "?"))


def _spent(value: float | None, budget: str | None) -> str:
    if value is None:
        return "-"
    return f"{value:.6g} / {budget}" if budget is not None else f"{value:.6g}"


def _site_rows(report: AuditReport) -> list[list[str]]:
    rows = []
    for s in report.sites:
        kinds = ", ".join(f"{kind}×{count}" for kind, count in sorted(s.kinds.items()))
        reasons = ", ".join(f"{r}×{n}" for r, n in sorted(s.refusal_reasons.items()))
        rows.append([s.site, str(s.releases), kinds or "-", str(s.values), str(s.dropouts),
                     f"{s.refusals} ({reasons})" if reasons else "0",
                     _spent(s.epsilon_spent, report.budget.get("epsilon")),
                     _spent(s.delta_spent, report.budget.get("delta")),
                     "yes" if s.countersigned_final else "NO"])
    return rows


_HEADERS = ["site", "releases", "kinds", "values", "dropouts", "refusals",
            "ε spent / budget", "δ spent / budget", "countersigned"]


def _status(report: AuditReport) -> str:
    if report.verification is None:
        return "not verified (run: securefed audit verify LOG --keys registry.json)"
    return report.verification.summary()


def render_report(report: AuditReport, fmt: ReportFormat | str = ReportFormat.TABLE) -> str:
    """Render a report as a plain-text table, indented JSON, or a self-contained HTML page."""
    fmt = ReportFormat(fmt)
    if fmt is ReportFormat.JSON:
        return json.dumps(report.to_json(), indent=2, sort_keys=True, ensure_ascii=False)
    if fmt is ReportFormat.HTML:
        return _html(report)
    table = Table(title=f"run {report.run_id}: {report.model}, "
                        f"protection {' → '.join(report.protection) or 'none'}")
    for header in _HEADERS:
        table.add_column(header)
    for row in _site_rows(report):
        table.add_row(*row)
    buffer = io.StringIO()
    console = Console(file=buffer, width=140, color_system=None)
    console.print(table)
    console.print(f"{report.entries} entries, {report.rounds} rounds, "
                  f"{len(report.releases)} releases; {_status(report)}")
    return buffer.getvalue()


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}
.scroll{max-width:100%;overflow-x:auto;margin:1em 0}
table{border-collapse:collapse;max-width:100%}td,th{border:1px solid #bbb;padding:.3em .6em;
text-align:left;vertical-align:top;overflow-wrap:break-word}
th{background:#eee}code{font-size:.85em;word-break:break-all}
.ok{background:#e6f4e6;padding:.6em}.bad{background:#fbe3e3;padding:.6em}
tr.untrusted td{background:#fbe3e3}tr.first-bad td{background:#f4b6b6;font-weight:bold}"""

_GLOSSARY = [
    ("release", "one flat vector of numbers a hospital sent in one round; the coordinator "
                "only ever uses the sum of these vectors over hospitals"),
    ("protection layers", "what was done to the vector before it left the hospital, in "
                          "order (for example clipping, noise for differential privacy, "
                          "masking so that only the sum can be read)"),
    ("commitment", "a SHA-256 fingerprint of the vector before protection, mixed with a "
                   "random secret the hospital keeps; in a dispute the hospital reveals "
                   "the secret and anyone can check the vector against it"),
    ("ε, δ", "the differential-privacy budget: how much a release may reveal about one "
             "patient; smaller is more private. Spent figures are cumulative"),
    ("countersigned", "whether the hospital signed the final state of this log; without "
                      "its signature the log could have been rewritten afterwards"),
    ("pinned", "checked against the fingerprint of the hospitals' public keys that they "
               "agreed on beforehand, by a channel the coordinator does not control; a check "
               "that is not pinned shows only that the log agrees with itself"),
    ("marked in red", "the first entry that fails the check, and every entry after it: "
                      "none of them can be trusted"),
]


def _html_table(headers: list[str], rows: list[list[str]],
                classes: list[str] | None = None) -> str:
    """A table inside a box that scrolls sideways, so the page never grows wider."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    marks = classes or [""] * len(rows)
    body = "".join((f'<tr class="{mark}">' if mark else "<tr>")
                   + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>"
                   for row, mark in zip(rows, marks, strict=True))
    return (f'<div class="scroll"><table>{f"<tr>{head}</tr>" if headers else ""}{body}'
            "</table></div>")


def _cell(text: str) -> str:
    """A cell's HTML; a long unbroken token (a hash) may break anywhere, so it wraps."""
    escaped = html.escape(text)
    return f"<code>{escaped}</code>" if len(text) > 24 and " " not in text else escaped


def _marks(seqs: list[int], first_bad: int | None) -> list[str]:
    """Row classes: the first bad entry, and every entry after it (none can be trusted)."""
    if first_bad is None:
        return [""] * len(seqs)
    return ["first-bad" if seq == first_bad else "untrusted" if seq > first_bad else ""
            for seq in seqs]


def _where_bad(report: AuditReport) -> str:
    """A sentence on where the first bad entry is (empty when the log verifies)."""
    check = report.verification
    if check is None or check.ok:
        return ""
    first = report.first_bad_here()
    if first is None:
        return (f"<p>The first bad entry is seq {check.first_bad_seq} of "
                f"<code>{html.escape(str(check.bad_log))}</code>; rows of this log are not "
                "marked.</p>")
    if first >= report.entries:
        return (f"<p>Entries from seq {first} on are missing: the log was cut after its "
                "last row below.</p>")
    return (f"<p>The first bad entry, seq {first}, and everything after it are marked in "
            "red: none of it can be trusted.</p>")


def _html(report: AuditReport) -> str:
    ok = report.verification is not None and report.verification.ok
    releases = [[str(r.seq), r.site, str(r.round), r.vector_kind,
                 "×".join(map(str, r.shape)), str(r.n_values), " → ".join(r.layers),
                 r.commitment, r.epsilon_spent or "-"] for r in report.releases]
    glossary = "".join(f"<dt><b>{html.escape(t)}</b></dt><dd>{html.escape(d)}</dd>"
                       for t, d in _GLOSSARY)
    facts = [["run", report.run_id], ["model", report.model],
             ["study configuration hash", report.study_config_hash],
             ["protection layers", " → ".join(report.protection) or "none"],
             ["privacy budget per site", ", ".join(f"{k} = {v}" for k, v in
                                                   sorted(report.budget.items())) or "none"],
             ["log entries / rounds", f"{report.entries} / {report.rounds}"],
             ["results", "; ".join(report.results) or "none"]]
    first_bad = report.first_bad_here()
    entry_rows = [[str(e.seq), e.time, e.kind, e.actor,
                   ("FIRST BAD ENTRY: " if e.seq == first_bad else "") + e.what]
                  for e in report.entry_lines]
    entries = _html_table(["seq", "time", "kind", "written by", "what"], entry_rows,
                          _marks([e.seq for e in report.entry_lines], first_bad))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>securefed audit report: {html.escape(report.run_id)}</title>
<style>{_CSS}</style></head><body>
<h1>What each hospital released</h1>
<p>This page summarises the signed audit log <code>{html.escape(report.log)}</code> of one
federated analysis. Every line of that log is signed by the party that wrote it and
chained to the line before, so that any change, deletion or reordering is detectable.</p>
<p class="{'ok' if ok else 'bad'}"><b>Integrity check:</b> {html.escape(_status(report))}</p>
<h2>The run</h2>{_html_table([], facts)}
<h2>Per hospital</h2>{_html_table(_HEADERS, _site_rows(report))}
<h2>Every release</h2>{_where_bad(report)}{_html_table(
    ["log entry", "site", "round", "kind", "shape", "values", "protection layers",
     "commitment (SHA-256)", "ε spent"], releases,
    _marks([r.seq for r in report.releases], first_bad))}
<h2>Every log entry</h2>{entries}
<h2>Words used on this page</h2><dl>{glossary}</dl>
</body></html>
"""
