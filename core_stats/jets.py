"""Second-order jets: values carried with their exact gradient and Hessian.

A :class:`Jet` holds, for a batch of ``G`` independent quantities (one per
group of a GLMM), the value ``f``, the gradient ``df/dtheta`` (``G x P``) and
the Hessian ``d2f/dtheta2`` (``G x P x P``) with respect to the same ``P``
parameters. Arithmetic on jets is the chain rule truncated after second order:

    (a b)''   = a b'' + b a'' + a' b'^T + b' a'^T
    (phi(a))'' = phi'(a) a'' + phi''(a) a' a'^T

so any smooth computation written with jets returns its exact first and second
derivatives (forward-mode differentiation; no finite differences anywhere).
The small linear algebra the GLMM needs on ``q x q`` matrices of jets
(``q <= 3`` random effects per group) lives here too: Cholesky factors and
triangular solves, written out entry by entry.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["Jet", "jet_cholesky", "jet_solve_upper_transposed", "logsumexp_jets"]

Number = float | np.ndarray


class Jet:
    """Values of ``G`` functions of ``P`` parameters with gradients and Hessians."""

    __slots__ = ("val", "grad", "hess")

    def __init__(self, val: np.ndarray, grad: np.ndarray, hess: np.ndarray) -> None:
        self.val = val
        self.grad = grad
        self.hess = hess

    # ----------------------------------------------------------- constructors
    @classmethod
    def constant(cls, value: Number, n_groups: int, n_params: int) -> Jet:
        """A jet with zero derivatives, broadcast to ``n_groups``."""
        val = np.broadcast_to(np.asarray(value, dtype=float), (n_groups,)).copy()
        return cls(val, np.zeros((n_groups, n_params)), np.zeros((n_groups, n_params, n_params)))

    @classmethod
    def variable(cls, value: float, index: int, n_groups: int, n_params: int) -> Jet:
        """The parameter ``theta[index]`` itself (gradient a unit vector)."""
        jet = cls.constant(value, n_groups, n_params)
        jet.grad[:, index] = 1.0
        return jet

    @property
    def n_params(self) -> int:
        return self.grad.shape[1]

    # -------------------------------------------------------------- algebra
    def __add__(self, other: Jet | Number) -> Jet:
        if isinstance(other, Jet):
            return Jet(self.val + other.val, self.grad + other.grad, self.hess + other.hess)
        return Jet(self.val + other, self.grad, self.hess)

    __radd__ = __add__

    def __neg__(self) -> Jet:
        return Jet(-self.val, -self.grad, -self.hess)

    def __sub__(self, other: Jet | Number) -> Jet:
        return self + (-other)

    def __rsub__(self, other: Number) -> Jet:
        return (-self) + other

    def __mul__(self, other: Jet | Number) -> Jet:
        if isinstance(other, Jet):
            a, b = self, other
            outer = a.grad[:, :, None] * b.grad[:, None, :]
            return Jet(
                a.val * b.val,
                a.val[:, None] * b.grad + b.val[:, None] * a.grad,
                a.val[:, None, None] * b.hess + b.val[:, None, None] * a.hess
                + outer + outer.transpose(0, 2, 1),
            )
        other = np.asarray(other, dtype=float)
        return Jet(self.val * other, self.grad * other[..., None],
                   self.hess * other[..., None, None])

    __rmul__ = __mul__

    def __truediv__(self, other: Jet | Number) -> Jet:
        if isinstance(other, Jet):
            return self * other.reciprocal()
        return self * (1.0 / np.asarray(other, dtype=float))

    def __rtruediv__(self, other: Number) -> Jet:
        return self.reciprocal() * other

    def apply(self, f0: np.ndarray, f1: np.ndarray, f2: np.ndarray) -> Jet:
        """``phi(self)`` given ``phi``, ``phi'`` and ``phi''`` at ``self.val``."""
        outer = self.grad[:, :, None] * self.grad[:, None, :]
        return Jet(
            f0,
            f1[:, None] * self.grad,
            f1[:, None, None] * self.hess + f2[:, None, None] * outer,
        )

    def reciprocal(self) -> Jet:
        v = self.val
        return self.apply(1.0 / v, -1.0 / v**2, 2.0 / v**3)

    def exp(self) -> Jet:
        e = np.exp(self.val)
        return self.apply(e, e, e)

    def log(self) -> Jet:
        v = self.val
        return self.apply(np.log(v), 1.0 / v, -1.0 / v**2)

    def sqrt(self) -> Jet:
        s = np.sqrt(self.val)
        return self.apply(s, 0.5 / s, -0.25 / (s * self.val))

    def square(self) -> Jet:
        return self * self

    def total(self) -> tuple[float, np.ndarray, np.ndarray]:
        """Sum over the batch: ``(value, gradient, Hessian)`` as plain arrays."""
        return float(self.val.sum()), self.grad.sum(axis=0), self.hess.sum(axis=0)


def logsumexp_jets(terms: Sequence[Jet]) -> Jet:
    """``log sum_k exp(t_k)`` with the max shifted out first (never overflows).

    With ``m = max_k t_k`` and softmax weights ``w_k = exp(t_k - m) / sum``:
    gradient ``sum_k w_k t_k'``, Hessian
    ``sum_k w_k (t_k'' + t_k' t_k'^T) - g g^T``.
    """
    if len(terms) == 1:
        return terms[0]
    vals = np.stack([t.val for t in terms])
    shift = vals.max(axis=0)
    weights = np.exp(vals - shift)
    norm = weights.sum(axis=0)
    weights /= norm
    grad = sum(w[:, None] * t.grad for w, t in zip(weights, terms, strict=True))
    hess = sum(
        w[:, None, None] * (t.hess + t.grad[:, :, None] * t.grad[:, None, :])
        for w, t in zip(weights, terms, strict=True)
    )
    hess = hess - grad[:, :, None] * grad[:, None, :]
    return Jet(shift + np.log(norm), grad, hess)


def jet_cholesky(matrix: Sequence[Sequence[Jet]]) -> list[list[Jet | None]]:
    """Lower Cholesky factor ``L`` of a symmetric positive-definite jet matrix.

    ``L[r][r] = sqrt(M_rr - sum_k L_rk^2)``,
    ``L[r][c] = (M_rc - sum_k L_rk L_ck) / L_cc`` for ``c < r``; entries above
    the diagonal are ``None``.
    """
    q = len(matrix)
    chol: list[list[Jet | None]] = [[None] * q for _ in range(q)]
    for r in range(q):
        for c in range(r + 1):
            acc = matrix[r][c]
            for k in range(c):
                acc = acc - chol[r][k] * chol[c][k]
            chol[r][c] = acc.sqrt() if r == c else acc / chol[c][c]
    return chol


def jet_solve_upper_transposed(chol: Sequence[Sequence[Jet | None]], rhs: np.ndarray) -> list[Jet]:
    """Solve ``L^T x = rhs`` for a constant vector ``rhs`` by back substitution."""
    q = len(chol)
    x: list[Jet | None] = [None] * q
    for r in reversed(range(q)):
        acc: Jet | float = float(rhs[r])
        for k in range(r + 1, q):
            acc = acc - chol[k][r] * x[k]
        x[r] = chol[r][r].reciprocal() * acc
    return x  # type: ignore[return-value]
