"""REML for a Gaussian linear mixed model from summed site terms (lmer's default criterion).

For ``y ~ N(X beta, V)`` with ``V = blockdiag_g(sigma^2 I + Z_g Sigma Z_g')`` the
REML log-likelihood integrates ``beta`` out of the likelihood under a flat prior:

    l_R(phi, s) = l(beta_hat, phi, s) + (p/2) log 2 pi - (1/2) log |M|,   M = X' V^{-1} X,

and lmer's "REML criterion" is ``-2 l_R``. For a Gaussian model ``M = -d2 l / d beta2``
does not depend on ``beta``, so maximising

    f(beta, phi, s) = l(beta, phi, s) - (1/2) log |M(phi, s)| + (p/2) log 2 pi

over all of ``theta`` gives ``beta_hat`` (GLS) and the REML variance parameters at once,
with ``f = l_R`` there. ``M = sum_sites sum_g M_g`` is a sum, and so are its derivatives
in the variance parameters ``v = (phi, s)``: each site releases ``M``, ``dM/dv_k`` and
``d2M/dv_k dv_l`` of its groups (:func:`reml_site_terms`); the coordinator adds

    -(1/2) log|M|,   gradient  -(1/2) tr(M^{-1} M_k),
    Hessian  -(1/2) [tr(M^{-1} M_kl) - tr(M^{-1} M_k M^{-1} M_l)]

(:func:`reml_adjustment`). Per group, by Woodbury with ``Sigma = Lambda Lambda'``,
``C = sigma^2 I_q + Lambda' Z'Z Lambda = L L'`` and ``W = L^{-1} Lambda' Z'X``:
``M_g = sigma^{-2} (X'X - W'W)``, computed in jets of ``v`` (exact derivatives).

At the boundary ``Sigma = 0`` (a singular fit) the score of ``Sigma`` gains
``(1/2) sigma^{-4} sum_g A_g M^{-1} A_g'`` with ``A_g = Z_g'X_g``; the sites
release ``T = sum_g vec(A_g) vec(A_g)'`` for it (:func:`reml_boundary_score`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core_stats.bfi_layout import triu_pack, triu_unpack
from core_stats.design import GroupedRows
from core_stats.glmm import ParameterLayout
from core_stats.jets import Jet, jet_cholesky

__all__ = ["RemlTerms", "reml_site_terms", "reml_adjustment", "reml_boundary_score",
           "reml_vector_length", "pack_reml", "unpack_reml"]

_LOG_2PI = float(np.log(2.0 * np.pi))


@dataclass(frozen=True)
class RemlTerms:
    """``M = X'V^{-1}X`` (p x p), ``dM/dv`` (k x p x p), ``d2M/dv2`` (k x k x p x p) and,
    on the boundary ``Sigma = 0``, ``T = sum_g vec(Z_g'X_g) vec(Z_g'X_g)'`` (qp x qp)."""

    M: np.ndarray
    dM: np.ndarray
    d2M: np.ndarray
    between: np.ndarray | None = None


def _variance_indices(layout: ParameterLayout) -> list[int]:
    """Where the variance parameters ``v = (phi, s)`` sit in ``theta``."""
    return list(range(layout.p, layout.p + layout.n_cov)) + [layout.scale_index]


def reml_site_terms(rows: GroupedRows, layout: ParameterLayout, theta: np.ndarray) -> RemlTerms:
    """One site's ``M``, ``dM/dv`` and ``d2M/dv2`` at ``theta`` (Gaussian, one term)."""
    if not layout.has_dispersion or rows.weights is not None:
        raise ValueError("REML terms need a Gaussian model without prior weights")
    theta = np.asarray(theta, dtype=float)
    G, p, q = rows.n_groups, layout.p, layout.q
    index = _variance_indices(layout)
    K = len(index)
    var = {j: Jet.variable(theta[j], k, G, K) for k, j in enumerate(index)}
    lam = [[Jet.constant(0.0, G, K) for _ in range(q)] for _ in range(q)]
    if layout.random_effects:
        for k, (r, c) in enumerate(layout.cholesky_entries()):
            jet = var[layout.p + k]
            lam[r][c] = jet.exp() if layout.log_scale(r, c) else jet
    sigma2 = (var[layout.scale_index] * 2.0).exp()
    X, Z = rows.X, rows.Z
    xtx = np.add.reduceat(X[:, :, None] * X[:, None, :], rows.starts, axis=0)
    ztx = np.add.reduceat(Z[:, :, None] * X[:, None, :], rows.starts, axis=0)
    ztz = np.add.reduceat(Z[:, :, None] * Z[:, None, :], rows.starts, axis=0)
    zero = Jet.constant(0.0, G, K)
    # B = Lambda' Z'X (q x p) and C = sigma^2 I + Lambda' Z'Z Lambda (q x q)
    B = [[sum((lam[k][r] * ztx[:, k, j] for k in range(r, q)), zero) for j in range(p)]
         for r in range(q)]
    ztz_lam = [[sum((lam[m][c] * ztz[:, k, m] for m in range(c, q)), zero) for c in range(q)]
               for k in range(q)]
    C = [[sum((lam[k][r] * ztz_lam[k][c] for k in range(r, q)), zero)
          + (sigma2 if r == c else 0.0) for c in range(q)] for r in range(q)]
    L = jet_cholesky(C)
    W: list[list[Jet]] = []
    for r in range(q):  # forward substitution L W = B, column by column
        W.append([(B[r][j] - sum((L[r][k] * W[k][j] for k in range(r)), zero)) / L[r][r]
                  for j in range(p)])
    inv_sigma2 = sigma2.reciprocal()
    M = np.zeros((p, p))
    dM = np.zeros((K, p, p))
    d2M = np.zeros((K, K, p, p))
    for i in range(p):
        for j in range(i + 1):
            wtw = sum((W[r][i] * W[r][j] for r in range(q)), zero)
            entry = inv_sigma2 * (wtw * -1.0 + xtx[:, i, j])
            value, grad, hess = entry.total()
            M[i, j] = M[j, i] = value
            dM[:, i, j] = dM[:, j, i] = grad
            d2M[:, :, i, j] = d2M[:, :, j, i] = hess
    between = None
    if not layout.random_effects:
        flat = ztx.reshape(G, q * p)
        between = flat.T @ flat
    return RemlTerms(M, dM, 0.5 * (d2M + d2M.transpose(1, 0, 2, 3)), between)


