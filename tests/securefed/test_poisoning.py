"""Poisoning by one site: plausibility checks on decoded sums, and opening a commitment.

Each attack lets one site (``TARGET``) send a crafted vector; the table
``ATTACKS`` says which check refuses the round, or, when none does, what the
attack does to the fit. ``threat_model/poisoning.md`` carries the same table
(``test_the_threat_model_table_matches_the_tests`` keeps them equal).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import securefed.bfi_run as bfi_run
import securefed.glmm_run as glmm_run
from core_stats.bfi_layout import triu_length, triu_pack, triu_unpack
from core_stats.design import grouped_rows
from core_stats.families import get_family
from core_stats.glmm import ParameterLayout, site_terms
from securefed.audit import SaltStore, open_commitment, read_entries
from securefed.audit_log import EventKind
from securefed.audit_trail import trail_paths
from securefed.bfi_run import BFIOptions, run_bfi
from securefed.cli import main
from securefed.data import builtin_path
from securefed.glmm_run import GLMMOptions, run_glmm
from securefed.plausibility import (
    DesignSummary,
    ImplausibleAggregate,
    Tolerance,
    check_glmm_terms,
)
from securefed.site import Site
from securefed.synthetic import make_hospitals
from securefed.vectors import pack_terms, unpack_terms

TARGET = "3"
DOC = Path(__file__).resolve().parents[2] / "threat_model" / "poisoning.md"
FORMULA = "y ~ x2 + x6 + (1 | hospital)"
NURSES = BFIOptions("stress ~ age + gender + experien + wardtype", "gaussian", "hospital",
                    lam=0.01, standardize=("age", "experien", "stress"))
TRAUMA = BFIOptions("mortality ~ age + sex + ISS + GCS", "binomial", "hospital", lam=0.01,
                    standardize=("age", "ISS", "GCS"))

Vector = np.ndarray
Tamper = Callable[[Vector, ParameterLayout | None, Vector | None], Vector]


# ------------------------------------------------------------ honest data: the inequalities


def _design(rows, family) -> DesignSummary:
    X, y = rows.X, rows.y
    return DesignSummary(family, float(len(y)), float(y.sum()), float(y @ y), X.T @ y, X.T @ X,
                         Tolerance())


def _random_site(family: str, q: int, seed: int):
    """Groups of 1 to 12 rows, covariates up to |x| = 4, a random slope when q = 2."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 13, size=15)
    groups = np.repeat(np.arange(sizes.size), sizes)
    n = groups.size
    X = np.column_stack([np.ones(n), rng.normal(0, 1.5, n), rng.binomial(1, 0.3, n)])
    Z = X[:, :q]
    eta = X @ [-0.5, 0.8, 0.4] + rng.normal(0, 1.2, sizes.size)[groups] * Z[:, -1]
    fam = get_family(family)
    if family == "binomial":
        y = rng.binomial(1, 1 / (1 + np.exp(-eta))).astype(float)
    elif family == "poisson":
        y = rng.poisson(np.exp(np.clip(eta, -5, 3))).astype(float)
    else:
        y = eta + rng.normal(0, 0.8, n)
    rows = grouped_rows(y, X, Z, groups)
    layout = ParameterLayout(("(Intercept)", "x1", "x2"), ("(Intercept)", "x1")[:q], "g",
                             fam.has_dispersion)
    return rows, fam, layout, rng


def _subset(rows, keep: np.ndarray):
    return grouped_rows(rows.y[keep], rows.X[keep], rows.Z[keep],
                        np.asarray(rows.group_labels)[rows.group_of_row][keep])


