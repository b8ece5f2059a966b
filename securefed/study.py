"""Study files: one TOML file names the model, the protection and every site's data.

:func:`load_study` parses and checks the whole file before anything runs; every
problem is an :class:`~securefed.errors.InputError` whose message starts with
``FILE line N:`` (tomllib gives no line numbers for meaning, so the lines of
section headers and ``key =`` lines are found by scanning the text).
:func:`run_study` reads the site files, adds the ``site`` column, runs every
site in-process and writes ``result.json``, ``summary.txt`` and the audit trail;
it reports progress through callbacks (the CLI draws them with rich). The
format is documented in ``docs/study_file.md``.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

from securefed.bfi_run import BFIOptions
from securefed.errors import InputError
from securefed.glmm_run import SELECT_CHOICES, GLMMOptions
from securefed.protection import AVAILABLE, DROP_PHASES, ProtectionOptions

__all__ = ["SITE_COLUMN", "SiteSpec", "Study", "load_study"]

SITE_COLUMN = "site"
LAYERS = ("none", "secagg", "ckks", "dp")  # a [protection] layers list stacks these
KINDS = ("glmm", "bfi", "cox")
# names and aliases of core_stats.families (tested equal; not imported: start-up time)
FAMILIES = ("binomial", "poisson", "gaussian", "gamma", "negative_binomial", "nbinom2")
SHARED_KEYS = {"kind": "str", "formula": "str", "family": "str", "lambda": "number",
               "weights": "str", "robust": "bool", "robust_bound": "number"}
GLMM_KEYS = {"link": "str", "reml": "bool", "nagq": "int", "lambda_grid": "list[number]",
             "select": "str", "seed": "int",
             "validation_fraction": "number"}
BFI_KEYS = {"intercept_lambda": "number", "scale_lambda": "number", "stratify": "list[str]",
            "center_covariate": "str", "center_covariate_kind": "str",
            "standardize": "list[str]", "compare_pooled": "bool", "heterogeneity": "list[str]"}
COX_KEYS = {"ties": "str", "status_coding": "str"}
SURVIVAL_KEYS = {"status_coding": "str", "baseline": "str", "baseline_order": "int",
                 "baseline_alpha": "number", "baseline_knots": "list[number]",
                 "baseline_pieces": "int",
                 "baseline_max_time": "number"}  # BFI with family = "survival"
PROTECTION_KEYS = {"layers": "list[str]", "neighbours": "int", "threshold": "int",
                   "bound": "number", "drop_sites": "list[str]", "drop_phase": "str",
                   "drop_round": "int"}
PRIVACY_KEYS = {"epsilon": "number", "delta": "number", "clip": "number",
                "outcome_bound": "number", "run_epsilon": "number", "rounds": "int",
                "group_clip": "number", "min_contributors": "int", "ledger_dir": "str",
                "standardize_ranges": "table", "max_se_ratio": "number"}
SITE_KEYS = {"name": "str", "data": "str", "key": "str"}
OUTPUT_KEYS = {"dir": "str"}
AUDIT_KEYS = {"site_keys": "str", "registry": "str", "coordinator_key": "str",
              "expect_fingerprint": "str"}
TOP_KEYS = {"title": "str", "model": "table", "protection": "table", "privacy": "table",
            "sites": "tables", "output": "table", "audit": "table"}

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\[\]#]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*(\"[^\"]*\"|'[^']*'|[A-Za-z0-9_\-]+)\s*=")


@dataclass(frozen=True)
class SiteSpec:
    """One ``[[sites]]`` entry: its name, its data file (resolved) and its line."""

    name: str
    data: Path | None  # None for a remote site: its data path is in its own node config
    data_as_written: str
    line: int
    key: Path | None = None  # the site's signing key (``key =``), resolved


@dataclass(frozen=True)
class AuditSpec:
    """``[audit]``: the keys that sign the trail and the registry fingerprint pinned.

    Paths are resolved against the study file; ``None`` where not given.
    """

    site_keys: Path | None = None
    registry: Path | None = None
    coordinator_key: Path | None = None
    expect_fingerprint: str | None = None
    line: int = 1

    @property
    def signs(self) -> bool:
        """Whether the study names persistent keys at all."""
        return any(p is not None for p in (self.site_keys, self.registry, self.coordinator_key))


@dataclass(frozen=True)
class Study:
    """A checked study file: everything a run needs, plus lines for later messages."""

    path: Path
    kind: str
    options: GLMMOptions | BFIOptions
    protection: ProtectionOptions
    layers: tuple[str, ...]
    sites: tuple[SiteSpec, ...]
    output_dir: Path
    title: str = ""
    required_columns: tuple[tuple[str, str, int], ...] = ()  # column, where named, line
    output_line: int = 1
    protection_line: int = 1
    audit: AuditSpec = AuditSpec()
    status_coding: str = "0/1"  # survival models over Flower: how Surv's status is coded

    def fail(self, line: int, message: str) -> NoReturn:
        """Raise the InputError ``FILE line N: message``."""
        raise InputError(f"{self.path} line {line}: {message}")


class _Lines:
    """Line numbers of section headers and keys, found by scanning the TOML text."""

    def __init__(self, text: str) -> None:
        self.headers: dict[tuple[str, int], int] = {}
        self.keys: dict[tuple[str, int, str], int] = {}
        section, index, counts, open_string = "", 0, {}, None
        for number, raw in enumerate(text.splitlines(), 1):
            if open_string is not None:
                if open_string in raw:
                    open_string = None
                continue
            header = _HEADER.match(raw)
            if header:
                section = header[2].strip().strip("\"'")
                index = counts.get(section, 0) if header[1] == "[[" else 0
                counts[section] = index + 1
                self.headers.setdefault((section, index), number)
                continue
            key = _KEY.match(raw)
            if key:
                self.keys.setdefault((section, index, key[1].strip("\"'")), number)
                rest = raw[key.end():]
                open_string = next((q for q in ('"""', "'''") if rest.count(q) == 1), None)

    def header(self, section: str, index: int = 0) -> int:
        return self.headers.get((section, index), 1)

    def key(self, section: str, index: int, key: str) -> int:
        """The line of ``key =`` in that section, else of a ``[section.key]`` header."""
        table = (f"{section}.{key}" if section else key, 0)
        return self.keys.get((section, index, key),
                             self.headers.get(table, self.header(section, index)))


