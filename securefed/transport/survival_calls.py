"""Survival models over the site runtime: their site calls and the values those carry.

The stratified Cox model and BFI survival ask a site for:

* ``prepare_cox`` (setup): check its rows against the public
  :class:`~securefed.survival_spec.CoxSiteSpec` and index its stratum;
* ``cox_summary_vector``, ``cox_terms_vector(beta, ties, derivatives)``,
  ``cox_concordance_vector(beta)`` (Cox rounds, :mod:`securefed.cox_run`);
* ``poly_order_vector(max_order, alpha)`` and
  ``bfi_survival_vector(layout, baseline, prior)`` (BFI survival rounds,
  :mod:`securefed.bfi_survival_run`).

The values travel through the strict codec (:mod:`securefed.transport.codec`).
The survival formula travels as its text and is read again on arrival with
the survival parser (a formula is data, never code). The design schema is
read again the same way (:mod:`securefed.transport.calls`). A status coding,
a baseline and a layout are checked as they are rebuilt.
"""

from __future__ import annotations

from typing import Any

from core_stats.bfi_combine import HomogeneousLayout
from core_stats.families import Family, get_family
from core_stats.survival_baselines import Baseline
from core_stats.survival_formula import SurvFormula, parse_surv_formula
from securefed.survival_spec import CoxSiteSpec, StatusCoding
from securefed.transport.codec import CodecError, register_dataclass

__all__ = ["SURVIVAL_RELEASE_METHODS", "SURVIVAL_SETUP_METHODS", "SURVIVAL_THETA_METHODS"]

SURVIVAL_SETUP_METHODS = frozenset({"prepare_cox"})
#: release calls whose value depends on the coordinator's beta
SURVIVAL_THETA_METHODS = frozenset({"cox_terms_vector", "cox_concordance_vector"})
SURVIVAL_RELEASE_METHODS = SURVIVAL_THETA_METHODS | {"cox_summary_vector",
                                                     "poly_order_vector",
                                                     "bfi_survival_vector"}


def _coding(fields: dict[str, Any]) -> StatusCoding:
    coding = StatusCoding(str(fields["kind"]))
    if coding.kind not in ("0/1", "1/2", "logical"):
        raise CodecError("a status coding is 0/1, 1/2 or logical")
    return coding


def _family(name: str, link: str) -> Family:
    from core_stats.bfi_survival import SURVIVAL

    return SURVIVAL if (name, link) == (SURVIVAL.name, SURVIVAL.link) else get_family(name, link)


def _layout(fields: dict[str, Any]) -> HomogeneousLayout:
    names = fields["names"]
    if not isinstance(names, tuple) or not all(isinstance(n, str) for n in names):
        raise CodecError("a layout's names are a tuple of strings")
    return HomogeneousLayout(names, _family(str(fields["family"]), str(fields["link"])))


register_dataclass("core_stats.survival_formula.SurvFormula", SurvFormula,
                   lambda f: {"text": f.text}, lambda fields: parse_surv_formula(
                       str(fields["text"])))
register_dataclass("securefed.survival_spec.StatusCoding", StatusCoding,
                   lambda c: {"kind": c.kind}, _coding)
register_dataclass("securefed.survival_spec.CoxSiteSpec", CoxSiteSpec)
register_dataclass("core_stats.survival_baselines.Baseline", Baseline)
register_dataclass("core_stats.bfi_combine.HomogeneousLayout", HomogeneousLayout,
                   lambda layout: {"names": tuple(layout.names), "family": layout.family.name,
                                   "link": layout.family.link}, _layout)
