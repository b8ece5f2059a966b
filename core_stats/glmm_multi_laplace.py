"""Laplace terms of a site with several random-effects terms: value, exact gradient, Hessian.

With ``u`` all of a site's random effects (:mod:`core_stats.glmm_multi`),
``B = Z Lambda`` (``n x Q``, row ``i``: ``b_i``), ``h(u) = sum_i a(s) r(y_i, eta_i)
+ c_i - |u|^2 / 2`` and ``H = -h''(u_hat) = I + B' W B`` (``W = -a r''(eta)``), the
Laplace approximation of the marginal log-likelihood is

    l(theta) = h(u_hat) - (1/2) log det H(u_hat),

a sum over blocks (``H`` is block diagonal). Derivatives in ``theta = (beta, phi,
[log sigma])`` are exact, including how ``u_hat`` moves with ``theta``:

* ``h(u_hat(theta))`` in second-order jets (:mod:`core_stats.jets`), the mode's jet
  made exact by two chord steps ``U <- U + H^{-1} h'(U)`` from the converged
  mode (as :mod:`core_stats.glmm` does for one term);
* ``log det H``: with ``C = H^{-1}`` held constant, ``T(theta) = sum_i W_i b_i' C b_i
  = tr(C H) - Q`` in jets has gradient ``tr(C H_k)`` and Hessian ``tr(C H_kl)``, so

      d log det H / d theta_k     = tr(C H_k)
      d2 log det H / d theta_k dl = tr(C H_kl) - tr(C H_k C H_l),

  ``H_k = B' diag(W_k) B + B_k' diag(W) B + B' diag(W) B_k`` (total derivatives:
  ``W_k`` from the jet of ``W``; ``B_k = Z dLambda/dtheta_k``), computed block by block.

Work per evaluation: ``O(n P^2)`` for the jets over rows (``P`` parameters) and
``O(sum_b P Q_b^3)`` for the blocks (``Q_b`` random effects in block ``b``), i.e.
linear in rows and in blocks of bounded size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import sparse

from core_stats.families import Family
from core_stats.glmm_blocks import (
    BlockLayout,
    BlockMatrices,
    SparseFactor,
    apply_blocks,
    block_entries,
)
from core_stats.glmm_multi import MultiLayout, MultiRows
from core_stats.jets import Jet

__all__ = ["MultiSiteTerms", "multi_site_terms"]

_LOG_2PI = float(np.log(2.0 * np.pi))


@dataclass(frozen=True)
class MultiSiteTerms:
    """One site's summable contribution at ``theta``: value, gradient, Hessian."""

    loglik: float
    gradient: np.ndarray
    hessian: np.ndarray
    n_rows: int
    n_blocks: int
    n_levels: tuple[int, ...]
    modes: np.ndarray = field(repr=False)  # conditional modes u_hat (Q,); stay at the site
    block_gradients: np.ndarray | None = field(default=None, repr=False)  # blocks x P
    block_hessians: np.ndarray | None = field(default=None, repr=False)  # blocks x P x P


def _gather(jet: Jet, index: np.ndarray) -> Jet:
    return Jet(jet.val[index], jet.grad[index], jet.hess[index])


def _sum_rows(matrix: sparse.csr_matrix, jet: Jet) -> Jet:
    """``matrix @ jet`` for a constant sparse matrix over the batch axis."""
    n, P = jet.grad.shape
    return Jet(matrix @ jet.val, matrix @ jet.grad,
               (matrix @ jet.hess.reshape(n, P * P)).reshape(-1, P, P))


