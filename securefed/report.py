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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from securefed.errors import InputError
from securefed.report_tables import (
    _fmt,
    _num,
    _table,
    method_line,
    p_text,
    privacy_tables,
    timing_rows,
)

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
                 "z_value": _num(r.get("z_value")), "p_value": _num(r.get("p_value"))}
                for r in rows]
    except (KeyError, TypeError, ValueError):
        raise InputError("the result's coefficient rows need 'term' and 'estimate'") from None


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


SCALE_TERMS = ("log_sigma", "sigma")


def forest_panels(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """Rows in separate panels, each on its own scale: fixed effects, site-specific terms
    (``term[site=...]``) and scale parameters; empty panels are left out."""
    site = [r for r in rows if r["term"].endswith("]") and "[" in r["term"]]
    scale = [r for r in rows if r["term"] in SCALE_TERMS]
    fixed = [r for r in rows if r not in site and r not in scale]
    return [(title, part) for title, part in (("fixed effects", fixed),
                                              ("site-specific terms", site),
                                              ("scale parameters", scale)) if part]


def _panel_plot(rows: list[dict], path: Path, title: str, xlabel: str,
                series: list[tuple[str, str, Callable[[dict], tuple[float, float, float]]]]
                ) -> None:
    """A dot-and-interval plot of ``rows`` in :func:`forest_panels`, each on its own scale;
    ``series``: ``(label, colour, row -> (estimate, low, high))``, drawn side by side."""
    plt = _plt()
    panels = forest_panels(rows)
    heights = [len(part) + 1.2 for _, part in panels]
    fig, axes = plt.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": heights},
                             figsize=(7, 0.45 * sum(heights) + 0.8))
    shifts = [0.3 * (0.5 - k / max(len(series) - 1, 1)) if len(series) > 1 else 0.0
              for k in range(len(series))]
    for ax, (name, part) in zip(axes[:, 0], panels, strict=True):
        ys = list(range(len(part)))[::-1]
        for y, row in zip(ys, part, strict=True):
            for shift, (_, colour, values) in zip(shifts, series, strict=True):
                estimate, low, high = values(row)
                if not (math.isnan(low) or math.isnan(high)):
                    ax.plot([low, high], [y + shift] * 2, color=colour, lw=2)
                ax.plot(estimate, y + shift, "o", color=colour)
        if name != "scale parameters":
            ax.axvline(0.0, color="#888", ls="--", lw=1)
        ax.set_yticks(ys, [r["term"] for r in part], fontsize=8 if len(part) > 15 else 10)
        ax.set_ylim(-0.7, len(part) - 0.3)
        ax.set_title(name, fontsize=10, loc="left")
    if len(series) > 1:
        for label, colour, _ in series:
            axes[0, 0].plot([], [], "o-", color=colour, label=label)
        axes[0, 0].legend(loc="best", fontsize=8)
    axes[-1, 0].set_xlabel(xlabel)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _forest(rows: list[dict], path: Path, title: str) -> None:
    _panel_plot(rows, path, title, "estimate with 95% interval",
                [("estimate", "#d62728", lambda r: (r["estimate"], r["ci_low"], r["ci_high"]))])


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


def _paired(pairs: list[tuple[dict, dict]], path: Path) -> None:
    """BFI and pooled estimates side by side per term, each with its 95% interval."""
    pooled = {b["term"]: p for b, p in pairs}

    def interval(fit: dict) -> tuple[float, float, float]:
        half = 1.96 * fit["se"]
        return fit["estimate"], fit["estimate"] - half, fit["estimate"] + half

    _panel_plot([b for b, _ in pairs], path, "BFI vs pooled fit",
                "estimate with 95% interval (± 1.96 SD)",
                [("BFI", "#1f77b4", interval),
                 ("pooled", "#ff7f0e", lambda r: interval(pooled[r["term"]]))])


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
        if isinstance(privacy, dict) and isinstance(privacy.get("inference"), dict):
            privacy = {**privacy, "inference": {k: v for k, v in privacy["inference"].items()
                                                if "covariance" not in k}}
        out += "<h2>Privacy</h2>" + privacy_tables(privacy)
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
    dispersion = result.get("dispersion")
    if dispersion:  # Gamma's sigma^2, NB2's theta, as glmmTMB reports them
        out += "<h2>Dispersion</h2>" + _table(
            ["parameter", "estimate", "CI low", "CI high"],
            [[dispersion.get("parameter"), _num(dispersion.get("estimate")),
              _num(dispersion.get("ci_low")), _num(dispersion.get("ci_high"))]], "dispersion")
    if result.get("reml"):
        out += _table(["REML criterion"], [[_num(result.get("reml_criterion"))]], "reml")
    out += _table(["logLik", "AIC", "BIC", "converged", "singular"], [[
        _num(result.get("loglik")), _num(result.get("aic")), _num(result.get("bic")),
        bool(result.get("converged")), bool(result.get("singular"))]], "fit")
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
    by_term = {str(r["term"]): {"term": str(r["term"]), "estimate": _num(r["estimate"]),
                                "se": _num(r.get("sd"))} for r in pooled}
    pairs = [(r, by_term[r["term"]]) for r in rows if r["term"] in by_term]
    out += "<h2>BFI vs pooled fit</h2>" + _table(
        ["term", "BFI", "BFI SD", "pooled", "pooled SD", "difference"],
        [[b["term"], b["estimate"], b["se"], p["estimate"], p["se"],
          b["estimate"] - p["estimate"]] for b, p in pairs], "pooled")
    if pairs:
        path = folder / f"{stem}_pooled.png"
        _paired(pairs, path)
        figures.append(path)
        out += _img(path, "BFI and pooled estimates with their intervals, term by term")
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
    family = f" ({result['family']})" if result.get("family") else ""
    title = (result.get("study") or {}).get("title") or model + family
    family_text = "" if cox else f" · family {_fmt(result.get('family'))}"
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p>{html.escape(model)}{family_text} · formula "
             f"<code>{_fmt(result.get('formula'))}</code> · {_rows_text(result)} in "
             f"{_fmt(result.get('n_sites'))} sites</p>"]
    parts += _noise_banner(result)
    parts.append(f"<p id=\"method\">{html.escape(method_line(result))}</p>")
    if kind == "glmm":
        parts.append("<h2>Coefficients</h2>" + _table(
            ["term", "estimate", "Std. Error", "z value", "Pr(>|z|)", "CI low", "CI high"],
            [[r["term"], r["estimate"], r["se"], r["z_value"], p_text(r["p_value"]),
              r["ci_low"], r["ci_high"]] for r in rows], "coefficients"))
    else:
        parts.append("<h2>Coefficients</h2>" + _table(
            ["term", "estimate", "SD", "CI low", "CI high"],
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
            ["stage", "seconds"], timing_rows(timings), "timings"))
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
