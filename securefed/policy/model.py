"""A site's own policy: what it releases, read from a TOML file on its own disk.

The coordinator's messages never change it. ``securefed site init DIR`` writes
the commented default (:data:`DEFAULT_TEXT`); ``docs/site_policy.md`` explains
every setting. A site without a policy file runs under :meth:`SitePolicy.default`,
the same values: secure aggregation (or CKKS) required, at least three sites,
public bounds on the parameters, a cap on bins and releases per model, a
minimum count per released cell and per released sum, and a persistent
record of what was released over which roster (differencing refused).
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

__all__ = ["SitePolicy", "PolicyError", "DEFAULT_TEXT", "POLICY_FILE", "load_policy",
           "policy_text", "write_default_policy"]

POLICY_FILE = "policy.toml"
LAYERS = ("secagg", "ckks", "none")

DEFAULT_TEXT = '''\
# securefed site policy: what this site releases. The site reads this file from
# its own disk for every round; nothing the coordinator sends can change it.
# A round that breaks any rule is refused with a code and a fixed message
# (never data), and the refusal is logged in this site's record folder.
# See docs/site_policy.md.

[models]
# Approved models. Empty lists approve any model over any column (then at
# least list the columns). Formulas are compared as written in the study file
# ("y ~ x1 + x2 + (1 | hospital)"), spaces ignored.
formulas = []
columns = []
# The SHA-256 (64 hex) of the one study file this site takes part in; "" pins
# none. When set, every round must carry that study file (byte for byte), and
# its model (formula and family) must be what the site is asked to compute.
study_sha256 = ""

[protection]
# Layers a round may use: "secagg" (secure aggregation), "ckks" (homomorphic
# encryption, a separate key holder decrypts only sums). Add "none" only to
# let the coordinator see this site's vector in clear.
layers = ["secagg", "ckks"]
# true: refuse every round without differential privacy.
dp_required = false
# The most epsilon one release may spend (at this site's delta); 0: no cap
# other than this site's total budget.
max_epsilon_per_release = 0.0

[roster]
# The roster of every round is checked against this site's own registry (the
# node config's "registry"); the coordinator and the key holder are never sites.
min_sites = 3
key_holder = "keyholder"

[secure_aggregation]
# Floors on the coordinator's secure-aggregation parameters.
min_threshold = 2
min_contributors = 3

[parameters]
# Public bounds on the parameters a site evaluates its likelihood at: every
# fixed effect |beta| <= max_abs_beta, every log standard deviation (random
# effects' log-Cholesky diagonal, the residual log-SD, a family's log-dispersion:
# Gamma's log sigma, NB2's log theta) in [log_sd_min, log_sd_max]. Raise
# max_abs_beta for outcomes on a large scale.
max_abs_beta = 100.0
log_sd_min = -20.0
log_sd_max = 12.0
# Releases that depend on the parameters, per model, across all runs (a new
# run does not reset it; asking the same thing over the same roster again does
# not count).
max_rounds = 300

[disclosure]
# Histograms: at most max_bins bins, and no released cell may count between 1
# and min_cell_count - 1 records (DataSHIELD's nfilter.tab is 3; ours is 5).
max_bins = 100
min_cell_count = 5
# No sum is released over fewer than min_records of this site's records, and no
# likelihood derivative whose weight is carried by fewer than
# min_effective_records records ((sum w)^2 / sum w^2 of the working weights).
min_records = 10
min_effective_records = 5.0

[robust]
# true: take part only in runs with bounded influence (--robust, or robust = true
# in the study file): each site's summary of the final round then goes to the
# validator, which refuses a run one site moves by more than the bound, naming
# it (threat_model/poisoning.md). --robust runs in-process only for now, so over
# a remote transport a site that requires it refuses every round.
required = false

[record]
# The folder (relative to this file) of this site's persistent record of what
# it released over which roster (differencing is refused from it) and its
# refusal log.
dir = "releases"
'''


class PolicyError(ValueError):
    """The policy file is malformed (the site's operator fixes it)."""


@dataclass(frozen=True)
class SitePolicy:
    """A site's rules (see :data:`DEFAULT_TEXT` for each one's meaning)."""

    formulas: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    study_sha256: str = ""
    layers: tuple[str, ...] = ("secagg", "ckks")
    dp_required: bool = False
    max_epsilon_per_release: float = 0.0
    min_sites: int = 3
    key_holder: str = "keyholder"
    min_threshold: int = 2
    min_contributors: int = 3
    max_abs_beta: float = 100.0
    log_sd_min: float = -20.0
    log_sd_max: float = 12.0
    max_rounds: int = 300
    max_bins: int = 100
    min_cell_count: int = 5
    min_records: int = 10
    min_effective_records: float = 5.0
    robust_required: bool = False
    record_dir: Path | None = None

    def __post_init__(self) -> None:
        bad = [layer for layer in self.layers if layer not in LAYERS]
        if bad or not self.layers:
            raise PolicyError(f"[protection] layers must be some of {list(LAYERS)}")
        for name in ("min_sites", "min_threshold", "min_contributors", "max_rounds",
                     "max_bins", "min_cell_count", "min_records"):
            if int(getattr(self, name)) < 1:
                raise PolicyError(f"{name} must be at least 1")
        for name in ("max_abs_beta", "log_sd_min", "log_sd_max", "min_effective_records",
                     "max_epsilon_per_release"):
            if not math.isfinite(float(getattr(self, name))):
                raise PolicyError(f"{name} must be a finite number")
        if self.max_abs_beta <= 0 or self.log_sd_min >= self.log_sd_max:
            raise PolicyError("max_abs_beta must be positive and log_sd_min < log_sd_max")
        if self.study_sha256 and not (len(self.study_sha256) == 64 and all(
                c in "0123456789abcdef" for c in self.study_sha256)):
            raise PolicyError("study_sha256 must be 64 lowercase hex digits (or empty)")
        if self.max_epsilon_per_release < 0 or self.min_effective_records < 0:
            raise PolicyError("max_epsilon_per_release and min_effective_records are >= 0")

    @classmethod
    def default(cls, record_dir: str | Path | None = None) -> SitePolicy:
        """The safe default (what :data:`DEFAULT_TEXT` says)."""
        return cls(record_dir=None if record_dir is None else Path(record_dir))

    def with_record_dir(self, record_dir: str | Path) -> SitePolicy:
        return replace(self, record_dir=Path(record_dir))


_SECTIONS = {
    "models": {"formulas": "formulas", "columns": "columns", "study_sha256": "study_sha256"},
    "protection": {"layers": "layers", "dp_required": "dp_required",
                   "max_epsilon_per_release": "max_epsilon_per_release"},
    "roster": {"min_sites": "min_sites", "key_holder": "key_holder"},
    "secure_aggregation": {"min_threshold": "min_threshold",
                           "min_contributors": "min_contributors"},
    "parameters": {"max_abs_beta": "max_abs_beta", "log_sd_min": "log_sd_min",
                   "log_sd_max": "log_sd_max", "max_rounds": "max_rounds"},
    "disclosure": {"max_bins": "max_bins", "min_cell_count": "min_cell_count",
                   "min_records": "min_records",
                   "min_effective_records": "min_effective_records"},
    "robust": {"required": "robust_required"},
    "record": {"dir": "record_dir"},
}
_TYPES = {f.name: f.type for f in fields(SitePolicy)}


def _value(name: str, value: Any) -> Any:
    kind = _TYPES[name]
    if kind == "tuple[str, ...]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise PolicyError(f"{name} must be a list of strings")
        return tuple(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise PolicyError(f"{name} must be true or false")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise PolicyError(f"{name} must be a whole number")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PolicyError(f"{name} must be a number")
        return float(value)
    if not isinstance(value, str):
        raise PolicyError(f"{name} must be a string")
    return value


def load_policy(path: str | Path) -> SitePolicy:
    """Read a policy file; :class:`PolicyError` (one line) if it is malformed.

    Missing settings take the defaults; an unknown section or key is an error
    (a misspelt rule must not silently fall back to the default).
    """
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise PolicyError(f"cannot read the policy file {path}: {type(err).__name__}") from None
    except tomllib.TOMLDecodeError as err:
        raise PolicyError(f"{path}: not valid TOML ({err})") from None
    values: dict[str, Any] = {}
    for section, table in doc.items():
        if section not in _SECTIONS or not isinstance(table, dict):
            raise PolicyError(f"{path}: unknown section [{section}]")
        for key, value in table.items():
            if key not in _SECTIONS[section]:
                raise PolicyError(f"{path}: unknown setting {key!r} in [{section}]")
            name = _SECTIONS[section][key]
            values[name] = _value(name, value)
    record = values.pop("record_dir", "releases")
    return SitePolicy(**values, record_dir=(path.parent / record).resolve())


def policy_text(policy: SitePolicy) -> str:
    """The TOML text of ``policy`` (:func:`load_policy` reads it back equal)."""
    lines = ["# securefed site policy (written by securefed)"]
    for section, table in _SECTIONS.items():
        lines.append(f"\n[{section}]")
        for key, name in table.items():
            value = getattr(policy, name)
            if name == "record_dir":
                value = str(value) if value is not None else "releases"
            value = list(value) if isinstance(value, tuple) else value
            lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def write_default_policy(folder: str | Path, columns: tuple[str, ...] = ()) -> Path:
    """Write the commented default policy to ``folder/policy.toml`` (never overwrites).

    ``columns``: the data's columns, written as the approved columns.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / POLICY_FILE
    if path.exists():
        raise PolicyError(f"{path} exists; edit it or remove it first")
    text = DEFAULT_TEXT
    if columns:
        listed = ", ".join(json.dumps(str(c)) for c in columns)
        text = text.replace("columns = []", f"columns = [{listed}]", 1)
    path.write_text(text, encoding="utf-8")
    load_policy(path)  # the file written is valid
    return path