class _Evaluator:
    """Evaluates one site's terms at one ``theta`` (short-lived, not shared)."""

    def __init__(self, rows: MultiRows, family: Family, layout: MultiLayout,
                 theta: np.ndarray, n_params: int) -> None:
        self.rows, self.family, self.layout, self.P = rows, family, layout, n_params
        self.theta = np.asarray(theta, dtype=float)
        self.blocks = BlockLayout(rows.u_starts)
        self.lams = layout.lambda_matrices(self.theta)
        self.lam_jets = [self._lambda_jets(t) for t in range(len(layout.terms))]
        if layout.has_dispersion:
            self.a = (self._param(layout.scale_index) * -2.0).exp()
        else:
            self.a = Jet.constant(1.0, 1, n_params)
        self.eta_fixed = rows.X @ self.theta[layout.beta]
        if rows.offset is not None:
            self.eta_fixed = self.eta_fixed + rows.offset
        self.B = self._design(self.lams)
        nb = rows.n_blocks
        self.row_blocks = sparse.csr_matrix(
            (np.ones(rows.n_rows), (rows.block_of_row, np.arange(rows.n_rows))),
            shape=(nb, rows.n_rows))
        self.level_blocks = [sparse.csr_matrix(
            (np.ones(pos.shape[0]), (rows.block_of_u[pos[:, 0]], np.arange(pos.shape[0]))),
            shape=(nb, pos.shape[0])) for pos in rows.positions]

    # ------------------------------------------------------------ parameters
    def _param(self, index: int) -> Jet:
        if self.P:
            return Jet.variable(self.theta[index], index, 1, self.P)
        return Jet.constant(self.theta[index], 1, 0)

    def _lambda_jets(self, t: int) -> list[list[Jet | None]]:
        term, start = self.layout.terms[t], self.layout.term_slice(t).start
        q = term.q
        lam: list[list[Jet | None]] = [[None] * q for _ in range(q)]
        if term.random_effects:
            for k, (r, c) in enumerate(term.cholesky_entries()):
                jet = self._param(start + k)
                lam[r][c] = jet.exp() if term.log_scale(r, c) else jet
        return lam

    def lambda_derivatives(self) -> list[tuple[int, int, int, int, float]]:
        """``(theta index, term, r, c, dLambda_rc/dtheta)`` for every covariance parameter."""
        out = []
        for t, term in enumerate(self.layout.terms):
            if not term.random_effects:
                continue
            start = self.layout.term_slice(t).start
            for k, (r, c) in enumerate(term.cholesky_entries()):
                slope = self.lams[t][r, c] if term.log_scale(r, c) else 1.0
                out.append((start + k, t, r, c, float(slope)))
        return out

    def _design(self, lams: list[np.ndarray]) -> sparse.csr_matrix:
        """``B = Z Lambda`` as a sparse ``n x Q`` matrix."""
        rows, n = self.rows, self.rows.n_rows
        r_idx, c_idx, vals = [], [], []
        for Z, lev, pos, lam in zip(rows.Z, rows.levels, rows.positions, lams, strict=True):
            zl = Z @ lam
            r_idx.append(np.repeat(np.arange(n), Z.shape[1]))
            c_idx.append(pos[lev].ravel())
            vals.append(zl.ravel())
        return sparse.csr_matrix((np.concatenate(vals), (np.concatenate(r_idx),
                                                          np.concatenate(c_idx))),
                                 shape=(n, rows.n_u))

    def column_derivative(self, t: int, r: int, c: int, slope: float) -> sparse.csr_matrix:
        """``B_k = Z dLambda/dtheta_k`` for the entry ``(r, c)`` of term ``t``."""
        rows, n = self.rows, self.rows.n_rows
        col = rows.positions[t][rows.levels[t], c]
        return sparse.csr_matrix((rows.Z[t][:, r] * slope, (np.arange(n), col)),
                                 shape=(n, rows.n_u))

    # --------------------------------------------------------- value arithmetic
    def _weighted(self, derivs: list[np.ndarray]) -> list[np.ndarray]:
        weights = self.rows.weights
        return derivs if weights is None else [d * weights for d in derivs]

    def kernel(self, u: np.ndarray, order: int) -> list[np.ndarray]:
        """``[w r, w r', ...]`` per row at ``u`` (``w`` the prior weights, 1 without)."""
        return self._weighted(self.family.kernel_derivatives(
            self.rows.y, self.eta_fixed + self.B @ u, order))

    def scale(self) -> float:
        return float(self.a.val[0])

    def h_per_block(self, u: np.ndarray) -> np.ndarray:
        rows = self.rows
        r = self.scale() * self.kernel(u, 0)[0]
        return (np.bincount(rows.block_of_row, r, rows.n_blocks)
                - 0.5 * np.bincount(rows.block_of_u, u * u, rows.n_blocks))

    def hessian(self, weights: np.ndarray) -> sparse.csr_matrix:
        """``I + B' diag(weights) B``."""
        return (sparse.identity(self.rows.n_u, format="csr")
                + (self.B.T @ self.B.multiply(weights[:, None])).tocsr())

    # ---------------------------------------------------------- jet arithmetic
    def u_jets(self, u: np.ndarray) -> list[list[Jet]]:
        P = self.P
        return [[Jet(u[pos[:, c]], np.zeros((pos.shape[0], P)), np.zeros((pos.shape[0], P, P)))
                 for c in range(pos.shape[1])] for pos in self.rows.positions]

    def eta(self, U: list[list[Jet]]) -> Jet:  # noqa: N803
        rows, P, p = self.rows, self.P, self.layout.p
        grad = np.zeros((rows.n_rows, P))
        grad[:, :p] = rows.X
        eta = Jet(self.eta_fixed.copy(), grad, np.zeros((rows.n_rows, P, P)))
        for t, (Z, lev) in enumerate(zip(rows.Z, rows.levels, strict=True)):
            for r in range(Z.shape[1]):
                shift = None
                for k in range(r + 1):
                    lam = self.lam_jets[t][r][k]
                    if lam is not None:
                        term = lam * U[t][k]
                        shift = term if shift is None else shift + term
                if shift is not None:
                    eta = eta + _gather(shift, lev) * Z[:, r]
        return eta

    def kernel_jet(self, eta: Jet, order: int) -> Jet:
        """``a(s) r^(order)(eta)`` per row."""
        f = self._weighted(self.family.kernel_derivatives(self.rows.y, eta.val, order + 2)[order:])
        return eta.apply(*f) * self.a if self.layout.has_dispersion else eta.apply(*f)

    def score(self, U: list[list[Jet]], eta: Jet) -> list[list[Jet]]:  # noqa: N803
        """``dh/du = Lambda' Z' a r'(eta) - u`` per term and column."""
        rows = self.rows
        d1 = self.kernel_jet(eta, 1)
        out = []
        for t, (Z, sums) in enumerate(zip(rows.Z, rows.level_sums, strict=True)):
            q = Z.shape[1]
            per_column = [_sum_rows(sums, d1 * Z[:, r]) for r in range(q)]
            scores = []
            for c in range(q):
                acc = -U[t][c]
                for r in range(c, q):
                    lam = self.lam_jets[t][r][c]
                    if lam is not None:
                        acc = acc + lam * per_column[r]
                scores.append(acc)
            out.append(scores)
        return out

    def to_vector(self, jets: list[list[Jet]]) -> Jet:
        Q, P = self.rows.n_u, self.P
        out = Jet(np.zeros(Q), np.zeros((Q, P)), np.zeros((Q, P, P)))
        for pos, columns in zip(self.rows.positions, jets, strict=True):
            for c, jet in enumerate(columns):
                out.val[pos[:, c]] = jet.val
                out.grad[pos[:, c]] = jet.grad
                out.hess[pos[:, c]] = jet.hess
        return out

    def from_vector(self, vec: Jet) -> list[list[Jet]]:
        return [[_gather(vec, pos[:, c]) for c in range(pos.shape[1])]
                for pos in self.rows.positions]

    def constant(self) -> Jet:
        """``sum_i c_w(y_i, s)`` per block (:meth:`core_stats.families.Family.log_normalizer`)."""
        rows = self.rows
        norm = np.bincount(rows.block_of_row, self.family.log_normalizer(rows.y, rows.weights),
                           rows.n_blocks)
        if self.layout.has_dispersion:
            sizes = np.bincount(rows.block_of_row, minlength=rows.n_blocks).astype(float)
            return self._param(self.layout.scale_index) * -sizes + (norm - 0.5 * _LOG_2PI * sizes)
        return Jet.constant(norm, rows.n_blocks, self.P)


