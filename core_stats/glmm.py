"""A site's GLMM terms: marginal log-likelihood, exact gradient and Hessian.

Model (METHODS.md section 1): for group ``j`` with rows ``i``,
``eta_ij = x_ij' beta + z_ij' Lambda u_j`` with ``u_j ~ N(0, I_q)`` and
``Lambda`` the lower Cholesky factor of the random-effects covariance, stored
on the log-Cholesky scale (``Lambda_rr = exp(phi_rr)``, ``Lambda_rc = phi_rc``).
With ``h_j(u) = sum_i log p(y_ij | eta_ij) - |u|^2 / 2 - (q/2) log 2 pi``,
the conditional mode ``u_hat = argmax h_j`` and ``H = -h_j''(u_hat) = L L'``,
adaptive Gauss-Hermite with ``K`` nodes per dimension (``K = 1``: Laplace) is

    log int e^{h_j} ~= (q/2) log 2 - log|L|
                      + logsumexp_k [ log w_k + h_j(u_hat + sqrt(2) L^{-T} z_k) + |z_k|^2 ].

Parameters ``theta = (beta, phi, [log sigma_residual])``. Everything is
computed with second-order jets (:mod:`core_stats.jets`), so the returned
gradient and Hessian are exact for the approximation, including how ``u_hat``
and ``H`` move with ``theta``: starting from the converged mode held
constant, two chord-Newton steps ``U <- U - J^{-1} h'(U)`` in jet arithmetic
(``J`` the value of ``h''``) make the mode's jet exact to second order (each
step squares the error, and a jet truncates after order two).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from core_stats.design import GroupedRows
from core_stats.families import Family
from core_stats.jets import Jet, jet_cholesky, jet_solve_upper_transposed, logsumexp_jets

__all__ = ["ParameterLayout", "SiteTerms", "site_terms", "gauss_hermite_rule"]

_LOG_2PI = float(np.log(2.0 * np.pi))


@dataclass(frozen=True)
class ParameterLayout:
    """Where each parameter sits in ``theta`` and what it is called.

    ``random_effects=False`` fixes ``Lambda = 0`` (a singular fit: the model
    is then the GLM) and drops the covariance parameters from ``theta``.
    ``zero_columns`` fixes those columns of ``Lambda`` at 0 and drops them
    from ``theta`` (a rank-deficient covariance on the boundary);
    ``linear_columns`` keeps those columns' diagonal entries on the linear
    scale instead of the log scale, so ``theta`` can sit exactly on the
    boundary ``Lambda_kk = 0`` (for the score test there).
    """

    fixed_names: tuple[str, ...]
    random_names: tuple[str, ...]
    group: str
    has_dispersion: bool
    random_effects: bool = True
    zero_columns: tuple[int, ...] = ()
    linear_columns: tuple[int, ...] = ()

    @property
    def p(self) -> int:
        return len(self.fixed_names)

    @property
    def q(self) -> int:
        return len(self.random_names)

    @property
    def n_cov(self) -> int:
        return len(self.cholesky_entries()) if self.random_effects else 0

    @property
    def size(self) -> int:
        return self.p + self.n_cov + int(self.has_dispersion)

    @property
    def beta(self) -> slice:
        return slice(0, self.p)

    @property
    def cov(self) -> slice:
        return slice(self.p, self.p + self.n_cov)

    @property
    def scale_index(self) -> int | None:
        return self.p + self.n_cov if self.has_dispersion else None

    def cholesky_entries(self) -> list[tuple[int, int]]:
        """(row, col) of each covariance parameter, column by column (lme4's order)."""
        return [(r, c) for c in range(self.q) if c not in self.zero_columns
                for r in range(c, self.q)]

    def log_scale(self, r: int, c: int) -> bool:
        """Whether ``theta`` holds ``log Lambda_rc`` (diagonal entries) or ``Lambda_rc``."""
        return r == c and c not in self.linear_columns

    def parameter_names(self) -> tuple[str, ...]:
        names = list(self.fixed_names)
        if self.random_effects:
            for r, c in self.cholesky_entries():
                kind = "log_chol" if self.log_scale(r, c) else "chol"
                names.append(f"{kind}[{self.random_names[r]},{self.random_names[c]}]|{self.group}")
        if self.has_dispersion:
            names.append("log_sigma_residual")
        return tuple(names)

    def without_random_effects(self) -> ParameterLayout:
        return ParameterLayout(self.fixed_names, self.random_names, self.group,
                               self.has_dispersion, random_effects=False)

    def lambda_matrix(self, theta: np.ndarray) -> np.ndarray:
        """The ``q x q`` lower Cholesky factor ``Lambda`` of the covariance."""
        lam = np.zeros((self.q, self.q))
        if self.random_effects:
            for value, (r, c) in zip(theta[self.cov], self.cholesky_entries(), strict=True):
                lam[r, c] = np.exp(value) if self.log_scale(r, c) else value
        return lam


@dataclass(frozen=True)
class SiteTerms:
    """One site's summable contribution at ``theta``: value, gradient, Hessian."""

    loglik: float
    gradient: np.ndarray
    hessian: np.ndarray
    n_rows: int
    n_groups: int
    modes: np.ndarray = field(repr=False)  # conditional modes u_hat (G x q); stay at the site
    boundary_score: np.ndarray | None = None  # q x q, only when Lambda is fixed at 0
    group_gradients: np.ndarray | None = field(default=None, repr=False)  # G x P (per_group)
    group_hessians: np.ndarray | None = field(default=None, repr=False)  # G x P x P (per_group)


def gauss_hermite_rule(n_nodes: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Tensor-product Gauss-Hermite nodes ``(K^q, q)`` and log-weights for ``e^{-|z|^2}``."""
    if n_nodes < 1:
        raise ValueError("the number of quadrature nodes must be at least 1")
    if n_nodes == 1:
        nodes1, weights1 = np.zeros(1), np.array([np.sqrt(np.pi)])
    else:
        nodes1, weights1 = np.polynomial.hermite.hermgauss(n_nodes)
    nodes = np.array(list(itertools.product(nodes1, repeat=dim))).reshape(-1, dim)
    log_w = np.array([np.log(weights1[list(idx)]).sum()
                      for idx in itertools.product(range(n_nodes), repeat=dim)])
    return nodes, log_w


class _SiteEvaluator:
    """Evaluates one site's terms at one ``theta`` (short-lived, not shared)."""

    def __init__(self, rows: GroupedRows, family: Family, layout: ParameterLayout,
                 theta: np.ndarray, n_params: int) -> None:
        self.rows, self.family, self.layout = rows, family, layout
        self.theta = np.asarray(theta, dtype=float)
        self.P = n_params
        self.G = rows.n_groups
        self.D = rows.D
        self.eta_fixed = rows.X @ self.theta[layout.beta]
        if rows.offset is not None:
            self.eta_fixed = self.eta_fixed + rows.offset
        self.lam = self._lambda_jets()
        self.scale_factor = self._scale_factor_jet()

    # ------------------------------------------------------------ parameters
    def _param(self, index: int) -> Jet:
        if self.P:
            return Jet.variable(self.theta[index], index, self.G, self.P)
        return Jet.constant(self.theta[index], self.G, 0)

    def _lambda_jets(self) -> list[list[Jet | None]]:
        layout, q = self.layout, self.layout.q
        lam: list[list[Jet | None]] = [[None] * q for _ in range(q)]
        for r in range(q):
            for c in range(r + 1):
                lam[r][c] = Jet.constant(0.0, self.G, self.P)
        if layout.random_effects:
            for k, (r, c) in enumerate(layout.cholesky_entries()):
                jet = self._param(layout.p + k)
                lam[r][c] = jet.exp() if layout.log_scale(r, c) else jet
        return lam

    def _scale_factor_jet(self) -> Jet:
        """``a(s) = exp(-2 s)`` for the Gaussian family, 1 otherwise."""
        if self.layout.has_dispersion:
            return (self._param(self.layout.scale_index) * -2.0).exp()
        return Jet.constant(1.0, self.G, self.P)

    def _constant_term(self) -> Jet:
        """Per-group sum of ``c(y, s)`` and the ``-(q/2) log 2 pi`` of the prior."""
        rows, G = self.rows, self.G
        sizes = np.diff(np.append(rows.starts, rows.n_rows)).astype(float)
        prior_const = -0.5 * self.layout.q * _LOG_2PI
        if self.layout.has_dispersion:
            s = self._param(self.layout.scale_index)
            const = -0.5 * _LOG_2PI * sizes + prior_const
            if rows.weights is not None:
                const = const + np.add.reduceat(
                    self.family.log_normalizer(rows.y, rows.weights), rows.starts)
            return s * (-sizes) + const
        norm = np.add.reduceat(self.family.log_normalizer(rows.y, rows.weights), rows.starts)
        return Jet.constant(norm + prior_const, G, self.P)

    # ------------------------------------------------------------- row sums
    def _linear_offsets(self, u: list[Jet]) -> list[Jet]:
        """``c = Lambda u`` per group (a q-vector of jets)."""
        q = self.layout.q
        return [sum((self.lam[r][k] * u[k] for k in range(r + 1)),
                    Jet.constant(0.0, self.G, self.P)) for r in range(q)]

    def _eta(self, offsets_val: np.ndarray) -> np.ndarray:
        per_row = offsets_val[self.rows.group_of_row]
        return self.eta_fixed + np.einsum("nr,nr->n", self.rows.Z, per_row)

    def _row_sum(self, derivs: list[np.ndarray], weight: np.ndarray | None,
                 offsets: list[Jet]) -> Jet:
        """Jet of ``S_g = sum_{i in g} k(eta_i) a_i`` given ``[k, k', k'']`` per row.

        With ``D_i = [x_i, z_i]`` and ``J_g = d(beta, c_g)/d theta``:
        gradient ``J_g' sum k' a D``; Hessian
        ``J_g' (sum k'' a D D') J_g + sum_r (sum k' a z_ir) c_r''``.
        """
        rows, p, P = self.rows, self.layout.p, self.P
        w = [d if weight is None else d * weight for d in derivs]
        val = np.add.reduceat(w[0], rows.starts)
        if P == 0:
            return Jet(val, np.zeros((self.G, 0)), np.zeros((self.G, 0, 0)))
        v = np.add.reduceat(w[1][:, None] * self.D, rows.starts, axis=0)
        M = np.empty((self.G, self.D.shape[1], self.D.shape[1]))
        for gids, idx in rows.size_buckets:
            Dg = self.D[idx]
            M[gids] = np.matmul(Dg.transpose(0, 2, 1), w[2][idx][:, :, None] * Dg)
        J = np.zeros((self.G, self.D.shape[1], P))
        J[:, np.arange(p), np.arange(p)] = 1.0
        for r, c in enumerate(offsets):
            J[:, p + r, :] = c.grad
        grad = np.einsum("gd,gdP->gP", v, J)
        hess = np.matmul(J.transpose(0, 2, 1), np.matmul(M, J))
        for r, c in enumerate(offsets):
            hess += v[:, p + r, None, None] * c.hess
        return Jet(val, grad, hess)

    def _kernel(self, offsets: list[Jet], first: int) -> list[np.ndarray]:
        eta = self._eta(np.stack([c.val for c in offsets], axis=1))
        derivs = self.family.kernel_derivatives(self.rows.y, eta, first + 2)[first:]
        weights = self.rows.weights
        return derivs if weights is None else [d * weights for d in derivs]

    # ---------------------------------------------------- h and its u-derivatives
    def score_u(self, u: list[Jet]) -> list[Jet]:
        """``dh/du = a(s) Lambda' sum_i r'(eta_i) z_i - u``."""
        offsets = self._linear_offsets(u)
        derivs = self._kernel(offsets, 1)
        sums = [self._row_sum(derivs, self.rows.Z[:, r], offsets) for r in range(self.layout.q)]
        q = self.layout.q
        return [self.scale_factor * sum((self.lam[k][r] * sums[k] for k in range(r, q)),
                                        Jet.constant(0.0, self.G, self.P)) - u[r]
                for r in range(q)]

    def neg_hessian_u(self, u: list[Jet]) -> list[list[Jet]]:
        """``H = -d2h/du2 = -a(s) Lambda' (sum_i r''(eta_i) z_i z_i') Lambda + I``."""
        q = self.layout.q
        offsets = self._linear_offsets(u)
        derivs = self._kernel(offsets, 2)
        Z = self.rows.Z
        S = [[None] * q for _ in range(q)]
        for r in range(q):
            for c in range(r + 1):
                S[r][c] = S[c][r] = self._row_sum(derivs, Z[:, r] * Z[:, c], offsets)
        zero = Jet.constant(0.0, self.G, self.P)
        lamT_S = [[sum((self.lam[k][r] * S[k][c] for k in range(r, q)), zero) for c in range(q)]
                  for r in range(q)]
        H = [[None] * q for _ in range(q)]
        for r in range(q):
            for c in range(r + 1):
                entry = sum((lamT_S[r][k] * self.lam[k][c] for k in range(c, q)), zero)
                entry = -(self.scale_factor * entry) + (1.0 if r == c else 0.0)
                H[r][c] = H[c][r] = entry
        return H

    def h_value(self, u: list[Jet], const: Jet) -> Jet:
        """``h(u) = a(s) sum_i r(eta_i) + c - |u|^2 / 2``."""
        offsets = self._linear_offsets(u)
        kernel = self._row_sum(self._kernel(offsets, 0), None, offsets)
        penalty = sum((ur * ur for ur in u), Jet.constant(0.0, self.G, self.P)) * 0.5
        return self.scale_factor * kernel + const - penalty


def _find_modes(values: _SiteEvaluator, start: np.ndarray, tol: float = 1e-11,
                max_iter: int = 100) -> np.ndarray:
    """Newton with step-halving on ``h`` for every group at once (values only)."""
    G, q = values.G, values.layout.q
    const = Jet.constant(0.0, G, 0)

    def as_jets(u: np.ndarray) -> list[Jet]:
        return [Jet.constant(u[:, r], G, 0) for r in range(q)]

    u = start.copy()
    h = values.h_value(as_jets(u), const).val
    for _ in range(max_iter):
        grad = np.stack([s.val for s in values.score_u(as_jets(u))], axis=1)
        H = np.array([[e.val for e in row] for row in values.neg_hessian_u(as_jets(u))])
        step = np.linalg.solve(H.transpose(2, 0, 1), grad[:, :, None])[:, :, 0]
        t = np.ones(G)
        for _ in range(60):
            trial = u + t[:, None] * step
            h_trial = values.h_value(as_jets(trial), const).val
            worse = h_trial < h - 1e-12 * (1.0 + np.abs(h))
            if not worse.any():
                break
            t[worse] *= 0.5
        u, h = trial, h_trial
        if np.max(np.abs(t[:, None] * step)) < tol:
            break
    return u


def site_terms(rows: GroupedRows, family: Family, layout: ParameterLayout, theta: np.ndarray,
               nagq: int = 1, start_modes: np.ndarray | None = None,
               derivatives: bool = True, per_group: bool = False) -> SiteTerms:
    """One site's marginal log-likelihood (adaptive GH, ``nagq`` nodes) and derivatives.

    Parameters
    ----------
    rows : GroupedRows
        The site's data, sorted by group.
    family : Family
        Response distribution.
    layout : ParameterLayout
        Meaning of ``theta``.
    theta : ndarray
        ``(beta, log-Cholesky of Sigma, [log sigma_residual])``.
    nagq : int
        Gauss-Hermite nodes per random-effect dimension (1 = Laplace).
    start_modes : ndarray, optional
        Warm start for the conditional modes ``u`` (``G x q``).
    derivatives : bool
        False returns the value only (gradient and Hessian empty), for
        line-search rounds that release only the log-likelihood.
    per_group : bool
        Also return each group's gradient and Hessian (their sums are the
        site's), for releases that bound one group's contribution.
    """
    theta = np.asarray(theta, dtype=float)
    if theta.shape != (layout.size,):
        raise ValueError(f"theta has {theta.size} values; the layout expects {layout.size}")
    P = layout.size if derivatives else 0
    ev = _SiteEvaluator(rows, family, layout, theta, P)
    values = ev if P == 0 else _SiteEvaluator(rows, family, layout, theta, 0)
    G, q = ev.G, layout.q
    start = np.zeros((G, q)) if start_modes is None else np.asarray(start_modes, dtype=float)
    u_hat = _find_modes(values, start) if layout.random_effects else np.zeros((G, q))
    U = [Jet.constant(u_hat[:, r], G, P) for r in range(q)]
    if layout.random_effects and P:
        for _ in range(2):  # chord steps: exact mode jets to second order
            H_val = np.array([[e.val for e in row] for row in values.neg_hessian_u(
                [Jet.constant(x.val, G, 0) for x in U])]).transpose(2, 0, 1)
            H_inv = np.linalg.inv(H_val)
            score = ev.score_u(U)
            U = [U[r] + sum((score[k] * H_inv[:, r, k] for k in range(q)),
                            Jet.constant(0.0, G, P)) for r in range(q)]
    H = ev.neg_hessian_u(U)
    chol = jet_cholesky(H)
    log_det_chol = sum((chol[r][r].log() for r in range(q)), Jet.constant(0.0, G, P))
    const = ev._constant_term()
    nodes, log_w = gauss_hermite_rule(nagq, q)
    terms = []
    for z, lw in zip(nodes, log_w, strict=True):
        if np.any(z):
            shift = jet_solve_upper_transposed(chol, np.sqrt(2.0) * z)
            u_k = [U[r] + shift[r] for r in range(q)]
        else:
            u_k = U
        terms.append(ev.h_value(u_k, const) + (lw + float(z @ z)))
    marginal = logsumexp_jets(terms) - log_det_chol + 0.5 * q * np.log(2.0)
    value, grad, hess = marginal.total()
    boundary = None if layout.random_effects else _boundary_score(values)
    groups = {}
    if per_group and P:
        groups = {"group_gradients": marginal.grad.copy(),
                  "group_hessians": 0.5 * (marginal.hess + marginal.hess.transpose(0, 2, 1))}
    return SiteTerms(loglik=value, gradient=grad, hessian=0.5 * (hess + hess.T),
                     n_rows=rows.n_rows, n_groups=G, modes=u_hat, boundary_score=boundary,
                     **groups)


def _boundary_score(values: _SiteEvaluator) -> np.ndarray:
    """Derivative of the log-likelihood w.r.t. ``Sigma`` at ``Sigma = 0``.

    With ``l_i`` the log-density of row ``i`` and ``s_g = sum_i dl_i/deta z_i``,
    ``d l / d Sigma = 1/2 sum_g [ s_g s_g' + sum_i d2l_i/deta2 z_i z_i' ]``
    (exact for the integral, and for every adaptive GH rule, at ``Sigma = 0``).
    If it is negative semi-definite where the fixed effects are optimal, the
    boundary ``Sigma = 0`` is a local maximum: the fit is singular.
    """
    rows = values.rows
    a = float(values.scale_factor.val[0])
    _, d1, d2 = values.family.kernel_derivatives(rows.y, values.eta_fixed, 2)
    if rows.weights is not None:
        d1, d2 = d1 * rows.weights, d2 * rows.weights
    s = np.add.reduceat(a * d1[:, None] * rows.Z, rows.starts, axis=0)
    curvature = (a * d2[:, None, None] * rows.Z[:, :, None] * rows.Z[:, None, :]).sum(axis=0)
    return 0.5 * (s.T @ s + curvature)