@pytest.mark.parametrize("family", ["binomial", "poisson", "gaussian"])
@pytest.mark.parametrize(("q", "nagq"), [(1, 1), (1, 2), (1, 5), (2, 1), (2, 3)])
def test_honest_terms_pass_every_check_at_any_theta(family: str, q: int, nagq: int) -> None:
    """At random, also far-off, parameter values, on all rows and on a subset of them."""
    for seed in range(4):
        rows, fam, layout, rng = _random_site(family, q, seed)
        design = _design(rows, fam)
        subset = _subset(rows, rng.random(rows.n_rows) < 0.6)
        for data in (rows, subset):
            for lay in (layout, layout.without_random_effects()):
                theta = rng.normal(0, 1.5, size=lay.size)
                terms = site_terms(data, fam, lay, theta, nagq=nagq)
                vector = pack_terms(terms.loglik, terms.gradient, terms.hessian)
                if terms.boundary_score is not None:
                    vector = np.concatenate([vector, terms.boundary_score[np.triu_indices(q)]])
                check_glmm_terms(vector, design, lay, theta, True, nagq)
                if family != "gaussian":
                    assert terms.loglik <= 0.0


def test_laplace_bounds_are_not_vacuous() -> None:
    """The proven constants leave room, but honest terms come within a factor of 10."""
    worst_gradient = worst_hessian = 0.0
    for seed in range(6):
        rows, fam, layout, rng = _random_site("binomial", 1, seed)
        design = _design(rows, fam)
        theta = rng.normal(0, 1.0, size=layout.size)
        terms = site_terms(rows, fam, layout, theta, nagq=1)
        g, info = terms.gradient[:3], -terms.hessian[:3, :3]
        worst_gradient = max(worst_gradient, g @ np.linalg.solve(design.xtx, g) / (4 * design.n))
        root = np.linalg.cholesky(design.xtx)
        scaled = np.linalg.solve(root, np.linalg.solve(root, info).T)
        worst_hessian = max(worst_hessian, np.linalg.eigvalsh(scaled).max() / 6.25)
    assert 0.01 < worst_gradient < 1.0 and 0.001 < worst_hessian < 1.0


# ------------------------------------------------------------------------ the attacks


@dataclass(frozen=True)
class Attack:
    """One crafted release of ``TARGET``; ``caught`` is a check name or ``None``."""

    model: str            # "glmm-laplace", "glmm-agq3", "glmm-gaussian", "bfi-nurses", "bfi-trauma"
    purpose: str          # the round whose vector is crafted
    tamper: Tamper
    caught: str | None
    effect: str = ""      # when not caught: "no-convergence", "shifted" or "none"
    refused_in: str = ""  # the round refused, when not the crafted one

    @property
    def refused_round(self) -> str:
        return self.refused_in or self.purpose


def _terms(change: Callable[..., tuple]) -> Tamper:
    """Edit ``[l, gradient, triu(Hessian)]``; ``change(l, g, H)`` (``g = H = None`` for ``[l]``)."""
    def tamper(vector: Vector, layout: ParameterLayout | None, theta: Vector | None) -> Vector:
        assert layout is not None
        if vector.size == 1:
            return np.array([change(float(vector[0]), None, None)[0]])
        full = 1 + layout.size + layout.size * (layout.size + 1) // 2
        value, grad, hess = unpack_terms(vector[:full], layout.size)
        return np.concatenate([pack_terms(*change(value, grad, hess)), vector[full:]])
    return tamper


def _tilt(vector: Vector, layout: ParameterLayout | None, theta: Vector | None) -> Vector:
    """Adds ``5 beta_x6`` to the site's log-likelihood: value and gradient consistently."""
    assert layout is not None and theta is not None
    return _terms(lambda v, g, h: (v + 5.0 * theta[2],
                                   None if g is None else g + 5.0 * np.eye(g.size)[2], h))(
        vector, layout, theta)


def _scale_hessian(factor: float) -> Tamper:
    return _terms(lambda v, g, h: (v, g, None if h is None else h * factor))


def _scale_gradient(factor: float) -> Tamper:
    return _terms(lambda v, g, h: (v, None if g is None else g * factor, h))


