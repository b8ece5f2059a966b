"""The factor-levels round of a remote run: the sites' own reports, agreed at the coordinator.

Over a remote transport the coordinator holds no rows, so before any fit it
asks every site for its variable report (:meth:`securefed.site.Site.variable_report`:
which variables are numbers and which category labels a text column holds,
never counts; each site's policy decides first,
:meth:`securefed.policy.guard.SiteGuard.report`), checks each report's shape,
and agrees the levels as in-process (:func:`core_stats.formula.agree_schema`):
the union in R's order. The sites then receive the :class:`DesignSchema`
(formula text and levels) and each rebuilds its own design from it, refusing
if its rows hold a category the schema lacks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from core_stats.formula import DesignSchema, FormulaError, agree_schema, parse_formula
from securefed.errors import InputError

__all__ = ["remote_schema"]

MAX_LEVELS = 1000  # a factor with more levels than a design may have columns is refused


def remote_schema(transport, formula_text: str, site_names: Sequence[str],
                  audit=None) -> DesignSchema:
    """The schema agreed from the sites' reports (one exchange, no sum).

    ``audit``: the run's audit trail; its context travels with the request, so
    a site that pins its registry checks the run's before it reports.

    A transport without the round (it carries sums only) gets the formula's
    schema without levels; a site whose rows hold text then refuses the fit.
    """
    formula = parse_formula(formula_text)
    ask = getattr(transport, "variable_reports", None)
    if ask is None:
        return DesignSchema(formula_text)
    context = None if audit is None else audit.remote_context()
    reports = ask(formula_text, list(site_names), audit=context)
    keys = {key for key, _ in formula.variables}
    for name, report in sorted(reports.items()):
        _check_report(name, report, keys)
    try:
        return agree_schema(formula_text, [reports[n] for n in sorted(reports)])
    except FormulaError as err:
        raise InputError(str(err)) from None


def _check_report(site: str, report: Mapping, keys: set[str]) -> None:
    """A report names only the formula's variables (and a text outcome), as kinds or labels."""
    for key, entry in report.items():
        if key not in keys and not str(key).startswith("~"):
            raise InputError(f"site {site} reported a variable the formula does not have")
        if entry == "numeric":
            continue
        levels = entry.get("levels") if isinstance(entry, dict) else None
        if (not isinstance(levels, list) or len(levels) > MAX_LEVELS
                or not all(isinstance(v, str) for v in levels)
                or not isinstance(entry.get("numeric"), bool)):
            raise InputError(f"site {site} sent a malformed variable report")
