"""The site's checks of one round against its own policy, before anything is released.

:func:`admit_round` checks the round's public parameters (layer, roster, t,
minimum contributors, DP terms); :func:`admit_call` checks what is asked
(an approved model, columns, parameters inside the public bounds, bins);
:func:`check_release` checks the computed vector before it leaves (records
behind it, small cells, the effective number of records carrying a
likelihood's curvature). Each raises :class:`PolicyRefused` with a code.
"""

from __future__ import annotations

import functools
import hashlib
import tomllib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from securefed.policy.model import SitePolicy
from securefed.policy.multi import (
    MULTI_METHODS,
    MULTI_THETA_METHODS,
    covariance_parameters,
    model_rows,
)
from securefed.policy.refusal import PolicyRefused, Refusal

__all__ = ["admit_round", "admit_call", "admit_report", "check_report", "check_release",
           "model_of", "canonical_formula", "THETA_METHODS", "COORDINATOR_NAME"]

COORDINATOR_NAME = "coordinator"
#: release calls whose value depends on the coordinator's parameters (layout, theta)
THETA_METHODS = frozenset({"glmm_terms_vector", "glmm_reml_vector", "dp_terms_vector",
                           "validation_loglik_vector",
                           "validation_histograms"}) | MULTI_THETA_METHODS
_GLMM_METHODS = THETA_METHODS | MULTI_METHODS | {"glmm_counts_vector", "design_summary_vector",
                                                 "dp_summary_vector"}
_BFI_METHODS = frozenset({"bfi_terms_vector", "dp_bfi_stats_vector"})
_VALIDATION = frozenset({"validation_loglik_vector", "validation_histograms"})


def _refuse(refusal: Refusal) -> None:
    raise PolicyRefused(refusal)


# ------------------------------------------------------------------ round
def admit_round(policy: SitePolicy, site_name: str, params: Any, registry: Collection[str],
                dp_query: Any = None, dp_delta: float = 1e-6, key_holder: str | None = None
                ) -> None:
    """Refuse a round whose public parameters this site's policy does not allow.

    ``params`` is the round's :class:`~securefed.transport.flower_wire.RoundParams`;
    ``registry`` the party names of the site's own registry.
    """
    names = list(params.sites)
    if site_name not in names:
        _refuse(Refusal.NOT_IN_ROSTER)
    if params.layer not in policy.layers:
        _refuse(Refusal.LAYER_BELOW_FLOOR)
    if dp_query is None and policy.dp_required:
        _refuse(Refusal.DP_REQUIRED)
    if policy.robust_required and not getattr(params, "robust", False):
        _refuse(Refusal.ROBUST_REQUIRED)  # the runtime does not carry --robust yet
    if dp_query is not None and policy.max_epsilon_per_release > 0:
        from protocols.dp import zcdp_epsilon

        if zcdp_epsilon(float(dp_query.rho), dp_delta) > policy.max_epsilon_per_release:
            _refuse(Refusal.EPSILON_ABOVE_CAP)
    _admit_roster(policy, names, registry, key_holder)
    if params.layer == "secagg":
        try:
            threshold = params.config(1).t
        except Exception:  # an invalid configuration: the protocol refuses it anyway
            _refuse(Refusal.THRESHOLD_BELOW_FLOOR)
        if threshold < policy.min_threshold:
            _refuse(Refusal.THRESHOLD_BELOW_FLOOR)
        if int(params.min_contributors) < policy.min_contributors:
            _refuse(Refusal.CONTRIBUTORS_BELOW_FLOOR)


def _admit_roster(policy: SitePolicy, names: Sequence[str], registry: Collection[str],
                  key_holder: str | None) -> None:
    never = {COORDINATOR_NAME, policy.key_holder} | ({key_holder} if key_holder else set())
    if any(name in never for name in names):
        _refuse(Refusal.ROSTER_NOT_A_SITE)
    if any(name not in registry for name in names):
        _refuse(Refusal.ROSTER_UNKNOWN)
    if len(names) < policy.min_sites:
        _refuse(Refusal.ROSTER_TOO_SMALL)


# ---------------------------------------------------------- variable report
def admit_report(policy: SitePolicy, site_name: str, formula_text: str,
                 roster: Sequence[str], registry: Collection[str],
                 key_holder: str | None = None) -> None:
    """Refuse the factor-levels round (before anything is read) unless the roster would be
    admitted for a release and the model is approved by the policy."""
    if site_name not in roster:
        _refuse(Refusal.NOT_IN_ROSTER)
    _admit_roster(policy, list(roster), registry, key_holder)
    if not _approved(policy, canonical_formula(formula_text), set(_columns(formula_text))):
        _refuse(Refusal.MODEL_NOT_APPROVED)


