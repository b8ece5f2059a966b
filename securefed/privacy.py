"""Differential privacy of every release: budgets, the site-side noise step, the report.

Privacy unit: one record (patient), add/remove neighbours. Every vector a
site releases under ``--protect ...,dp`` comes with a :class:`DpQuery`: its
L2 sensitivity Δ (derived by the statistics code and enforced there by
clipping; see ``docs/privacy.md``), the zCDP budget ρ allotted to it, and
power-of-two units per coordinate. The site then, in this order:

1. charges its own :class:`~protocols.dp.PrivacyLedger` — a release over the
   budget raises :class:`~protocols.errors.PrivacyBudgetExceeded` before any
   noise is drawn and before anything is logged or sent (every live site is
   checked before any site spends);
2. rounds the vector onto a grid of step γ (a power of two, so the value is
   exactly representable in the secure-sum ring) and adds integer noise from
   the exact discrete Gaussian sampler, seeded by the OS;
3. releases ``(k + noise) · γ``.

Under secure aggregation (or CKKS) each site adds the share of the
*distributed discrete Gaussian* (Kairouz, Liu & Steinke 2021) sized for the
smallest allowed number of contributors m, so dropouts cannot lower the
noise; without a layer that hides single vectors (``--protect dp``) every
site adds the whole noise (m = 1). Rounding to the grid adds at most √d to
the sensitivity in grid units, which the accounting includes.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from protocols.dp import (
    DiscreteGaussianSampler,
    Mechanism,
    NoiseRelease,
    OsRandom,
    PrivacyLedger,
    ddg_local_sigma,
    zcdp_epsilon,
    zcdp_rho_for_epsilon,
)
from protocols.errors import EncodingError, PrivacyBudgetExceeded, ProtocolError
from securefed.errors import InputError

__all__ = ["DPOptions", "DpQuery", "PrivacyGuard", "SitePrivacy", "GRID_INFLATION", "calibrate",
           "release_label"]

GRID_INFLATION = 1e-4  # the grid rounding adds at most this share to Δ (in grid units)
_MAX_GRID_WORD = 2.0**52  # |k + noise| must stay an exact float64 integer


@dataclass(frozen=True)
class DPOptions:
    """The user's differential-privacy settings (all public).

    ``epsilon``/``delta`` are each site's budget; ``run_epsilon`` what this
    run may spend of it (default: all). ``clip`` bounds one record's covariate
    vector (L2, intercept included), ``outcome_bound`` its outcome (gaussian
    and poisson). ``rounds`` is the number of GLMM Newton rounds under DP and
    ``group_clip`` the records-equivalent bound on one group's GLMM terms.
    ``max_se_ratio``: a GLMM fit whose predicted noise-aware standard error of
    a fixed effect exceeds this multiple of the non-private one is refused
    after its first release (:mod:`securefed.dp_inference`).
    """

    epsilon: float
    delta: float = 1e-6
    clip: float | None = None
    outcome_bound: float | None = None
    run_epsilon: float | None = None
    rounds: int = 3
    group_clip: float = 8.0
    min_contributors: int | None = None
    ledger_dir: Path | None = None
    start_share: float = 0.6
    max_se_ratio: float = 10.0
    standardize_ranges: tuple[tuple[str, float, float], ...] = ()

    def standardize_range_for(self, columns) -> list[tuple[float, float]]:
        """The declared public ``(low, high)`` of each column to standardise."""
        known = {name: (low, high) for name, low, high in self.standardize_ranges}
        missing = [c for c in columns if c not in known]
        if missing:
            raise InputError(f"--standardize under dp needs the public range of "
                             f"'{missing[0]}': --dp-standardize-range {missing[0]}=LOW:HIGH")
        return [known[c] for c in columns]

    def check(self, family: str) -> None:
        """InputError naming the flag for anything missing or out of range."""
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise InputError("--epsilon must be a positive number")
        if not 0 < self.delta < 1:
            raise InputError("--delta must be between 0 and 1")
        if self.run_epsilon is not None and not (0 < self.run_epsilon):
            raise InputError("--dp-run-epsilon must be positive")
        if self.clip is None:
            raise InputError("differential privacy needs --dp-clip R: the L2 bound on one "
                             "record's covariate vector (intercept included)")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise InputError("--dp-clip must be a positive number")
        known = _family(family)
        outcome = "unit" if known is None else known.dp_outcome  # survival: its run decides
        if outcome is None:
            raise InputError(f"differential privacy is not available for the {family} family "
                             "(its sensitivity is not derived): drop 'dp' from --protect")
        if outcome != "unit" and self.outcome_bound is None:
            raise InputError(f"differential privacy for the {family} family needs "
                             "--dp-outcome-bound B (|y| <= B)")
        if self.outcome_bound is not None and not (math.isfinite(self.outcome_bound)
                                                   and self.outcome_bound > 0):
            raise InputError("--dp-outcome-bound must be a positive number")
        if not 1 <= self.rounds <= 50:
            raise InputError("--dp-rounds must be between 1 and 50")
        if not (math.isfinite(self.max_se_ratio) and self.max_se_ratio > 1):
            raise InputError("--dp-max-se-ratio must be a number above 1")
        if not self.group_clip > 0:
            raise InputError("--dp-group-clip must be positive")
        for name, low, high in self.standardize_ranges:
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise InputError(f"--dp-standardize-range {name}: give LOW:HIGH with LOW < HIGH")

    def outcome_scale(self, family: str) -> float:
        """B: the bound on |y| (1 for an outcome in [0, 1], the binomial family)."""
        known = _family(family)
        return 1.0 if known is not None and known.dp_outcome == "unit" \
            else float(self.outcome_bound)

    @property
    def run_rho(self) -> float:
        """zCDP ρ this run may spend (from ``run_epsilon`` or ``epsilon``)."""
        return zcdp_rho_for_epsilon(self.run_epsilon or self.epsilon, self.delta)


@dataclass(frozen=True, eq=False)
class DpQuery:
    """How one release is protected.

    ``sensitivity`` is the L2 sensitivity Δ of the vector divided
    coordinate-wise by ``2**log2_units`` (add/remove one record); ``rho`` the
    zCDP budget the release may use. ``local_length`` (over a transport): the
    site noises a vector of that length for itself alone (m = 1), keeps it,
    and releases a function of it (post-processing), as BFI's local fits.
    """

    purpose: str
    sensitivity: float
    rho: float
    log2_units: np.ndarray | None = None
    post_processing: bool = False  # a function of already-noised releases only: no charge
    local_length: int | None = None

    @classmethod
    def derived(cls, purpose: str) -> DpQuery:
        """A release computed only from the site's earlier noisy releases (post-processing)."""
        return cls(purpose, 1.0, 1.0, post_processing=True)

    def units(self, length: int) -> np.ndarray:
        if self.log2_units is None:
            return np.zeros(length, dtype=np.int64)
        units = np.asarray(self.log2_units, dtype=np.int64)
        if units.shape != (length,):
            raise ProtocolError(f"{self.purpose}: {units.size} units for {length} values")
        return units


