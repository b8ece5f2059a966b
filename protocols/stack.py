"""Composition of protection layers around one secure sum of flat vectors.

A :class:`ProtectedSum` takes every live site's vector for one round and
returns their sum, with who contributed and what it cost. The plaintext
layer is the reference every other layer is tested against.

Layers:

* :class:`PlaintextSum` (``none``): the coordinator sees every vector.
* :class:`SecAggSum` (``secagg``): double masking with Shamir dropout recovery
  (:mod:`protocols.secagg`); the coordinator learns only the sum.
* :class:`CkksSum` (``ckks``): sites fixed-point encode their vector into
  ring words, split into 16-bit limbs, encrypt under a key holder's CKKS
  public key; the coordinator adds ciphertexts with the public context and
  the key holder decrypts only the sum. Limb sums are integers, so the result
  is exact up to the same fixed-point quantisation as secure aggregation.

Every value must lie within the declared ``bound`` (a public number, the
same for all sites); a site refuses to release a value outside it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from protocols.errors import EncodingError, InvalidMessage

if TYPE_CHECKING:
    from protocols.secagg import SecureSumResult

__all__ = ["AggregateResult", "ProtectedSum", "PlaintextSum", "SecAggSum", "SecAggRuns",
           "CkksSum", "DropPlan", "DEFAULT_BOUND"]

DEFAULT_BOUND = 2.0**40  # public bound on |value| of any released coordinate (~1.1e12)


@dataclass(frozen=True)
class AggregateResult:
    """The sum of the contributors' vectors and the round's bookkeeping."""

    total: np.ndarray
    contributors: tuple[str, ...]
    dropped: tuple[str, ...] = ()
    bytes_sent_per_site: Mapping[str, int] = field(default_factory=dict)
    details: Mapping[str, object] = field(default_factory=dict)


class ProtectedSum(Protocol):
    """What the coordinator needs from a protection stack."""

    name: str

    def aggregate(self, vectors: Mapping[str, np.ndarray], *, round_id: int,
                  purpose: str) -> AggregateResult: ...


def check_vectors(vectors: Mapping[str, np.ndarray]) -> int:
    """All vectors finite float64 of one length; returns that length."""
    lengths = {np.asarray(v).shape for v in vectors.values()}
    if len(lengths) != 1:
        raise InvalidMessage(f"sites sent vectors of different shapes: {sorted(lengths)}")
    for name, vec in vectors.items():
        if not np.all(np.isfinite(vec)):
            raise InvalidMessage(f"site {name} produced a non-finite value")
    (shape,) = lengths
    if len(shape) != 1:
        raise InvalidMessage("a released quantity must be a flat vector")
    return shape[0]


class PlaintextSum:
    """No protection: the coordinator sees each vector. The reference layer."""

    name = "none"

    def aggregate(self, vectors: Mapping[str, np.ndarray], *, round_id: int,
                  purpose: str) -> AggregateResult:
        length = check_vectors(vectors)
        names = tuple(sorted(vectors))
        total = np.zeros(length)
        for name in names:
            total += np.asarray(vectors[name], dtype=float)
        return AggregateResult(total, names, (), {n: 8 * length for n in names})


@dataclass(frozen=True)
class DropPlan:
    """Simulated dropouts: ``sites`` vanish at ``phase`` of round ``round_id``."""

    sites: tuple[str, ...]
    phase: str  # a protocols.secagg.DropPhase value, e.g. "after-masked-input"
    round_id: int = 1


def dropouts(result: SecureSumResult, names: Mapping[int, str]) -> tuple[str, ...]:
    """The sites that left the round: told to drop, or whose message was rejected."""
    return tuple(names[u] for u in sorted(set(result.dropped) | set(result.rejected)))


def dropout_reasons(result: SecureSumResult, names: Mapping[int, str]) -> dict[str, object]:
    """``{"dropout_reasons": {site: why}}`` when a site's message was rejected, else ``{}``."""
    if not result.rejected:
        return {}
    return {"dropout_reasons": {names[u]: why for u, why in sorted(result.rejected.items())}}


def _check_bound(vectors: Mapping[str, np.ndarray], bound: float) -> None:
    for name, vec in vectors.items():
        worst = float(np.max(np.abs(vec))) if len(vec) else 0.0
        if worst > bound:
            raise EncodingError(
                f"site {name} would release a value of magnitude {worst:.3g}, above the "
                f"declared bound {bound:.3g}: standardise the covariates or raise the bound")