def _shift_loglik(shift: float) -> Tamper:
    return _terms(lambda v, g, h: (v + shift, g, h))


def _bfi(change: Callable) -> Tamper:
    """Edit ``[triu(A), A theta, triu(Lambda), n, 1]`` of a homogeneous layout."""
    def tamper(vector: Vector, _layout, _theta) -> Vector:
        d = int(round((-2 + np.sqrt(4 + 4 * (vector.size - 2))) / 2))
        t = triu_length(d)
        A, b = triu_unpack(vector[:t], d), vector[t:t + d]
        prior, n, sites = vector[t + d:2 * t + d], vector[-2], vector[-1]
        A, b, prior, n, sites = change(A, b, prior, n, sites)
        return np.concatenate([triu_pack(A), b, prior, [n, sites]])
    return tamper


def _one_negative_eigenvalue(A, b, prior, n, sites):
    values, vectors = np.linalg.eigh(A)
    return A - 2 * values[0] * np.outer(vectors[:, 0], vectors[:, 0]), b, prior, n, sites


ATTACKS: dict[str, Attack] = {
    # GLMM, binomial, Laplace with a random intercept: every GLMM check applies
    "glmm-hessian-x1e6": Attack("glmm-laplace", "glmm-terms", _scale_hessian(1e6),
                                "hessian-bound"),
    "glmm-gradient-x1e3": Attack("glmm-laplace", "glmm-terms", _scale_gradient(1e3),
                                 "gradient-bound"),
    "glmm-gradient-flipped": Attack("glmm-laplace", "glmm-terms", _scale_gradient(-1.0), None,
                                    "no-convergence"),
    "glmm-linear-tilt": Attack("glmm-laplace", "glmm-terms", _tilt, None, "shifted"),
    "glmm-loglik-plus-1e4": Attack("glmm-laplace", "glmm-terms", _shift_loglik(1e4),
                                   "loglik-upper"),
    "glmm-loglik-plus-1": Attack("glmm-laplace", "glmm-terms", _shift_loglik(1.0), None, "none"),
    # GLMM, binomial, AGQ with 3 nodes: only the log-likelihood bound is proven
    "agq-hessian-x1e6": Attack("glmm-agq3", "glmm-terms", _scale_hessian(1e6), None,
                               "no-convergence"),
    "agq-gradient-x1e3": Attack("glmm-agq3", "glmm-terms", _scale_gradient(1e3), None,
                                "no-convergence"),
    "agq-loglik-plus-1e4": Attack("glmm-agq3", "glmm-terms", _shift_loglik(1e4),
                                  "loglik-upper"),
    # GLMM, Gaussian: exact marginal likelihood, every bound applies at any nAGQ
    "gaussian-hessian-x1e6": Attack("glmm-gaussian", "glmm-terms", _scale_hessian(1e6),
                                    "hessian-bound"),
    "gaussian-gradient-x1e3": Attack("glmm-gaussian", "glmm-terms", _scale_gradient(1e3),
                                     "gradient-bound"),
    # the design-summary round [n, Sy, Syy, X'y, triu(X'X)]
    "design-n-x10": Attack("glmm-laplace", "design-summary",
                           lambda v, *_: np.r_[10 * v[0], v[1:]], "intercept-count"),
    "design-n-negative": Attack("glmm-laplace", "design-summary",
                                lambda v, *_: np.r_[-v[0], v[1:]], "intercept-count"),
    "design-syy-zero": Attack("glmm-laplace", "design-summary",
                              lambda v, *_: np.r_[v[:2], 0.0, v[3:]], "binomial-outcome"),
    "design-xtx-negative": Attack("glmm-laplace", "design-summary",
                                  lambda v, *_: np.r_[v[:9], -1e4 * abs(v[9]), v[10:]], "gram-psd"),
    "design-all-doubled": Attack("glmm-laplace", "design-summary", lambda v, *_: 2 * v, None,
                                 "none"),
    # BFI (Nurses, Gaussian; trauma, binomial): [triu(A), A theta, triu(Lambda), n, 1]
    "bfi-count-negative": Attack("bfi-nurses", "bfi-count", lambda v, *_: np.r_[-v[0], v[1]],
                                 "row-count", refused_in="bfi-standardize"),
    "bfi-sites-2": Attack("bfi-nurses", "bfi-terms",
                          _bfi(lambda A, b, P, n, s: (A, b, P, n, 2.0)), "site-count"),
    "bfi-n-x10": Attack("bfi-nurses", "bfi-terms",
                        _bfi(lambda A, b, P, n, s: (A, b, P, 10 * n, s)), "row-count"),
    "bfi-prior-x100": Attack("bfi-nurses", "bfi-terms",
                             _bfi(lambda A, b, P, n, s: (A, b, 100 * P, n, s)), "prior-sum"),
    "bfi-standardize-negative": Attack(
        "bfi-nurses", "bfi-standardize",
        lambda v, *_: np.r_[v[:4], -v[4:]], "moment-inequality"),
    "bfi-gaussian-A-negated": Attack("bfi-nurses", "bfi-terms",
                                     _bfi(lambda A, b, P, n, s: (-A, b, P, n, s)), None,
                                     "shifted"),
    "bfi-gaussian-A-x1e6": Attack("bfi-nurses", "bfi-terms",
                                  _bfi(lambda A, b, P, n, s: (1e6 * A, 1e6 * b, P, n, s)), None,
                                  "shifted"),
    "bfi-gaussian-linear-shift": Attack(
        "bfi-nurses", "bfi-terms", _bfi(lambda A, b, P, n, s: (A, b + A @ np.ones(b.size), P,
                                                                n, s)), None, "shifted"),
    "bfi-gaussian-linear-1e11": Attack(
        "bfi-nurses", "bfi-terms", _bfi(lambda A, b, P, n, s: (A, b + 1e11 * np.eye(b.size)[1],
                                                                P, n, s)), "linear-consistency"),
    "bfi-binomial-linear-1e4": Attack(
        "bfi-trauma", "bfi-terms", _bfi(lambda A, b, P, n, s: (A, b + 1e4 * np.eye(b.size)[1],
                                                                P, n, s)), "linear-consistency"),
    "bfi-binomial-linear-shift": Attack(
        "bfi-trauma", "bfi-terms", _bfi(lambda A, b, P, n, s: (A, b + A @ np.ones(b.size), P,
                                                                n, s)), None, "shifted"),
    "bfi-binomial-A-negated": Attack("bfi-trauma", "bfi-terms",
                                     _bfi(lambda A, b, P, n, s: (-A, b, P, n, s)),
                                     "curvature-pd"),
    "bfi-binomial-A-one-negative-eigenvalue": Attack("bfi-trauma", "bfi-terms",
                                                     _bfi(_one_negative_eigenvalue), None,
                                                     "shifted"),
    "bfi-binomial-A-x1e3": Attack("bfi-trauma", "bfi-terms",
                                  _bfi(lambda A, b, P, n, s: (1e3 * A, 1e3 * b, P, n, s)),
                                  "binomial-intercept"),
    "bfi-binomial-A-x2": Attack("bfi-trauma", "bfi-terms",
                                _bfi(lambda A, b, P, n, s: (2 * A, 2 * b, P, n, s)), None,
                                "shifted"),
}


