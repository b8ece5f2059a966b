"""The site's policy guard: every release call passes it, in-process and over Flower.

:class:`SiteGuard` joins the site's policy, its own registry and its release
record. The site-side message handler calls :meth:`SiteGuard.admit` with the
round's public parameters and the call before computing anything, and
:meth:`SiteGuard.release` with the computed vector before it leaves. A
refusal is logged in the site's record folder and raised as
:class:`~securefed.policy.refusal.PolicyRefused` (code and fixed message).

Node config (``flower-supernode --node-config``): ``policy`` names the
site's policy file (:mod:`securefed.policy.model`); without it the safe
default applies, with its record in ``record-dir`` (default: the folder
``securefed-releases`` beside the site's data file).
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from securefed.policy.enforce import (
    admit_call,
    admit_report,
    admit_round,
    admit_study,
    check_release,
    check_report,
)
from securefed.policy.model import PolicyError, SitePolicy, load_policy
from securefed.policy.multi import record_text
from securefed.policy.record import MemoryReleaseRecord, ReleaseRecord, call_key
from securefed.policy.refusal import PolicyRefused, Refusal

__all__ = ["SiteGuard", "Admitted", "POLICY_KEY", "RECORD_DIR_KEY"]

POLICY_KEY, RECORD_DIR_KEY = "policy", "record-dir"
#: node config: ``false`` skips fsync of the release record (the in-process loopback only,
#: whose records are temporary)
DURABLE_KEY = "record-durable"


@dataclass(frozen=True)
class Admitted:
    """A call the guard let through to computation (what :meth:`SiteGuard.release` needs)."""

    key: str
    roster: tuple[str, ...]
    model: str | None
    under_dp: bool
    round_id: int
    purpose: str


@functools.lru_cache(maxsize=256)
def _rows_of(setup_text: str) -> str:
    """A setup call as it decides which rows a release sums: the seed only matters when
    rows are held out (else a new seed would give the same sum a new key)."""
    from securefed.transport.calls import SiteCall, parsed_call

    setup_call = parsed_call(setup_text)
    kwargs = dict(setup_call.kwargs)
    if setup_call.method == "prepare_glmm" and not kwargs.get("validation_fraction"):
        kwargs["seed"] = None
    return SiteCall(setup_call.method, kwargs).to_json()


class SiteGuard:
    """One site's policy, registry names and release record."""

    def __init__(self, site_name: str, policy: SitePolicy, registry: Collection[str],
                 key_holder: str | None = None, dp_delta: float = 1e-6,
                 durable: bool = True, record: MemoryReleaseRecord | None = None) -> None:
        if policy.record_dir is None:
            raise PolicyError("the policy has no record folder")
        self.site_name = str(site_name)
        self.policy = policy
        self.registry = frozenset(str(n) for n in registry)
        self.key_holder = key_holder
        self.dp_delta = float(dp_delta)
        self.record = record if record is not None else ReleaseRecord(policy.record_dir,
                                                                      durable)

    @classmethod
    def from_node_config(cls, config: Mapping[str, Any], registry: Collection[str],
                         record: MemoryReleaseRecord | None = None) -> SiteGuard:
        """The guard a ClientApp builds from its node config (refuses if the policy is bad).

        ``record``: an in-memory release record, for a simulated site of an
        in-process run only (:class:`~securefed.policy.record.MemoryReleaseRecord`).
        """
        name = str(config["site-name"])
        try:
            if POLICY_KEY in config:
                from securefed.transport.file_cache import load_cached

                policy = load_cached(str(config[POLICY_KEY]), load_policy)
            else:
                folder = config.get(RECORD_DIR_KEY) or (
                    Path(str(config["data-path"])).parent / "securefed-releases")
                policy = SitePolicy.default(folder)
        except PolicyError:
            raise PolicyRefused(Refusal.POLICY_UNREADABLE) from None
        key_holder = config.get("ckks-key-holder")
        return cls(name, policy, registry, None if key_holder is None else str(key_holder),
                   float(config.get("privacy-delta", 1e-6)),
                   str(config.get(DURABLE_KEY, "true")).lower() != "false", record)

    def _refused(self, error: PolicyRefused, round_id: int, purpose: str) -> PolicyRefused:
        self.record.log_refusal(error.code, round_id, purpose)
        return error

    def admit(self, params: Any, call: Any, call_text: str, setup_texts: Sequence[str],
              dp_query: Any = None, study_text: str | None = None) -> Admitted:
        """Check the round and the call (nothing computed yet); refuse or admit.

        ``study_text``: the study file the round carries (checked against the
        policy's ``study_sha256``, if it pins one).
        """
        from securefed.transport.calls import parsed_call

        try:
            admit_round(self.policy, self.site_name, params, self.registry, dp_query,
                        self.dp_delta, self.key_holder)
            study = admit_study(self.policy, study_text)
            setup = [parsed_call(t) for t in setup_texts if t]
            model = admit_call(self.policy, call, setup, study)
        except PolicyRefused as err:
            raise self._refused(err, params.round_id, params.purpose) from None
        return Admitted(call_key([_rows_of(t) for t in setup_texts if t],
                                 record_text(call, call_text)),
                        tuple(sorted(params.sites)), model, dp_query is not None,
                        int(params.round_id), str(params.purpose))

    def report(self, site: Any, formula_text: str, roster: Sequence[str]) -> dict:
        """This site's variable report for ``formula_text`` (the factor-levels round), if its
        policy lets it leave: labels only, never counts (a refusal is logged)."""
        try:
            admit_report(self.policy, self.site_name, formula_text, roster, self.registry,
                         self.key_holder)
            report, counts = site.variable_report_with_counts(formula_text)
            check_report(self.policy, counts)
        except PolicyRefused as err:
            raise self._refused(err, 0, "variable-report") from None
        return report

    def release(self, admitted: Admitted, site: Any, call: Any, vector: np.ndarray) -> None:
        """Check the computed vector and record the release (refused: nothing recorded).

        Exact releases are refused over a roster other than the one the same
        call was released over before (differencing); under DP the ledger
        accounts for repeated releases, so only the model's round count applies.
        """
        try:
            check_release(self.policy, site, call, vector)
            refused = self.record.admit(admitted.key, admitted.roster, admitted.model,
                                        self.policy.max_rounds,
                                        differencing=not admitted.under_dp)
            if refused == "differencing":
                raise PolicyRefused(Refusal.DIFFERENCING)
            if refused == "rounds":
                raise PolicyRefused(Refusal.TOO_MANY_ROUNDS)
        except PolicyRefused as err:
            raise self._refused(err, admitted.round_id, admitted.purpose) from None
