"""``linear-consistency``: the bound on ``b' A^{-1} b`` for ``b = sum A_l theta_l``.

Inequalities (1)-(3) of :mod:`securefed.plausibility_linear` on random honest
sites (including separated logistic data), every honest Nurses and trauma run
passes, and the issue's attack (``delta e_j`` added to ``b``) is refused once it
moves an estimate by more than the bound's room, which is reported here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import securefed.bfi_run as bfi_run
from core_stats.bfi_combine import HomogeneousLayout
from core_stats.bfi_layout import triu_length
from core_stats.bfi_local import fit_map, prior_precision
from core_stats.families import get_family
from protocols.stack import SecAggSum
from securefed.bfi_run import BFIOptions, run_bfi
from securefed.data import builtin_path
from securefed.plausibility import ImplausibleAggregate, Tolerance
from securefed.plausibility_linear import C_LOGIT, check_bfi_linear, linear_room

NURSES = BFIOptions("stress ~ age + gender + experien + wardtype", "gaussian", "hospital",
                    lam=0.01)
NURSES_STD = BFIOptions(NURSES.formula, "gaussian", "hospital", lam=0.01,
                        standardize=("age", "experien", "stress"))
TRAUMA = BFIOptions("mortality ~ age + ISS + GCS", "binomial", "hospital", lam=0.01)
TRAUMA_STD = BFIOptions("mortality ~ age + sex + ISS + GCS", "binomial", "hospital", lam=0.01,
                        standardize=("age", "ISS", "GCS"))


def test_c_logit_is_the_maximum_of_eta2_w() -> None:
    eta = np.linspace(-40, 40, 800_001)
    mu = 1.0 / (1.0 + np.exp(-eta))
    peak = float(np.max(eta**2 * mu * (1 - mu)))
    assert peak <= C_LOGIT < peak + 1e-5


def test_cauchy_schwarz_bounds_hold_for_random_sites() -> None:
    """(1) and (3) for random positive definite ``A_l`` and ``|theta_l,j| <= B``."""
    rng = np.random.default_rng(3)
    for _ in range(200):
        d, sites, bound = rng.integers(1, 7), rng.integers(1, 13), rng.uniform(0.1, 50)
        curvatures = [m @ m.T + 1e-3 * np.eye(d) for m in rng.normal(size=(sites, d, d))]
        thetas = rng.uniform(-bound, bound, size=(sites, d))
        A = sum(curvatures)
        b = sum(a @ t for a, t in zip(curvatures, thetas, strict=True))
        quad = b @ np.linalg.solve(A, b)
        right = sum(t @ a @ t for a, t in zip(curvatures, thetas, strict=True))
        assert quad <= right * (1 + 1e-9) + 1e-9
        assert right <= d * bound**2 * np.trace(A) * (1 + 1e-12)


@pytest.mark.parametrize("separated", [False, True])
def test_logit_bound_holds_for_honest_sites(separated: bool) -> None:
    """(2): ``sum theta_l' A_l theta_l <= (C_LOGIT + 2 log 2) n`` for local MAPs,
    also for perfectly separated sites (huge MAPs held only by the prior)."""
    rng = np.random.default_rng(8)
    family = get_family("binomial")
    for _ in range(20):
        sites, total, n = rng.integers(1, 8), 0.0, 0
        for _ in range(sites):
            rows = int(rng.integers(5, 80))
            X = np.column_stack([np.ones(rows), rng.normal(0, 3, rows), rng.binomial(1, .4, rows)])
            X[:2, 1] = (-1.0, 1.0)
            eta = X @ rng.normal(0, 2, 3)
            y = (X[:, 1] > 0).astype(float) if separated else \
                rng.binomial(1, 1 / (1 + np.exp(-eta))).astype(float)
            y[:2] = (0.0, 1.0)  # both outcomes occur (a constant outcome is refused)
            local = fit_map(X, y, family, prior_precision(3, family, lam=0.01))
            total += local.theta @ local.curvature @ local.theta
            n += rows
        assert total <= (C_LOGIT + 2 * np.log(2)) * n


def _capture(monkeypatch) -> list[np.ndarray]:
    """Record the decoded ``bfi-terms`` sum of a run."""
    seen: list[np.ndarray] = []
    honest = bfi_run.Coordinator

    class Recording(honest):
        def secure_sum(self, purpose, compute, key=None, dp=None):
            total = super().secure_sum(purpose, compute, key=key, dp=dp)
            if purpose == "bfi-terms":
                seen.append(np.array(total, dtype=float))
            return total

    monkeypatch.setattr(bfi_run, "Coordinator", Recording)
    return seen


def _frames() -> dict[str, pd.DataFrame]:
    return {"nurses": pd.read_csv(builtin_path("Nurses")),
            "trauma": pd.read_csv(builtin_path("trauma"))}


RUNS = {"nurses": ("nurses", NURSES), "nurses-standardized": ("nurses", NURSES_STD),
        "trauma": ("trauma", TRAUMA), "trauma-standardized": ("trauma", TRAUMA_STD)}


@pytest.fixture(scope="module")
def honest() -> dict[str, tuple]:
    """Each honest run passes (it would raise otherwise); its sum, layout and fit."""
    frames, out = _frames(), {}
    with pytest.MonkeyPatch.context() as patch:
        seen = _capture(patch)
        for name, (frame, opts) in RUNS.items():
            report = run_bfi(frames[frame], opts)
            out[name] = (seen[-1], HomogeneousLayout(report.parameter_names, report.fit.family),
                         report)
    return out


def test_honest_runs_pass_under_secure_aggregation() -> None:
    """Decoding adds at most the layer's fixed-point error; the check allows for it
    (Nurses under secure aggregation: the same sums, 25 sites; here trauma for time)."""
    frames = _frames()
    for frame, opts in (("trauma", TRAUMA), ("trauma", TRAUMA_STD)):
        plain = run_bfi(frames[frame], opts)
        masked = run_bfi(frames[frame], opts, protection=SecAggSum())
        assert np.allclose(plain.fit.estimate, masked.fit.estimate, atol=1e-6)


def _shift_b(total: np.ndarray, layout: HomogeneousLayout, j: int, delta: float) -> np.ndarray:
    """The issue's attack: ``delta e_j`` added to ``b = sum A_l theta_l``."""
    out = total.copy()
    out[len(layout.spec.split(total)["curvature"]) + j] += delta
    return out


