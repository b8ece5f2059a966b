"""The BFI consistency check on ``b = sum A_l theta_l``: a bound on ``b' A^{-1} b``.

The other ``bfi-terms`` checks (:func:`securefed.plausibility.check_bfi_terms`)
test the curvature slot ``A = sum A_l`` and the counts; nothing there involves
the linear slot ``b``, so a site could add any ``delta e_j`` to it and move the
combined estimate ``A^{-1} b`` by ``delta sqrt((A^{-1})_jj)`` standard errors.
This module bounds ``b' A^{-1} b`` by quantities the coordinator already has.

Derivation (homogeneous layout, ``L`` sites, each ``A_l`` positive definite).
For any ``v``, ``2 v'b - v'Av = sum_l (2 v'A_l theta_l - v'A_l v)``, and each
term is at most its maximum over ``v``, ``theta_l' A_l theta_l``. The left side
is maximal at ``v = A^{-1} b`` with value ``b' A^{-1} b``, so::

    b' A^{-1} b  <=  sum_l theta_l' A_l theta_l                       (1)

(equality when all ``theta_l`` agree; the gap is Cochran's heterogeneity
``sum_l (theta_l - theta)' A_l (theta_l - theta)``). Two bounds on the right:

* ``binomial`` (logit link), **without any assumption on theta**: the site's
  ``A_l = X_l' W_l X_l + Lambda`` with ``w_i = mu_i (1 - mu_i)``, so
  ``theta_l' A_l theta_l = sum_i w_i eta_i^2 + theta_l' Lambda theta_l`` with
  ``eta_i = x_i' theta_l``. ``eta^2 sigma(eta) sigma(-eta) <= C_LOGIT`` (about
  0.4392, at ``|eta|`` about 2.40) for every ``eta``. And ``theta_l`` maximises
  ``log p(y | theta) - theta' Lambda theta / 2``, which is ``-n_l log 2`` at
  ``theta = 0``; with ``log p <= 0`` this gives
  ``theta_l' Lambda theta_l <= 2 n_l log 2``. Summing over sites::

      b' A^{-1} b  <=  (C_LOGIT + 2 log 2) n,    n = sum_l n_l (checked).   (2)

* any other family, given a **public bound** ``B`` on every parameter of
  every site's MAP (``|theta_l,j| <= B``, in the coordinates the sites fit
  in: standardised columns when the run standardises, ``log sigma`` for the
  Gaussian scale): with ``D = diag(B)`` and ``u = D^{-1} theta_l``
  (``|u|^2 <= d``), ``theta_l' A_l theta_l = u' D A_l D u <= d
  lambda_max(D A_l D) <= d tr(D A_l D) = d B^2 tr(A_l)``. Summing::

      b' A^{-1} b  <=  d B^2 tr(A).                                      (3)

``A`` here is the curvature slot as sent (``sum A_l``, priors included). The
check runs on the homogeneous layout only; centre-specific and centre-covariate
layouts send other linear terms and are not checked yet.
"""

from __future__ import annotations

import numpy as np

from core_stats.bfi_combine import HomogeneousLayout
from core_stats.bfi_layout import triu_unpack
from core_stats.families import Family
from securefed.plausibility import DATA_RTOL, MODEL_RTOL, Tolerance, _refuse

__all__ = ["C_LOGIT", "DEFAULT_THETA_BOUND", "check_bfi_linear", "linear_bound", "linear_room"]

# max over eta of eta^2 e^eta / (1 + e^eta)^2 (at eta = 2.3994; see the test)
C_LOGIT = 0.43923
# The public per-parameter bound B of (3) when the study sets none. Large enough
# that every honest run in the suite passes; the check then stops only shifts of
# many (order sqrt(d B^2 tr A)) standard errors. A consortium should set B.
DEFAULT_THETA_BOUND = 100.0


def linear_bound(family: Family, dim: int, n: float, curvature: np.ndarray,
                 theta_bound: float, unit_rows: bool = True) -> tuple[float, str]:
    """The honest upper bound on ``b' A^{-1} b`` and which of (2), (3) it is.

    (2) needs one unweighted record per row and no offset (``unit_rows``): with
    trials ``w_i`` its ``n`` would be ``sum w_i``, which the coordinator does not
    have, and an offset takes ``eta_i`` away from ``x_i' theta_l``.
    """
    if family.binary and family.canonical and unit_rows:
        return (C_LOGIT + 2.0 * np.log(2.0)) * n, "logit"
    return dim * theta_bound**2 * float(np.trace(curvature)), "public theta bound"


def check_bfi_linear(total: np.ndarray, layout, family: Family, tolerance: Tolerance,
                     theta_bound: float = DEFAULT_THETA_BOUND, *, unit_rows: bool = True
                     ) -> float:
    """Check ``linear-consistency``: ``b' A^{-1} b`` within its honest bound.

    Returns ``b' A^{-1} b / bound`` (at most 1 for honest sums) so benchmarks
    can report how much room an attacker has. Nothing is checked (and 0 is
    returned) for layouts other than :class:`HomogeneousLayout`.
    """
    if not isinstance(layout, HomogeneousLayout):
        return 0.0
    curvature, linear, n = _slots(total, layout)
    theta = np.linalg.solve(curvature, linear)
    quad = float(linear @ theta)
    bound, kind = linear_bound(family, layout.dim, n, curvature, theta_bound, unit_rows)
    norm1 = float(np.sum(np.abs(theta)))
    eps = tolerance.absolute
    slack = eps * (2.0 * norm1 + norm1**2) + (MODEL_RTOL + DATA_RTOL) * max(1.0, bound)
    if quad > bound + slack:
        _refuse("bfi-terms", "linear-consistency",
                f"b' A^-1 b = {quad:.6g} exceeds its honest bound {bound:.6g} ({kind}) for "
                "b = sum A_l theta_l")
    return quad / bound if bound > 0 else 0.0


def _slots(total: np.ndarray, layout: HomogeneousLayout):
    parts = layout.spec.split(np.asarray(total, dtype=float))
    curvature = triu_unpack(parts["curvature"], layout.dim)
    return 0.5 * (curvature + curvature.T), parts["linear"], float(parts["n"][0])


def linear_room(total: np.ndarray, layout: HomogeneousLayout, family: Family, j: int,
                theta_bound: float = DEFAULT_THETA_BOUND) -> tuple[float, float]:
    """The ``delta`` range ``[lo, hi]`` for which ``b + delta e_j`` still passes.

    The roots of ``q0 + 2 delta theta_j + delta^2 (A^-1)_jj = bound`` with
    ``theta = A^-1 b`` and ``q0 = b'theta`` (the check without its tolerance):
    what an attacker who knows the other sites' sums could add undetected.
    """
    curvature, linear, n = _slots(total, layout)
    inverse = np.linalg.inv(curvature)
    theta = inverse @ linear
    bound, _ = linear_bound(family, layout.dim, n, curvature, theta_bound)
    lo, hi = sorted(np.roots([inverse[j, j], 2.0 * theta[j], float(linear @ theta) - bound]).real)
    return float(lo), float(hi)
