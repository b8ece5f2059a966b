"""The result of a stratified Cox fit, its tests, and a summary laid out as R prints it.

The three global tests are those of ``summary(coxph(...))``, from quantities
the fit already holds: with ``l`` the partial log-likelihood, ``U0`` and
``I0`` the score and information at ``beta = 0`` and ``V`` the covariance at
the estimate,

    likelihood ratio  2 (l(beta) - l(0))
    Wald              beta' V^{-1} beta
    score (log-rank)  U0' I0^{-1} U0

each on ``p`` degrees of freedom.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats

from core_stats.cox_concordance import Concordance
from core_stats.inference import FixedEffect
from core_stats.results import _clean

__all__ = ["CoxFit", "GlobalTest", "global_tests"]


@dataclass(frozen=True)
class GlobalTest:
    statistic: float
    df: int
    p_value: float


def _test(statistic: float, df: int) -> GlobalTest:
    return GlobalTest(float(statistic), df, float(stats.chi2.sf(statistic, df)))


def global_tests(loglik0: float, loglik: float, score0: np.ndarray, info0: np.ndarray,
                 beta: np.ndarray, cov: np.ndarray) -> dict[str, GlobalTest]:
    """Likelihood-ratio, Wald and score tests of ``beta = 0`` (module docstring)."""
    p = len(beta)
    return {"likelihood_ratio": _test(2.0 * (loglik - loglik0), p),
            "wald": _test(float(beta @ np.linalg.solve(cov, beta)), p),
            "score": _test(float(score0 @ np.linalg.solve(info0, score0)), p)}


@dataclass(frozen=True)
class CoxFit:
    """A stratified Cox model fitted over sites; ``to_dict`` keys are a public contract."""

    formula: str
    ties: str
    fixed_effects: tuple[FixedEffect, ...]
    covariance: tuple[tuple[float, ...], ...]
    loglik: float
    loglik_null: float
    tests: dict[str, GlobalTest]
    concordance: Concordance | None
    n_obs: int
    n_events: int
    n_sites: int
    n_omitted: int
    converged: bool
    iterations: int
    rounds: int
    protection: str
    releases: tuple[dict, ...]
    message: str = ""
    warnings: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready dict (NaN and infinity become None)."""
        out = {
            "model": "cox",
            "formula": self.formula,
            "strata": "site",
            "ties": self.ties,
            "fixed_effects": [asdict(fe) for fe in self.fixed_effects],
            "hazard_ratios": [{"term": fe.term, "hazard_ratio": math.exp(fe.estimate),
                               "ci_low": math.exp(fe.ci_low), "ci_high": math.exp(fe.ci_high)}
                              for fe in self.fixed_effects],
            "covariance": [list(row) for row in self.covariance],
            "loglik": self.loglik,
            "loglik_null": self.loglik_null,
            "tests": {k: asdict(v) for k, v in self.tests.items()},
            "concordance": None if self.concordance is None else asdict(self.concordance),
            "n_obs": self.n_obs,
            "n_events": self.n_events,
            "n_sites": self.n_sites,
            "n_omitted": self.n_omitted,
            "converged": self.converged,
            "iterations": self.iterations,
            "newton_rounds": self.iterations,
            "rounds": self.rounds,
            "protection": self.protection,
            "releases": list(self.releases),
            "message": self.message,
            "warnings": list(self.warnings),
        }
        out.update(self.extra)
        return _clean(out)

    def summary(self) -> str:
        """The layout of ``print(summary(coxph(...)))`` (digits 4, as R's default)."""
        fe = self.fixed_effects
        beta = np.array([f.estimate for f in fe])
        se = np.array([f.std_error for f in fe])
        z = np.array([f.z_value for f in fe])
        p = np.array([f.p_value for f in fe])
        lines = [f"Stratified Cox model (strata: sites), ties = {self.ties!r}", "",
                 f"  n= {self.n_obs}, number of events= {self.n_events} "]
        if self.n_omitted:
            word = "observation" if self.n_omitted == 1 else "observations"
            lines.append(f"   ({self.n_omitted} {word} deleted due to missingness)")
        lines.append("")
        joint = _fixed(np.concatenate([beta, np.exp(beta), se]), 4)
        k = len(fe)
        cols = [("coef", joint[:k]), ("exp(coef)", joint[k:2 * k]), ("se(coef)", joint[2 * k:]),
                ("z", _fixed(np.round(z, 3), 4)), ("Pr(>|z|)", _pvalues(p, 3)),
                ("", [_stars(v) for v in p])]
        lines += _table([f.term for f in fe], cols)
        lines += ["---", "Signif. codes:  0 '***' 0.001 '**' 0.01 '*' 0.05 '.' 0.1 ' ' 1", ""]
        low = np.array([f.ci_low for f in fe])
        high = np.array([f.ci_high for f in fe])
        lines += _table([f.term for f in fe], [
            ("exp(coef)", _fixed(np.exp(beta), 4)), ("exp(-coef)", _fixed(np.exp(-beta), 4)),
            ("lower .95", _fixed(np.exp(low), 4)), ("upper .95", _fixed(np.exp(high), 4))])
        lines.append("")
        if self.concordance is not None:
            c = self.concordance
            lines.append(f"Concordance= {_r_round(c.concordance, 3)}  "
                         f"(se = {_r_round(c.std_error, 3)} )")
        labels = {"likelihood_ratio": "Likelihood ratio test", "wald": "Wald test",
                  "score": "Score (logrank) test"}
        for key, label in labels.items():
            t = self.tests[key]
            lines.append(f"{label:<21}= {_r_round(t.statistic, 2)}  on {t.df} df,   "
                         f"p={_pvalues(np.array([t.p_value]), 1)[0]}")
        lines.append("")
        lines.append(f"Partial log-likelihood {self.loglik:.4f} (null {self.loglik_null:.4f}); "
                     f"{self.n_sites} sites, {self.rounds} rounds, protection: {self.protection}")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _needed(value: float, digits: int) -> tuple[int, int]:
    """Significant digits (at most ``digits``, trailing zeros dropped) and decimal exponent."""
    mantissa, exponent = f"{abs(value):.{digits - 1}e}".split("e")
    return len(mantissa.replace(".", "").rstrip("0")) or 1, int(exponent)