class SecAggRuns:
    """The secure-aggregation run of a protection layer: one key agreement per run.

    A run begins with the first round and lasts while round ids increase (a
    new coordinator numbering its rounds from 1 again begins a new run, with
    fresh keys). Its roster is the first round's sites; a site missing from
    a round's contributors, or rejected, never returns in that run. With
    ``per_run=False`` every round is a run of its own (fresh keys each round).
    """

    def __init__(self, *, per_run: bool = True, **run_options: object) -> None:
        import secrets

        self.per_run = per_run
        self._options = run_options
        self._seed = secrets.token_bytes(16)
        self._count = 0
        self._run = None
        self._last_round = 0

    def round(self, by_id: Mapping[int, np.ndarray], *, round_id: int, purpose: str,
              **round_options: object) -> SecureSumResult:
        """One round of the current run (a new run when needed); see ``SecureSumRun.round``."""
        from protocols.errors import AbortError
        from protocols.secagg import SecureSumRun

        if self._run is None or not self.per_run or round_id <= self._last_round:
            self._count += 1
            run_session = hashlib.sha256(self._seed + self._count.to_bytes(8, "big")).digest()
            self._run = SecureSumRun(sorted(by_id), session_id=run_session[:16],
                                     **self._options)
        gone = sorted(set(by_id) - self._run.eligible)
        if gone:
            raise AbortError(f"{len(gone)} site(s) dropped out of this secure-aggregation "
                             "run earlier; a site that dropped out never returns")
        self._last_round = round_id
        session = hashlib.sha256(self._run.session_id + purpose.encode()).digest()[:16]
        return self._run.round(by_id, session_id=session, round_id=round_id, **round_options)


class SecAggSum:
    """Secure aggregation (Bonawitz et al. 2017; SecAgg+ with ``neighbours``).

    Site names are mapped to protocol ids by sorted order for the whole run.
    Keys are agreed once per run (:class:`SecAggRuns`; ``per_run=False``
    agrees them afresh every round); every round has fresh self-masks and
    its own pairwise masks, is bound to the round id and to a session id
    derived from the run and the round's purpose, so no message of one kind
    of release can pass for another.
    """

    name = "secagg"

    def __init__(self, *, bound: float = DEFAULT_BOUND, neighbours: int | None = None,
                 threshold: int | None = None, min_contributors: int = 3,
                 drop: DropPlan | None = None, per_run: bool = True) -> None:
        self.bound = float(bound)
        self.neighbours = neighbours
        self.threshold = threshold
        self.min_contributors = min_contributors
        self.drop = drop
        self.runs = SecAggRuns(per_run=per_run, threshold=threshold, neighbours=neighbours,
                               min_contributors=min_contributors)
        self._ids: dict[str, int] = {}

    def _id(self, name: str) -> int:
        if name not in self._ids:
            self._ids[name] = len(self._ids) + 1
        return self._ids[name]

    def aggregate(self, vectors: Mapping[str, np.ndarray], *, round_id: int,
                  purpose: str) -> AggregateResult:
        from protocols.secagg import DropPhase

        check_vectors(vectors)
        _check_bound(vectors, self.bound)
        for name in sorted(vectors):
            self._id(name)
        by_id = {self._ids[n]: np.asarray(vectors[n], dtype=float) for n in sorted(vectors)}
        names = {v: k for k, v in self._ids.items()}
        drop_sites: tuple[int, ...] = ()
        phase = None
        if self.drop is not None and self.drop.round_id == round_id:
            drop_sites = tuple(self._ids[s] for s in self.drop.sites if s in vectors)
            phase = DropPhase.from_cli(self.drop.phase) if drop_sites else None
        result = self.runs.round(by_id, round_id=round_id, purpose=purpose, bounds=self.bound,
                                 drop_sites=drop_sites, drop_phase=phase)
        return AggregateResult(
            result.total, tuple(names[u] for u in result.contributors),
            dropouts(result, names),
            {names[u]: b for u, b in result.bytes_sent_per_site.items()},
            {"seconds_site": result.seconds_site, "seconds_server": result.seconds_server,
             **dropout_reasons(result, names)})


class CkksSum:
    """CKKS (TenSEAL) over fixed-point ring words: exact limb sums, one key holder.

    The key holder is a separate party (in-process: a separate object the
    coordinator cannot read); the coordinator holds only the public context.
    """

    name = "ckks"

    def __init__(self, *, bound: float = DEFAULT_BOUND, min_contributors: int = 3) -> None:
        from protocols.ckks import CkksKeyHolder

        self.bound = float(bound)
        self.min_contributors = min_contributors
        self._key_holder = CkksKeyHolder.generate()
        self.public_context = self._key_holder.public_context()

    def aggregate(self, vectors: Mapping[str, np.ndarray], *, round_id: int,
                  purpose: str) -> AggregateResult:
        from protocols.ckks import add_ciphertexts, encrypt_ring_vector
        from protocols.encoding import FixedPointEncoder
        from protocols.errors import AbortError

        length = check_vectors(vectors)
        _check_bound(vectors, self.bound)
        names = tuple(sorted(vectors))
        if len(names) < self.min_contributors:
            raise AbortError(f"{len(names)} contributors; at least {self.min_contributors} "
                             "are needed for a released sum")
        encoder = FixedPointEncoder.for_sum(self.bound, len(names), length)
        ciphertexts = {n: encrypt_ring_vector(self.public_context, encoder.encode(vectors[n]),
                                              ring_bits=64) for n in names}
        aggregate = add_ciphertexts(self.public_context, list(ciphertexts.values()))
        ring_sum = self._key_holder.decrypt_ring_sum(aggregate, encoder.n_words)
        total = encoder.decode(ring_sum)
        return AggregateResult(total, names, (), {n: c.nbytes for n, c in ciphertexts.items()},
                               {"words": encoder.words})
