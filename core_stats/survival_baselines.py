"""The baseline hazards of BFI survival models, named as the R package BFI 3.1.0 names them.

=============  ================  =====================================  ==================
baseline       R ``basehaz``     ``h0(t)``                              parameters
=============  ================  =====================================  ==================
exponential    ``"exp"``         ``a``                                  ``omega_1 = log a``
weibull        ``"weibul"``      ``a b t^(b-1)``                        ``omega_1, omega_2``
gompertz       ``"gomp"``        ``a exp(b t)``                         ``omega_1, omega_2``
poly           ``"poly"``        ``exp(omega_0 + omega_1 t + ...        ``omega_0..omega_q``
                                 + omega_q t^q)``
pwexp          ``"pwexp"``       ``exp(omega_k)`` on ``[c_(k-1), c_k)``  ``omega_1..omega_K``
unspecified    ``"unspecified"`` none: Breslow partial likelihood       none
=============  ================  =====================================  ==================

``poly`` is fitted at order ``q``; R chooses a centre's order by likelihood-ratio
tests up to ``max_order`` and combines the centres at the largest chosen order
(:mod:`core_stats.survival_poly`). ``pwexp`` has ``K`` pieces cut at the knots
``c_0 = 0 < c_1 < ... < c_K``; R takes ``K = n_intervals`` and
``c = seq(0, min_max_times + 0.001, length.out = K + 1)`` (:func:`r_knots`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["KINDS", "Baseline", "as_baseline", "r_knots"]

KINDS = ("exponential", "weibull", "gompertz", "poly", "pwexp", "unspecified")
_R_NAMES = {"exponential": "exp", "weibull": "weibul", "gompertz": "gomp", "poly": "poly",
            "pwexp": "pwexp", "unspecified": "unspecified"}
_START = -0.5  # R's initial value for every omega


@dataclass(frozen=True)
class Baseline:
    """A baseline hazard: its kind, the polynomial's order, or the pieces' knots."""

    kind: str
    order: int = 0  # poly: the fitted order q
    knots: tuple[float, ...] = ()  # pwexp: c_0 = 0 < c_1 < ... < c_K

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown baseline {self.kind!r}: choose one of {', '.join(KINDS)}")
        if self.kind == "poly" and not (0 <= self.order <= 10):
            raise ValueError("a polynomial baseline's order must be 0 to 10")
        if self.kind == "pwexp":
            knots = np.asarray(self.knots, dtype=float)
            if knots.size < 2 or knots[0] != 0.0 or not np.all(np.isfinite(knots)) \
                    or np.any(np.diff(knots) <= 0):
                raise ValueError("--baseline-knots must start at 0 and increase, with at "
                                 "least one piece")

    @property
    def r_name(self) -> str:
        return _R_NAMES[self.kind]

    @property
    def names(self) -> tuple[str, ...]:
        """R BFI's names of the baseline parameters."""
        if self.kind == "exponential":
            return ("omega_1",)
        if self.kind in ("weibull", "gompertz"):
            return ("omega_1", "omega_2")
        if self.kind == "poly":
            return tuple(f"omega_{q}" for q in range(self.order + 1))
        if self.kind == "pwexp":
            return tuple(f"omega_{k}" for k in range(1, len(self.knots)))
        return ()

    def start(self, p: int) -> np.ndarray:
        """R's initial values ``(0, ..., 0, -0.5, ..., -0.5)``."""
        return np.concatenate([np.zeros(p), np.full(len(self.names), _START)])

    @property
    def scales(self) -> dict[str, str]:
        """What each baseline parameter is (for the output)."""
        if self.kind == "exponential":
            return {"omega_1": "log a"}
        if self.kind in ("weibull", "gompertz"):
            return {"omega_1": "log a", "omega_2": "log b"}
        if self.kind == "poly":
            return {n: f"coefficient of t^{q} in log h0(t)" for q, n in enumerate(self.names)}
        if self.kind == "pwexp":
            c = self.knots
            return {n: f"log h0(t) for {c[k]:.6g} <= t < {c[k + 1]:.6g}"
                    for k, n in enumerate(self.names)}
        return {}

    @property
    def hazard(self) -> str:
        return {"exponential": "h0(t) = a", "weibull": "h0(t) = a b t^(b-1)",
                "gompertz": "h0(t) = a exp(b t)",
                "poly": "h0(t) = exp(" + " + ".join(
                    f"omega_{q}" + ("" if q == 0 else " t" if q == 1 else f" t^{q}")
                    for q in range(self.order + 1)) + ")",
                "pwexp": f"h0(t) = exp(omega_k) on piece k of {len(self.knots) - 1}",
                "unspecified": "h0 unspecified (Breslow partial likelihood)"}[self.kind]


def as_baseline(baseline: str | Baseline) -> Baseline:
    """A :class:`Baseline` from one (or from a kind without settings)."""
    if isinstance(baseline, Baseline):
        return baseline
    if baseline in ("poly", "pwexp"):
        raise ValueError(f"the {baseline} baseline needs its settings (order or knots)")
    return Baseline(baseline)


def r_knots(pieces: int, max_time: float) -> tuple[float, ...]:
    """R BFI's knots: ``seq(0, min_max_times + 0.001, length.out = n_intervals + 1)``."""
    if pieces < 1 or not np.isfinite(max_time) or max_time <= 0:
        raise ValueError("--baseline-pieces must be at least 1 and --baseline-max-time positive")
    return tuple(float(c) for c in np.linspace(0.0, max_time + 0.001, pieces + 1))
