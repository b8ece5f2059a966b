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

Parameters ``theta = (beta, phi, [s])`` with ``s`` the family's log-dispersion
(Gaussian ``log sigma``, Gamma ``log sigma``, NB2 ``log theta``), which enters
every row's log-density through the family's partial derivatives
(:meth:`core_stats.families.Family.row_partials`). Everything is
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
    dispersion_name: str = "log_sigma_residual"
    residual_scale: bool = True  # exp(s) is a residual SD: random-effect SDs relative to it

    @classmethod
    def for_family(cls, fixed_names: tuple[str, ...], random_names: tuple[str, ...],
                   group: str, family: Family) -> ParameterLayout:
        """The layout of ``family``'s model: its dispersion (if any) last in ``theta``."""
        disp = family.dispersion
        if disp is None:
            return cls(tuple(fixed_names), tuple(random_names), group, False)
        return cls(tuple(fixed_names), tuple(random_names), group, True,
                   dispersion_name=disp.parameter, residual_scale=disp.residual_sd)

    def unit(self, theta: np.ndarray) -> float:
        """The residual SD ``exp(s)`` the random effects are measured against (1 if none)."""
        if self.has_dispersion and self.residual_scale:
            return float(np.exp(theta[self.scale_index]))
        return 1.0

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
            names.append(self.dispersion_name)
        return tuple(names)

    def without_random_effects(self) -> ParameterLayout:
        return ParameterLayout(self.fixed_names, self.random_names, self.group,
                               self.has_dispersion, random_effects=False,
                               dispersion_name=self.dispersion_name,
                               residual_scale=self.residual_scale)

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
        self.log_dispersion = float(self.theta[layout.scale_index]) \
            if layout.has_dispersion else 0.0
        self.s_order = 2 if layout.has_dispersion and self.P else 0
        if self.s_order:  # the dispersion is one more variable of every row
            self.D = np.hstack([self.D, np.ones((rows.n_rows, 1))])

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

    def _constant_term(self) -> Jet:
        """Per-group sum of ``c_0(y, w)`` (free of ``eta`` and ``s``) and the prior's
        ``-(q/2) log 2 pi``; the terms with ``s`` are in the row partials."""
        rows = self.rows
        norm = np.add.reduceat(self.family.log_normalizer(rows.y, rows.weights), rows.starts)
        return Jet.constant(norm - 0.5 * self.layout.q * _LOG_2PI, self.G, self.P)

    # ------------------------------------------------------------- row sums
    def _linear_offsets(self, u: list[Jet]) -> list[Jet]:
        """``c = Lambda u`` per group (a q-vector of jets)."""
        q = self.layout.q
        return [sum((self.lam[r][k] * u[k] for k in range(r + 1)),
                    Jet.constant(0.0, self.G, self.P)) for r in range(q)]

    def _eta(self, offsets_val: np.ndarray) -> np.ndarray:
        per_row = offsets_val[self.rows.group_of_row]
        return self.eta_fixed + np.einsum("nr,nr->n", self.rows.Z, per_row)

    def _row_sum(self, grid: np.ndarray, weight: np.ndarray | None,
                 offsets: list[Jet]) -> Jet:
        """Jet of ``S_g = sum_{i in g} k(eta_i, s) a_i`` from the row partials of ``k``.

        ``grid[a, b] = d^a_eta d^b_s k`` per row (``b`` only with the dispersion
        in ``theta``). With ``D_i = [x_i, z_i, (1)]`` the row's variables
        ``(beta, c_g, (s))`` and ``J_g`` their derivative in ``theta``:
        gradient ``J_g' sum [k_eta D; k_s] a``; Hessian ``J_g' M_g J_g +
        sum_r (sum k_eta a z_ir) c_r''`` with ``M_g = sum a [[k_eta,eta D D',
        k_eta,s D], [k_eta,s D', k_ss]]``.
        """
        rows, p, P = self.rows, self.layout.p, self.P
        w = grid if weight is None else grid * weight
        val = np.add.reduceat(w[0, 0], rows.starts)
        if P == 0:
            return Jet(val, np.zeros((self.G, 0)), np.zeros((self.G, 0, 0)))
        dim = self.D.shape[1]
        first = w[1, 0][:, None] * self.D
        second = w[2, 0]
        if self.s_order:
            first[:, -1] = w[0, 1]
        v = np.add.reduceat(first, rows.starts, axis=0)
        M = np.empty((self.G, dim, dim))
        for gids, idx in rows.size_buckets:
            Dg = self.D[idx]
            M[gids] = np.matmul(Dg.transpose(0, 2, 1), second[idx][:, :, None] * Dg)
        J = np.zeros((self.G, dim, P))
        J[:, np.arange(p), np.arange(p)] = 1.0
        for r, c in enumerate(offsets):
            J[:, p + r, :] = c.grad
        if self.s_order:
            cross = np.add.reduceat(w[1, 1][:, None] * self.D[:, :-1], rows.starts, axis=0)
            M[:, :-1, -1] = M[:, -1, :-1] = cross
            M[:, -1, -1] = np.add.reduceat(w[0, 2], rows.starts)
            J[:, -1, self.layout.scale_index] = 1.0
        grad = np.einsum("gd,gdP->gP", v, J)
        hess = np.matmul(J.transpose(0, 2, 1), np.matmul(M, J))
        for r, c in enumerate(offsets):
            hess += v[:, p + r, None, None] * c.hess
        return Jet(val, grad, hess)

    def _kernel(self, offsets: list[Jet], first: int) -> np.ndarray:
        """Row partials ``d^(first+a)_eta d^b_s l`` for ``a <= 2`` (and ``b <= 2``)."""
        eta = self._eta(np.stack([c.val for c in offsets], axis=1))
        grid = self.family.row_partials(self.rows.y, eta, self.log_dispersion,
                                        self.rows.weights, first + 2, self.s_order)
        return grid[first:]

    # ---------------------------------------------------- h and its u-derivatives
    def score_u(self, u: list[Jet]) -> list[Jet]:
        """``dh/du = Lambda' sum_i l_eta(eta_i, s) z_i - u``."""
        offsets = self._linear_offsets(u)
        derivs = self._kernel(offsets, 1)
        sums = [self._row_sum(derivs, self.rows.Z[:, r], offsets) for r in range(self.layout.q)]
        q = self.layout.q
        return [sum((self.lam[k][r] * sums[k] for k in range(r, q)),
                    Jet.constant(0.0, self.G, self.P)) - u[r] for r in range(q)]

    def neg_hessian_u(self, u: list[Jet]) -> list[list[Jet]]:
        """``H = -d2h/du2 = -Lambda' (sum_i l_eta,eta(eta_i, s) z_i z_i') Lambda + I``."""
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
                entry = -entry + (1.0 if r == c else 0.0)
                H[r][c] = H[c][r] = entry
        return H

    def h_value(self, u: list[Jet], const: Jet) -> Jet:
        """``h(u) = sum_i l(eta_i, s) + c - |u|^2 / 2``."""
        offsets = self._linear_offsets(u)
        kernel = self._row_sum(self._kernel(offsets, 0), None, offsets)
        penalty = sum((ur * ur for ur in u), Jet.constant(0.0, self.G, self.P)) * 0.5
        return kernel + const - penalty


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
    grid = values.family.row_partials(rows.y, values.eta_fixed, values.log_dispersion,
                                      rows.weights, 2)
    d1, d2 = grid[1, 0], grid[2, 0]
    s = np.add.reduceat(d1[:, None] * rows.Z, rows.starts, axis=0)
    curvature = (d2[:, None, None] * rows.Z[:, :, None] * rows.Z[:, None, :]).sum(axis=0)
    return 0.5 * (s.T @ s + curvature)
