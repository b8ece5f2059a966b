"""An HTML report of a GLMM or BFI result, with PNG figures beside it.

:func:`write_report` reads a result JSON (a study's ``result.json`` or the
``--json`` output of ``fit``/``bfi``), tells GLMM from BFI by its keys
(``fixed_effects`` vs ``estimates``) and writes one HTML page that needs no
network: inline CSS, figures as PNG files in the same folder, referenced by
relative paths. Figures are drawn with matplotlib's Agg backend.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from securefed.errors import InputError

__all__ = ["ReportFiles", "load_result", "result_kind", "coefficient_rows", "write_report"]

_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:60em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}th,td{padding:.25em .7em;text-align:right}
th:first-child,td:first-child{text-align:left}thead th{border-bottom:2px solid #444}
tbody tr:nth-child(even){background:#f4f4f4}img{max-width:100%;border:1px solid #ddd}
.warn{color:#a40}.banner{background:#fde8d8;border:1px solid #a40;padding:.6em}.muted{color:#666}"""


@dataclass(frozen=True)
class ReportFiles:
    """The written page and its figures (absolute paths)."""

    html: Path
    figures: tuple[Path, ...]


def load_result(path: str | Path) -> dict:
    """Read a GLMM or BFI result JSON; InputError if missing, malformed or neither."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"cannot read {path}: no such file")
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path} is not JSON: {str(err).splitlines()[0]}") from None
    if not isinstance(result, dict) or result_kind(result) is None:
        raise InputError(f"{path} is not a securefed result: it has neither 'fixed_effects' "
                         "(GLMM) nor 'estimates' (BFI)")
    return result


def result_kind(result: dict) -> str | None:
    """``"glmm"``, ``"bfi"`` or None, from the result's keys."""
    if isinstance(result.get("fixed_effects"), list):
        return "glmm"
    if isinstance(result.get("estimates"), list):
        return "bfi"
    return None


def coefficient_rows(result: dict) -> list[dict]:
    """Rows ``term, estimate, se, ci_low, ci_high`` for either kind (InputError if malformed)."""
    rows = result.get("fixed_effects") if result_kind(result) == "glmm" else result["estimates"]
    se_key = "std_error" if result_kind(result) == "glmm" else "sd"
    try:
        return [{"term": str(r["term"]), "estimate": _num(r["estimate"]), "se": _num(r.get(se_key)),
                 "ci_low": _num(r.get("ci_low")), "ci_high": _num(r.get("ci_high")),
                 "p_value": _num(r.get("p_value"))} for r in rows]
    except (KeyError, TypeError, ValueError):
        raise InputError("the result's coefficient rows need 'term' and 'estimate'") from None


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


