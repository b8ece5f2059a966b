"""The validator: the independent party that holds the sites' summaries under ``--robust``.

Under ``--robust`` each site sends, besides its share of the secure sums, its
summary of the round the estimate is made of (BFI: its ``bfi-terms`` vector,
i.e. its local MAP ``theta_l`` and curvature ``A_l``; GLMM: its marginal
log-likelihood gradient and Hessian at the final estimate) to the **validator**,
the independent key holder the CKKS layer already has, never to the
coordinator. The validator

1. checks that the summaries add up to the decoded secure sum of the same
   round (``summary-sum``: a site that tells the validator one thing and the
   secure sum another is caught; which site is not known from sums alone);
   for BFI, applies the sum checks of :mod:`securefed.plausibility` to every
   site's vector on its own, naming the site that fails one (``site-<check>``);
2. computes every site's leave-one-out influence
   (:mod:`securefed.robust.influence`) and refuses the run **naming the site**
   when one moves a coefficient by more than ``bound`` honest SEs
   (``bounded-influence``), or when the others' information without it is not
   positive definite (``others-information``: it claims more information than
   the sum holds, or it alone identifies a coefficient);
3. for BFI, compares the exact combination with a Huber M-combination of the
   sites' local estimates (``robust-agreement``).

It tells the coordinator only the verdict, the largest influence and the
robust gap (no per-site value). In-process the validator is an object of the
coordinator's process that the coordinator's code never reads from; over a
remote transport ``--robust`` is refused until the key holder's service carries
it (:func:`securefed.robust.runs.require_local`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from securefed.plausibility import ImplausibleAggregate, Tolerance
from securefed.robust.influence import SiteInfluence

__all__ = ["DEFAULT_BOUND", "InfluenceRefused", "RobustVerdict", "Validator",
           "robust_summary_line"]

DEFAULT_BOUND = 2.0
#: relative slack of the summary-sum identity (float summation order)
SUM_RTOL = 1e-9


class InfluenceRefused(ImplausibleAggregate):
    """``--robust`` refused the run; ``site`` is the site named (None if unknown)."""

    def __init__(self, purpose: str, check: str, message: str, site: str | None = None) -> None:
        self.purpose = purpose
        self.check = check
        self.site = site
        Exception.__init__(self, message)


@dataclass(frozen=True)
class RobustVerdict:
    """What the validator tells the coordinator about a run that passed."""

    method: str
    bound: float
    n_sites: int
    largest_influence_se: float
    robust_gap_se: float | None = None

    def to_dict(self) -> dict:
        out = {"method": self.method, "bound_se": self.bound, "n_sites": self.n_sites,
               "largest_influence_se": round(self.largest_influence_se, 6)}
        if self.robust_gap_se is not None:
            out["robust_gap_se"] = round(self.robust_gap_se, 6)
        return out



def robust_summary_line(verdict: dict) -> str:
    """The summary line of a :meth:`RobustVerdict.to_dict`."""
    line = (f"bounded influence (--robust): no site moves a coefficient by more than "
            f"{verdict['largest_influence_se']:.2f} honest SEs (bound {verdict['bound_se']:g}, "
            f"{verdict['n_sites']} sites)")
    if verdict.get("robust_gap_se") is not None:
        line += f"; exact vs robust combination: {verdict['robust_gap_se']:.2f} SEs"
    return line


class Validator:
    """Receives per-site summaries, checks them against the secure sum, bounds influence."""

    def __init__(self, bound: float = DEFAULT_BOUND) -> None:
        if not np.isfinite(bound) or bound <= 0:
            raise ValueError("the influence bound must be a positive number")
        self.bound = float(bound)
        self._summaries: dict[str, dict[str, np.ndarray]] = {}

    def tee(self, purpose: str, compute: Callable) -> Callable:
        """``compute`` for a secure-sum round whose vectors each site also sends here.

        In-process the site's one computed vector goes both ways; a site that
        sends the validator another vector fails :meth:`check_sum`.
        """
        received = self._summaries.setdefault(purpose, {})

        def both(site):
            vector = np.asarray(compute(site), dtype=float)
            self.receive(purpose, site.name, vector)
            return vector

        received.clear()
        return both

    def receive(self, purpose: str, site: str, vector: np.ndarray) -> None:
        """Site ``site``'s summary for ``purpose`` (the last one counts)."""
        self._summaries.setdefault(purpose, {})[site] = np.array(vector, dtype=float)

    def summaries(self, purpose: str) -> dict[str, np.ndarray]:
        return dict(self._summaries[purpose])

    def check_sum(self, purpose: str, decoded: np.ndarray, tolerance: Tolerance,
                  contributors: Iterable[str]) -> None:
        """``summary-sum``: the contributors' summaries add up to the decoded secure sum."""
        contributors = list(contributors)
        missing = [c for c in contributors if c not in self._summaries.get(purpose, {})]
        if missing:
            raise InfluenceRefused(
                purpose, "summary-sum", f"--robust refused the run: site {missing[0]} sent no "
                "summary to the validator", site=missing[0])
        vectors = {c: self._summaries[purpose][c] for c in contributors}
        self._summaries[purpose] = vectors
        total = np.sum(list(vectors.values()), axis=0)
        decoded = np.asarray(decoded, dtype=float)
        scale = np.maximum(1.0, np.sum(np.abs(list(vectors.values())), axis=0))
        if (total.shape != decoded.shape or not np.all(np.isfinite(total))
                or np.any(np.abs(total - decoded) > tolerance.absolute + SUM_RTOL * scale)):
            raise InfluenceRefused(
                purpose, "summary-sum",
                f"--robust refused the run: the sites' summaries to the validator do not add "
                f"up to the secure sum of round '{purpose}' (a site sent different vectors)")

    def bound_influence(self, purpose: str, influences: Iterable[SiteInfluence],
                        names: tuple[str, ...]) -> float:
        """``bounded-influence``: refuse naming the worst site above the bound; the largest."""
        influences = tuple(influences)
        worst = max(influences, key=lambda i: i.largest)
        if worst.largest > self.bound:
            name = names[worst.worst_index()]
            raise InfluenceRefused(
                purpose, "bounded-influence",
                f"--robust refused the run: site {worst.site} moves '{name}' by more than "
                f"{self.bound:g} honest SEs (leave-one-out); check that site's data or run "
                "without it", site=worst.site)
        return worst.largest

    def site_fails(self, purpose: str, site: str, check: str) -> None:
        """``site-<check>``: one site's own vector fails a plausibility check of the sums."""
        raise InfluenceRefused(
            purpose, f"site-{check}",
            f"--robust refused the run: site {site}'s own vector fails plausibility check "
            f"'{check}' (it holds for every honest site); check that site", site=site)

    def no_other_information(self, purpose: str, site: str) -> None:
        raise InfluenceRefused(
            purpose, "others-information",
            f"--robust refused the run: without site {site} the other sites' information is "
            "not positive definite (that site claims more information than the sum holds, or "
            "it alone identifies a coefficient), so its influence cannot be bounded", site=site)

    def robust_gap(self, purpose: str, gap_se: float) -> None:
        """``robust-agreement``: the exact and the robust combination agree within the bound."""
        if not np.isfinite(gap_se) or gap_se > self.bound:
            raise InfluenceRefused(
                purpose, "robust-agreement",
                f"--robust refused the run: the exact combination and the robust (Huber) "
                f"combination of the sites' estimates differ by more than {self.bound:g} SEs")
