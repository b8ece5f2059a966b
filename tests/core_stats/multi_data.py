"""Golden data sets of tests/golden/glmm_multi as sites of random-effects terms, and an
in-process federation that sums the sites' Laplace terms (shared by the multi-term tests)."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core_stats.families import Family, get_family
from core_stats.glmm_fit import GLMMEstimate
from core_stats.glmm_multi import (
    MultiLayout,
    MultiRows,
    RandomTerm,
    multi_rows,
    split_uncorrelated,
    term_layout,
)
from core_stats.glmm_multi_fit import fit_glmm_multi, multi_starting_values
from core_stats.glmm_multi_laplace import multi_site_terms
from core_stats.optimize import SummedTerms

GOLDEN = Path(__file__).parents[1] / "golden" / "glmm_multi"


@dataclass(frozen=True)
class Problem:
    """Fixed effects, random-effects terms, family and the site of each row."""

    y: np.ndarray
    X: np.ndarray
    fixed_names: tuple[str, ...]
    terms: tuple[RandomTerm, ...]
    family: Family
    site: np.ndarray

    def layout(self) -> MultiLayout:
        return MultiLayout(self.fixed_names, tuple(term_layout(t) for t in self.terms),
                           self.family.has_dispersion)

    def sites(self, site: np.ndarray | None = None) -> list[MultiRows]:
        site = self.site if site is None else site
        out = []
        for s in np.unique(site):
            keep = site == s
            terms = tuple(RandomTerm(t.name, t.Z[keep], t.group_codes[keep], t.correlated,
                                     t.random_names) for t in self.terms)
            out.append(multi_rows(self.y[keep], self.X[keep], terms))
        return out


def interaction(*columns: np.ndarray) -> np.ndarray:
    """Codes of the interaction of integer columns (lme4's ``a:b``)."""
    return np.unique(np.column_stack(columns), axis=0, return_inverse=True)[1].ravel()


def _columns(frame: pd.DataFrame, names: list[str]) -> np.ndarray:
    return np.column_stack([np.ones(len(frame)) if name == "(Intercept)"
                            else frame[name].to_numpy(float) for name in names])


def golden_problem(name: str) -> tuple[dict, Problem]:
    spec = json.loads((GOLDEN / f"{name}.json").read_text())
    frame = pd.read_csv(GOLDEN / spec["dataset_path"])
    fixed = [n for n in next(iter(spec["fits"].values()))["fixef"] if n != "(Intercept)"]
    outcome = spec["formula"].split("~")[0].strip()
    X = np.column_stack([np.ones(len(frame)), frame[fixed].to_numpy(float)])
    terms = tuple(RandomTerm(t["name"], _columns(frame, t.get("random", ["(Intercept)"])),
                             interaction(*(frame[c].to_numpy() for c in t["columns"])),
                             random_names=tuple(t.get("random", ["(Intercept)"])))
                  for t in spec["terms"])
    problem = Problem(frame[outcome].to_numpy(float), X, ("(Intercept)", *fixed),
                      split_uncorrelated(terms), get_family(spec["family"]),
                      frame[spec["site_column"]].to_numpy())
    return spec, problem


class Federation:
    """Sites evaluating their terms in process; each keeps its conditional modes."""

    def __init__(self, family: Family, sites: list[MultiRows]) -> None:
        self.family, self.sites = family, sites
        self.modes: dict[tuple[int, MultiLayout], np.ndarray] = {}

    def __call__(self, layout: MultiLayout, theta: np.ndarray, derivatives: bool) -> SummedTerms:
        total = None
        for k, rows in enumerate(self.sites):
            key = (k, layout)
            terms = multi_site_terms(rows, self.family, layout, theta, derivatives=derivatives,
                                     start_modes=self.modes.get(key))
            self.modes[key] = terms.modes
            part = SummedTerms(terms.loglik, terms.gradient if derivatives else None,
                               terms.hessian if derivatives else None)
            total = part if total is None else total + part
        return total


def fit_problem(problem: Problem, site: np.ndarray | None = None, **kwargs) -> GLMMEstimate:
    layout, X, y = problem.layout(), problem.X, problem.y
    start = multi_starting_values(layout, problem.family, len(y), y.sum(), (y * y).sum(),
                                  X.T @ y, X.T @ X)
    return fit_glmm_multi(Federation(problem.family, problem.sites(site)), layout, start,
                          **kwargs)


@functools.cache
def golden_fit(name: str) -> tuple[dict, Problem, GLMMEstimate]:
    """The golden problem ``name`` and its federated fit over the golden's sites (cached:
    several tests read one fit)."""
    spec, problem = golden_problem(name)
    return spec, problem, fit_problem(problem)