@dataclass(frozen=True)
class _Calibration:
    grid_bits: int  # γ = 2**grid_bits (in units)
    grid_sensitivity: float  # Δ/γ + √d
    local_sigma: float  # per-site std of the integer noise
    min_contributors: int
    dimension: int

    def release(self, purpose: str) -> NoiseRelease:
        return NoiseRelease(Mechanism.DISTRIBUTED_DISCRETE_GAUSSIAN, self.local_sigma,
                            self.grid_sensitivity, purpose=purpose,
                            n_contributors=self.min_contributors, dimension=self.dimension)


def release_label(query: DpQuery, round_id: int) -> str:
    """The purpose under which a release is entered in every site's ledger."""
    return f"round {round_id}: {query.purpose}"


def calibrate(query: DpQuery, dimension: int, min_contributors: int) -> _Calibration:
    """Grid step and per-site noise so the release costs at most ``query.rho``."""
    if not (query.sensitivity > 0 and query.rho > 0):
        raise ProtocolError(f"{query.purpose}: sensitivity and rho must be positive")
    grid_bits = math.floor(math.log2(GRID_INFLATION * query.sensitivity / math.sqrt(dimension)))
    grid_sensitivity = query.sensitivity / 2.0**grid_bits + math.sqrt(dimension)
    sigma = ddg_local_sigma(query.rho, min_contributors, grid_sensitivity, dimension)
    return _Calibration(grid_bits, grid_sensitivity, sigma, min_contributors, dimension)


