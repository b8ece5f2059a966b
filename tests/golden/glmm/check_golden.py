"""Independent sanity check of the golden GLMM values (not a pytest module).

Re-implements the full-constant marginal log-likelihood of a scalar
random-intercept GLMM in numpy (adaptive Gauss-Hermite, METHODS.md §1;
exact for the Gaussian model) and checks, for every ``<name>.json`` in this
folder, that

* the CSV has ``n_obs`` rows and the nesting group-in-site holds;
* ``loglik_full`` (computed in R by make_golden.R) is reproduced at the stored
  lme4 estimates, and ``polished.loglik_full`` at the polished estimates;
* ``loglik_full - loglik`` equals ``loglik_saturated`` for nAGQ > 1 and is
  ~0 for nAGQ = 1 (the lme4 constant documented in tests/golden/README.md);
* the polished estimates are at least as good as lme4's.

Run from the repository root::

    python tests/golden/glmm/check_golden.py
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
from scipy.special import gammaln, log_expit

HERE = Path(__file__).resolve().parent


def read_csv(path: Path) -> dict[str, np.ndarray]:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {key: np.array([float(row[key]) for row in rows]) for key in rows[0]}


def parse_formula(formula: str) -> tuple[str, list[str], str]:
    """Split ``y ~ a + b + (1 | g)`` into response, fixed terms, group."""
    lhs, rhs = (part.strip() for part in formula.split("~"))
    terms = [term.strip() for term in rhs.split("+")]
    group = next(t for t in terms if t.startswith("("))
    fixed = [t for t in terms if not t.startswith("(")]
    return lhs, fixed, group.strip("()").split("|")[1].strip()


def cond_terms(family: str, y: np.ndarray, eta: np.ndarray):
    """Per-observation log density (all constants), score and weight."""
    if family == "binomial":
        mu = np.exp(log_expit(eta))
        return y * log_expit(eta) + (1 - y) * log_expit(-eta), y - mu, mu * (1 - mu)
    mu = np.exp(eta)
    return y * eta - mu - gammaln(y + 1), y - mu, mu


def marginal_loglik(family, y, eta0, group, sd, nodes) -> float:
    """Adaptive Gauss-Hermite log-likelihood with ``nodes`` nodes (1 = Laplace)."""
    codes, g = np.unique(group, return_inverse=True)
    if sd <= 0:
        return float(cond_terms(family, y, eta0)[0].sum())
    n_groups = len(codes)

    def h(b: np.ndarray) -> np.ndarray:
        ll = cond_terms(family, y, eta0 + b[g])[0]
        prior = -0.5 * (b / sd) ** 2 - math.log(sd) - 0.5 * math.log(2 * math.pi)
        return np.bincount(g, ll, n_groups) + prior

    b = np.zeros(n_groups)
    for _ in range(200):
        _, score, weight = cond_terms(family, y, eta0 + b[g])
        grad = np.bincount(g, score, n_groups) - b / sd**2
        hess = np.bincount(g, weight, n_groups) + 1 / sd**2
        step = grad / hess
        scale = np.ones(n_groups)
        base = h(b)
        while True:
            bad = (h(b + scale * step) < base - 1e-12 * np.abs(base)) & (scale > 1e-10)
            if not bad.any():
                break
            scale[bad] /= 2
        b = b + scale * step
        if np.max(np.abs(scale * step)) < 1e-14 * max(1.0, np.max(np.abs(b))):
            break
    hess = np.bincount(g, cond_terms(family, y, eta0 + b[g])[2], n_groups) + 1 / sd**2
    z, w = np.polynomial.hermite.hermgauss(nodes)
    vals = np.stack([math.log(wk) + h(b + math.sqrt(2) * zk / np.sqrt(hess)) + zk**2
                     for zk, wk in zip(z, w, strict=True)], 1)
    top = vals.max(1)
    lse = top + np.log(np.exp(vals - top[:, None]).sum(1))
    return float(np.sum(0.5 * math.log(2) - 0.5 * np.log(hess) + lse))


def gaussian_loglik(y, mu, group, sd, sigma) -> float:
    total = 0.0
    for code in np.unique(group):
        r = (y - mu)[group == code]
        n = r.size
        s2, t2 = sigma**2, sd**2
        logdet = (n - 1) * math.log(s2) + math.log(s2 + n * t2)
        quad = (r @ r - t2 / (s2 + n * t2) * r.sum() ** 2) / s2
        total -= 0.5 * (n * math.log(2 * math.pi) + logdet + quad)
    return total


def check(path: Path) -> list[str]:
    spec = json.loads(path.read_text())
    data = read_csv(HERE / "data" / spec["dataset"])
    problems: list[str] = []
    n_obs = len(next(iter(data.values())))
    if n_obs != spec["n_obs"]:
        problems.append(f"n_obs {n_obs} != {spec['n_obs']}")
    group, site = data[spec["group_column"]], data[spec["site_column"]]
    for code in np.unique(group):
        if np.unique(site[group == code]).size != 1:
            problems.append(f"group {code} spans several sites")
    response, fixed, group_name = parse_formula(spec["formula"])
    assert group_name == spec["group_column"]
    y = data[response]
    X = np.column_stack([np.ones(n_obs)] + [data[t] for t in fixed])
    names = ["(Intercept)"] + fixed
    family = spec["family"]
    for key, fit in spec["fits"].items():
        nodes = int(key.removeprefix("nagq"))
        beta = np.array([fit["fixef"][t] for t in names])
        if family == "gaussian":
            ours = gaussian_loglik(y, X @ beta, group, fit["sd_random"], fit["sigma_residual"])
        else:
            ours = marginal_loglik(family, y, X @ beta, group, fit["sd_random"], nodes)
        if abs(ours - fit["loglik_full"]) > 1e-7:
            problems.append(f"{key}: loglik_full {fit['loglik_full']!r} vs numpy {ours!r}")
        if family != "gaussian":
            expected = 0.0 if nodes == 1 else fit["loglik_saturated"]
            tol = 1e-3 if nodes == 1 else 1e-5
            if abs(fit["loglik_full_minus_loglik"] - expected) > tol:
                problems.append(f"{key}: loglik_full - loglik = "
                                f"{fit['loglik_full_minus_loglik']!r}, expected {expected!r}")
        polished = fit.get("polished")
        if polished:
            beta_p = np.array([polished["fixef"][t] for t in names])
            ours_p = marginal_loglik(family, y, X @ beta_p, group, polished["sd_random"], nodes)
            if abs(ours_p - polished["loglik_full"]) > 1e-7:
                problems.append(f"{key}: polished loglik_full {polished['loglik_full']!r} "
                                f"vs numpy {ours_p!r}")
            if polished["loglik_full"] < fit["loglik_full"] - 1e-9:
                problems.append(f"{key}: polished optimum worse than lme4's")
    return problems


def main() -> int:
    failures = 0
    for path in sorted(HERE.glob("*.json")):
        problems = check(path)
        failures += bool(problems)
        print(f"{path.name}: {'OK' if not problems else 'PROBLEMS'}")
        for problem in problems:
            print(f"  - {problem}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
