"""Differential privacy over Flower: each site adds its own noise and keeps its own budget.

In-process, :meth:`securefed.privacy.PrivacyGuard.apply` runs the DP step of
every site. Over Flower the step runs **at each site**, with the same
function (:meth:`securefed.privacy.SitePrivacy.release`), and the site trusts
the coordinator with nothing that decides how private it is:

* its budget (ε, δ) and the ledger file come from its own node config,
  never from the coordinator; the ledger persists on the site's disk across
  ClientApp processes and runs (a file lock makes check-and-charge atomic);
* the round's ``dp`` query (purpose, Δ, ρ, units, m) is checked: Δ and the
  units must be at least what the site derives itself from the call it is
  asked to compute (:func:`derived_sensitivity`; a method without a derivable
  Δ is not released under DP), post-processing claims are refused (the site
  cannot verify them), and m must be at most what the layer makes the site
  itself enforce (:func:`noise_contributors`): the round's
  ``min_contributors`` under ``secagg``, whose SecAgg state refuses to
  unmask below it, so dropouts cannot lower the noise; 1 otherwise;
* ``privacy-required = true`` makes the site refuse every round without a DP
  query; a site without a budget refuses every round with one.

Node config (``flower-supernode --node-config``)::

    privacy-epsilon=2.0 privacy-delta=1e-6 privacy-ledger="/srv/site-A/privacy.json"
    privacy-required=true

The round, with two phases in the exchanges secure aggregation already has:

1. ``open``: the site computes its vector, checks the query and that its
   ledger can pay (:meth:`SiteDp.admit`, nothing charged) and answers a
   receipt: the calibration it will use. The coordinator goes on only if
   every site sent a receipt matching its own calibration
   (:func:`check_receipts`): a site that would release without noise (an
   older ClientApp ignoring ``dp``) or with other noise stops the round
   before any vector leaves a site. Any refusal over budget raises
   :class:`SiteBudgetExceeded` and nobody has been charged.
2. the release (``masked_input`` under ``secagg``, ``open`` under ``none``):
   the site charges its ledger, then adds its noise share
   (:meth:`SiteDp.release`). A site whose budget was spent meanwhile (another
   run) refuses here and drops out; a charged site whose round later aborts
   stays charged (the conservative direction).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from protocols.dp import PrivacyLedger, zcdp_epsilon
from protocols.errors import PrivacyBudgetExceeded, ProtocolError
from securefed.privacy import DpQuery, SitePrivacy, calibrate, release_label

__all__ = ["SiteBudget", "SiteDp", "SiteBudgetExceeded", "DpRefused", "derived_sensitivity",
           "noise_contributors", "query_to_json", "query_from_json", "check_receipts",
           "raise_budget_refusals"]

EPSILON, DELTA, LEDGER, REQUIRED = ("privacy-epsilon", "privacy-delta", "privacy-ledger",
                                    "privacy-required")
_RELATIVE = 1e-12  # float slack when comparing stated and derived sensitivities


class SiteBudgetExceeded(PrivacyBudgetExceeded):
    """A site refused a release over its own budget; nothing of the round was released."""


class DpRefused(ProtocolError):
    """A site (or the coordinator) refused a round whose DP terms it cannot accept."""


@dataclass(frozen=True)
class SiteBudget:
    """A site's own privacy settings, from its node config."""

    epsilon: float
    delta: float
    ledger: Path
    required: bool

    @classmethod
    def from_node_config(cls, config: Mapping[str, Any]) -> SiteBudget | None:
        """None if the site has no budget (then it must not be DP-required)."""
        required = _flag(config.get(REQUIRED, False))
        if EPSILON not in config:
            if required:
                raise DpRefused(f"node config: {REQUIRED} needs {EPSILON} and {LEDGER}")
            return None
        if LEDGER not in config:
            raise DpRefused(f"node config: {EPSILON} needs {LEDGER} (a file on this site's "
                            "disk that keeps its spending across runs)")
        epsilon, delta = float(config[EPSILON]), float(config.get(DELTA, 1e-6))
        if not (math.isfinite(epsilon) and epsilon > 0 and 0 < delta < 1):
            raise DpRefused(f"node config: {EPSILON} must be positive and {DELTA} in (0, 1)")
        return cls(epsilon, delta, Path(str(config[LEDGER])), required)

    @contextmanager
    def ledger_locked(self, site_name: str, rng: Any = None) -> Iterator[SitePrivacy]:
        """The site's ledger, read from disk under an exclusive lock held until exit
        (``rng``: its noise source; default the OS's)."""
        self.ledger.parent.mkdir(parents=True, exist_ok=True)
        with SitePrivacy(site_name, PrivacyLedger(self.epsilon, self.delta),
                         self.ledger, rng).locked() as site:
            yield site


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in ("true", "false", "1", "0", "yes", "no"):
        raise DpRefused(f"node config: {REQUIRED} must be true or false, not {value!r}")
    return text in ("true", "1", "yes")