class PoisonedSite(Site):
    """A site that crafts its release for one round and remembers what it sent."""

    def __init__(self, name: str, frame: pd.DataFrame, purpose: str, tamper: Tamper) -> None:
        super().__init__(name, frame)
        self.purpose, self.tamper = purpose, tamper
        self.sent: list[tuple[Vector, Vector]] = []  # (honest, released) per release

    def _release(self, purpose: str, honest: Vector, layout=None, theta=None) -> Vector:
        released = self.tamper(honest.copy(), layout, theta) if purpose == self.purpose \
            else honest
        self.sent.append((honest, released))
        return released

    def design_summary_vector(self) -> Vector:
        return self._release("design-summary", super().design_summary_vector())

    def glmm_terms_vector(self, layout, theta, derivatives) -> Vector:
        honest = super().glmm_terms_vector(layout, theta, derivatives)
        return self._release("glmm-terms", honest, layout, np.asarray(theta, dtype=float))

    def glmm_counts_vector(self) -> Vector:  # the final counts: a release like the others
        return self._release("glmm-counts", super().glmm_counts_vector())


@pytest.fixture(scope="module")
def data() -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(11)
    gaussian = make_hospitals(n_sites=6, rows_per_site=60, seed=7)
    gaussian["y"] = 0.5 * gaussian.x2 - 0.7 * gaussian.x6 + rng.normal(0, 1, 6)[
        gaussian.hospital - 1] + rng.normal(0, 1, len(gaussian))
    return {"hospitals": make_hospitals(n_sites=6, rows_per_site=80, seed=5),
            "gaussian": gaussian, "nurses": pd.read_csv(builtin_path("Nurses")),
            "trauma": pd.read_csv(builtin_path("trauma"))}


