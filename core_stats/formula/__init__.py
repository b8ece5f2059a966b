"""R model formulas as data: parse, agree factor levels across sites, build designs.

Nothing in this package evaluates code. :func:`parse_formula` reads the text
into terms (R's ``terms`` and lme4's ``findbars`` semantics), a
:class:`DesignSchema` fixes what every site builds (factor levels agreed from
the sites' own reports, in R's order), and :func:`model_matrix` builds the
columns R's ``model.matrix`` would, with R's (lme4's) column names.
"""

from core_stats.formula.syntax import FormulaError, deparse, parse_expression
from core_stats.formula.terms import ModelFormula, RandomTerm, TermList, parse_formula

__all__ = ["FormulaError", "ModelFormula", "RandomTerm", "TermList", "deparse",
           "parse_expression", "parse_formula"]

from core_stats.formula.design import DesignSchema, column_names  # noqa: E402
from core_stats.formula.frame import (  # noqa: E402
    ModelData,
    RandomDesign,
    fixed_column_names,
    model_data,
    predictor_matrix,
    random_column_names,
)
from core_stats.formula.levels import agree_levels, variable_report  # noqa: E402


def agree_schema(formula_text: str, reports) -> DesignSchema:
    """The schema every site builds, from the sites' own variable reports."""
    return DesignSchema(formula_text, agree_levels(parse_formula(formula_text), reports))


__all__ += ["DesignSchema", "ModelData", "RandomDesign", "agree_levels", "agree_schema",
            "column_names", "fixed_column_names", "model_data", "predictor_matrix",
            "random_column_names", "variable_report"]
