"""A site: its rows, its derived designs and its warm-start state.

A site never hands out its rows; it only computes the vectors the model asks
for (sums over its own rows), which the protection stack then carries.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from core_stats.design import GroupedRows, grouped_rows
from core_stats.families import Family
from core_stats.formula import DesignSchema
from core_stats.glmm import ParameterLayout, site_terms
from securefed.vectors import pack_terms, upper_triangle

__all__ = ["BFISiteSpec", "GLMMSiteDesign", "Site", "bfi_terms_from_noisy_stats",
           "bfi_terms_length"]

TINY_SITE_ROWS = 10


class SiteDataError(ValueError):
    """The site's own rows cannot give the statistic asked for (refused as cannot-compute)."""


@dataclass(frozen=True)
class GLMMSiteDesign:
    """The public model spec a site needs to build its own design.

    ``schema`` is the formula text and the agreed factor levels: the site
    re-reads the formula with the project's parser (data, never code).
    """

    schema: DesignSchema
    family: Family
    nagq: int
    na_action: str = "omit"
    weights: str | None = None  # the column of prior weights (glmer's weights=)


@dataclass(frozen=True, eq=False)
class BFISiteSpec:
    """The public BFI model a site fits locally (homogeneous layout).

    ``names`` are the consortium's parameter names (a site whose design has
    other columns refuses); ``standardize`` lists ``(column, mean, sd)``
    from the pooled standardisation round, applied to the site's rows first;
    ``weights`` names the column of prior weights (glm's ``weights=``).
    """

    schema: DesignSchema
    family: Family
    prior: np.ndarray
    names: tuple[str, ...]
    standardize: tuple[tuple[str, float, float], ...] = ()
    weights: str | None = None


def _bfi_layout(spec: BFISiteSpec):
    from core_stats import bfi

    names = tuple(spec.names) + ((bfi.SCALE_NAME,) if spec.family.has_dispersion else ())
    return bfi.HomogeneousLayout(names, spec.family)


def bfi_terms_length(spec: BFISiteSpec) -> int:
    """Length of a site's homogeneous BFI vector for ``spec``."""
    return _bfi_layout(spec).length


def bfi_terms_from_noisy_stats(spec: BFISiteSpec, noisy: np.ndarray,
                               noise_sd: float) -> np.ndarray:
    """The BFI site vector of the local fit from noisy statistics (post-processing).

    ValueError if the noisy statistics admit no fit (a larger epsilon helps).
    """
    from core_stats import bfi
    from securefed.dp_statistics import local_fit_from_stats

    try:
        local = local_fit_from_stats(noisy, tuple(spec.names), spec.family, spec.prior,
                                     noise_sd)
    except (bfi.MAPConvergenceError, np.linalg.LinAlgError) as err:
        raise ValueError(f"the local fit from noisy statistics failed ({err}); a larger "
                         "epsilon or a smaller clip helps") from None
    return _bfi_layout(spec).site_vector(local)


def _site_seed(seed: int, name: str) -> np.random.Generator:
    """A site's own stream from the run's seed: the same call gives each site its own."""
    import hashlib

    digest = hashlib.sha256(name.encode()).digest()
    return np.random.default_rng([int(seed), *np.frombuffer(digest[:8], dtype="<u4")])


