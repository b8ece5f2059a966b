"""Cox and BFI survival over remote sites (Flower SuperNodes): the coordinator holds no rows.

The rounds are those of :func:`securefed.cox_run.run_cox` and
:func:`securefed.bfi_survival_run.run_bfi_survival`, carried by a transport
(:class:`~securefed.transport.flower_rounds.FlowerRounds`) to each site, which
checks its own rows, applies its policy and computes its own vector
(:mod:`securefed.transport.survival_calls`). With no rows at the coordinator
the public spec comes from the formula alone, as for remote GLMs: numeric
covariates (a factor's levels would need the sites' reports) and a status coding
the study states (``0/1`` by default, ``1/2`` or ``logical``); a site whose
rows do not fit refuses (``cannot-compute``). Centre-specific baselines need
each site's own estimate computed from the broadcast fit and are not carried yet.
"""

from __future__ import annotations

import time as clock
from collections.abc import Sequence
from typing import Any

from core_stats.formula import DesignSchema, FormulaError, fixed_column_names
from core_stats.survival_formula import parse_surv_formula
from securefed.coordinator import Coordinator, RemoteSite
from securefed.errors import InputError
from securefed.survival_runtime import audited
from securefed.survival_spec import CoxSiteSpec, StatusCoding

__all__ = ["remote_survival_spec", "run_bfi_survival_remote", "run_cox_remote"]


def remote_survival_spec(formula_text: str, coding: str = "0/1", ties: str = "efron",
                         na_action: str = "omit") -> CoxSiteSpec:
    """The public spec from the formula alone (InputError, one line, if it needs data)."""
    if coding not in ("0/1", "1/2", "logical"):
        raise InputError(f"status coding {coding!r}: choose 0/1, 1/2 or logical")
    try:
        formula = parse_surv_formula(formula_text)
        schema = DesignSchema(formula.model_text)
        names = fixed_column_names(schema)[1:]
    except (FormulaError, ValueError) as err:
        raise InputError(f"{err} (over a remote transport the covariates must be numeric: "
                         "factor levels would need the sites' reports)") from None
    return CoxSiteSpec(formula, schema, names, StatusCoding(coding), ties, na_action)


def _coordinator(transport: Any, site_names: Sequence[str], protection: Any, audit: Any,
                 spec: CoxSiteSpec) -> Coordinator:
    coordinator = Coordinator([RemoteSite(n) for n in sorted(site_names)], protection,
                              audit=audit, transport=transport)
    if coordinator.privacy is not None:
        raise InputError("survival models have no differential-privacy mode "
                         "(docs/survival.md)")
    coordinator.setup(lambda s: s.prepare_cox(spec))
    return coordinator


def run_cox_remote(opts: Any, transport: Any, site_names: Sequence[str], *, protection: Any,
                   audit: Any = None, coding: str = "0/1"):
    """The stratified Cox fit of ``opts`` (:class:`~securefed.cox_run.CoxOptions`) over
    ``transport``; equal to the in-process fit on numeric covariates."""
    from securefed.cox_run import _fit

    started = clock.perf_counter()
    spec = remote_survival_spec(opts.formula, coding, opts.ties, opts.na_action)
    coordinator = _coordinator(transport, site_names, protection, audit, spec)
    return audited(coordinator, lambda: _fit(coordinator, opts, spec, started, []), "cox")


def run_bfi_survival_remote(opts: Any, transport: Any, site_names: Sequence[str], *,
                            protection: Any, audit: Any = None, coding: str = "0/1"):
    """BFI survival of ``opts`` (:class:`~securefed.bfi_survival_run.SurvivalBFIOptions`)
    over ``transport`` (homogeneous layout); equal to the in-process fit."""
    from securefed.bfi_survival_run import _baseline, _check_options, _rounds

    started = clock.perf_counter()
    if opts.stratify:
        raise InputError("--stratify is not available over a remote transport yet: each "
                         "site's own baseline is computed from the broadcast fit")
    model = _baseline(opts)
    _check_options(opts)
    spec = remote_survival_spec(opts.formula, coding)
    coordinator = _coordinator(transport, site_names, protection, audit, spec)
    return audited(coordinator, lambda: _rounds(coordinator, opts, spec, model, started),
                   "bfi")