def check_report(policy: SitePolicy, counts: dict[str, dict[str, int]]) -> None:
    """Refuse to report levels the policy does not let leave.

    ``counts``: the records behind each reported label (they never leave). A
    label carried by 1 to ``min_cell_count - 1`` records is a small cell (its
    existence tells who is in it); labels are exact, so a site that releases
    only under differential privacy reports none.
    """
    if any(counts.values()) and policy.dp_required:
        _refuse(Refusal.DP_REQUIRED)
    for per_level in counts.values():
        if any(0 < n < policy.min_cell_count for n in per_level.values()):
            _refuse(Refusal.SMALL_CELL)


# ------------------------------------------------------------------ model
@functools.lru_cache(maxsize=256)
def canonical_formula(text: str) -> str:
    """A formula as the site compares it: as written, without spaces (``y~x1+x2+(1|g)``)."""
    return "".join(str(text).split())


@functools.lru_cache(maxsize=256)
def _columns(formula_text: str) -> frozenset[str]:
    """The data columns a formula reads (the project's parser: data, never code)."""
    from core_stats.formula import parse_formula

    return frozenset(parse_formula(formula_text).columns)


def model_of(call: Any, setup: Sequence[Any]) -> tuple[str | None, str | None, set[str]]:
    """The formula a release call computes from (canonical), its model key, its columns.

    ``(None, None, columns)`` for a call without a model (counts, standardisation).
    """
    from securefed.policy.survival import survival_model_of

    survival = survival_model_of(call, setup)
    if survival is not None:
        return survival
    method, kwargs = call.method, call.kwargs
    if method in _GLMM_METHODS:
        designs = [c.kwargs["design"] for c in setup
                   if c.method in ("prepare_glmm", "prepare_glmm_multi")]
        if not designs:
            return None, None, set()  # the site refuses it anyway: no design was prepared
        design = designs[-1]
        formula = canonical_formula(design.schema.formula)
        columns = set(_columns(design.schema.formula)) | (
            {design.weights} if design.weights else set())
        key = f"glmm|{formula}|{design.schema.factors}|{design.family.name}|{design.nagq}"
        return formula, key, columns
    if method in _BFI_METHODS:
        spec = kwargs["spec"]
        formula = canonical_formula(spec.schema.formula)
        columns = set(_columns(spec.schema.formula)) | {c for c, _, _ in spec.standardize} | (
            {spec.weights} if spec.weights else set())
        return formula, f"bfi|{formula}|{spec.schema.factors}|{spec.family.name}", columns
    read = set()  # the model's columns, read to find its complete rows (never released)
    if method in ("standardize_vector", "count_vector") and kwargs.get("schema") is not None:
        read = set(_columns(kwargs["schema"].formula)) | (
            {kwargs["weights"]} if kwargs.get("weights") else set())
    if method == "standardize_vector":
        return None, None, {str(c) for c in kwargs["columns"]} | read
    return None, None, read


def _approved(policy: SitePolicy, formula: str | None, columns: set[str]) -> bool:
    if policy.columns and not columns <= set(policy.columns):
        return False
    if formula is None or not policy.formulas:
        return True
    return formula in {canonical_formula(text) for text in policy.formulas}


def _theta_in_bounds(policy: SitePolicy, layout: Any, theta: np.ndarray) -> bool:
    theta = np.asarray(theta, dtype=float)
    if theta.shape != (layout.size,) or not np.all(np.isfinite(theta)):
        return False
    if np.any(np.abs(theta[layout.beta]) > policy.max_abs_beta):
        return False
    logs, off = covariance_parameters(layout, theta)  # every term's, several terms or one
    if any(not policy.log_sd_min <= v <= policy.log_sd_max for v in logs):
        return False
    return all(abs(v) <= np.exp(policy.log_sd_max) for v in off)


@dataclass(frozen=True)
class PinnedStudy:
    """The model of the study file a site's policy pins (``study_sha256``)."""

    kind: str
    formula: str  # canonical (:func:`canonical_formula`)
    family: str