def _shift_in_se(total, attacked, layout, j: int) -> float:
    honest, moved = layout.combine(total), layout.combine(attacked)
    return float((moved.estimate[j] - honest.estimate[j]) / honest.sd[j])


# (B, largest undetected shift in honest SEs) per run: the default bound B = 100, and
# B = 1 on standardised Nurses (a study-set bound every honest |theta_j| there obeys)
ROOM = {"nurses": (100.0, 7e5), "nurses-standardized": (100.0, 3e4),
        "nurses-standardized-b1": (1.0, 300.0),
        "trauma": (100.0, 40.0), "trauma-standardized": (100.0, 40.0)}


@pytest.mark.parametrize("run", list(ROOM))
def test_shift_of_b_is_refused_beyond_the_room(run: str, honest) -> None:
    """Inside ``[lo, hi]`` the sum passes, just outside it is refused; the room in
    SEs is what ``ROOM`` states, and every larger attack (up to the issue's 1e10 SE)
    is refused."""
    total, layout, _ = honest[run.removesuffix("-b1")]
    theta_bound, room = ROOM[run]
    tol = Tolerance()
    assert check_bfi_linear(total, layout, layout.family, tol, theta_bound) < 1.0
    for j in range(layout.dim):
        lo, hi = linear_room(total, layout, layout.family, j, theta_bound)
        for delta in (0.999 * lo, 0.999 * hi):
            check_bfi_linear(_shift_b(total, layout, j, delta), layout, layout.family, tol,
                             theta_bound)
        shifts = [abs(_shift_in_se(total, _shift_b(total, layout, j, d), layout, j))
                  for d in (lo, hi)]
        assert max(shifts) < room
        per_se = shifts[1] / hi
        for delta in (1.001 * lo, 1.001 * hi, 10 * hi, 1e10 / per_se, -1e10 / per_se):
            with pytest.raises(ImplausibleAggregate) as refused:
                check_bfi_linear(_shift_b(total, layout, j, delta), layout, layout.family,
                                 tol, theta_bound)
            assert refused.value.check == "linear-consistency"


def test_a_study_bound_tightens_the_gaussian_room(honest) -> None:
    """The room scales with B: B = 1 on standardised Nurses (every honest |theta_j|
    is below 1 there) leaves a hundredth of the default's (the room is about
    ``B sqrt(d tr A)`` wide)."""
    total, layout, report = honest["nurses-standardized"]
    assert np.max(np.abs(report.fit.estimate)) < 1.0
    wide = linear_room(total, layout, layout.family, 1, 100.0)
    narrow = linear_room(total, layout, layout.family, 1, 1.0)
    assert np.isclose((narrow[1] - narrow[0]) * 100, wide[1] - wide[0], rtol=0.02)


def test_survival_bfi_refuses_a_shifted_linear_slot(monkeypatch) -> None:
    """BFI survival (homogeneous, Weibull: the public-bound form (3)) runs the same
    check: the honest run passes, ``1e8`` added to one site's ``b_0`` is refused."""
    import securefed.bfi_survival_run as survival_run

    frame = pd.read_csv(Path(__file__).parents[1] / "golden" / "bfi_survival" / "gompertz_bfi.csv")
    opts = survival_run.SurvivalBFIOptions("Surv(time, status) ~ x1 + x2", "centre", "weibull")
    survival_run.run_bfi_survival(frame, opts, site_runtime=False)  # the crafted coordinator
    honest = survival_run.Coordinator  # below is the direct path's

    class Crafting(honest):
        def secure_sum(self, purpose, compute, key=None, dp=None):
            if purpose == "bfi-terms":
                inner = compute

                def compute(site):
                    vector = np.asarray(inner(site), dtype=float)
                    if site.name == self.live_sites[0].name:
                        vector[triu_length(4)] += 1e8
                    return vector
            return super().secure_sum(purpose, compute, key=key, dp=dp)

    monkeypatch.setattr(survival_run, "Coordinator", Crafting)
    with pytest.raises(ImplausibleAggregate) as refused:
        survival_run.run_bfi_survival(frame, opts, site_runtime=False)
    assert refused.value.check == "linear-consistency"
