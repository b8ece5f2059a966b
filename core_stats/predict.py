"""Predictions and tidy tables from a fitted GLMM, for new rows.

Population level: ``mu = g^{-1}(X beta)`` with ``X`` the fixed-effect design
of the new rows. Conditional on a group: ``mu = g^{-1}(X beta + Z b_g)``,
with ``b_g`` the group's conditional mode. Modes live at the site that holds
the group's rows, so a conditional prediction is made from the modes the
site passes in, never from anything the fit released.

The fixed design of new rows is rebuilt from the formula; it is used only
when it has exactly the fitted terms and every covariate is numeric, so a
category coded differently in the new rows (another reference level, a
missing level) is refused instead of predicted silently wrong.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from core_stats.design import fixed_design, parse_mixed_formula
from core_stats.families import get_family

__all__ = ["predict_glmm", "coefficient_frame", "confint_frame"]


def _numeric_design(rhs: str, rows: pd.DataFrame, terms: tuple[str, ...], what: str
                    ) -> np.ndarray:
    text = [c for c in rows.columns if not (pd.api.types.is_numeric_dtype(rows[c])
                                            or pd.api.types.is_bool_dtype(rows[c]))]
    try:
        X, names = fixed_design(rhs, rows)
    except ValueError as err:
        raise ValueError(f"cannot build the {what} design of the new rows: {err}") from None
    if tuple(names) != tuple(terms):
        hint = (f" (non-numeric columns: {', '.join(map(str, text[:5]))}; code a category "
                "as 0/1 columns)" if text else "")
        raise ValueError(f"the new rows give the {what} terms {list(names)}, the fit has "
                         f"{list(terms)}{hint}")
    return X


def predict_glmm(fit, rows: pd.DataFrame, *, response: bool = True,
                 modes: Mapping[object, np.ndarray] | None = None,
                 group_column: str | None = None) -> np.ndarray:
    """Predicted means (or linear predictors) of a :class:`~core_stats.results.GLMMFit`.

    Parameters
    ----------
    fit : GLMMFit
        The fitted model.
    rows : pandas.DataFrame
        New rows with the formula's covariates (numeric).
    response : bool
        ``True``: the mean ``g^{-1}(eta)``; ``False``: the linear predictor ``eta``.
    modes : mapping, optional
        Conditional modes ``b_g`` by group label (a site's own, for its groups).
        Rows whose group has a mode get ``eta = X beta + Z b_g``; rows of any
        other group get the population-level ``X beta``.
    group_column : str, optional
        The column naming each row's group (default: the formula's group).

    Returns
    -------
    numpy.ndarray
        One prediction per row.

    Raises
    ------
    ValueError
        If the rows do not give the fitted terms.
    """
    formula = parse_mixed_formula(fit.formula)
    terms = tuple(fe.term for fe in fit.fixed_effects)
    X = _numeric_design(formula.fixed, rows, terms, "fixed-effect")
    beta = np.array([fe.estimate for fe in fit.fixed_effects])
    eta = X @ beta
    if modes:
        column = group_column or formula.group
        if column not in rows.columns:
            raise ValueError(f"conditional predictions need the group column '{column}'")
        random_terms = tuple(re.term for re in fit.random_effects
                             if re.group == formula.group)
        Z = _numeric_design(formula.random, rows, random_terms, "random-effect")
        labels = rows[column].to_numpy()
        for label, mode in modes.items():
            mask = labels == label
            if mask.any():
                eta[mask] += Z[mask] @ np.asarray(mode, dtype=float)
    return get_family(fit.family).mean(eta) if response else eta


def confint_frame(terms, estimate, se, level: float) -> pd.DataFrame:
    """Wald limits ``estimate -/+ z_{(1+level)/2} se`` by term, columns named as R's
    ``confint`` names them (``"2.5 %"``, ``"97.5 %"``)."""
    from scipy.special import ndtri

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
