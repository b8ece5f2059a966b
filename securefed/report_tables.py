"""Cells and tables of the HTML report: numbers, yes/no, p-values, method, timings, privacy.

Every cell is escaped; booleans read yes/no; a p-value below R's printing floor
reads ``< 2e-16`` as R prints it.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

__all__ = ["method_line", "timing_rows", "privacy_tables", "p_text"]

_STAGES = (("sites_statistics", "sites' statistics"), ("protection_total", "protection"),
           ("protection_site", "  of which at the sites"),
           ("protection_server", "  of which at the server"),
           ("privacy_noise", "privacy noise"),
           ("coordinator_statistics_and_io", "coordinator statistics and I/O"))
_STUDY = ("loading", "fitting", "writing")


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        big_or_tiny = abs(value) >= 1e6 or 0 < abs(value) < 1e-4
        return f"{value:.{digits}g}" if big_or_tiny else f"{value:.{digits}f}"
    return html.escape("—" if value is None else str(value))


def _table(header: list[str], rows: list[list[Any]], ident: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>"
                   for row in rows)
    ident = f' id="{ident}"' if ident else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def p_text(p: float) -> str:
    """A p-value as R prints it: three significant digits, ``< 2e-16`` below that."""
    if math.isnan(p):
        return "—"
    return "< 2e-16" if p < 2e-16 else f"{p:.3g}"


def method_line(result: dict) -> str:
    """How the model was fitted: the likelihood approximation (GLMM) and the penalty or prior."""
    if result.get("model") == "cox":  # exact: the partial likelihood is a sum of site terms
        return (f"Maximum partial likelihood, stratified by {result.get('strata') or 'site'}, "
                f"{result.get('ties') or 'efron'} ties; exact, no approximation or penalty")
    if isinstance(result.get("fixed_effects"), list):
        nagq = int(result.get("nagq") or 1)
        method = ("Laplace approximation (nAGQ = 1)" if nagq == 1
                  else f"adaptive Gauss-Hermite quadrature, nAGQ = {nagq}")
        parts = [f"Maximum likelihood, {method}"]
        selection = result.get("lambda_selection")
        lam = _num(result.get("lambda"))
        if isinstance(selection, dict):
            grid = [row.get("lambda") for row in selection.get("table") or []]
            parts.append(f"L2 penalty λ = {_fmt(_num(selection.get('chosen')))} chosen by "
                         f"{selection.get('criterion')} from "
                         f"{', '.join(_fmt(_num(g)) for g in grid)}")
        elif lam:
            parts.append(f"L2 penalty λ = {_fmt(lam)} (intercept not penalised)")
        else:
            parts.append("no penalty (λ = 0)")
        return "; ".join(parts)
    return (f"Bayesian Federated Inference: local MAP fits combined in one round; prior "
            f"precision λ = {_fmt(_num(result.get('lambda')))}")


def timing_rows(timings: dict) -> list[list[Any]]:
    """Rows that add up: the fit's stages sum to its rounds' total; a study's loading,
    fitting and writing sum to the whole run, and fitting holds the rounds plus the audit."""
    rows: list[list[Any]] = []
    known = {key for key, _ in _STAGES} | set(_STUDY) | {"total"}
    study = all(key in timings for key in _STUDY)
    if study:
        rows.append(["loading the sites' files", _num(timings["loading"])])
    rounds = _num(timings.get("total"))
    rows.append(["federated rounds" + (" (part of fitting)" if study else ""), rounds])
    rows += [[label, _num(timings[key])] for key, label in _STAGES if key in timings]
    if study:
        fitting = _num(timings["fitting"])
        rows += [["fitting: rounds, audit checkpoint and checks", fitting],
                 ["writing the results", _num(timings["writing"])],
                 ["whole run", _num(timings["loading"]) + fitting + _num(timings["writing"])]]
    rows += [[key, _num(value)] for key, value in timings.items()
             if key not in known and isinstance(value, int | float)]
    return rows


def privacy_tables(privacy: Any) -> str:
    """The run's privacy accounting: its settings as a two-column table and every noise
    release as one row of a table (round, purpose, mechanism, sensitivity, noise, ρ)."""
    if not isinstance(privacy, dict):
        return _table(["", "value"], [["privacy", json.dumps(privacy)]], "privacy")
    settings = [[key, value if isinstance(value, int | float | str | bool) or value is None
                 else json.dumps(value)] for key, value in privacy.items() if key != "releases"]
    out = _table(["", "value"], settings, "privacy")
    releases = [r for r in privacy.get("releases") or [] if isinstance(r, dict)]
    if releases:
        columns = list(dict.fromkeys(key for release in releases for key in release))
        out += "<h3>Noise releases</h3>" + _table(
            columns, [[release.get(c) for c in columns] for release in releases],
            "privacy-releases")
    return out
