"""Settle a dispute about one site: re-derive its releases from its data, open its commitments.

``securefed audit dispute LOG --study STUDY.toml --site NAME --salts SALTS``: an
auditor who holds site ``NAME``'s data (its file in the study) and the salt file
the site reveals re-computes, for every release of that site the coordinator's
log records, the vector an honest site with this data sends, and opens the
commitment the site signed in the log with it and the revealed salt. A release
is

* ``reproduced``: the honest vector opens the commitment (the site sent exactly
  what its data give);
* ``differs``: it does not: the site sent something else than its data give (or
  the salt it revealed is not the one it committed with; either way it cannot
  show that its release came from this data);
* ``not re-derivable``: the vector depends on the coordinator's parameters of
  that round, which the log does not record (GLMM ``glmm-terms`` and
  ``glmm-loglik`` rounds, validation rounds), or on the run's result that was
  not given (``--result`` for a standardised BFI run).

The study file must be the run's: its model options hash to RUN_START's
``study_config_hash`` (else the command refuses, exit 2).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from securefed.errors import InputError

__all__ = ["DisputeReport", "ReleaseVerdict", "dispute_site"]


@dataclass(frozen=True)
class ReleaseVerdict:
    round: int
    vector_kind: str
    status: str  # "reproduced" | "differs" | "not re-derivable"


@dataclass(frozen=True)
class DisputeReport:
    site: str
    run_id: str
    releases: tuple[ReleaseVerdict, ...]

    @property
    def differs(self) -> tuple[ReleaseVerdict, ...]:
        return tuple(r for r in self.releases if r.status == "differs")

    def lines(self) -> list[str]:
        out = [f"round {r.round} {r.vector_kind}: {r.status}" for r in self.releases]
        done = sum(r.status == "reproduced" for r in self.releases)
        out.append(f"site {self.site}: {done} of {len(self.releases)} releases reproduced from "
                   f"its data, {len(self.differs)} differ, "
                   f"{len(self.releases) - done - len(self.differs)} not re-derivable")
        return out

    def to_dict(self) -> dict:
        return {"site": self.site, "run_id": self.run_id,
                "releases": [asdict(r) for r in self.releases]}


def _config_hash(opts) -> str:
    from securefed.audit_trail import _plain
    from securefed.canonical import canonical_bytes

    return hashlib.sha256(canonical_bytes(_plain(asdict(opts)))).hexdigest()


def _bfi_vectors(frame: pd.DataFrame, site: str, opts, result: dict | None) -> dict:
    """The honest vectors of a BFI site, by round kind (the code path of ``run_bfi``)."""
    from core_stats import bfi
    from core_stats.formula import fixed_column_names, model_data
    from core_stats.standardize import Standardization, StandardizeLayout
    from securefed import bfi_run
    from securefed.site import Site

    formula, family = bfi_run._validate(frame, opts)
    parts, _ = bfi_run._complete_rows({site: frame}, formula, opts)
    part = parts[site]
    schema = bfi_run._schema(opts, formula, family, parts)
    out = {"bfi-count": Site(site, part).count_vector()}
    if opts.standardize:
        columns = list(opts.standardize)
        out["bfi-standardize"] = StandardizeLayout(len(columns)).site_vector(
            part[columns].to_numpy(dtype=float))
        given = (result or {}).get("standardization")
        if given is None:
            return out  # bfi-terms needs the pooled means and SDs of the run
        std = Standardization(0, np.array(given["mean"]), np.array(given["sd"]))
        part = part.assign(**dict(zip(columns, std.apply(part[columns].to_numpy(dtype=float)).T,
                                      strict=True)))
    names = fixed_column_names(schema)
    prior, _ = bfi_run._priors(opts, family, names)
    data = model_data(schema, part)
    local = bfi.fit_map(data.X, data.y, family, prior, names=names)
    out["bfi-terms"] = bfi.HomogeneousLayout(local.names, family).site_vector(local)
    return out


def _glmm_vectors(frame: pd.DataFrame, site: str, opts) -> dict:
    """The honest design-summary and count vectors of a GLMM site."""
    from core_stats.formula import agree_schema
    from securefed import glmm_run
    from securefed.site import GLMMSiteDesign, Site

    _, family = glmm_run._parse_model(opts)
    honest = Site(site, frame)
    schema = agree_schema(opts.formula, [honest.variable_report(opts.formula)])
    honest.prepare_glmm(GLMMSiteDesign(schema, family, opts.nagq, opts.na_action, opts.weights),
                        None, 0.0, 0 if opts.seed is None else opts.seed)
    return {"design-summary": honest.design_summary_vector(),
            "glmm-counts": honest.glmm_counts_vector()}


def dispute_site(log: Path, site: str, frame: pd.DataFrame, opts, salts: Path,
                 result: dict | None = None) -> DisputeReport:
    """Re-derive site ``site``'s releases from ``frame`` (its rows) and open its commitments.

    ``opts`` are the run's model options (GLMMOptions or BFIOptions); ``salts`` the
    salt file the site reveals; ``result`` the run's result JSON (for a
    standardised BFI run). See the module docstring.
    """
    from securefed.audit import SaltStore, open_commitment, read_entries
    from securefed.audit_log import EventKind
    from securefed.bfi_run import BFIOptions

    entries = read_entries(log)
    start = next((e.payload for e in entries if e.kind is EventKind.RUN_START), None)
    if start is None:
        raise InputError(f"{log} has no RUN_START entry")
    if _config_hash(opts) != start["study_config_hash"]:
        raise InputError("the study's model options are not the run's (their hash differs from "
                         "RUN_START's study_config_hash): use the run's study file")
    if site not in start["sites"]:
        raise InputError(f"site {site!r} is not a site of this run")
    bfi_model = isinstance(opts, BFIOptions)
    if (start["model"] == "bfi") != bfi_model:
        raise InputError(f"the run is a {start['model']} run; the study's model is not")
    frame = frame.assign(**{opts.site_column: site})
    honest = _bfi_vectors(frame, site, opts, result) if bfi_model else \
        _glmm_vectors(frame, site, opts)
    store = SaltStore(salts)
    verdicts = []
    for entry in entries:
        if entry.kind is not EventKind.RELEASE or entry.payload["release"]["site"] != site:
            continue
        release = entry.payload["release"]
        kind, round_id = release["vector_kind"], int(release["round"])
        vector = honest.get(kind)
        if vector is None:
            status = "not re-derivable"
        else:
            salt = store.lookup(start["run_id"], round_id, kind).salt
            status = "reproduced" if open_commitment(vector, salt, release["commitment"]) \
                else "differs"
        verdicts.append(ReleaseVerdict(round_id, kind, status))
    if not verdicts:
        raise InputError(f"the log records no release of site {site!r}")
    return DisputeReport(site, start["run_id"], tuple(verdicts))
