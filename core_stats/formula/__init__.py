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

# The design half (numpy, pandas) loads on first use, so parsing a formula, e.g. the
# command line's checks before any work (securefed.preflight), imports neither.
_LAZY = {"DesignSchema": "design", "column_names": "design", "ModelData": "frame",
         "RandomDesign": "frame", "fixed_column_names": "frame", "model_data": "frame",
         "predictor_matrix": "frame", "random_column_names": "frame",
         "agree_levels": "levels", "variable_report": "levels"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'core_stats.formula' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"core_stats.formula.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def agree_schema(formula_text: str, reports):
    """The schema every site builds, from the sites' own variable reports."""
    from core_stats.formula.design import DesignSchema
    from core_stats.formula.levels import agree_levels

    return DesignSchema(formula_text, agree_levels(parse_formula(formula_text), reports))


__all__ += ["DesignSchema", "ModelData", "RandomDesign", "agree_levels", "agree_schema",
            "column_names", "fixed_column_names", "model_data", "predictor_matrix",
            "random_column_names", "variable_report"]