def _find_modes(ev: _Evaluator, start: np.ndarray, tol: float = 1e-11,
                max_iter: int = 100) -> tuple[np.ndarray, sparse.csr_matrix]:
    """Newton with step-halving per block on ``h`` (values only), all blocks at once;
    returns the mode and ``H`` there."""
    rows = ev.rows
    u = start.copy()
    h = ev.h_per_block(u)
    for _ in range(max_iter):
        _, d1, d2 = ev.kernel(u, 2)
        a = ev.scale()
        grad = ev.B.T @ (a * d1) - u
        step = SparseFactor(ev.hessian(-a * d2)).solve(grad)
        t = np.ones(rows.n_blocks)
        for _ in range(60):
            trial = u + t[rows.block_of_u] * step
            h_trial = ev.h_per_block(trial)
            worse = h_trial < h - 1e-12 * (1.0 + np.abs(h))
            if not worse.any():
                break
            t[worse] *= 0.5
        moved = np.max(np.abs(t[rows.block_of_u] * step), initial=0.0)
        u, h = trial, h_trial
        if moved < tol:
            break
    _, _, d2 = ev.kernel(u, 2)
    return u, ev.hessian(-ev.scale() * d2)


def _log_det_jet(ev: _Evaluator, eta: Jet, log_det: np.ndarray,
                 inverse: list[np.ndarray]) -> Jet:
    """``log det H_b`` per block with its exact gradient and Hessian (module docstring)."""
    rows, P = ev.rows, ev.P
    weight = -ev.kernel_jet(eta, 2)  # W_i jets
    # T = sum_i W_i b_i' C b_i with b_i's entries sum_r Lambda_t[r, c] z_tir (jets in phi only):
    # b_i' C b_i = sum_p mu_p v_pi, mu_p a product of two Lambda entries, v_pi constant
    entries = []  # ((term, column), [(Lambda entry jet, z column)], u positions)
    for t, (Z, lev, pos) in enumerate(zip(rows.Z, rows.levels, rows.positions, strict=True)):
        for c in range(Z.shape[1]):
            parts = [(ev.lam_jets[t][r][c], Z[:, r]) for r in range(c, Z.shape[1])
                     if ev.lam_jets[t][r][c] is not None]
            if parts:
                entries.append((parts, pos[lev, c]))
    mus, vs = [], []
    for a, (parts_a, pa) in enumerate(entries):
        for parts_b, pb in entries[a:]:
            coef = block_entries(ev.blocks, inverse, pa, pb) * (1.0 if pb is pa else 2.0)
            for lam_a, z_a in parts_a:
                for lam_b, z_b in parts_b:
                    mus.append(lam_a * lam_b)
                    vs.append(coef * z_a * z_b)
    V = np.column_stack(vs)  # (n, pairs)
    mu_val = np.array([mu.val[0] for mu in mus])
    mu_grad = np.array([mu.grad[0] for mu in mus])  # (pairs, P)
    mu_hess = np.array([mu.hess[0] for mu in mus])  # (pairs, P, P)
    n, pairs = V.shape
    by_block = ev.row_blocks  # (blocks x n) 0/1
    w_v = by_block @ (weight.val[:, None] * V)  # (blocks, pairs): sum_i W_i v_pi
    v_wgrad = (by_block @ (V[:, :, None] * weight.grad[:, None, :]).reshape(n, -1)
               ).reshape(-1, pairs, P)  # sum_i v_pi W_i'
    m_val = V @ mu_val  # b_i' C b_i
    cross = np.einsum("pk,bpl->bkl", mu_grad, v_wgrad)
    grad = w_v @ mu_grad + np.einsum("bpk,p->bk", v_wgrad, mu_val)
    hess = (np.einsum("bp,pkl->bkl", w_v, mu_hess) + cross + cross.transpose(0, 2, 1)
            + (by_block @ (m_val[:, None] * weight.hess.reshape(n, -1))).reshape(-1, P, P))
    # tr(C H_k C H_l) from the first derivatives H_k
    W = weight.val
    derivs = [ev.B.T @ ev.B.multiply(weight.grad[:, k][:, None]) for k in range(P)]
    for k, t, r, c, slope in ev.lambda_derivatives():
        cross = ev.column_derivative(t, r, c, slope).T @ ev.B.multiply(W[:, None])
        derivs[k] = derivs[k] + cross + cross.T
    correction = np.zeros((rows.n_blocks, P, P))
    for (_, blocks, _), dense, inv in zip(ev.blocks.buckets, ev.blocks.dense(derivs), inverse,
                                          strict=True):
        G = np.matmul(inv[:, None], dense)  # (nb, P, m, m): C H_k per block
        flat = G.reshape(*G.shape[:2], -1)
        flat_t = G.transpose(0, 1, 3, 2).reshape(*G.shape[:2], -1)
        correction[blocks] = np.matmul(flat, flat_t.transpose(0, 2, 1))  # tr(C H_k C H_l)
    return Jet(log_det, grad, hess - correction)