class Site:
    """One data holder in the federation."""

    def __init__(self, name: str, frame: pd.DataFrame) -> None:
        self.name = str(name)
        self._frame = frame.reset_index(drop=True)
        self._rows: GroupedRows | None = None
        self._validation: GroupedRows | None = None
        self._modes: dict[tuple[bool, int], np.ndarray] = {}
        self._design: GLMMSiteDesign | None = None
        self._omitted = 0
        self._multi = None  # rows of a model with several random-effects terms
        self._level_key: bytes | None = None  # the consortium's level key (level_sketch)
        self._cox = None
        self._checked = None  # (key, ModelData) of outcome_for_checks, for prepare_glmm once

    def __repr__(self) -> str:
        return f"Site({self.name!r}, rows={len(self._frame)})"

    @property
    def n_rows(self) -> int:
        return len(self._frame)

    def warnings(self) -> list[str]:
        if self.n_rows < TINY_SITE_ROWS:
            return [f"site {self.name} has only {self.n_rows} rows: its terms are noisy and "
                    "a small site's sums reveal more about each patient"]
        return []

    # ------------------------------------------------------------ GLMM
    def prepare_glmm(self, design: GLMMSiteDesign, keep_columns: np.ndarray | None = None,
                     validation_fraction: float = 0.0, seed: int | None = None) -> None:
        """Build this site's grouped design; optionally hold out validation rows.

        With ``validation_fraction > 0`` the site draws its own split from
        its own stream (the run's ``seed`` mixed with the site's name); the
        model is then fitted on the training rows and the held-out rows serve
        model selection and AUC.
        """
        data = self._model_data(design.schema, design.na_action, design.weights)
        X = data.X if keep_columns is None else data.X[:, keep_columns]
        (random,) = data.random
        y, Z, groups = data.y, random.Z, random.groups
        offset, weights = data.offset, data.weights
        self._omitted = data.n_omitted
        self._validation = None
        if validation_fraction > 0:
            rng = np.random.default_rng() if seed is None else _site_seed(seed, self.name)
            held_out = rng.random(len(y)) < validation_fraction
            self._validation = grouped_rows(
                y[held_out], X[held_out], Z[held_out], groups[held_out],
                None if offset is None else offset[held_out],
                None if weights is None else weights[held_out])
            y, X, Z, groups = y[~held_out], X[~held_out], Z[~held_out], groups[~held_out]
            offset = None if offset is None else offset[~held_out]
            weights = None if weights is None else weights[~held_out]
        self._rows = grouped_rows(y, X, Z, groups, offset, weights)
        self._multi = None
        self._design = design
        self._modes.clear()

    def prepare_glmm_multi(self, design: GLMMSiteDesign) -> None:
        """Build this site's rows for several random-effects terms (its top-level blocks)."""
        from core_stats.formula import model_data
        from core_stats.glmm_multi import multi_rows, terms_from_designs

        data = model_data(design.schema, self._frame, na_action=design.na_action,
                          weights_column=design.weights)
        terms = terms_from_designs(data.random)
        self._multi = multi_rows(data.y, data.X, terms, data.offset, data.weights)
        self._multi_terms = tuple(replace(t, Z=t.Z[:0], group_codes=t.group_codes[:0])
                                  for t in terms)
        self._rows = None
        self._design = design
        self._modes.clear()

    @property
    def multi_rows(self):
        if self._multi is None:
            raise RuntimeError("prepare_glmm_multi() must run before the site computes terms")
        return self._multi

    @property
    def multi_random_designs(self) -> tuple:
        """The terms' names, columns and correlation flags (no rows): public structure."""
        self.multi_rows  # noqa: B018 - prepared first
        return self._multi_terms

    def multi_group_counts(self) -> dict[str, int]:
        """Levels per grouping factor at this site (lme4's 'groups:' line, summed)."""
        rows = self.multi_rows
        return {t.name: n for t, n in zip(self._multi_terms, rows.n_levels(), strict=True)}

    def multi_terms_vector(self, layout, theta: np.ndarray, derivatives: bool) -> np.ndarray:
        """``[l, grad, upper(Hessian)]`` (or ``[l]``) of this site's Laplace terms."""
        from core_stats.glmm_multi_laplace import multi_site_terms

        key = ("multi", layout)
        terms = multi_site_terms(self.multi_rows, self._design.family, layout, theta,
                                 derivatives=derivatives, start_modes=self._modes.get(key))
        self._modes[key] = terms.modes
        if derivatives:
            return pack_terms(terms.loglik, terms.gradient, terms.hessian)
        return pack_terms(terms.loglik, None, None)

    def multi_counts_vector(self) -> np.ndarray:
        """``[rows, levels of each term]`` (summed over sites: lme4's 'groups:' line)."""
        rows = self.multi_rows
        return np.array([float(rows.n_rows), *(float(n) for n in rows.n_levels())])

    def use_level_key(self, key: bytes) -> None:
        """The consortium's level key, from the site's own node config (never a call)."""
        self._level_key = bytes(key)

    def level_sketch_vector(self, request) -> np.ndarray:
        """This site's 0/1 bins of one stage of the level sketch
        (:mod:`securefed.level_sketch`): is a level of a factor in two sites?"""
        from securefed.level_sketch import sketch_vector

        if self._level_key is None:
            raise SiteDataError("this site has no level key (node config 'level-key'): it "
                                "cannot check that its groups are its own")
        return sketch_vector(request, self.multi_rows.level_labels, self._level_key)

    def count_vector(self, schema: DesignSchema | None = None,
                     weights: str | None = None) -> np.ndarray:
        """``[rows, 1]``: this site's row count and one site (BFI's set-up round).

        With ``schema`` the rows the model uses: those with no missing value in
        a column it reads (R's ``na.omit``), as the site's local fit counts them.
        """
        if schema is None:
            return np.array([float(self.n_rows), 1.0])
        from core_stats.formula.frame import incomplete_rows

        used = int((~incomplete_rows(schema, self._frame, weights)).sum())
        return np.array([float(used), 1.0])

    def glmm_counts_vector(self) -> np.ndarray:
        """``[rows, groups]`` of the prepared GLMM design."""
        rows = self._require_rows()
        return np.array([float(rows.n_rows), float(rows.n_groups)])

    def design_summary_vector(self) -> np.ndarray:
        """``[n, sum y, sum y^2, X'y, upper(X'X)]``: counts, start values, collinearity.

        With prior weights ``w`` each sum is weighted (``n = sum w``, ``X'WX``).
        """
        rows = self._multi if self._multi is not None else self._require_rows()
        w = np.ones(rows.n_rows) if rows.weights is None else rows.weights
        wy = w * rows.y
        return np.concatenate([[w.sum(), wy.sum(), wy @ rows.y], rows.X.T @ wy,
                               upper_triangle(rows.X.T @ (w[:, None] * rows.X))])

    def dp_summary_vector(self, clip: float, outcome_bound: float) -> np.ndarray:
        """The design summary over clipped records, plus their count (see dp_statistics)."""
        from securefed.dp_statistics import summary_vector

        rows = self._require_rows()
        return summary_vector(rows.X, rows.y, clip, outcome_bound, self._design.family.name,
                              rows.n_groups)

    def dp_terms_vector(self, layout: ParameterLayout, theta: np.ndarray,
                        units: tuple[int, int], hessian: bool = True) -> np.ndarray:
        """``[gradient, upper(Hessian)]`` (or the gradient) with each group's part clipped."""
        from securefed.dp_statistics import clipped_terms_vector

        rows = self._require_rows()
        key = (layout.random_effects, layout.q)
        vector, modes = clipped_terms_vector(rows, self._design.family, layout, theta,
                                             self._design.nagq, units, self._modes.get(key),
                                             hessian)
        self._modes[key] = modes
        return vector

    def glmm_terms_vector(self, layout: ParameterLayout, theta: np.ndarray,
                          derivatives: bool) -> np.ndarray:
        """``[l, grad, upper(Hessian)]`` (or ``[l]``) of this site's marginal log-lik."""
        rows = self._require_rows()
        key = (layout.random_effects, layout.q)
        terms = site_terms(rows, self._design.family, layout, theta, nagq=self._design.nagq,
                           start_modes=self._modes.get(key), derivatives=derivatives)
        if derivatives:
            self._modes[key] = terms.modes
            packed = pack_terms(terms.loglik, terms.gradient, terms.hessian)
            if terms.boundary_score is not None:
                packed = np.concatenate([packed, upper_triangle(terms.boundary_score)])
            return packed
        return pack_terms(terms.loglik, None, None)

    def glmm_reml_vector(self, layout: ParameterLayout, theta: np.ndarray) -> np.ndarray:
        """This site's ``X'V^-1 X`` and its derivatives in the variance parameters (REML;
        :mod:`core_stats.glmm_reml`), packed; Gaussian models without weights only."""
        from core_stats.glmm_reml import pack_reml, reml_site_terms

        rows = self._require_rows()
        if not self._design.family.reml or rows.weights is not None:
            raise SiteDataError("REML terms are defined for Gaussian models without weights")
        return pack_reml(reml_site_terms(rows, layout, theta))

    def validation_loglik_vector(self, layout: ParameterLayout, theta: np.ndarray) -> np.ndarray:
        """``[l_val, n_val]``: the marginal log-likelihood of the held-out rows."""
        if self._validation is None or self._validation.n_rows == 0:
            return np.zeros(2)
        terms = site_terms(self._validation, self._design.family, layout, theta,
                           nagq=self._design.nagq, derivatives=False)
        return np.array([terms.loglik, self._validation.n_rows])

    def validation_histograms(self, layout: ParameterLayout, theta: np.ndarray,
                              bins: int) -> np.ndarray:
        """Score histograms ``[positives, negatives]`` of the held-out rows.

        Scores are conditional means, with each group's random effect taken
        from the training rows' conditional mode (0 for a group with none).
        """
        edges = np.linspace(0.0, 1.0, bins + 1)
        val = self._validation
        if val is None or val.n_rows == 0:
            return np.zeros(2 * bins)
        lam = layout.lambda_matrix(theta)
        modes = self._modes.get((layout.random_effects, layout.q))
        b = np.zeros((val.n_groups, layout.q))
        if modes is not None:
            index = {label: g for g, label in enumerate(self._require_rows().group_labels)}
            for g, label in enumerate(val.group_labels):
                if label in index:
                    b[g] = lam @ modes[index[label]]
        eta = val.X @ theta[layout.beta] + np.einsum("nr,nr->n", val.Z, b[val.group_of_row])
        if val.offset is not None:
            eta = eta + val.offset
        score = self._design.family.mean(eta)
        pos = np.histogram(score[val.y == 1], edges)[0]
        neg = np.histogram(score[val.y == 0], edges)[0]
        return np.concatenate([pos, neg]).astype(float)

    # ------------------------------------------------------------ BFI
    def standardize_vector(self, columns: tuple[str, ...], schema: DesignSchema | None = None,
                           weights: str | None = None) -> np.ndarray:
        """``[n, Σx, Σx²]`` of ``columns`` (the pooled standardisation round); with
        ``schema`` over the rows the model uses (:meth:`count_vector`)."""
        from core_stats.standardize import StandardizeLayout

        frame = self._frame
        if schema is not None:
            from core_stats.formula.frame import incomplete_rows

            frame = frame.loc[~incomplete_rows(schema, frame, weights)]
        values = frame[list(columns)].to_numpy(dtype=float)
        return StandardizeLayout(len(columns)).site_vector(values)

    def bfi_terms_vector(self, spec: BFISiteSpec) -> np.ndarray:
        """This site's local MAP fit of ``spec``, as BFI's homogeneous site vector."""
        from core_stats import bfi

        data = self._bfi_design(spec)
        try:
            local = bfi.fit_map(data.X, data.y, spec.family, spec.prior, names=spec.names,
                                offset=data.offset, weights=data.weights)
        except (ValueError, bfi.MAPConvergenceError, np.linalg.LinAlgError) as err:
            raise SiteDataError(f"site {self.name}: the local fit failed") from err
        return bfi.HomogeneousLayout(local.names, spec.family).site_vector(local)

    def dp_bfi_stats_vector(self, spec: BFISiteSpec, clip: float,
                            outcome_bound: float) -> np.ndarray:
        """The clipped sufficient statistics of ``spec``'s design (BFI under DP).

        The site noises them for itself, keeps them, and releases only the
        terms of its local fit from them (:func:`bfi_terms_from_noisy_stats`).
        """
        from securefed.dp_statistics import summary_vector

        data = self._bfi_design(spec)
        if data.offset is not None or data.weights is not None:  # the sensitivity assumes none
            raise ValueError(f"site {self.name}: offsets, weights and cbind() have no "
                             "differentially private BFI statistics")
        return summary_vector(data.X, data.y, clip, outcome_bound, spec.family.name)

    def _bfi_design(self, spec: BFISiteSpec):
        from core_stats.formula import model_data

        frame = self._frame
        if spec.standardize:
            frame = frame.assign(**{c: (frame[c].to_numpy(dtype=float) - m) / s
                                    for c, m, s in spec.standardize})
        data = model_data(spec.schema, frame, weights_column=spec.weights)
        if tuple(data.fixed_names) != tuple(spec.names):
            raise ValueError(f"site {self.name}: the design has columns {list(data.fixed_names)}, "
                             f"the model {list(spec.names)}")
        return data

    def variable_report(self, formula: str) -> dict:
        """Kinds and factor levels of ``formula``'s variables in this site's rows.

        Labels of the categories present, never counts (see
        :mod:`core_stats.formula.levels`).
        """
        from core_stats.formula import parse_formula, variable_report

        return variable_report(parse_formula(formula), self._frame)

    def variable_report_with_counts(self, formula: str) -> tuple[dict, dict[str, dict[str, int]]]:
        """:meth:`variable_report` and the rows behind each label (for this site's own
        disclosure checks; the counts never leave the site)."""
        from core_stats.formula import parse_formula, variable_report
        from core_stats.formula.levels import level_counts

        parsed = parse_formula(formula)
        report = variable_report(parsed, self._frame)
        return report, level_counts(parsed, self._frame, report)

    def outcome_for_checks(self, schema: DesignSchema, na_action: str = "omit",
                           weights: str | None = None
                           ) -> tuple[np.ndarray, np.ndarray | None, int]:
        """The outcome under ``schema`` and the rows omitted (in-process input checks only).

        The design built for the check is kept for the next :meth:`prepare_glmm` of the same
        schema, options and rows (it is the same function of them), then dropped.
        """
        from core_stats.formula import model_data

        data = model_data(schema, self._frame, na_action=na_action, weights_column=weights)
        self._checked = ((schema, na_action, weights), data)
        return data.y, data.weights, data.n_omitted

    def _model_data(self, schema: DesignSchema, na_action: str, weights: str | None):
        """This site's design under ``schema`` (the checked one if it was built for it)."""
        from core_stats.formula import model_data

        checked, self._checked = self._checked, None
        if checked is not None and checked[0] == (schema, na_action, weights):
            return checked[1]
        return model_data(schema, self._frame, na_action=na_action, weights_column=weights)

    @property
    def n_omitted(self) -> int:
        """Rows the last design dropped for missing values (R's na.omit)."""
        return self._omitted

    # ------------------------------------------------------------ Cox
    def prepare_cox(self, spec) -> None:
        """Check this site's rows against the study's Cox model; index its stratum."""
        from securefed.cox_site import prepare_cox_rows

        self._cox = prepare_cox_rows(self.name, self._frame, spec)

    def cox_summary_vector(self) -> np.ndarray:
        """``[rows, events, 1, upper(Xc'Xc)]`` of this site's stratum."""
        from securefed.cox_site import summary_vector

        return summary_vector(self._require_cox())

    def cox_terms_vector(self, beta: np.ndarray, ties: str, derivatives: bool) -> np.ndarray:
        """``[l, g, upper(H)]`` (or ``[l]``) of this site's partial likelihood."""
        from securefed.cox_site import terms_vector

        return terms_vector(self._require_cox(), beta, ties, derivatives)

    def cox_concordance_vector(self, beta: np.ndarray) -> np.ndarray:
        """This site's concordance pair counts and jackknife sums at ``beta``."""
        from securefed.cox_site import concordance_vector

        return concordance_vector(self._require_cox(), beta)

    def poly_order_vector(self, max_order: int, alpha: float) -> np.ndarray:
        """This site's order of a polynomial baseline, one-hot (R's likelihood-ratio choice)."""
        from securefed.cox_site import poly_order_vector

        return poly_order_vector(self._require_cox(), max_order, alpha)

    def bfi_survival_vector(self, layout, baseline, prior: np.ndarray) -> np.ndarray:
        """This site's local MAP of a parametric survival model, as a BFI site vector
        (the fit stays here, for its centre-specific estimate)."""
        from securefed.cox_site import bfi_survival_fit

        self._survival_fit = bfi_survival_fit(self.name, self._require_cox(), layout,
                                              baseline, prior)
        return layout.site_vector(self._survival_fit)

    def bfi_survival_centre(self, layout, fit):
        """This site's own parameters given the broadcast shared estimate (Appendix B)."""
        local = getattr(self, "_survival_fit", None)
        if local is None:
            raise RuntimeError("bfi_survival_vector() must run before the centre estimate")
        return layout.centre_estimate(local, fit)

    def _require_cox(self):
        if getattr(self, "_cox", None) is None:
            raise RuntimeError("prepare_cox() must run before the site computes Cox terms")
        return self._cox

    def _require_rows(self) -> GroupedRows:
        if self._rows is None:
            raise RuntimeError("prepare_glmm() must run before the site computes terms")
        return self._rows

    @property
    def glmm_rows(self) -> GroupedRows:
        return self._require_rows()

    @property
    def glmm_family(self) -> Family:
        """The family of the prepared GLMM design."""
        self._require_rows()
        return self._design.family

    @property
    def n_validation_rows(self) -> int:
        """Rows held out for validation (0 without a split)."""
        return 0 if self._validation is None else self._validation.n_rows