def admit_study(policy: SitePolicy, study_text: str | None) -> PinnedStudy | None:
    """The pinned study's model, if the policy pins one; refuse a round without that file.

    The round must carry the study file's text, whose SHA-256 is the policy's
    ``study_sha256``; the site reads its ``[model]`` itself (TOML, never code).
    """
    if not policy.study_sha256:
        return None
    if study_text is None or hashlib.sha256(
            study_text.encode("utf-8")).hexdigest() != policy.study_sha256:
        _refuse(Refusal.STUDY_NOT_PINNED)
    try:
        model = tomllib.loads(study_text)["model"]
        return PinnedStudy(str(model["kind"]), canonical_formula(str(model["formula"])),
                           str(model["family"]).lower())
    except (tomllib.TOMLDecodeError, KeyError, TypeError):
        raise PolicyRefused(Refusal.STUDY_NOT_PINNED) from None


def _model_family(call: Any, setup: Sequence[Any]) -> tuple[str | None, str | None]:
    """(kind, family name) of the model a call computes from; (None, None) without one."""
    if call.method in _GLMM_METHODS:
        designs = [c.kwargs["design"] for c in setup if c.method == "prepare_glmm"]
        return ("glmm", designs[-1].family.name) if designs else (None, None)
    if call.method in _BFI_METHODS:
        return "bfi", call.kwargs["spec"].family.name
    return None, None


def admit_call(policy: SitePolicy, call: Any, setup: Sequence[Any],
               study: PinnedStudy | None = None) -> str | None:
    """Refuse a call the policy does not allow; the model to count it under, if it
    depends on the coordinator's parameters (None otherwise). ``study``: the pinned
    study (:func:`admit_study`), whose model every model-bound call must compute."""
    formula, model, columns = model_of(call, setup)
    if not _approved(policy, formula, columns):
        _refuse(Refusal.MODEL_NOT_APPROVED)
    if study is not None and formula is not None and (
            (formula, *_model_family(call, setup)) != (study.formula, study.kind,
                                                       study.family)):
        _refuse(Refusal.MODEL_NOT_APPROVED)
    if call.method in THETA_METHODS:
        if not _theta_in_bounds(policy, call.kwargs["layout"], call.kwargs["theta"]):
            _refuse(Refusal.THETA_OUT_OF_BOUNDS)
    if call.method == "validation_histograms" and int(call.kwargs["bins"]) > policy.max_bins:
        _refuse(Refusal.TOO_MANY_BINS)
    from securefed.policy.survival import survival_beta_in_bounds
    from securefed.transport.survival_calls import SURVIVAL_THETA_METHODS

    if not survival_beta_in_bounds(policy, call):
        _refuse(Refusal.THETA_OUT_OF_BOUNDS)
    return model if call.method in THETA_METHODS | SURVIVAL_THETA_METHODS else None


# ---------------------------------------------------------------- release
def _records(site: Any, method: str) -> int:
    if method in _VALIDATION:
        return site.n_validation_rows
    if method in _GLMM_METHODS:
        return model_rows(site)[0].n_rows
    return site.n_rows


def effective_records(site: Any, layout: Any, theta: np.ndarray) -> float:
    """``(Σ w)² / Σ w²`` of the working weights ``w = -d²l/dη²(x'β, s)`` of the site's rows.

    About the number of records carrying the likelihood's curvature at ``β``:
    a crafted ``β`` that puts all weight on one patient gives about 1.
    """
    rows, family = model_rows(site)
    eta = rows.X @ np.asarray(theta, dtype=float)[layout.beta]
    theta = np.asarray(theta, dtype=float)
    s = float(theta[layout.scale_index]) if layout.has_dispersion else 0.0
    weight = -family.row_partials(rows.y, eta, s, None, 2)[2, 0]
    total = float(np.sum(weight))
    square = float(np.sum(weight**2))
    return 0.0 if square <= 0 else total * total / square


def check_release(policy: SitePolicy, site: Any, call: Any, vector: np.ndarray) -> None:
    """Refuse to release ``vector`` (what ``call`` computed at ``site``) under the policy."""
    if _records(site, call.method) < policy.min_records:
        _refuse(Refusal.TOO_FEW_RECORDS)
    if call.method == "validation_histograms":
        counts = np.asarray(vector, dtype=float)
        if np.any((counts > 0) & (counts < policy.min_cell_count)):
            _refuse(Refusal.SMALL_CELL)
    derivatives = (call.method in ("glmm_terms_vector", "multi_terms_vector")
                   and call.kwargs["derivatives"]) or (
        call.method in ("dp_terms_vector", "glmm_reml_vector"))
    if derivatives and policy.min_effective_records > 0:
        layout, theta = call.kwargs["layout"], call.kwargs["theta"]
        if effective_records(site, layout, theta) < policy.min_effective_records:
            _refuse(Refusal.TOO_FEW_RECORDS)