def multi_site_terms(rows: MultiRows, family: Family, layout: MultiLayout, theta: np.ndarray,
                     *, derivatives: bool = True, start_modes: np.ndarray | None = None,
                     per_block_terms: bool = False) -> MultiSiteTerms:
    """One site's Laplace log-likelihood and (optionally) its exact derivatives.

    Parameters
    ----------
    rows : MultiRows
        The site's data (:func:`core_stats.glmm_multi.multi_rows`).
    family : Family
        Response distribution.
    layout : MultiLayout
        Meaning of ``theta``.
    theta : ndarray
        ``(beta, log-Cholesky of each term's Sigma, [log sigma_residual])``.
    derivatives : bool
        False returns the value only (gradient and Hessian empty).
    start_modes : ndarray, optional
        Warm start for the conditional modes ``u`` (``Q``).
    per_block_terms : bool
        Also return each block's gradient and Hessian (their sums are the site's), for
        releases that bound one top-level unit's contribution.
    """
    theta = np.asarray(theta, dtype=float)
    if theta.shape != (layout.size,):
        raise ValueError(f"theta has {theta.size} values; the layout expects {layout.size}")
    if len(layout.terms) != len(rows.Z):
        raise ValueError("the layout and the rows have different random-effects terms")
    P = layout.size if derivatives else 0
    ev = _Evaluator(rows, family, layout, theta, P)
    start = np.zeros(rows.n_u) if start_modes is None else np.asarray(start_modes, dtype=float)
    u_hat, H = _find_modes(ev, start)  # noqa: N806
    if not P:
        log_det = SparseFactor(H).log_det()
        value = float(ev.h_per_block(u_hat).sum() + ev.constant().val.sum()) - 0.5 * log_det
        return MultiSiteTerms(loglik=value, gradient=np.zeros(0), hessian=np.zeros((0, 0)),
                              n_rows=rows.n_rows, n_blocks=rows.n_blocks,
                              n_levels=rows.n_levels(), modes=u_hat)
    factor = BlockMatrices(ev.blocks, H)
    log_det = factor.log_det_per_block()
    inverse = factor.inverse()
    U = ev.u_jets(u_hat)
    for _ in range(2):  # chord steps: exact mode jets to second order
        step = ev.to_vector(ev.score(U, ev.eta(U)))
        vec = ev.to_vector(U)
        U = ev.from_vector(Jet(vec.val + apply_blocks(ev.blocks, inverse, step.val),
                               vec.grad + apply_blocks(ev.blocks, inverse, step.grad),
                               vec.hess + apply_blocks(ev.blocks, inverse, step.hess)))
    eta = ev.eta(U)
    h = _sum_rows(ev.row_blocks, ev.kernel_jet(eta, 0)) + ev.constant()
    for columns, level_blocks in zip(U, ev.level_blocks, strict=True):
        for jet in columns:
            h = h - _sum_rows(level_blocks, jet * jet) * 0.5
    blocks = h - _log_det_jet(ev, eta, log_det, inverse) * 0.5  # one jet per block
    value, grad, hess = blocks.total()
    per_block = {}
    if per_block_terms:
        per_block = {"block_gradients": blocks.grad.copy(),
                     "block_hessians": 0.5 * (blocks.hess + blocks.hess.transpose(0, 2, 1))}
    return MultiSiteTerms(loglik=value, gradient=grad, hessian=0.5 * (hess + hess.T),
                          n_rows=rows.n_rows, n_blocks=rows.n_blocks,
                          n_levels=rows.n_levels(), modes=u_hat, **per_block)
