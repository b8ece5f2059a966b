"""BFI combination from summed site vectors: homogeneous and centre covariates.

Every layout is public configuration (parameter names, family, sizes). A site
turns its :class:`~core_stats.bfi_local.LocalFit` into one flat vector with
``site_vector``; the protection layers deliver the sum of those vectors; the
coordinator calls ``combine(total)``. Nothing but the sum is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core_stats.bfi_layout import VectorSpec, triu_length, triu_pack, triu_unpack
from core_stats.bfi_local import LocalFit
from core_stats.bfi_results import BFIFit, FitKind
from core_stats.families import Family

__all__ = ["HomogeneousLayout", "CentreCovariateLayout", "categorical_row", "solve_posterior"]


def solve_posterior(curvature: np.ndarray, linear: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``theta = A^{-1} b`` and ``A^{-1}``; ``ValueError`` unless ``A`` is positive definite."""
    curvature = 0.5 * (curvature + curvature.T)
    try:
        np.linalg.cholesky(curvature)
    except np.linalg.LinAlgError:
        raise ValueError(
            "the combined curvature is not positive definite: check the priors "
            "(Lambda must not be much smaller than the sum of the local priors)"
        ) from None
    covariance = np.linalg.inv(curvature)
    return np.linalg.solve(curvature, linear), 0.5 * (covariance + covariance.T)


def _check_fit(local: LocalFit, names: tuple[str, ...], family: Family) -> None:
    if local.names != names or local.family != family:
        raise ValueError(
            f"local fit has parameters {local.names} ({local.family.name}); "
            f"the layout expects {names} ({family.name})"
        )


@dataclass(frozen=True)
class HomogeneousLayout:
    """Eq. (3) of the paper: all parameters shared by all centres.

    Site vector, length ``d(d+1) + d + 2``::

        [ triu(A_l) | A_l theta_l | triu(Lambda_l) | n_l | 1 ]

    From the sum: ``A = sum A_l + Lambda - sum Lambda_l``,
    ``theta = A^{-1} sum A_l theta_l``, covariance ``A^{-1}``. The default
    ``Lambda`` is the mean site prior ``sum Lambda_l / L`` (equal to every
    site's prior when they agree, as in the paper and the R package).
    The coordinator learns the sums only; note that publishing ``theta`` and
    ``A^{-1}`` already discloses ``sum A_l`` and ``sum A_l theta_l``.
    """

    names: tuple[str, ...]
    family: Family

    @classmethod
    def for_fit(cls, local: LocalFit) -> HomogeneousLayout:
        return cls(local.names, local.family)

    @property
    def dim(self) -> int:
        return len(self.names)

    @property
    def spec(self) -> VectorSpec:
        t = triu_length(self.dim)
        return VectorSpec.of([("curvature", t), ("linear", self.dim), ("prior", t),
                              ("n", 1), ("sites", 1)])

    @property
    def length(self) -> int:
        """Length of the site vector: ``d(d+1) + d + 2``."""
        return self.spec.length

    def site_vector(self, local: LocalFit) -> np.ndarray:
        """``[triu(A_l), A_l theta_l, triu(Lambda_l), n_l, 1]``."""
        _check_fit(local, self.names, self.family)
        return self.spec.join({
            "curvature": triu_pack(local.curvature),
            "linear": local.curvature @ local.theta,
            "prior": triu_pack(local.prior), "n": local.n, "sites": 1.0,
        })

    def combine(self, total: np.ndarray, combined_prior: np.ndarray | None = None,
                level: float = 0.95) -> BFIFit:
        """``theta = (sum A_l + Lambda - sum Lambda_l)^{-1} sum A_l theta_l``."""
        parts = self.spec.split(total)
        n_sites = int(round(parts["sites"][0]))
        if n_sites < 1:
            raise ValueError("the summed vector counts no sites")
        prior_sum = triu_unpack(parts["prior"], self.dim)
        prior = prior_sum / n_sites if combined_prior is None else np.asarray(combined_prior)
        curvature = triu_unpack(parts["curvature"], self.dim) + prior - prior_sum
        theta, cov = solve_posterior(curvature, parts["linear"])
        return BFIFit(FitKind.HOMOGENEOUS, self.family, self.names, theta, cov, prior,
                      n_sites, int(round(parts["n"][0])), level)


def categorical_row(category: int, n_categories: int) -> np.ndarray:
    """One-hot centre-covariate row ``e_k`` (category ``k`` of ``K``, 0-based)."""
    if not 0 <= category < n_categories:
        raise ValueError(f"category {category} is not in 0..{n_categories - 1}")
    row = np.zeros(n_categories)
    row[category] = 1.0
    return row