def reml_vector_length(layout: ParameterLayout) -> int:
    """Length of a site's packed REML release for ``layout``."""
    p, K = layout.p, layout.n_cov + 1
    tri = p * (p + 1) // 2
    size = tri * (1 + K + K * (K + 1) // 2)
    if not layout.random_effects:
        qp = layout.q * p
        size += qp * (qp + 1) // 2
    return size


def pack_reml(terms: RemlTerms) -> np.ndarray:
    """``[triu M, triu dM_k..., triu d2M_kl (k <= l)..., (triu T)]`` as one flat vector."""
    K = terms.dM.shape[0]
    parts = [triu_pack(terms.M)] + [triu_pack(terms.dM[k]) for k in range(K)]
    parts += [triu_pack(terms.d2M[k, m]) for k in range(K) for m in range(k, K)]
    if terms.between is not None:
        parts.append(triu_pack(terms.between))
    return np.concatenate(parts)


def unpack_reml(vector: np.ndarray, layout: ParameterLayout) -> RemlTerms:
    """The inverse of :func:`pack_reml` (for a summed vector)."""
    vector = np.asarray(vector, dtype=float)
    if vector.shape != (reml_vector_length(layout),):
        raise ValueError("the REML release has the wrong length")
    p, K = layout.p, layout.n_cov + 1
    tri = p * (p + 1) // 2
    chunks = [vector[i * tri:(i + 1) * tri] for i in range(1 + K + K * (K + 1) // 2)]
    M = triu_unpack(chunks[0], p)
    dM = np.stack([triu_unpack(chunks[1 + k], p) for k in range(K)])
    d2M = np.zeros((K, K, p, p))
    at = 1 + K
    for k in range(K):
        for m in range(k, K):
            d2M[k, m] = d2M[m, k] = triu_unpack(chunks[at], p)
            at += 1
    between = None
    if not layout.random_effects:
        between = triu_unpack(vector[at * tri:], layout.q * p)
    return RemlTerms(M, dM, d2M, between)


def reml_adjustment(terms: RemlTerms, layout: ParameterLayout,
                    derivatives: bool) -> tuple[float, np.ndarray | None, np.ndarray | None]:
    """``-(1/2) log|M| + (p/2) log 2 pi`` with its gradient and Hessian in ``theta``."""
    sign, logdet = np.linalg.slogdet(terms.M)
    if sign <= 0:
        raise ValueError("X'V^-1 X is not positive definite")
    value = -0.5 * logdet + 0.5 * layout.p * _LOG_2PI
    if not derivatives:
        return value, None, None
    M_inv = np.linalg.inv(terms.M)
    index = _variance_indices(layout)
    K = len(index)
    A = np.einsum("ij,kjl->kil", M_inv, terms.dM)  # M^{-1} M_k
    grad_v = -0.5 * np.einsum("kii->k", A)
    hess_v = -0.5 * (np.einsum("ij,klji->kl", M_inv, terms.d2M)
                     - np.einsum("kij,lji->kl", A, A))
    grad = np.zeros(layout.size)
    hess = np.zeros((layout.size, layout.size))
    grad[index] = grad_v
    hess[np.ix_(index, index)] = 0.5 * (hess_v + hess_v.T)
    assert K == len(grad_v)
    return value, grad, hess


def reml_boundary_score(terms: RemlTerms, layout: ParameterLayout,
                        theta: np.ndarray) -> np.ndarray:
    """REML's addition to the score of ``Sigma`` at 0.

    ``(1/2) sigma^{-4} sum_g A_g M^{-1} A_g'`` with ``A_g = Z_g'X_g``.
    """
    q, p = layout.q, layout.p
    assert terms.between is not None
    T = terms.between.reshape(q, p, q, p)
    sigma4 = float(np.exp(4.0 * theta[layout.scale_index]))
    return 0.5 * np.einsum("aibj,ij->ab", T, np.linalg.inv(terms.M)) / sigma4