GLMM_MODELS = {"glmm-laplace": ("hospitals", GLMMOptions(FORMULA, "binomial", "hospital")),
               "glmm-agq3": ("hospitals", GLMMOptions(FORMULA, "binomial", "hospital", nagq=3)),
               "glmm-gaussian": ("gaussian", GLMMOptions(FORMULA, "gaussian", "hospital",
                                                         nagq=2))}
BFI_MODELS = {"bfi-nurses": ("nurses", NURSES), "bfi-trauma": ("trauma", TRAUMA)}


def _poison_glmm(monkeypatch, attack: Attack) -> list[PoisonedSite]:
    made: list[PoisonedSite] = []

    def factory(name: str, part: pd.DataFrame) -> Site:
        if name != TARGET:
            return Site(name, part)
        made.append(PoisonedSite(name, part, attack.purpose, attack.tamper))
        return made[-1]

    monkeypatch.setattr(glmm_run, "Site", factory)
    return made


class PoisonedBFISite(Site):
    """A BFI site that crafts its release for one round (it fits and releases itself)."""

    def __init__(self, name: str, frame: pd.DataFrame, purpose: str, tamper: Tamper) -> None:
        super().__init__(name, frame)
        self.purpose, self.tamper = purpose, tamper

    def _release(self, purpose: str, honest: Vector) -> Vector:
        return self.tamper(honest.copy(), None, None) if purpose == self.purpose else honest

    def count_vector(self, *args, **kwargs) -> Vector:
        return self._release("bfi-count", super().count_vector(*args, **kwargs))

    def standardize_vector(self, *args, **kwargs) -> Vector:
        return self._release("bfi-standardize", super().standardize_vector(*args, **kwargs))

    def bfi_terms_vector(self, spec) -> Vector:
        return self._release("bfi-terms", super().bfi_terms_vector(spec))


def _poison_bfi(monkeypatch, attack: Attack) -> None:
    def factory(name: str, part: pd.DataFrame) -> Site:
        if name != TARGET:
            return Site(name, part)
        return PoisonedBFISite(name, part, attack.purpose, attack.tamper)

    monkeypatch.setattr(bfi_run, "Site", factory)


def _estimates(result) -> np.ndarray:
    if hasattr(result, "estimates"):
        return np.array([row["estimate"] for row in result.estimates])
    return np.asarray(result.theta)


def _run(model: str, data: dict) -> object:
    if model in GLMM_MODELS:  # a GLMM site is poisoned on either path; the direct one is
        frame, opts = GLMM_MODELS[model]  # faster for attacks that run to max_iter
        return run_glmm(data[frame], opts, site_runtime=False)
    frame, opts = BFI_MODELS[model]
    return run_bfi(data[frame], opts)