@dataclass(frozen=True)
class CentreCovariateLayout:
    """Centre-level covariates (Appendix C, and its continuous analogue).

    The centre parameters ``theta_b,l`` (indices ``centre_params`` of the local
    vector, e.g. the intercept) are a linear function of a centre-level
    covariate row ``z_l`` (length ``m``): ``theta_b,l = (I ⊗ z_l') nu``. Thus
    ``theta_l = J_l phi`` with ``phi = (theta_a, nu)``. A categorical covariate
    with ``K`` levels is ``z_l = e_k`` (:func:`categorical_row`), which gives
    exactly the category sums of Appendix C (site ``l`` fills block ``k``
    only); ``z_l = (1, z)`` is the continuous model ``nu_0 + nu_1 z`` (eq. 8)
    fitted in one secure sum.

    Site vector, length ``D(D+1)/2 + D + d(d+1)/2 + m(m+1)/2 + 2`` with
    ``D = d_a + d_b m``::

        [ triu(J'(A_l - Lambda_l)J) | J' A_l theta_l | triu(Lambda_l) | triu(z z') | n | 1 ]

    Combine: ``A = sum J'(A_l - Lambda_l)J + Lambda``,
    ``phi = A^{-1} sum J' A_l theta_l``. Default ``Lambda``: the mean site
    prior on ``theta_a``, and the mean site prior of ``theta_b`` for every
    covariate coefficient. The coordinator learns ``sum z z'`` (for a
    categorical covariate: the number of centres per category) and the
    within-category sums; a category with one centre discloses that centre's
    ``theta_b`` terms, so require two or more centres per category.
    """

    names: tuple[str, ...]
    family: Family
    centre_params: tuple[int, ...]
    covariate_names: tuple[str, ...]

    @property
    def shared_params(self) -> tuple[int, ...]:
        return tuple(j for j in range(len(self.names)) if j not in self.centre_params)

    @property
    def combined_names(self) -> tuple[str, ...]:
        shared = [self.names[j] for j in self.shared_params]
        nu = [f"{self.names[b]}:{c}" for b in self.centre_params for c in self.covariate_names]
        return tuple(shared + nu)

    @property
    def spec(self) -> VectorSpec:
        big, m = len(self.combined_names), len(self.covariate_names)
        return VectorSpec.of([("curvature", triu_length(big)), ("linear", big),
                              ("prior", triu_length(len(self.names))),
                              ("zz", triu_length(m)), ("n", 1), ("sites", 1)])

    @property
    def length(self) -> int:
        return self.spec.length

    def jacobian(self, z_row: np.ndarray) -> np.ndarray:
        """``J_l`` with ``theta_l = J_l phi`` (shape ``d x D``)."""
        z_row = np.asarray(z_row, dtype=float).ravel()
        m = len(self.covariate_names)
        if z_row.size != m:
            raise ValueError(f"the centre covariate row needs {m} values")
        jac = np.zeros((len(self.names), len(self.combined_names)))
        for col, j in enumerate(self.shared_params):
            jac[j, col] = 1.0
        start = len(self.shared_params)
        for block, b in enumerate(self.centre_params):
            jac[b, start + block * m: start + (block + 1) * m] = z_row
        return jac

    def site_vector(self, local: LocalFit, z_row: np.ndarray) -> np.ndarray:
        """The site's terms mapped through ``J_l`` (``z_row`` stays at the site)."""
        _check_fit(local, self.names, self.family)
        jac = self.jacobian(z_row)
        z_row = np.asarray(z_row, dtype=float).ravel()
        return self.spec.join({
            "curvature": triu_pack(jac.T @ (local.curvature - local.prior) @ jac),
            "linear": jac.T @ (local.curvature @ local.theta),
            "prior": triu_pack(local.prior), "zz": triu_pack(np.outer(z_row, z_row)),
            "n": local.n, "sites": 1.0,
        })

    def default_prior(self, mean_site_prior: np.ndarray) -> np.ndarray:
        """``blockdiag(Lambda_aa, Lambda_bb ⊗ I_m)`` from a site prior."""
        a, b = list(self.shared_params), list(self.centre_params)
        m = len(self.covariate_names)
        out = np.zeros((len(self.combined_names),) * 2)
        out[:len(a), :len(a)] = mean_site_prior[np.ix_(a, a)]
        out[len(a):, len(a):] = np.kron(mean_site_prior[np.ix_(b, b)], np.eye(m))
        return out

    def combine(self, total: np.ndarray, combined_prior: np.ndarray | None = None,
                level: float = 0.95) -> BFIFit:
        """``phi = (sum J'(A_l - Lambda_l)J + Lambda)^{-1} sum J' A_l theta_l``."""
        parts = self.spec.split(total)
        n_sites = int(round(parts["sites"][0]))
        zz = triu_unpack(parts["zz"], len(self.covariate_names))
        if n_sites < 1 or np.linalg.matrix_rank(zz) < zz.shape[0]:
            raise ValueError(
                "the centre covariate is not identifiable from the centres "
                f"(sum z z' = {np.round(zz, 6).tolist()}): e.g. a category without centres"
            )
        if combined_prior is None:
            combined_prior = self.default_prior(
                triu_unpack(parts["prior"], len(self.names)) / n_sites)
        big = len(self.combined_names)
        curvature = triu_unpack(parts["curvature"], big) + combined_prior
        phi, cov = solve_posterior(curvature, parts["linear"])
        return BFIFit(FitKind.CENTRE_COVARIATE, self.family, self.combined_names, phi, cov,
                      combined_prior, n_sites, int(round(parts["n"][0])), level)

    def site_theta(self, fit: BFIFit, z_row: np.ndarray) -> np.ndarray:
        """A centre's local parameter vector ``J_l phi`` (for prediction)."""
        return self.jacobian(z_row) @ fit.estimate

