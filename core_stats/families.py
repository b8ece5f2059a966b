"""Exponential-family response distributions with their canonical links.

Every family here writes the log-density of one observation as

    log p(y | eta, s) = a(s) * r(y, eta) + c(y, s)

where ``eta`` is the linear predictor, ``s`` is the log of the dispersion scale
(only the Gaussian family has one: ``s = log sigma``), ``a(s)`` multiplies the
*kernel* ``r`` and ``c`` collects the terms free of ``eta``:

=========  =============  ==========================  ==================  =====================
family     link           r(y, eta)                   a(s)                c(y, s)
=========  =============  ==========================  ==================  =====================
binomial   logit          y*eta - log(1 + e^eta)      1                   0 (Bernoulli rows)
poisson    log            y*eta - e^eta               1                   -log(y!)
gaussian   identity       -(y - eta)^2 / 2            exp(-2 s)           -s - log(2 pi) / 2
=========  =============  ==========================  ==================  =====================

The kernels are concave in ``eta`` and their derivatives up to order four are
available in closed form (``kernel_derivatives``); the GLMM needs all four for
exact gradients and Hessians of the Laplace / Gauss-Hermite approximations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core_stats.special import expit, gammaln

__all__ = ["Family", "BINOMIAL", "POISSON", "GAUSSIAN", "get_family", "FAMILIES"]

_LOG_2PI = float(np.log(2.0 * np.pi))


@dataclass(frozen=True)
class Family:
    """A response distribution with its canonical link.

    Attributes
    ----------
    name : str
        ``"binomial"``, ``"poisson"`` or ``"gaussian"``.
    link : str
        Name of the (canonical) link, as R names it.
    has_dispersion : bool
        True when the family carries a scale parameter (Gaussian sigma).
    """

    name: str
    link: str
    has_dispersion: bool

    @property
    def canonical(self) -> bool:
        """Whether the link is the family's canonical one (logit, log, identity)."""
        return self.link == CANONICAL_LINKS[self.name]

    # ------------------------------------------------------------------ checks
    def check_outcome(self, y: np.ndarray, weights: np.ndarray | None = None) -> None:
        """Raise ``ValueError`` with a one-line reason if ``y`` is not valid.

        With prior ``weights`` (glmer's ``weights=``; binomial trials from
        ``cbind(successes, failures)``) a binomial outcome is a proportion whose
        successes ``w y`` are whole numbers.
        """
        y = np.asarray(y, dtype=float)
        if y.size == 0:
            raise ValueError("the outcome has no rows")
        if not np.all(np.isfinite(y)):
            raise ValueError("the outcome has missing or infinite values")
        if weights is not None:
            weights = np.asarray(weights, dtype=float)
            if not np.all(np.isfinite(weights)) or np.any(weights < 0):
                raise ValueError("weights must be finite and not negative")
        if self.name == "binomial" and weights is None and not np.all((y == 0) | (y == 1)):
            raise ValueError("a binomial outcome must be 0 or 1 in every row")
        if self.name == "binomial" and weights is not None:
            successes = weights * y
            if np.any((y < 0) | (y > 1)) or not np.allclose(successes, np.round(successes),
                                                             atol=1e-8):
                raise ValueError("a weighted binomial outcome must be a proportion of whole "
                                 "numbers of successes (weights = trials)")
        if self.name == "poisson":
            if np.any(y < 0):
                raise ValueError("a Poisson outcome must be non-negative")
            if not np.all(y == np.round(y)):
                raise ValueError("a Poisson outcome must be whole counts")
        if np.all(y == y.flat[0]):
            raise ValueError("the outcome is constant: the same value in every row")

    # ------------------------------------------------------------- the model
    def mean(self, eta: np.ndarray) -> np.ndarray:
        """Inverse link: the mean ``mu`` for linear predictor ``eta``."""
        eta = np.asarray(eta, dtype=float)
        if self.name == "binomial" and not self.canonical:
            from core_stats.links import inverse_link

            return inverse_link(self.link, eta)
        if self.name == "binomial":
            return expit(eta)
        if self.name == "poisson":
            return np.exp(eta)
        return eta

    def link_value(self, mu: float) -> float:
        """The link ``g(mu)`` of one mean (used for starting values)."""
        if self.name == "binomial" and not self.canonical:
            from core_stats.links import link_value

            return link_value(self.link, mu)
        if self.name == "binomial":
            mu = min(max(mu, 1e-6), 1 - 1e-6)
            return float(np.log(mu / (1.0 - mu)))
        if self.name == "poisson":
            return float(np.log(max(mu, 1e-6)))
        return float(mu)

    def kernel_derivatives(self, y: np.ndarray, eta: np.ndarray, order: int) -> list[np.ndarray]:
        """``[r, dr/deta, ..., d^order r / deta^order]`` elementwise.

        For the logit link ``mu = expit(eta)`` and ``v = mu (1 - mu)``:
        ``r' = y - mu``, ``r'' = -v``, ``r''' = -v (1 - 2 mu)``,
        ``r'''' = -v (1 - 6 v)``. The kernel ``y*eta - log(1 + e^eta)`` is
        evaluated as ``y*eta - logaddexp(0, eta)``, which never overflows.
        For the log link every derivative from the second on is ``-e^eta``.
        """
        if not 0 <= order <= 4:
            raise ValueError("order must be between 0 and 4")
        y = np.asarray(y, dtype=float)
        eta = np.asarray(eta, dtype=float)
        if self.name == "binomial" and not self.canonical:
            from core_stats.links import binomial_kernel_derivatives

            return binomial_kernel_derivatives(self.link, y, eta, order)
        if self.name == "binomial":
            mu = expit(eta)
            v = mu * (1.0 - mu)
            out = [y * eta - np.logaddexp(0.0, eta), y - mu, -v, -v * (1.0 - 2.0 * mu),
                   -v * (1.0 - 6.0 * v)]
        elif self.name == "poisson":
            mu = np.exp(eta)
            out = [y * eta - mu, y - mu, -mu, -mu, -mu]
        else:
            resid = y - eta
            zero = np.zeros_like(eta)
            out = [-0.5 * resid**2, resid, zero - 1.0, zero, zero]
        return out[: order + 1]

    def log_normalizer(self, y: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Terms of ``log p`` free of ``eta`` and ``s`` (``-log y!`` for Poisson).

        With prior weights ``w`` the log-density is ``w a(s) r + c_w`` as R's
        families write it: binomial ``log choose(w, w y)`` (``w`` trials),
        Poisson ``-w log y!``, Gaussian ``(1/2) log w`` (variance ``sigma^2 / w``,
        added by the caller next to ``-s - log(2 pi)/2``).
        """
        y = np.asarray(y, dtype=float)
        if weights is None:
            return -gammaln(y + 1.0) if self.name == "poisson" else np.zeros_like(y)
        w = np.asarray(weights, dtype=float)
        if self.name == "binomial":
            successes = np.round(w * y)
            return gammaln(w + 1.0) - gammaln(successes + 1.0) - gammaln(w - successes + 1.0)
        if self.name == "poisson":
            return -w * gammaln(y + 1.0)
        with np.errstate(divide="ignore"):
            return np.where(w > 0, 0.5 * np.log(np.where(w > 0, w, 1.0)), 0.0)

    def loglik(self, y: np.ndarray, eta: np.ndarray, log_scale: float = 0.0) -> np.ndarray:
        """Elementwise log-density ``a(s) r(y, eta) + c(y, s)``."""
        r = self.kernel_derivatives(y, eta, 0)[0]
        if self.has_dispersion:
            return np.exp(-2.0 * log_scale) * r - log_scale - 0.5 * _LOG_2PI
        return r + self.log_normalizer(y)


BINOMIAL = Family("binomial", "logit", has_dispersion=False)
POISSON = Family("poisson", "log", has_dispersion=False)
GAUSSIAN = Family("gaussian", "identity", has_dispersion=True)
FAMILIES: dict[str, Family] = {f.name: f for f in (BINOMIAL, POISSON, GAUSSIAN)}
CANONICAL_LINKS = {f.name: f.link for f in FAMILIES.values()}
LINKS = {"binomial": ("logit", "probit", "cloglog"), "poisson": ("log",),
         "gaussian": ("identity",)}


def get_family(name: str, link: str | None = None) -> Family:
    """Look up a family (and a link it allows); ``ValueError`` names the valid choices."""
    try:
        family = FAMILIES[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown family {name!r}: choose one of {', '.join(FAMILIES)}"
        ) from None
    if link is None or link == family.link:
        return family
    if link not in LINKS[family.name]:
        raise ValueError(f"link {link!r} is not available for the {family.name} family "
                         f"(choose {', '.join(LINKS[family.name])})")
    return Family(family.name, link, family.has_dispersion)