@pytest.fixture(scope="module")
def honest_results(data) -> dict[str, object]:
    """Every honest reference problem of the table passes every check."""
    return {model: _run(model, data) for model in (*GLMM_MODELS, *BFI_MODELS)}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack(name: str, data, honest_results, monkeypatch) -> None:
    attack = ATTACKS[name]
    if attack.model in GLMM_MODELS:
        _poison_glmm(monkeypatch, attack)
    else:
        _poison_bfi(monkeypatch, attack)
    if attack.caught is not None:
        with pytest.raises(ImplausibleAggregate) as refused:
            _run(attack.model, data)
        assert refused.value.check == attack.caught
        assert refused.value.purpose == attack.refused_round
        assert attack.caught in str(refused.value)
        return
    result = _run(attack.model, data)
    honest = honest_results[attack.model]
    shift = float(np.max(np.abs(_estimates(result) - _estimates(honest))))
    converged = getattr(result, "converged", True)
    if attack.effect == "no-convergence":
        assert not converged
    elif attack.effect == "shifted":
        assert converged and shift > 1e-3
    else:
        assert attack.effect == "none" and converged and shift < 1e-6


def test_refused_round_under_secure_aggregation_is_one_cli_line(data, tmp_path, monkeypatch,
                                                                capsys) -> None:
    _poison_glmm(monkeypatch, ATTACKS["glmm-hessian-x1e6"])
    path = tmp_path / "hospitals.csv"
    data["hospitals"].to_csv(path, index=False)
    code = main(["fit", str(path), "--formula", FORMULA, "--site-column", "hospital",
                 "--protect", "secagg", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "round 'glmm-terms' refused" in err and "'hessian-bound'" in err


def test_a_dispute_opens_one_sites_commitment(data, tmp_path, monkeypatch) -> None:
    """The tilted site passes every check; in a dispute it reveals vector and salt."""
    made = _poison_glmm(monkeypatch, ATTACKS["glmm-linear-tilt"])
    log = tmp_path / "run.jsonl"
    run_glmm(data["hospitals"], GLMM_MODELS["glmm-laplace"][1], audit_log=log)
    site = made[0]
    entries = read_entries(log)
    run_id = next(e for e in entries if e.kind is EventKind.RUN_START).payload["run_id"]
    releases = [e.payload["release"] for e in entries if e.kind is EventKind.RELEASE
                and e.payload["release"]["site"] == TARGET]
    assert len(releases) == len(site.sent)
    salts = SaltStore(trail_paths(log, TARGET)[1])
    disputed = [(r, sent) for r, sent in zip(releases, site.sent, strict=True)
                if r["vector_kind"] == "glmm-terms" and not np.array_equal(*sent)]
    assert disputed
    for release, (honest, released) in disputed:
        salt = salts.lookup(run_id, release["round"], release["vector_kind"]).salt
        # the coordinator's log holds the commitment; the site's revealed vector opens it
        assert open_commitment(released, salt, release["commitment"])
        # a different vector (here: what an honest site would have sent) does not
        assert not open_commitment(honest, salt, release["commitment"])
        assert not open_commitment(released, bytes(32), release["commitment"])


def test_the_threat_model_table_matches_the_tests() -> None:
    rows = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        match = re.match(r"\|\s*`([A-Za-z0-9-]+)`\s*\|(.*)\|\s*$", line)
        if match and match.group(1) in ATTACKS:
            rows[match.group(1)] = [c.strip() for c in match.group(2).split("|")]
    assert set(rows) == set(ATTACKS)
    for name, attack in ATTACKS.items():
        verdict = rows[name][-2]
        if attack.caught is not None:
            assert verdict == f"caught: `{attack.caught}`", name
        else:
            assert verdict == f"not caught ({attack.effect})", name