class SitePrivacy:
    """One site's ledger and noise generator; in a deployment it lives at the site."""

    def __init__(self, name: str, ledger: PrivacyLedger, ledger_file: Path | None = None,
                 rng=None) -> None:
        self.name = name
        self.ledger = ledger
        self._file = ledger_file
        self._rng = rng if rng is not None else OsRandom()
        self._lock_depth = 0

    def noise_source(self):
        """The source this site's noise is drawn from (for the site runtime of the same
        site simulated in this process, which then draws exactly what this object would)."""
        return self._rng

    @contextmanager
    def locked(self) -> Iterator[SitePrivacy]:
        """Hold the ledger file's exclusive lock, with the ledger re-read from it.

        Every check and charge of a file-backed ledger runs inside this, so two
        runs (threads or processes) on one ledger file never both spend the
        same budget: the second sees the first's spending. Re-entrant; a
        ledger without a file needs no lock.
        """
        if self._file is None or self._lock_depth:
            self._lock_depth += 1
            try:
                yield self
            finally:
                self._lock_depth -= 1
            return
        epsilon, delta = self.ledger.budget
        with open(self._file.with_name(self._file.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._lock_depth = 1
            try:
                fresh = PrivacyLedger(epsilon, delta)
                if self._file.exists():
                    _replay(fresh, self._file, self.name, epsilon, delta)
                self.ledger = fresh
                yield self
            finally:
                self._lock_depth = 0
                fcntl.flock(lock, fcntl.LOCK_UN)

    @classmethod
    def open(cls, name: str, epsilon: float, delta: float,
             ledger_dir: Path | None) -> SitePrivacy:
        """A fresh ledger, or the site's persistent one (its earlier runs count)."""
        path = None if ledger_dir is None else Path(ledger_dir) / f"site-{name}.privacy.json"
        return cls.load(name, epsilon, delta, path)

    @classmethod
    def load(cls, name: str, epsilon: float, delta: float,
             ledger_file: Path | None) -> SitePrivacy:
        """The ledger kept in ``ledger_file`` (a fresh one if the file does not exist yet)."""
        ledger = PrivacyLedger(epsilon, delta)
        if ledger_file is not None and Path(ledger_file).exists():
            _replay(ledger, Path(ledger_file), name, epsilon, delta)
        return cls(name, ledger, None if ledger_file is None else Path(ledger_file))

    def refusal(self, query: DpQuery, release: NoiseRelease,
                round_id: int) -> PrivacyBudgetExceeded | None:
        """The error :meth:`release` would raise for ``release`` over budget, else None."""
        ledger = self.ledger
        if ledger.can_spend(release):
            return None
        return PrivacyBudgetExceeded(
            f"site {self.name}: {query.purpose} (round {round_id}) would need epsilon="
            f"{ledger.epsilon_if(release):.4g} in total at delta={ledger.budget[1]:g}; "
            f"the budget is epsilon={ledger.budget[0]:g} and "
            f"{ledger.epsilon_spent:.4g} is spent. Nothing was released.")

    def release(self, vector: np.ndarray, query: DpQuery, round_id: int,
                min_contributors: int) -> np.ndarray:
        """The site's DP step for one release: charge the ledger, then add the noise share.

        The one function that turns a site's exact vector into what leaves it
        under DP, both in-process (:meth:`PrivacyGuard.apply`) and at a Flower
        site (:mod:`securefed.transport.site_privacy`). Noise is sized by
        :func:`calibrate` for ``min_contributors``; a release over the budget
        raises :class:`PrivacyBudgetExceeded` with the ledger unchanged and no
        noise drawn.
        """
        vector = np.asarray(vector, dtype=float)
        cal = calibrate(query, len(vector), min_contributors)
        units = query.units(len(vector))
        release = cal.release(release_label(query, round_id))
        with self.locked():
            refused = self.refusal(query, release, round_id)
            if refused is not None:
                raise refused
            self.charge(release)
        return self.noisy(vector, units, cal)

    def charge(self, release: NoiseRelease) -> None:
        """Commit ``release`` to the ledger (raises, unchanged, if over budget).

        Under :meth:`locked`: the ledger on disk is re-read, charged and
        written back while no other run can touch it.
        """
        with self.locked():
            self.ledger.spend(release)
            if self._file is not None:
                _save(self.ledger, self._file, self.name)

    def fields(self) -> dict[str, float]:
        """Cumulative spending, for the site's RELEASE audit entries."""
        ledger = self.ledger
        epsilon, delta = ledger.budget
        return {"epsilon_spent": ledger.epsilon_spent,
                "epsilon_remaining": max(0.0, epsilon - ledger.epsilon_spent),
                "delta_spent": delta if ledger.entries else 0.0,
                "rho_spent": ledger.rho_spent, "rho_remaining": ledger.rho_remaining}

    def noisy(self, vector: np.ndarray, units: np.ndarray, cal: _Calibration) -> np.ndarray:
        """``(round(v / γ) + N_Z(0, σ²)) · γ`` per coordinate (γ in the coordinate's units)."""
        step = np.ldexp(1.0, units + cal.grid_bits)
        words = np.rint(np.asarray(vector, dtype=float) / step)
        sampler = DiscreteGaussianSampler(cal.local_sigma**2, self._rng)
        words = words + sampler.sample_vector(words.size)
        if np.max(np.abs(words)) >= _MAX_GRID_WORD:
            raise EncodingError(f"site {self.name}: a value is too large for the DP grid; "
                                "standardise the covariates or lower the clipping bounds")
        return words * step


def _sum_sd(cal: _Calibration, units: np.ndarray, n_contributors: int) -> np.ndarray:
    """Per-coordinate SD of a sum of ``n_contributors`` noise shares (in the vector's units)."""
    return cal.local_sigma * math.sqrt(n_contributors) * np.ldexp(1.0, units + cal.grid_bits)


def _replay(ledger: PrivacyLedger, path: Path, name: str, epsilon: float, delta: float) -> None:
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read privacy ledger {path}: {err}") from None
    if (stored.get("epsilon"), stored.get("delta")) != (epsilon, delta):
        raise InputError(f"site {name}'s privacy ledger {path} has the budget epsilon="
                         f"{stored.get('epsilon')}, delta={stored.get('delta')}; the run asks "
                         f"for epsilon={epsilon}, delta={delta}")
    for item in stored.get("releases", []):
        ledger.spend(NoiseRelease(Mechanism(item["mechanism"]), item["sigma"],
                                  item["sensitivity"], purpose=item["purpose"],
                                  n_contributors=item["n_contributors"],
                                  dimension=item["dimension"]))


def _save(ledger: PrivacyLedger, path: Path, name: str) -> None:
    epsilon, delta = ledger.budget
    payload = {"site": name, "epsilon": epsilon, "delta": delta,
               "epsilon_spent": ledger.epsilon_spent, "rho_spent": ledger.rho_spent,
               "releases": [_release_dict(e.release) for e in ledger.entries]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)


def _release_dict(release: NoiseRelease) -> dict:
    return {"purpose": release.purpose, "mechanism": release.mechanism.value,
            "sigma": release.sigma, "sensitivity": release.sensitivity,
            "n_contributors": release.n_contributors, "dimension": release.dimension,
            "rho": release.rho}


@dataclass
class PrivacyGuard:
    """The DP step of every round, applied to each live site's vector before it leaves.

    ``min_contributors`` is the smallest number of sites a released sum may
    contain (1 when single vectors are visible to the coordinator).
    ``frac_bits`` maps a vector length to the finest fixed-point step the
    secure sum encodes exactly (None for plaintext sums).
    """

    options: DPOptions
    sites: dict[str, SitePrivacy]
    min_contributors: int
    frac_bits: object = None
    releases: list[dict] = field(default_factory=list)
    clipped_records: float | None = None  # noisy count, from the DP design summary
    _last: tuple | None = None

    @classmethod
    def create(cls, options: DPOptions, site_names: Sequence[str], min_contributors: int,
               frac_bits=None) -> PrivacyGuard:
        if options.ledger_dir is not None and not Path(options.ledger_dir).is_dir():
            raise InputError(f"--privacy-ledger: folder {options.ledger_dir} does not exist")
        sites = {n: SitePrivacy.open(n, options.epsilon, options.delta, options.ledger_dir)
                 for n in site_names}
        guard = cls(options, sites, min_contributors, frac_bits)
        guard.check_plan()
        return guard

    def check_plan(self) -> None:
        """Refuse the run before any release if its planned ρ exceeds a site's budget."""
        rho = self.options.run_rho
        for name, site in self.sites.items():
            ledger = site.ledger
            epsilon, delta = ledger.budget
            needed = zcdp_epsilon(ledger.rho_spent + rho, delta)
            if needed > epsilon * (1.0 + 1e-9):
                spend = self.options.run_epsilon or epsilon
                raise PrivacyBudgetExceeded(
                    f"site {name}: this run would spend epsilon={spend:g} and bring the total "
                    f"to epsilon={needed:.4g} at delta={delta:g}; the budget is epsilon="
                    f"{epsilon:g} and {ledger.epsilon_spent:.4g} is already spent. Nothing was "
                    "released.")

    def apply(self, vectors: Mapping[str, np.ndarray], query: DpQuery | None,
              round_id: int, *, local: bool = False) -> dict[str, np.ndarray]:
        """Charge every site's ledger (all or none), then return the noisy vectors.

        ``local=True``: the noisy vectors stay at the sites (each carries the
        whole noise, m = 1); what they later release is post-processing.
        """
        if query is None:
            raise ProtocolError("this release has no stated sensitivity; under DP nothing "
                                "leaves a site without one")
        if query.post_processing:
            self.releases.append({"round": round_id, "purpose": query.purpose,
                                  "mechanism": "post-processing of the sites' noisy sums",
                                  "rho": 0.0})
            return dict(vectors)
        length = len(next(iter(vectors.values())))
        units = query.units(length)
        contributors = 1 if local else self.min_contributors
        cal = calibrate(query, length, contributors)
        if not local:
            self._check_grid(units, cal, length)
        with self._locked(vectors):  # check all, then charge all, with no run in between
            self._check_all(query, cal.release(release_label(query, round_id)), round_id,
                            vectors)
            noisy = {name: self.sites[name].release(vec, query, round_id, contributors)
                     for name, vec in vectors.items()}
        self._record(query, round_id, cal, units, local)
        return noisy

    def admit_remote(self, query: DpQuery, round_id: int, site_names: Sequence[str],
                     length: int, min_contributors: int) -> None:
        """Record a release whose noise the sites add themselves (over Flower).

        The sites charge their own ledgers; here the coordinator's copies of
        them are charged too (for :meth:`report`), after the same
        all-or-none check as :meth:`apply`.
        """
        local = query.local_length is not None
        if local:  # noised at each site for itself; what is released is post-processing
            length, min_contributors = query.local_length, 1
        units = query.units(length)
        cal = calibrate(query, length, min_contributors)
        if min_contributors > 1:
            self._check_grid(units, cal, length)
        release = cal.release(release_label(query, round_id))
        with self._locked(site_names):
            self._check_all(query, release, round_id, site_names)
            for name in site_names:
                self.sites[name].charge(release)
        self._record(query, round_id, cal, units, local)
        if local:
            self.releases.append({"round": round_id, "purpose": "released: a function of the "
                                  "site's noisy local statistics",
                                  "mechanism": "post-processing of the sites' noisy sums",
                                  "rho": 0.0})

    def plan_rho_left(self) -> float:
        """ρ the run may still spend: its planned total less what it has released so far."""
        return max(0.0, self.options.run_rho - sum(r["rho"] for r in self.releases))

    @contextmanager
    def _locked(self, site_names) -> Iterator[None]:
        """Every named site's ledger locked and re-read (in name order: no deadlock)."""
        with ExitStack() as stack:
            for name in sorted(site_names):
                stack.enter_context(self.sites[name].locked())
            yield

    def _check_all(self, query: DpQuery, release: NoiseRelease, round_id: int,
                   site_names) -> None:
        """Raise the first site's refusal: no site releases if one would refuse."""
        for name in site_names:
            refused = self.sites[name].refusal(query, release, round_id)
            if refused is not None:
                raise refused

    def _record(self, query: DpQuery, round_id: int, cal: _Calibration, units: np.ndarray,
                local: bool) -> None:
        contributors = cal.min_contributors
        self.releases.append({
            "round": round_id, "purpose": query.purpose,
            "mechanism": "distributed discrete Gaussian" if contributors > 1
            else "discrete Gaussian" + (" (at the site, kept there)" if local else ""),
            "dimension": cal.dimension,
            "l2_sensitivity": query.sensitivity, "grid_step_log2": cal.grid_bits,
            "noise_sd_units": float(cal.local_sigma * 2.0**cal.grid_bits
                                    * math.sqrt(contributors)),
            "min_contributors": contributors, "rho": cal.release("").rho})
        self._last = (cal, units)

    def sum_noise_sd(self, n_contributors: int) -> np.ndarray:
        """Per-coordinate noise SD of the last released sum over ``n_contributors`` sites."""
        cal, units = self._last
        return _sum_sd(cal, units, n_contributors)

    def planned_noise_sd(self, query: DpQuery, length: int, n_contributors: int) -> np.ndarray:
        """Per-coordinate noise SD a release of ``query`` would have (nothing is released)."""
        cal = calibrate(query, length, self.min_contributors)
        return _sum_sd(cal, query.units(length), n_contributors)

    def privacy_fields(self, site: str) -> dict[str, float]:
        """A site's cumulative spending, for its RELEASE audit entries."""
        return self.sites[site].fields()

    def report(self) -> dict:
        """``privacy`` in the JSON output."""
        rho = max((s.ledger.rho_spent for s in self.sites.values()), default=0.0)
        return {"epsilon_spent": zcdp_epsilon(rho, self.options.delta) if rho else 0.0,
                "delta": self.options.delta, "rho": rho,
                "epsilon_budget": self.options.epsilon,
                "accountant": "zCDP (distributed discrete Gaussian, Kairouz-Liu-Steinke 2021)",
                "unit": "one record (add/remove)", "clip": self.options.clip,
                "outcome_bound": self.options.outcome_bound,
                "min_contributors": self.min_contributors,
                "clipped_records_noisy": self.clipped_records,
                "releases": list(self.releases)}

    def _check_grid(self, units: np.ndarray, cal: _Calibration, length: int) -> None:
        if self.frac_bits is None:
            return
        finest = np.asarray(self.frac_bits(length))
        if np.any(-(units + cal.grid_bits) > finest):
            raise ProtocolError("the DP grid is finer than the secure sum's fixed-point "
                                "encoding: lower --bound")


def _family(name: str):
    """The GLM family called ``name``, or None for another model's name (``survival``,
    whose run refuses DP itself)."""
    from core_stats.families import get_family

    try:
        return get_family(name)
    except ValueError:
        return None