def _type_ok(value: Any, kind: str) -> bool:
    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    checks = {
        "str": lambda v: isinstance(v, str), "bool": lambda v: isinstance(v, bool),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool), "number": number,
        "list[str]": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
        "list[number]": lambda v: isinstance(v, list) and all(number(x) for x in v),
        "table": lambda v: isinstance(v, dict),
        "tables": lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v),
    }
    return checks[kind](value)


_TYPE_WORDS = {"str": "a string in quotes", "bool": "true or false", "int": "a whole number",
               "number": "a number", "list[str]": 'a list of strings, e.g. ["age"]',
               "list[number]": "a list of numbers, e.g. [0, 1, 2]",
               "table": "a section such as [model]", "tables": "[[sites]] entries"}


def _suggest(word: str, choices: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class _Parser:
    def __init__(self, path: Path, text: str, doc: dict, remote: bool = False) -> None:
        self.path, self.doc, self.lines = path, doc, _Lines(text)
        self.remote = remote

    def fail(self, line: int, message: str) -> NoReturn:
        raise InputError(f"{self.path} line {line}: {message}")

    def table(self, table: dict, schema: dict[str, str], section: str, index: int = 0,
              known_elsewhere: dict[str, str] | None = None) -> dict:
        """Check keys and types of one table; unknown keys get a did-you-mean."""
        label = f"[{section}]" if section else "the top level"
        for key, value in table.items():
            line = self.lines.key(section, index, key)
            if key not in schema:
                if known_elsewhere and key in known_elsewhere:
                    self.fail(line, f"'{key}' is {known_elsewhere[key]}")
                self.fail(line, f"unknown key '{key}' in {label}{_suggest(key, tuple(schema))}")
            if not _type_ok(value, schema[key]):
                self.fail(line, f"'{key}' in {label} must be {_TYPE_WORDS[schema[key]]}")
        return table

    def study(self) -> Study:
        doc = self.table(self.doc, TOP_KEYS, "")
        for name, what in (("model", "[model] section"), ("sites", "[[sites]] entries")):
            if name not in doc:
                self.fail(1, f"the study has no {what}")
        sites = self.sites(doc["sites"])
        kind, options, columns = self.model(doc["model"])
        prot, layers = self.protection(doc.get("protection", {}), [s.name for s in sites])
        if _survival(kind, options) and doc.get("privacy") is not None:
            self.fail(self.lines.header("privacy"), "differential privacy is not available for "
                      "survival models (docs/survival.md): remove [privacy] and the dp layer")
        dp = self.privacy(doc.get("privacy"), layers, getattr(options, "family", "survival"))
        if dp is not None:
            prot = replace(prot, dp=dp)
        output = self.table(doc.get("output", {}), OUTPUT_KEYS, "output")
        out_dir = (self.path.parent / output.get("dir", "out")).resolve()
        audit = self.audit(doc.get("audit", {}), sites)
        return Study(self.path, kind, options, prot, layers, tuple(sites), out_dir,
                     doc.get("title", ""), columns, self.lines.key("output", 0, "dir"),
                     self.lines.header("protection"), audit,
                     str(doc["model"].get("status_coding", "0/1")))

    def audit(self, table: dict, sites: list[SiteSpec]) -> AuditSpec:
        """``[audit]``: key files (in-process runs) and the pinned registry fingerprint."""
        from securefed.keys import parse_fingerprint

        self.table(table, AUDIT_KEYS, "audit")
        at = lambda key: self.lines.key("audit", 0, key)  # noqa: E731
        if self.remote:
            for key in ("site_keys", "registry", "coordinator_key"):
                if key in table:
                    self.fail(at(key), f"over Flower the keys are in the run config and each "
                              f"SuperNode's node config: remove '{key}' from [audit]")
        expect = table.get("expect_fingerprint")
        if expect is not None:
            try:
                expect = parse_fingerprint(expect, "expect_fingerprint")
            except InputError as err:
                self.fail(at("expect_fingerprint"), str(err))
        path = lambda key: None if key not in table else \
            (self.path.parent / table[key]).resolve()  # noqa: E731
        spec = AuditSpec(path("site_keys"), path("registry"), path("coordinator_key"), expect,
                         self.lines.header("audit"))
        keyed = [s for s in sites if s.key is not None]
        if keyed and not spec.signs:
            self.fail(keyed[0].line, f"site '{keyed[0].name}' names a key: add [audit] "
                      "site_keys = DIR (or registry and coordinator_key) for the other keys")
        return spec

    def model(self, model: dict) -> tuple[str, GLMMOptions | BFIOptions, tuple]:
        header = self.lines.header("model")
        at = lambda key: self.lines.key("model", 0, key)  # noqa: E731
        self.table(model, {**SHARED_KEYS, **GLMM_KEYS, **BFI_KEYS, **COX_KEYS, **SURVIVAL_KEYS},
                   "model")
        kind = model.get("kind")
        if kind not in KINDS:
            where = at("kind") if kind is not None else header
            self.fail(where, "[model] needs kind = \"glmm\", \"bfi\" or \"cox\"" if kind is None
                      else f"unknown model kind '{kind}': use glmm, bfi or cox"
                      f"{_suggest(kind, KINDS)}")
        if kind == "cox" or str(model.get("family", "")).lower() == "survival":
            return self.survival_model(model, kind, at, header)
        other, other_kind = (BFI_KEYS, "bfi") if kind == "glmm" else (GLMM_KEYS, "glmm")
        note = {k: f"a {other_kind} option; this model's kind is \"{kind}\"" for k in other}
        note.update({k: "a survival option (kind = \"cox\", or bfi with family = \"survival\")"
                     for k in {**COX_KEYS, **SURVIVAL_KEYS}})
        self.table(model, {**SHARED_KEYS, **(GLMM_KEYS if kind == "glmm" else BFI_KEYS)},
                   "model", known_elsewhere=note)
        for key in ("formula", "family"):
            if key not in model:
                self.fail(header, f"[model] has no {key}")
        family = model["family"]
        if family.lower() not in FAMILIES:
            self.fail(at("family"), f"unknown family '{family}': choose one of "
                      f"{', '.join(FAMILIES)}{_suggest(family.lower(), FAMILIES)}")
        columns = self.formula_columns(model["formula"], kind, at("formula"))
        if kind == "glmm":
            return kind, self.glmm_options(model, at), columns
        bfi = self.bfi_options(model, at)
        named = [(c, key) for key in ("standardize",) for c in bfi.standardize]
        if bfi.center_covariate:
            named.append((bfi.center_covariate, "center_covariate"))
        return kind, bfi, columns + tuple((c, k, at(k)) for c, k in named)

    def survival_model(self, m: dict, kind: str, at, header: int) -> tuple:
        """``kind = "cox"`` (stratified Cox) or BFI with ``family = "survival"``."""
        from core_stats.formula import FormulaError
        from core_stats.survival_formula import parse_surv_formula

        allowed = {"kind": "str", "formula": "str", **(
            COX_KEYS if kind == "cox" else {"family": "str", "lambda": "number",
                                            "stratify": "list[str]", **SURVIVAL_KEYS})}
        if kind == "glmm":
            self.fail(at("family"), "family = \"survival\" is for kind = \"bfi\"; a stratified "
                      "Cox model is kind = \"cox\"")
        self.table(m, allowed, "model", known_elsewhere={
            k: "not an option of this survival model" for k in
            {**SHARED_KEYS, **GLMM_KEYS, **BFI_KEYS, **COX_KEYS, **SURVIVAL_KEYS} if k not in
            allowed})
        if "formula" not in m:
            self.fail(header, "[model] has no formula")
        try:
            surv = parse_surv_formula(m["formula"])
            names = sorted({surv.time, surv.status, *surv.covariates} - {SITE_COLUMN})
        except FormulaError as err:
            self.fail(at("formula"), f"formula: {err}")
        columns = tuple((n, "formula", at("formula")) for n in names)
        if m.get("status_coding", "0/1") not in ("0/1", "1/2", "logical"):
            self.fail(at("status_coding"), f"status_coding '{m['status_coding']}': choose "
                      "\"0/1\", \"1/2\" or \"logical\"")
        if kind == "cox":
            from securefed.cox_run import CoxOptions

            ties = m.get("ties", "efron")
            if ties not in ("efron", "breslow"):
                self.fail(at("ties"), f"ties '{ties}': choose efron or breslow")
            return kind, CoxOptions(m["formula"], SITE_COLUMN, ties), columns
        from securefed.bfi_survival_run import SurvivalBFIOptions
        from securefed.cli_bfi import _knots

        if "baseline" not in m:
            self.fail(header, "a survival BFI model needs baseline = \"exponential\", "
                      "\"weibull\", \"gompertz\", \"poly\", \"pwexp\" or \"unspecified\"")
        if m.get("lambda", 0.01) <= 0:
            self.fail(at("lambda"), "lambda must be positive for BFI (it is a prior precision)")
        knots = m.get("baseline_knots")
        try:
            grid = _knots(None if knots is None else ",".join(str(k) for k in knots),
                          m.get("baseline_pieces"), m.get("baseline_max_time"))
        except InputError as err:
            self.fail(at("baseline_knots" if knots is not None else "baseline_pieces"),
                      _as_study_keys(str(err)))
        opts = SurvivalBFIOptions(m["formula"], SITE_COLUMN, str(m["baseline"]).lower(),
                                  float(m.get("lambda", 0.01)), None,
                                  tuple(m.get("stratify", ())),
                                  max_order=int(m.get("baseline_order", 2)),
                                  alpha=float(m.get("baseline_alpha", 0.1)), knots=grid)
        return kind, opts, columns

    def formula_columns(self, formula: str, kind: str, line: int) -> tuple:
        from core_stats.design import DesignError, parse_mixed_formula

        try:
            parsed = parse_mixed_formula(formula, require_random=kind == "glmm",
                                         several=kind == "glmm")
        except DesignError as err:
            self.fail(line, f"formula: {err}")
        names = sorted(n for n in parsed.model.columns if n != SITE_COLUMN)
        return tuple((n, "formula", line) for n in names)

    def glmm_options(self, m: dict, at) -> GLMMOptions:
        if not 1 <= m.get("nagq", 1) <= 25:
            self.fail(at("nagq"), f"nagq {m['nagq']} is out of range: use 1 (Laplace) to 25")
        for key in ("lambda", "lambda_grid"):
            if any(v < 0 for v in _as_list(m.get(key, 0))):
                self.fail(at(key), f"{key} must be zero or positive")
        if m.get("select", "aic") not in SELECT_CHOICES:
            self.fail(at("select"), f"select '{m['select']}': choose aic, bic or heldout")
        if "select" in m and not m.get("lambda_grid"):
            self.fail(at("select"), "select chooses lambda from a lambda_grid: add lambda_grid")
        if not 0 < m.get("validation_fraction", 0.3) < 1:
            self.fail(at("validation_fraction"), "validation_fraction must be between 0 and 1")
        return GLMMOptions(formula=m["formula"], family=m["family"].lower(),
                           site_column=SITE_COLUMN, nagq=m.get("nagq", 1),
                           lam=float(m.get("lambda", 0.0)),
                           lambda_grid=tuple(float(v) for v in m.get("lambda_grid", ())),
                           select=m.get("select", "aic"), seed=m.get("seed"),
                           validation_fraction=float(m.get("validation_fraction", 0.3)),
                           link=m.get("link"), reml=bool(m.get("reml", False)),
                           weights=m.get("weights"), **self.robust_options(m, at))

    def bfi_options(self, m: dict, at) -> BFIOptions:
        for key in ("lambda", "intercept_lambda", "scale_lambda"):
            if key in m and m[key] <= 0:
                self.fail(at(key), f"{key} must be positive for BFI (it is a prior precision)")
        kind = m.get("center_covariate_kind", "categorical")
        if kind not in ("categorical", "continuous"):
            self.fail(at("center_covariate_kind"), "center_covariate_kind must be categorical "
                      "or continuous")
        opt = lambda key: m.get(key)  # noqa: E731
        return BFIOptions(formula=m["formula"], family=m["family"].lower(),
                          site_column=SITE_COLUMN, lam=float(m.get("lambda", 0.01)),
                          intercept_lam=opt("intercept_lambda"), scale_lam=opt("scale_lambda"),
                          stratify=tuple(m.get("stratify", ())),
                          center_covariate=opt("center_covariate"), center_covariate_kind=kind,
                          standardize=tuple(m.get("standardize", ())),
                          compare_pooled=m.get("compare_pooled", False),
                          heterogeneity=tuple(m.get("heterogeneity", ())),
                          weights=opt("weights"), **self.robust_options(m, at))

    def robust_options(self, m: dict, at) -> dict:
        """``robust`` / ``robust_bound`` of ``[model]`` (bounded influence, securefed.robust)."""
        bound = float(m.get("robust_bound", 2.0))
        if not bound > 0:
            self.fail(at("robust_bound"), "robust_bound must be a positive number of SEs")
        if "robust_bound" in m and not m.get("robust", False):
            self.fail(at("robust_bound"), "robust_bound needs robust = true")
        return {"robust": bool(m.get("robust", False)), "robust_bound": bound}

    def sites(self, entries: list[dict]) -> list[SiteSpec]:
        from securefed.keys import check_party_name

        if not entries:
            self.fail(self.lines.key("", 0, "sites"), "the study lists no sites")
        seen: dict[str, int] = {}
        files: dict[Path, tuple[str, int]] = {}
        specs = []
        for index, entry in enumerate(entries):
            self.table(entry, SITE_KEYS, "sites", index)
            header = self.lines.header("sites", index)
            for key in ("name",) if self.remote else ("name", "data"):
                if key not in entry:
                    self.fail(header, f"this [[sites]] entry has no {key}")
            for key, what, where in (("data", "data path", "data-path"),
                                     ("key", "signing key", "identity-key")):
                if self.remote and key in entry:
                    self.fail(self.lines.key("sites", index, key),
                              f"over Flower each site's {what} is in its own SuperNode's node "
                              f"config ({where}): remove '{key}' from the study")
            name, name_line = entry["name"], self.lines.key("sites", index, "name")
            try:
                check_party_name(name)
            except InputError as err:
                self.fail(name_line, f"site name: {err}")
            if name in seen:
                self.fail(name_line, f"site '{name}' is listed twice (first at line {seen[name]})")
            seen[name] = name_line
            if self.remote:
                specs.append(SiteSpec(name, None, "", name_line))
                continue
            data_line = self.lines.key("sites", index, "data")
            data = (self.path.parent / entry["data"]).resolve()
            if not data.is_file():
                what = "is a folder" if data.is_dir() else "does not exist"
                self.fail(data_line, f"data file {entry['data']} of site '{name}' {what} "
                          f"(looked for {data})")
            if data in files:
                self.fail(data_line, f"site '{name}' uses the same data file as site "
                          f"'{files[data][0]}' (line {files[data][1]})")
            files[data] = (name, data_line)
            key = None if "key" not in entry else (self.path.parent / entry["key"]).resolve()
            specs.append(SiteSpec(name, data, entry["data"], data_line, key))
        return specs

    def protection(self, prot: dict, sites: list[str]) -> tuple[ProtectionOptions, tuple]:
        self.table(prot, PROTECTION_KEYS, "protection")
        at = lambda key: self.lines.key("protection", 0, key)  # noqa: E731
        layers = tuple(v.strip().lower() for v in prot.get("layers", ["none"])) or ("none",)
        for layer in layers:
            if layer not in LAYERS:
                self.fail(at("layers"), f"unknown protection layer '{layer}': choose from "
                          f"{', '.join(LAYERS)}{_suggest(layer, LAYERS)}")
        stack = ",".join(sorted(set(layers), key=LAYERS.index))
        if len(set(layers)) != len(layers) or stack not in AVAILABLE:
            self.fail(at("layers"), f"layers = {json.dumps(list(layers))} is not a stack: "
                      "choose one of " + ", ".join(json.dumps(a.split(",")) for a in AVAILABLE))
        layer, n = stack, len(sites)
        secagg_only = ("neighbours", "threshold", "drop_sites", "drop_phase", "drop_round")
        for key in secagg_only:
            if key in prot and "secagg" not in layers:
                self.fail(at(key), f"'{key}' applies to secure aggregation: add \"secagg\" "
                          "to layers")
        if layer not in ("none", "dp") and n < 3:
            self.fail(at("layers"), f"{layer} needs at least 3 sites; the study has {n}")
        if prot.get("bound", 1.0) <= 0:
            self.fail(at("bound"), "bound must be positive")
        k = prot.get("neighbours")
        if k is not None and not 2 <= k < n:
            self.fail(at("neighbours"), f"neighbours {k} is impossible with {n} sites: it must "
                      f"be at least 2 and below {n}")
        holders = n if k is None or k >= n - 1 else k + 1
        t = prot.get("threshold")
        if t is not None and not (t >= 2 and holders / 2 < t <= holders):
            self.fail(at("threshold"), f"threshold {t} is impossible with {n} sites "
                      f"({holders} share holders per site): it must be at least 2, more than "
                      f"{holders / 2:g} and at most {holders}")
        drops = tuple(prot.get("drop_sites", ()))
        for name in drops:
            if name not in sites:
                self.fail(at("drop_sites"), f"drop_sites: no site named '{name}'"
                          f"{_suggest(name, sites)}")
        phase = prot.get("drop_phase")
        if (drops or phase) and phase not in DROP_PHASES:
            self.fail(at("drop_phase") if phase else at("drop_sites"),
                      "drop_sites needs drop_phase, one of " + ", ".join(DROP_PHASES))
        if phase and not drops:
            self.fail(at("drop_phase"), "drop_phase needs drop_sites")
        from protocols.stack import DEFAULT_BOUND

        return ProtectionOptions(protect=layer, neighbours=k, threshold=t,
                                 bound=float(prot.get("bound", DEFAULT_BOUND)), drop_sites=drops,
                                 drop_phase=phase, drop_round=prot.get("drop_round", 1)), layers

    def privacy(self, table: dict | None, layers: tuple[str, ...], family: str):
        """``[privacy]``: the DP budget and bounds (the CLI's --epsilon/--dp-* options)."""
        at = lambda key: self.lines.key("privacy", 0, key)  # noqa: E731
        if "dp" not in layers:
            if table is not None:
                self.fail(self.lines.header("privacy"), "[privacy] applies to differential "
                          "privacy: add \"dp\" to [protection] layers, or remove [privacy]")
            return None
        if table is None or "epsilon" not in table:
            where = self.lines.header("privacy") if table is not None else \
                self.lines.key("protection", 0, "layers")
            self.fail(where, "the dp layer needs a budget: add [privacy] with epsilon = E "
                      "(and clip = R, delta = D)")
        self.table(table, PRIVACY_KEYS, "privacy")
        from securefed.privacy import DPOptions

        ranges = []
        for name, pair in table.get("standardize_ranges", {}).items():
            if not (_type_ok(pair, "list[number]") and len(pair) == 2):
                self.fail(at("standardize_ranges"), f"standardize_ranges: give {name} = "
                          "[LOW, HIGH]")
            ranges.append((name, float(pair[0]), float(pair[1])))
        ledger = table.get("ledger_dir")
        get = lambda key: None if key not in table else float(table[key])  # noqa: E731
        dp = DPOptions(epsilon=float(table["epsilon"]), delta=float(table.get("delta", 1e-6)),
                       clip=get("clip"), outcome_bound=get("outcome_bound"),
                       run_epsilon=get("run_epsilon"), rounds=table.get("rounds", 3),
                       group_clip=float(table.get("group_clip", 8.0)),
                       min_contributors=table.get("min_contributors"),
                       ledger_dir=None if ledger is None else (self.path.parent / ledger).resolve(),
                       standardize_ranges=tuple(ranges),
                       max_se_ratio=float(table.get("max_se_ratio", 10.0)))
        try:
            dp.check(family)
        except InputError as err:  # name the study's key, not the CLI flag
            self.fail(self.lines.header("privacy"), _as_study_keys(str(err)))
        return dp


def study_protection_json(study: Study) -> dict:
    """The study's protection settings as result.json records them (all public)."""
    out = {"layers": list(study.layers), "neighbours": study.protection.neighbours,
           "threshold": study.protection.threshold, "bound": study.protection.bound}
    dp = study.protection.dp
    if dp is not None:
        out["privacy"] = {"epsilon": dp.epsilon, "delta": dp.delta, "clip": dp.clip,
                          "outcome_bound": dp.outcome_bound, "run_epsilon": dp.run_epsilon,
                          "rounds": dp.rounds, "group_clip": dp.group_clip,
                          "min_contributors": dp.min_contributors,
                          "max_se_ratio": dp.max_se_ratio}
    return out


def _as_study_keys(message: str) -> str:
    """A DPOptions message in the study file's words (``--dp-clip`` → ``clip``)."""
    for flag, key in (("--dp-standardize-range", "standardize_ranges"), ("--dp-", ""),
                      ("--epsilon", "epsilon"), ("--delta", "delta"),
                      ("--privacy-ledger", "ledger_dir")):
        message = message.replace(flag, key)
    return message.replace("outcome-bound", "outcome_bound").replace(
        "run-epsilon", "run_epsilon").replace("group-clip", "group_clip").replace(
        "min-contributors", "min_contributors").replace("max-se-ratio", "max_se_ratio")


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def load_study(path: str | Path, *, remote: bool = False) -> Study:
    """Parse and check a study file; every problem raises InputError naming its line.

    Parameters
    ----------
    path : str or Path
        The TOML study file. Site data paths and the output folder are relative to it.
    remote : bool
        A study run over Flower: ``[[sites]]`` entries name the sites only
        (each site's data path is in its own SuperNode's node config).

    Returns
    -------
    Study
        The checked study; data files exist, but their columns are checked when loaded.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"cannot read study file {path}: "
                         f"{'it is a folder' if path.is_dir() else 'no such file'}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read study file {path}: {err}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"{path}: not valid TOML: {str(err).splitlines()[0]}") from None
    return _Parser(path, text, doc, remote).study()


@dataclass(frozen=True)
class StudyRun:
    """What :func:`run_study` wrote: the result dict (as in result.json) and the files."""

    result: dict
    summary: str
    files: tuple[Path, ...]
    audit_log: Path
    site_logs: tuple[Path, ...]
    registry_fingerprint: str | None = None  # None: signed with keys made for the run


class _Announcing:
    """A protection layer that reports each finished round; otherwise the layer itself."""

    def __init__(self, inner: Any, on_round: Any) -> None:
        self._inner, self._on_round, self.name = inner, on_round, inner.name

    def aggregate(self, vectors, *, round_id: int, purpose: str):
        result = self._inner.aggregate(vectors, round_id=round_id, purpose=purpose)
        self._on_round(round_id, purpose, len(result.contributors), tuple(result.dropped))
        return result

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.__dict__["_inner"], attr)


def load_sites(study: Study, on_site: Any = None):
    """Concatenate the site files with ``site`` = the site's name (columns checked)."""
    import pandas as pd

    from securefed.data import read_table

    parts = []
    for spec in study.sites:
        part = read_table(spec.data)
        if SITE_COLUMN in part.columns:
            study.fail(spec.line, f"{spec.data_as_written} already has a column '{SITE_COLUMN}'; "
                       "the study adds it from the site names: rename that column")
        for column, where, line in study.required_columns:
            if column not in part.columns:
                shown = ", ".join(map(str, part.columns[:12]))
                study.fail(line, f"column '{column}' (in {where}) is not in "
                           f"{spec.data_as_written} of site '{spec.name}' (its columns: {shown})")
        parts.append(part.assign(**{SITE_COLUMN: spec.name}))
        if on_site is not None:
            on_site(spec.name, len(part))
    frame = pd.concat(parts, ignore_index=True)
    frame.attrs["source"] = f"the site files of {study.path}"
    return frame


def _trail(study: Study) -> tuple[Path, list[Path]]:
    """The audit files a run will write; InputError if any exists (never overwritten)."""
    from securefed.audit_trail import trail_paths

    log = study.output_dir / "audit.jsonl"
    files = [log, log.with_suffix(".registry.json")]
    files += [p for s in study.sites for p in trail_paths(log, s.name)]
    for path in files:
        if path.exists():
            study.fail(study.output_line, f"{path} exists; audit logs are never overwritten: "
                       "remove the old output or choose another [output] dir")
    return log, files


def run_study(study: Study, *, on_site: Any = None, on_round: Any = None,
              on_step: Any = None, site_keys: Path | None = None,
              expect_fingerprint: str | None = None) -> StudyRun:
    """Load every site, fit the model over them in-process, write the outputs.

    Parameters
    ----------
    study : Study
        From :func:`load_study`.
    on_site, on_round, on_step : callable, optional
        Progress callbacks: ``on_site(name, rows)`` after a site file is read,
        ``on_round(round_id, purpose, contributors, dropped)`` after each protected
        sum, ``on_step(NewtonStep)`` after each GLMM Newton step.
    site_keys, expect_fingerprint : optional
        ``--site-keys DIR`` and ``--expect-fingerprint HEX`` of ``securefed run``
        (see :func:`securefed.audit_keys.study_trail_keys`).

    Returns
    -------
    StudyRun
        ``result`` is the model's JSON contract plus ``model``, ``study`` and
        ``timings`` (seconds for loading, fitting and writing).
    """
    import json
    import time

    from securefed.audit_keys import study_trail_keys, trail_note
    from securefed.protection import build_protection

    started = time.perf_counter()
    audit_log, _ = _trail(study)
    keys = study_trail_keys(study, site_keys, expect_fingerprint)
    frame = load_sites(study, on_site)
    try:
        protection = build_protection(study.protection, sorted(s.name for s in study.sites),
                                      getattr(study.options, "family", None))
    except InputError as err:
        study.fail(study.protection_line, str(err))
    if on_round is not None:
        protection = _Announcing(protection, on_round)
    loaded = time.perf_counter()
    study.output_dir.mkdir(parents=True, exist_ok=True)
    if _survival(study.kind, study.options):
        fit = _run_survival(study, frame, protection, audit_log, keys)
    elif study.kind == "glmm":
        from securefed.glmm_run import run_glmm

        fit = run_glmm(frame, study.options, protection=protection, on_step=on_step,
                       audit_log=audit_log, audit_keys=keys)
    else:
        from securefed.bfi_run import run_bfi

        fit = run_bfi(frame, study.options, protection=protection, audit_log=audit_log,
                      audit_keys=keys)
    fitted = time.perf_counter()
    site_logs = tuple(study.output_dir / f"audit.site-{s.name}.jsonl" for s in study.sites)
    result = fit.to_dict()
    result["model"] = study.kind
    result["study"] = {
        "file": str(study.path), "title": study.title,
        "sites": [{"name": s.name, "data": s.data_as_written,
                   "rows": int((frame[SITE_COLUMN] == s.name).sum())} for s in study.sites],
        "protection": study_protection_json(study),
        "audit_log": audit_log.name, "site_logs": [p.name for p in site_logs],
        "registry": audit_log.with_suffix(".registry.json").name,
        "registry_fingerprint": None if keys is None else keys.registry.fingerprint,
        "key_origin": "ephemeral" if keys is None else "consortium",
    }
    summary = fit.summary() + "\n" + trail_note(keys)
    if study.kind == "glmm" and "robust" in fit.extra:
        from securefed.robust.validator import robust_summary_line

        summary = f"{fit.summary()}\n{robust_summary_line(fit.extra['robust'])}\n" \
            f"{trail_note(keys)}"
    summary_path, result_path = study.output_dir / "summary.txt", study.output_dir / "result.json"
    try:
        summary_path.write_text(summary + "\n", encoding="utf-8")
        result["timings"] = {**result.get("timings", {}), "loading": loaded - started,
                             "fitting": fitted - loaded, "writing": time.perf_counter() - fitted}
        result_path.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n",
                               encoding="utf-8")
    except OSError as err:
        raise InputError(f"cannot write to {study.output_dir}: {err.strerror}") from None
    return StudyRun(result, summary, (result_path, summary_path), audit_log, site_logs,
                    None if keys is None else keys.registry.fingerprint)


def _survival(kind: str, options: Any) -> bool:
    """A stratified Cox model or a survival BFI model (their own runs and options)."""
    return kind == "cox" or getattr(options, "baseline", None) is not None


def _run_survival(study: Study, frame, protection, audit_log, keys):
    """The survival models' in-process runs (sites' trails signed with ephemeral keys)."""
    if keys is not None:
        study.fail(study.protection_line, "a survival study's audit trail is signed with keys "
                   "made for the run: remove the consortium keys ([audit] site_keys/registry, "
                   "--site-keys)")
    if study.kind == "cox":
        from securefed.cox_run import run_cox

        return run_cox(frame, study.options, protection=protection, audit_log=audit_log)
    from securefed.bfi_survival_run import run_bfi_survival

    return run_bfi_survival(frame, study.options, protection=protection, audit_log=audit_log)