def _fmt(value: Any, digits: int = 4) -> str:
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


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _forest(rows: list[dict], path: Path, title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.4))
    ys = list(range(len(rows)))[::-1]
    for y, row in zip(ys, rows, strict=True):
        if not (math.isnan(row["ci_low"]) or math.isnan(row["ci_high"])):
            ax.plot([row["ci_low"], row["ci_high"]], [y, y], color="#1f77b4", lw=2)
        ax.plot(row["estimate"], y, "o", color="#d62728")
    ax.axvline(0.0, color="#888", ls="--", lw=1)
    ax.set_yticks(ys, [r["term"] for r in rows])
    ax.set_xlabel("estimate with 95% interval")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _trace(trace: list[dict], path: Path) -> None:
    plt = _plt()
    steps = [int(s["iteration"]) for s in trace]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    top.plot(steps, [_num(s["value"]) for s in trace], "o-")
    top.set_ylabel("log-likelihood")
    top.ticklabel_format(axis="y", useOffset=False)
    top.set_title("Convergence (one Newton step per round)")
    grads = [max(_num(s["max_abs_gradient"]), 1e-300) for s in trace]
    bottom.semilogy(steps, grads, "o-", color="#d62728")
    bottom.set_ylabel("max |gradient|")
    bottom.set_xlabel("Newton step")
    bottom.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _scatter(pairs: list[tuple[str, float, float]], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    xs, ys = [p[1] for p in pairs], [p[2] for p in pairs]
    lo, hi = min(xs + ys), max(xs + ys)
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="#888", ls="--", lw=1)
    ax.plot(xs, ys, "o", color="#1f77b4")
    for term, x, y in pairs:
        ax.annotate(term, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("pooled estimate")
    ax.set_ylabel("BFI estimate")
    ax.set_title("BFI vs pooled fit")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _protection_section(result: dict) -> str:
    study = result.get("study") or {}
    prot = study.get("protection") or {}
    layers = prot.get("layers") or [result.get("protection", "none")]
    rows: list[list[Any]] = [["layers", ", ".join(map(str, layers))]]
    rows += [[k, prot[k]] for k in ("neighbours", "threshold", "bound") if prot.get(k) is not None]
    rows += [["sites", result.get("n_sites")], ["rounds", result.get("rounds")],
             ["bytes sent per site", result.get("bytes_sent_per_site")],
             ["dropped sites", ", ".join(result.get("dropped_sites") or []) or "none"]]
    if study.get("audit_log"):
        rows.append(["audit log", study["audit_log"]])
    out = "<h2>Protection</h2>" + _table(["", "value"], rows, "protection")
    privacy = result.get("privacy")
    if privacy:
        items = privacy.items() if isinstance(privacy, dict) else [("privacy", privacy)]
        items = [(k, {a: b for a, b in v.items() if "covariance" not in a}
                  if k == "inference" and isinstance(v, dict) else v) for k, v in items]
        out += "<h2>Privacy</h2>" + _table(["", "value"], [
            [k, v if isinstance(v, int | float | str) else json.dumps(v)] for k, v in items],
            "privacy")
    else:
        out += ('<p class="muted">No differential privacy in this run: the released sums are '
                "exact.</p>")
    return out


NOISE_BANNER_SHARE = 0.5  # privacy noise at least this share of an estimate's variance


def _rows_text(result: dict) -> str:
    privacy = result.get("privacy") or {}
    inference = privacy.get("inference") if isinstance(privacy, dict) else None
    if result.get("counts_noisy") or inference:
        noisy = (inference or {}).get("n_obs_noisy", result.get("n_obs"))
        return f"~{_fmt(round(_num(noisy)))} rows (noisy count)"
    return f"{_fmt(result.get('n_obs'))} rows"


def _noise_banner(result: dict) -> list[str]:
    """A banner when the privacy noise dominates the variance of some estimate."""
    privacy = result.get("privacy") or {}
    inference = privacy.get("inference") if isinstance(privacy, dict) else None
    if not isinstance(inference, dict):
        return []
    share = _num(inference.get("noise_share_of_variance"))
    if not share >= NOISE_BANNER_SHARE:
        return []
    return [f'<p class="banner">Privacy noise dominates: for at least one coefficient '
            f"{100 * share:.0f}% of the variance of the estimate is differential-privacy "
            "noise. The intervals carry it (parametric bootstrap of the private fit), so they "
            "are much wider than a non-private fit's; a larger epsilon narrows them.</p>"]


def _glmm_sections(result: dict, stem: str, folder: Path, figures: list[Path]) -> str:
    out = "<h2>Random effects</h2>" + _table(
        ["group", "term", "SD", "CI low", "CI high"],
        [[r.get("group"), r.get("term"), _num(r.get("sd")), _num(r.get("ci_low")),
          _num(r.get("ci_high"))] for r in result.get("random_effects") or []], "random-effects")
    out += _table(["logLik", "AIC", "BIC", "converged", "singular"], [[
        _num(result.get("loglik")), _num(result.get("aic")), _num(result.get("bic")),
        str(result.get("converged")), str(result.get("singular"))]], "fit")
    trace = result.get("trace") or []
    if trace:
        path = folder / f"{stem}_trace.png"
        _trace(trace, path)
        figures.append(path)
        out += ("<h2>Convergence</h2>" + _img(path, "log-likelihood and max |gradient| per "
                                               "Newton step"))
    return out


def _bfi_sections(result: dict, rows: list[dict], stem: str, folder: Path,
                  figures: list[Path]) -> str:
    out = ""
    if result.get("dispersion") is not None:
        out += f"<p>dispersion (σ²) = {_fmt(_num(result['dispersion']))}</p>"
    pooled = (result.get("pooled") or {}).get("estimates") or []
    if not pooled:
        return out
    by_term = {str(r["term"]): _num(r["estimate"]) for r in pooled}
    pairs = [(r["term"], by_term[r["term"]], r["estimate"]) for r in rows if r["term"] in by_term]
    out += "<h2>BFI vs pooled fit</h2>" + _table(
        ["term", "BFI", "pooled", "difference"],
        [[t, b, p, b - p] for t, p, b in pairs], "pooled")
    if pairs:
        path = folder / f"{stem}_pooled.png"
        _scatter(pairs, path)
        figures.append(path)
        out += _img(path, "BFI estimates against the pooled fit")
    return out


def _img(path: Path, alt: str) -> str:
    return f'<p><img src="{html.escape(path.name)}" alt="{html.escape(alt)}"></p>'


def write_report(result_path: str | Path, out: str | Path,
                 profiles: list[str] | None = None) -> ReportFiles:
    """Write the HTML report of ``result_path`` to ``out`` and its PNG figures beside it.

    Parameters
    ----------
    result_path : str or Path
        A GLMM or BFI result JSON.
    out : str or Path
        The HTML file; figures are ``<stem>_forest.png``, ``<stem>_trace.png`` (GLMM)
        and ``<stem>_pooled.png`` (BFI with a pooled comparison) in its folder;
        ``<stem>_survival.png`` for a BFI survival fit.
    profiles : list of str, optional
        Covariate profiles (``"sex=1,age=60"``) for a survival fit's curves.

    Returns
    -------
    ReportFiles
    """
    result = load_result(result_path)
    kind = result_kind(result)
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create {out.parent}: {err.strerror}") from None
    rows = coefficient_rows(result)
    figures: list[Path] = []
    cox = result.get("model") == "cox"
    model = ("Stratified Cox model (strata: sites)" if cox else
             "Generalized linear mixed model" if kind == "glmm" else "Bayesian Federated Inference")
    title = (result.get("study") or {}).get("title") or f"{model} ({result.get('family', '')})"
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p>{html.escape(model)} · family {_fmt(result.get('family'))} · formula "
             f"<code>{_fmt(result.get('formula'))}</code> · {_rows_text(result)} in "
             f"{_fmt(result.get('n_sites'))} sites</p>"]
    parts += _noise_banner(result)
    se = "Std. Error" if kind == "glmm" else "SD"
    parts.append("<h2>Coefficients</h2>" + _table(
        ["term", "estimate", se, "CI low", "CI high"],
        [[r["term"], r["estimate"], r["se"], r["ci_low"], r["ci_high"]] for r in rows],
        "coefficients"))
    if rows:
        forest = out.parent / f"{out.stem}_forest.png"
        _forest(rows, forest, "Coefficients (95% intervals)")
        figures.append(forest)
        parts.append(_img(forest, "forest plot of the coefficients"))
    if cox:
        from securefed.report_survival import cox_section

        parts.append(cox_section(result))
    elif kind == "glmm":
        parts.append(_glmm_sections(result, out.stem, out.parent, figures))
    else:
        parts.append(_bfi_sections(result, rows, out.stem, out.parent, figures))
    if result.get("family") == "survival" and result.get("baseline"):
        from securefed.report_survival import curves_section

        parts.append(curves_section(result, list(profiles or []), out.stem, out.parent,
                                    figures))
    elif profiles:
        raise InputError("--profile draws survival curves: it needs a BFI survival result")
    parts.append(_protection_section(result))
    timings = result.get("timings")
    if isinstance(timings, dict) and timings:
        parts.append("<h2>Timings (seconds)</h2>" + _table(
            ["stage", "seconds"], [[k, _num(v)] for k, v in timings.items()], "timings"))
    parts += [f'<p class="warn">warning: {html.escape(str(w))}</p>'
              for w in result.get("warnings") or []]
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")
    try:
        out.write_text(page, encoding="utf-8")
    except OSError as err:
        raise InputError(f"cannot write {out}: {err.strerror}") from None
    return ReportFiles(out.resolve(), tuple(p.resolve() for p in figures))