def noise_contributors(layer: str, min_contributors: int, n_sites: int) -> int:
    """The m a site's noise share may be sized for under ``layer``.

    Only secure aggregation makes the site itself refuse a sum of fewer than
    ``min_contributors`` (its SecAgg state does not unmask below it); under
    any other layer the site cannot rely on other shares, so m = 1.
    """
    return min(min_contributors, n_sites) if layer == "secagg" else 1


# ------------------------------------------------------------------ wire
def query_to_json(query: DpQuery, min_contributors: int, plan_rho: float = 0.0) -> str:
    """The ``dp`` field of an ``open`` request.

    ``plan_rho``: the ρ the run still plans to spend, this round included; a
    site refuses the round if its ledger cannot pay all of it, so a run its
    budget cannot finish stops before its first release, not halfway.
    """
    units = None if query.log2_units is None else [int(u) for u in query.log2_units]
    return json.dumps({"purpose": query.purpose, "sensitivity": query.sensitivity,
                       "rho": query.rho, "log2_units": units,
                       "post_processing": query.post_processing,
                       "local_length": query.local_length,
                       "min_contributors": int(min_contributors),
                       "plan_rho": float(plan_rho)}, sort_keys=True)


def query_from_json(text: str) -> tuple[DpQuery, int]:
    data = json.loads(text)
    units = data["log2_units"]
    local = data.get("local_length")
    query = DpQuery(str(data["purpose"]), float(data["sensitivity"]), float(data["rho"]),
                    None if units is None else np.asarray(units, dtype=np.int64),
                    bool(data["post_processing"]), None if local is None else int(local))
    return query, int(data["min_contributors"])


# ----------------------------------------------------------- sensitivity
def derived_sensitivity(call) -> tuple[float, np.ndarray | None]:
    """Δ and units of ``call``'s vector, derived at the site from the call's own arguments.

    The clipping that makes Δ hold runs inside the call (see
    :mod:`securefed.dp_statistics`), so the arguments fix Δ.
    """
    from securefed.dp_statistics import summary_sensitivity, terms_query

    kwargs = call.kwargs
    if call.method in ("dp_summary_vector", "dp_bfi_stats_vector"):
        return summary_sensitivity(kwargs["clip"], kwargs["outcome_bound"]), None
    if call.method == "count_vector":  # [n, 1]: one record moves n by one
        return 1.0, None
    if call.method == "dp_terms_vector":
        query = terms_query("", kwargs["layout"], tuple(kwargs["units"]), 1.0,
                            bool(kwargs["hessian"]))
        return query.sensitivity, query.log2_units
    raise DpRefused(f"Site.{call.method} has no sensitivity this site can derive; it is not "
                    "released under differential privacy")


