"""BFI with centre-specific parameters (paper Appendix B, sections 3.2-3.3).

Split the local vector ``theta_l = (theta_a, theta_b,l)``: ``theta_a`` is shared
by all centres, ``theta_b,l`` (any chosen subset of indices: the intercept, a
slope = an interaction with centre, the Gaussian scale) is the centre's own.
With blocks ``aa, ab, bb`` of ``A_l`` and ``Lambda_b*`` the combined-data prior
of a centre's ``theta_b`` (public; default: the site's own ``Lambda_b,l``)::

    A~_b,l = A_bb,l + Lambda_b* - Lambda_b,l                      (site)
    S_l    = A_ab,l A~_b,l^{-1} A_ab,l'                           (site)
    c_l    = (A_aa,l - S_l) theta_a,l + A_ab,l (I - A~_b,l^{-1} A_bb,l) theta_b,l
    P      = sum (A_aa,l - S_l) + Lambda_a - sum Lambda_a,l       (coordinator)
    theta_a = P^{-1} sum c_l,     Cov(theta_a) = P^{-1}
    theta~_b,l = A~_b,l^{-1} [A_bb,l theta_b,l + A_ab,l' (theta_a,l - theta_a)]  (site)

``P`` and ``sum c_l`` are all the coordinator needs, so a site releases
``A_aa,l - S_l`` (not ``A_aa,l`` and ``S_l`` separately: only their difference
enters, and releasing less discloses less), ``c_l``, ``Lambda_a,l``, ``n_l``, 1.

Centre-specific covariance. The combined quadratic approximation has precision
``Q`` over ``(theta_a, theta_b,1, ..., theta_b,L)`` with ``Q_aa = A_a``,
``Q_a,bl = A_ab,l``, ``Q_bl,bl = A~_b,l`` and ``Q_bk,bl = 0`` for ``k != l``.
Block inversion (Schur complement on the block-diagonal ``b`` part) gives
``Cov(theta_a) = P^{-1}`` and, with ``G_l = A~_b,l^{-1} A_ab,l'``::

    Cov(theta_b,l)             = A~_b,l^{-1} + G_l P^{-1} G_l'
    Cov(theta_b,k, theta_b,l)  = G_k P^{-1} G_l'        (k != l)
    Cov(theta_b,l, theta_a)    = -G_l P^{-1}

so a site computes its own SDs from the broadcast ``theta_a`` and ``P^{-1}``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core_stats.bfi_combine import solve_posterior
from core_stats.bfi_layout import VectorSpec, triu_length, triu_pack, triu_unpack
from core_stats.bfi_local import LocalFit
from core_stats.bfi_results import BFIFit, CentreEstimate, FitKind
from core_stats.families import Family

__all__ = ["CentreSpecificLayout", "centre_covariance"]


@dataclass(frozen=True, eq=False)
class CentreSpecificLayout:
    """Appendix B as a sum: site vector length ``d_a(d_a+1) + d_a + 2``::

        [ triu(A_aa,l - S_l) | c_l | triu(Lambda_a,l) | n_l | 1 ]

    ``centre_prior`` is ``Lambda_b*`` (``d_b x d_b``); ``None`` means each
    site's own ``Lambda_b,l`` (then ``A~_b,l = A_bb,l``).

    The coordinator learns ``sum(A_aa,l - S_l)``, ``sum c_l``, ``sum Lambda_a,l``,
    ``sum n_l`` and ``L``; every ``theta_b,l`` term stays at its site. Each
    ``theta~_b,l`` is computed at its own site and is an individual value if
    released (e.g. for ``centre_covariance`` or ``regress_centre_effects``).
    """

    names: tuple[str, ...]
    family: Family
    centre_params: tuple[int, ...]
    centre_prior: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not self.centre_params or len(set(self.centre_params)) != len(self.centre_params):
            raise ValueError("centre_params must be distinct parameter indices")
        if not set(self.centre_params) <= set(range(len(self.names))):
            raise ValueError("centre_params must index the local parameter vector")
        if len(self.centre_params) == len(self.names):
            raise ValueError("at least one parameter must be shared")

    @property
    def shared_params(self) -> tuple[int, ...]:
        return tuple(j for j in range(len(self.names)) if j not in self.centre_params)

    @property
    def shared_names(self) -> tuple[str, ...]:
        return tuple(self.names[j] for j in self.shared_params)

    @property
    def spec(self) -> VectorSpec:
        da = len(self.shared_params)
        return VectorSpec.of([("schur", triu_length(da)), ("linear", da),
                              ("prior", triu_length(da)), ("n", 1), ("sites", 1)])

    @property
    def length(self) -> int:
        return self.spec.length

    def _blocks(self, local: LocalFit):
        if local.names != self.names or local.family != self.family:
            raise ValueError(f"local fit has parameters {local.names}; expected {self.names}")
        a, b = list(self.shared_params), list(self.centre_params)
        A = local.curvature
        lam_b = local.prior[np.ix_(b, b)]
        centre_prior = lam_b if self.centre_prior is None else np.asarray(self.centre_prior)
        a_tilde = A[np.ix_(b, b)] + centre_prior - lam_b
        return a, b, A[np.ix_(a, a)], A[np.ix_(a, b)], A[np.ix_(b, b)], a_tilde

    def site_vector(self, local: LocalFit) -> np.ndarray:
        """``[triu(A_aa - S), c, triu(Lambda_a), n, 1]`` (see module docstring)."""
        a, b, A_aa, A_ab, A_bb, a_tilde = self._blocks(local)
        loading = np.linalg.solve(a_tilde, A_ab.T)          # A~^{-1} A_ab'
        schur = A_aa - A_ab @ loading
        theta_a, theta_b = local.theta[a], local.theta[b]
        eye = np.eye(len(b))
        linear = schur @ theta_a + A_ab @ (eye - np.linalg.solve(a_tilde, A_bb)) @ theta_b
        return self.spec.join({"schur": triu_pack(schur), "linear": linear,
                               "prior": triu_pack(local.prior[np.ix_(a, a)]),
                               "n": local.n, "sites": 1.0})

    def combine(self, total: np.ndarray, combined_prior: np.ndarray | None = None,
                level: float = 0.95) -> BFIFit:
        """``theta_a = P^{-1} sum c_l`` with ``P = sum(A_aa,l - S_l) + Lambda_a - sum Lambda_a,l``.

        ``combined_prior`` is ``Lambda_a`` (default: mean site ``Lambda_a,l``).
        """
        parts = self.spec.split(total)
        da = len(self.shared_params)
        n_sites = int(round(parts["sites"][0]))
        if n_sites < 1:
            raise ValueError("the summed vector counts no sites")
        prior_sum = triu_unpack(parts["prior"], da)
        prior = prior_sum / n_sites if combined_prior is None else np.asarray(combined_prior)
        precision = triu_unpack(parts["schur"], da) + prior - prior_sum
        theta_a, cov_a = solve_posterior(precision, parts["linear"])
        return BFIFit(FitKind.CENTRE_SPECIFIC, self.family, self.shared_names, theta_a, cov_a,
                      prior, n_sites, int(round(parts["n"][0])), level)

    def centre_estimate(self, local: LocalFit, fit: BFIFit) -> CentreEstimate:
        """Site-local ``theta~_b,l`` and its covariance, after ``fit`` is broadcast."""
        if fit.names != self.shared_names:
            raise ValueError("the fit does not belong to this layout")
        a, b, _, A_ab, A_bb, a_tilde = self._blocks(local)
        shift = A_ab.T @ (local.theta[a] - fit.estimate)
        estimate = np.linalg.solve(a_tilde, A_bb @ local.theta[b] + shift)
        loading = np.linalg.solve(a_tilde, A_ab.T)
        covariance = np.linalg.inv(a_tilde) + loading @ fit.covariance @ loading.T
        theta = np.empty(len(self.names))
        theta[a], theta[b] = fit.estimate, estimate
        return CentreEstimate(tuple(self.names[j] for j in b), estimate,
                              0.5 * (covariance + covariance.T), loading, theta, self.names)


def centre_covariance(centres: list[CentreEstimate] | tuple[CentreEstimate, ...],
                      fit: BFIFit) -> np.ndarray:
    """Joint covariance of all centres' ``theta~_b``: blocks ``G_k P^{-1} G_l'`` off the diagonal.

    Needs every centre's loading ``G_l``, i.e. each site releases its own
    ``theta~_b,l``, covariance and ``G_l`` (individual, not summed, values).
    """
    loadings = np.vstack([c.loading for c in centres])
    joint = loadings @ fit.covariance @ loadings.T
    start = 0
    for c in centres:
        size = c.estimate.size
        joint[start:start + size, start:start + size] = c.covariance
        start += size
    return joint
