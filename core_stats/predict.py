"""Predictions and tidy tables from a fitted GLMM, for new rows.

Population level: ``mu = g^{-1}(X beta + offset)`` with ``X`` the fixed-effect
design of the new rows (lme4's ``predict(fit, newdata, re.form = NA)``).
Conditional on a group: ``mu = g^{-1}(X beta + offset + Z b_g)``, with ``b_g``
the group's conditional mode. Modes live at the site that holds the group's
rows, so a conditional prediction is made from the modes the site passes in,
never from anything the fit released.

The design of new rows is built under the fit's own schema (its formula and
the factor levels the sites agreed, ``extra["factor_levels"]``), so a
category is coded exactly as in the fit; a level the fit never saw is refused.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from core_stats.families import get_family
from core_stats.formula import DesignSchema, fixed_column_names, predictor_matrix
from core_stats.formula.design import evaluate_numeric

__all__ = ["predict_glmm", "coefficient_frame", "confint_frame"]


def _schema(fit) -> DesignSchema:
    levels = fit.extra.get("factor_levels") or {}
    return DesignSchema(fit.formula, tuple((str(k), tuple(map(str, v)))
                                           for k, v in levels.items()))


def _fixed_columns(fit, schema: DesignSchema) -> list[int]:
    """Positions of the fitted terms among the schema's columns (collinear ones dropped)."""
    names = fixed_column_names(schema)
    terms = [fe.term for fe in fit.fixed_effects]
    unknown = [t for t in terms if t not in names]
    if unknown or any(n not in terms and n not in fit.dropped_columns for n in names):
        raise ValueError(f"the fit's terms cannot be rebuilt from its formula and factor "
                         f"levels (term {(unknown or [''])[0]!r}); predict from a fit made "
                         "by this version")
    return [names.index(t) for t in terms]


def predict_glmm(fit, rows: pd.DataFrame, *, response: bool = True,
                 modes: Mapping[object, np.ndarray] | None = None) -> np.ndarray:
    """Predicted means (or linear predictors) of a :class:`~core_stats.results.GLMMFit`.

    Parameters
    ----------
    fit : GLMMFit
        The fitted model.
    rows : pandas.DataFrame
        New rows with the formula's covariates (and offset columns).
    response : bool
        ``True``: the mean ``g^{-1}(eta)``; ``False``: the linear predictor ``eta``.
    modes : mapping, optional
        Conditional modes ``b_g`` by group label (a site's own, for its groups;
        labels as R writes them, e.g. ``"3"``). Rows of those groups get
        ``eta + Z b_g`` (they need the group column); every other row gets the
        population-level ``eta``.

    Returns
    -------
    numpy.ndarray
        One prediction per row.

    Raises
    ------
    ValueError
        A missing column or value, or a factor level the fit never saw.
    """
    schema = _schema(fit)
    X = predictor_matrix(schema, rows)[:, _fixed_columns(fit, schema)]
    eta = X @ np.array([fe.estimate for fe in fit.fixed_effects])
    for node in schema.parsed.offsets:
        eta = eta + evaluate_numeric(node, rows)
    if modes:
        from core_stats.formula.frame import _random_design

        term = schema.parsed.random[0]
        missing = [g for g in term.group if g not in rows.columns]
        if missing:
            raise ValueError(f"conditional predictions need the group column '{missing[0]}'")
        design = _random_design(term, schema.levels, schema.parsed.variable_nodes, rows)
        for label, mode in modes.items():
            mask = design.groups == str(label)
            if mask.any():
                eta[mask] += design.Z[mask] @ np.asarray(mode, dtype=float)
    return get_family(fit.family, fit.link).mean(eta) if response else eta


def confint_frame(terms, estimate, se, level: float) -> pd.DataFrame:
    """Wald limits ``estimate -/+ z_{(1+level)/2} se`` by term, columns named as R's
    ``confint`` names them (``"2.5 %"``, ``"97.5 %"``)."""
    from core_stats.special import ndtri

    if not 0.0 < level < 1.0:
        raise ValueError("level must lie strictly between 0 and 1")
    estimate, se = np.asarray(estimate, dtype=float), np.asarray(se, dtype=float)
    z = float(ndtri(0.5 + level / 2.0))
    tail = 50.0 * (1.0 - level)
    limits = {f"{tail:g} %": estimate - z * se, f"{100.0 - tail:g} %": estimate + z * se}
    return pd.DataFrame(limits, index=pd.Index(list(terms), name="term"))


def coefficient_frame(rows: list[dict], se_key: str) -> pd.DataFrame:
    """A tidy table, one row per term (the term is the index)."""
    frame = pd.DataFrame(rows)
    return frame.set_index("term").rename(columns={se_key: "std_error"})