# ------------------------------------------------------------- the site
@dataclass
class SiteDp:
    """One site's DP terms for one round (``query`` None: the round has no DP query)."""

    site_name: str
    budget: SiteBudget | None
    query: DpQuery | None
    min_contributors: int
    round_id: int
    params: Any  # flower_wire.RoundParams
    receipt: dict[str, str] = field(default_factory=dict)  # set by admit, for the open reply
    spent: dict[str, float] = field(default_factory=dict)  # set by release, for the audit log
    plan_rho: float = 0.0  # what the run still plans to spend, this round included
    rng: Any = None  # the noise source (None: the OS's; a simulated site: its own, in-process)

    @classmethod
    def for_round(cls, node_config: Mapping[str, Any], site_name: str, dp_text: str | None,
                  params, rng: Any = None) -> SiteDp:
        """Refuse (:class:`DpRefused`) a round this site may not serve as asked.

        ``rng``: the site's noise source (default the OS's).
        """
        budget = SiteBudget.from_node_config(node_config)
        if not dp_text:
            if budget is not None and budget.required:
                raise DpRefused(f"site {site_name} releases only under differential privacy "
                                "and this round has no DP query")
            return cls(site_name, budget, None, 0, params.round_id, params, rng=rng)
        query, m = query_from_json(dp_text)
        if budget is None:
            raise DpRefused(f"site {site_name} has no privacy budget in its node config; it "
                            "does not take part in differentially private rounds")
        if query.post_processing:
            raise DpRefused("a post-processing release cannot be verified by the site")
        highest = noise_contributors(params.layer, params.min_contributors, len(params.sites))
        if not 1 <= m <= highest:
            raise DpRefused(f"noise sized for {m} contributors, but layer {params.layer!r} "
                            f"guarantees at most {highest}")
        if query.local_length is not None and m != 1:
            raise DpRefused("a vector the site noises for itself and keeps takes its whole "
                            "noise (m = 1)")
        site = cls(site_name, budget, query, m, params.round_id, params, rng=rng)
        site.plan_rho = float(json.loads(dp_text).get("plan_rho", 0.0))
        return site

    def admit(self, call, length: int) -> None:
        """Check the query against the call and the ledger, charging nothing; keep the receipt."""
        if self.query is None:
            return
        query = self.query
        delta, units = derived_sensitivity(call)
        if query.sensitivity < delta * (1.0 - _RELATIVE):
            raise DpRefused(f"the round states sensitivity {query.sensitivity:g} for "
                            f"Site.{call.method}; the site derives {delta:g}")
        stated = query.units(length)
        if not np.array_equal(stated, np.zeros(length, np.int64) if units is None else units):
            raise DpRefused(f"the round's units do not match Site.{call.method}'s vector")
        if query.local_length is not None and length != query.local_length:
            raise DpRefused(f"the round states {query.local_length} values noised at the site; "
                            f"Site.{call.method} gives {length}")
        cal = calibrate(query, length, self.min_contributors)
        if self.params.layer != "none" and query.local_length is None:  # kept local: no grid
            finest = self.params.config(length).encoder.frac_bits
            if np.any(-(stated + cal.grid_bits) > finest):
                raise DpRefused("the DP grid is finer than the secure sum's fixed-point "
                                "encoding: lower the bound")
        with self.budget.ledger_locked(self.site_name) as site:
            refused = site.refusal(query, cal.release(release_label(query, self.round_id)),
                                   self.round_id)
            if refused is not None:
                raise refused
            self._check_plan(site.ledger)
            spent = site.ledger.epsilon_spent
        self.receipt = {"dp": json.dumps({
            "sigma": cal.local_sigma, "grid_bits": cal.grid_bits, "dimension": cal.dimension,
            "min_contributors": cal.min_contributors, "epsilon_spent": spent,
            "epsilon": self.budget.epsilon}, sort_keys=True)}

    def _check_plan(self, ledger) -> None:
        """Refuse a run whose remaining plan this site's budget cannot pay."""
        epsilon, delta = self.budget.epsilon, self.budget.delta
        needed = zcdp_epsilon(ledger.rho_spent + self.plan_rho, delta)
        if self.plan_rho > 0 and needed > epsilon * (1.0 + 1e-9):
            raise PrivacyBudgetExceeded(
                f"site {self.site_name}: the run plans rho={self.plan_rho:.4g} more from round "
                f"{self.round_id} on, which would bring the total to epsilon={needed:.4g} at "
                f"delta={delta:g}; the budget is epsilon={epsilon:g} and "
                f"{ledger.epsilon_spent:.4g} is spent. Nothing was released.")

    def noise_sd(self, length: int) -> float:
        """The largest per-coordinate SD of this site's noise on a ``length`` vector."""
        cal = calibrate(self.query, length, self.min_contributors)
        units = self.query.units(length)
        return float(np.max(cal.local_sigma * np.ldexp(1.0, units + cal.grid_bits)))

    def release(self, vector: np.ndarray) -> np.ndarray:
        """What leaves the site: charged and noised under a DP query, else unchanged."""
        if self.query is None:
            return vector
        with self.budget.ledger_locked(self.site_name, self.rng) as site:
            noisy = site.release(vector, self.query, self.round_id, self.min_contributors)
            self.spent = site.fields()
        return noisy


# ------------------------------------------------------- the coordinator
def check_receipts(replies: Mapping[str, Mapping], query: DpQuery, min_contributors: int,
                   length: int) -> None:
    """Every site confirmed the noise the coordinator computed; :class:`DpRefused` if not."""
    expected = calibrate(query, length, min_contributors)
    for name, reply in sorted(replies.items()):
        if "dp" not in reply:
            raise DpRefused(f"site {name} did not confirm that it adds DP noise (a ClientApp "
                            "without DP?); nothing was released")
        receipt = json.loads(str(reply["dp"]))
        if (receipt["grid_bits"], receipt["dimension"], receipt["min_contributors"]) != (
                expected.grid_bits, expected.dimension, expected.min_contributors) or not \
                math.isclose(receipt["sigma"], expected.local_sigma, rel_tol=1e-9):
            raise DpRefused(f"site {name} would add other noise than the coordinator "
                            "computed; nothing was released")


def raise_budget_refusals(errors: Mapping[str, str]) -> None:
    """:class:`SiteBudgetExceeded` if any site refused over its budget."""
    from securefed.transport.refusal import Refusal

    over = {n: e for n, e in errors.items() if e.startswith(Refusal.BUDGET.value + ":")}
    if over:
        raise SiteBudgetExceeded("; ".join(f"{n}: {e}" for n, e in sorted(over.items())))