def _fixed(values: np.ndarray, digits: int) -> list[str]:
    """R's ``format(x, digits)`` of a column: one number of decimals, one width."""
    values = np.asarray(values, dtype=float)
    places = 0
    for v in values[np.isfinite(values) & (values != 0)]:
        sig, exponent = _needed(float(v), digits)
        places = max(places, min(15, sig - 1 - exponent))
    shown = [f"{v:.{places}f}" if np.isfinite(v) else "NA" for v in values]
    width = max(len(t) for t in shown)
    return [t.rjust(width) for t in shown]


def _scientific(values: np.ndarray, digits: int) -> list[str]:
    sig = max(_needed(float(v), digits)[0] for v in values)
    return [f"{v:.{sig - 1}e}" for v in values]


def _pvalues(p: np.ndarray, digits: int) -> list[str]:
    """R's ``format.pval``: p above 1e-4 (1e-3 for one digit) formatted jointly in fixed
    notation; smaller ones jointly, fixed or scientific, whichever is narrower; p below
    machine epsilon as ``<2e-16``."""
    p = np.asarray(p, dtype=float)
    out = [""] * len(p)
    tiny = p < np.finfo(float).eps
    expo = np.floor(np.log10(np.where(p > 0, p, 1e-50)))
    fixed = ~tiny & ((expo >= -3) | ((expo == -4) & (digits > 1)))
    rest = ~tiny & ~fixed
    groups = [(fixed, _fixed(p[fixed], digits) if fixed.any() else [])]
    if rest.any():
        plain, sci = _fixed(p[rest], digits), _scientific(p[rest], digits)
        groups.append((rest, plain if len(plain[0]) <= len(sci[0]) else sci))
    for group, texts in groups:
        for i, text in zip(np.flatnonzero(group), texts, strict=True):
            out[i] = text
    widest = max((len(t) for t in out if t), default=0)
    for i in np.flatnonzero(tiny):
        out[i] = "<2e-16" if widest <= 6 else "< 2e-16"
    return out


def _r_round(value: float, places: int, digits: int = 4) -> str:
    """``format(round(x, places))`` under R's ``digits = 4``: at most 4 significant digits."""
    if not np.isfinite(value):
        return "NA"
    rounded = round(value, places)
    if abs(rounded) >= 10**digits:
        return f"{rounded:.0f}"
    return f"{rounded:.{digits}g}"


def _stars(p: float) -> str:
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else \
        "." if p < 0.1 else " "


def _table(rows: list[str], columns: list[tuple[str, list[str]]]) -> list[str]:
    width = max(len(r) for r in rows)
    sizes = [max(len(h), *(len(v) for v in vals)) for h, vals in columns]
    head = " " * width + "".join(f" {h:>{s}}" for (h, _), s in zip(columns, sizes, strict=True))
    out = [head.rstrip() if not columns[-1][0] else head]
    for i, name in enumerate(rows):
        out.append(f"{name:<{width}}" + "".join(
            f" {vals[i]:>{s}}" if h else f" {vals[i]:<{s}}"
            for (h, vals), s in zip(columns, sizes, strict=True)))
    return out

