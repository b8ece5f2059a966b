"""In-process secure summation: the driver the rest of securefed calls.

:class:`SecureSumRun` runs the rounds of one run of SecAgg (complete graph)
or SecAgg+ (``neighbours=k``) between :class:`~protocols.secagg_site.SecAggSite`
and :class:`~protocols.secagg_server.SecAggServer` objects that exchange *only
bytes*, exactly as a network transport would: keys are agreed in its first
round and reused by the later ones (:mod:`protocols.secagg_run`), and a site
that drops out never returns. :func:`secure_sum` is a run of one round. Both
can simulate sites dropping out at any phase. The released total is

    Σ_{u ∈ contributors} x_u,   |error| ≤ n · 2^{−f−1} + ½ ulp   (see protocols.encoding)

where the contributors are the sites whose masked input reached the server.
With ``ckks_context`` the masked inputs travel as CKKS ciphertexts and only
their sum is decrypted, by the key holder (``protocols.stack_secagg_ckks``).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocols.errors import EncodingError, ProtocolError
from protocols.secagg_config import ConfigError, SecAggConfig
from protocols.secagg_run import ServerRun, SiteRun
from protocols.secagg_server import SecAggServer
from protocols.secagg_site import SecAggSite

if TYPE_CHECKING:
    from protocols.ckks import CkksAggregate

__all__ = ["DropPhase", "SecureSumResult", "SecureSumRun", "secure_sum"]


class DropPhase(enum.Enum):
    """When the simulated dropouts leave the round."""

    AFTER_KEY_EXCHANGE = "after-key-exchange"
    AFTER_KEY_SHARING = "after-key-sharing"
    AFTER_MASKED_INPUT = "after-masked-input"
    DURING_UNMASK = "during-unmask"

    @classmethod
    def from_cli(cls, text: str) -> DropPhase:
        """Parse a command-line spelling such as ``after-masked-input``."""
        key = text.strip().lower().replace("_", "-")
        for phase in cls:
            if phase.value == key:
                return phase
        choices = ", ".join(p.value for p in cls)
        raise ConfigError(f"unknown drop phase {text!r}; choose one of {choices}")


@dataclass(frozen=True, eq=False)
class SecureSumResult:
    """Outcome of one secure summation.

    Attributes
    ----------
    total : numpy.ndarray
        float64 sum of the contributors' vectors.
    contributors : tuple[int, ...]
        Sorted ids of the sites whose input is in ``total``.
    dropped : tuple[int, ...]
        Sorted ids of the sites told to drop out.
    rejected : dict[int, str]
        Site → why the server rejected its message (a malformed message counts
        as that site's dropout from then on; the round goes on without it).
    bytes_sent_per_site : dict[int, int]
        Bytes each site actually serialised and sent.
    bytes_received_by_server : int
        Total bytes the server received.
    seconds_site : float
        Site-side compute summed over all sites (sequential in-process).
    seconds_server : float
        Server-side compute.
    """

    total: np.ndarray
    contributors: tuple[int, ...]
    dropped: tuple[int, ...]
    bytes_sent_per_site: dict[int, int]
    bytes_received_by_server: int
    seconds_site: float
    seconds_server: float
    rejected: dict[int, str] = field(default_factory=dict)


class _Clock:
    def __init__(self) -> None:
        self.site = 0.0
        self.server = 0.0

    def site_call(self, fn: Callable[..., bytes], *args: object) -> bytes:
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.site += time.perf_counter() - start

    def server_call(self, fn: Callable[..., object], *args: object) -> object:
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.server += time.perf_counter() - start


def _checked_vectors(vectors: Mapping[int, np.ndarray]) -> tuple[list[int], int]:
    order = [int(u) for u in vectors]
    lengths = {np.shape(v) for v in vectors.values()}
    if len(lengths) != 1 or len(next(iter(lengths))) != 1:
        raise EncodingError("every site needs a 1-D vector of the same length")
    return order, int(next(iter(lengths))[0])


def secure_sum(
    vectors: Mapping[int, np.ndarray],
    *,
    bounds: float | np.ndarray,
    session_id: bytes,
    round_id: int,
    identities: Mapping[int, Ed25519PrivateKey] | None = None,
    threshold: int | None = None,
    neighbours: int | None = None,
    drop_sites: Collection[int] = (),
    drop_phase: DropPhase | None = None,
    min_contributors: int = 3,
    ckks_context: bytes | None = None,
    decrypt_masked_total: Callable[[CkksAggregate], np.ndarray] | None = None,
    network: Callable[[int, str, bytes], bytes] | None = None,
) -> SecureSumResult:
    """Securely sum one float vector per site; the server learns only the total.

    A run of one round (:class:`SecureSumRun`): fresh keys, used once.

    Parameters
    ----------
    vectors : Mapping[int, numpy.ndarray]
        Site id → 1-D vector (all the same length); iteration order is the
        order in which sites act.
    bounds : float or numpy.ndarray
        Declared bound on |x_i| (scalar or per coordinate); values outside
        raise :class:`EncodingError` before anything is masked.
    session_id, round_id
        Bound into every key, ciphertext and signature.
    identities : Mapping[int, Ed25519PrivateKey], optional
        Long-term site signing keys; fresh ones are generated when None.
    threshold : int, optional
        Shamir threshold t (default ⌊2m/3⌋ + 1 for m share holders).
    neighbours : int, optional
        k for SecAgg+ (random k-regular graph); None for the complete graph.
    drop_sites, drop_phase
        Sites that vanish, and when.
    min_contributors : int
        Smallest number of inputs a released sum may contain.
    ckks_context, decrypt_masked_total
        Both or neither: a CKKS public context under which sites send their
        masked inputs, and the key holder's decryption of their sum (see
        :class:`~protocols.secagg_server.SecAggServer`).
    network : callable, optional
        ``network(site, step, data)`` → the bytes that reach the server when
        ``site`` sends ``data`` at ``step`` (a :class:`SecAggSite` method name):
        simulates a faulty or hostile site. A message the server rejects counts
        as that site's dropout (``rejected`` says why); the round goes on.

    Returns
    -------
    SecureSumResult

    Raises
    ------
    AbortError
        Fewer than t holders alive for some site at some phase, or fewer than
        ``min_contributors`` inputs; nothing is released.
    EncodingError, ConfigError
        Bad values or parameters.
    """
    order, _ = _checked_vectors(vectors)
    run = SecureSumRun(order, session_id=session_id, identities=identities,
                       threshold=threshold, neighbours=neighbours,
                       min_contributors=min_contributors, ckks_context=ckks_context)
    return run.round(vectors, bounds=bounds, session_id=session_id, round_id=round_id,
                     drop_sites=drop_sites, drop_phase=drop_phase,
                     decrypt_masked_total=decrypt_masked_total, network=network)


class SecureSumRun:
    """The rounds of one secure-aggregation run, all sites and the server in this process.

    Parameters
    ----------
    site_ids : sequence of int
        The run's roster (every round's sites are a subset).
    session_id : bytes
        The run's session id, bound into its pair keys.
    identities : Mapping[int, Ed25519PrivateKey], optional
        Long-term site signing keys; fresh ones are generated when None.
    threshold, neighbours, min_contributors, ckks_context
        As in :func:`secure_sum`, for every round of the run.
    """

    def __init__(
        self,
        site_ids: Collection[int],
        *,
        session_id: bytes,
        identities: Mapping[int, Ed25519PrivateKey] | None = None,
        threshold: int | None = None,
        neighbours: int | None = None,
        min_contributors: int = 3,
        ckks_context: bytes | None = None,
    ) -> None:
        self.site_ids = tuple(sorted(int(u) for u in site_ids))
        self.session_id = session_id
        if identities is None:
            identities = {u: Ed25519PrivateKey.generate() for u in self.site_ids}
        if set(identities) != set(self.site_ids):
            raise ConfigError("identities must cover exactly the sites of this run")
        self._identities = dict(identities)
        self._server_identity = Ed25519PrivateKey.generate()
        self.threshold, self.neighbours = threshold, neighbours
        self.min_contributors, self.ckks_context = min_contributors, ckks_context
        self.server_run: ServerRun | None = None
        self.site_runs: dict[int, SiteRun] = {}

    @property
    def eligible(self) -> frozenset[int]:
        """Sites that may take part in the next round (all of them before the first)."""
        if self.server_run is None or self.server_run.eligible is None:
            return frozenset(self.site_ids)
        return self.server_run.eligible

    def _config(self, order: list[int], length: int, bounds, session_id: bytes,
                round_id: int) -> SecAggConfig:
        return SecAggConfig(
            session_id=session_id, round_id=round_id, site_ids=tuple(order),
            vector_length=length, bounds=bounds, threshold=self.threshold,
            neighbours=self.neighbours, min_contributors=self.min_contributors,
            ckks_context=self.ckks_context, run_session=self.session_id,
            run_sites=self.site_ids,
        )

    def round(
        self,
        vectors: Mapping[int, np.ndarray],
        *,
        bounds: float | np.ndarray,
        session_id: bytes,
        round_id: int,
        drop_sites: Collection[int] = (),
        drop_phase: DropPhase | None = None,
        decrypt_masked_total: Callable[[CkksAggregate], np.ndarray] | None = None,
        network: Callable[[int, str, bytes], bytes] | None = None,
    ) -> SecureSumResult:
        """One round over ``vectors``' sites (a subset of :attr:`eligible`); see
        :func:`secure_sum`. ``session_id`` names the round (e.g. its purpose);
        round ids must increase. A site that dropped out of an earlier round of
        the run is refused (:class:`AbortError`): it never returns."""
        order, length = _checked_vectors(vectors)
        dropping = {int(u) for u in drop_sites}
        if dropping and drop_phase is None:
            raise ConfigError("drop_sites needs a drop_phase")
        if not dropping <= set(order):
            raise ConfigError("drop_sites must be sites of this round")
        config = self._config(order, length, bounds, session_id, round_id)
        roster = {u: self._identities[u].public_key() for u in order}
        first = self.server_run is None
        server = SecAggServer(config, self._server_identity, roster,
                              decrypt_masked_total=decrypt_masked_total, run=self.server_run)
        self.server_run = server.run
        server_key = self._server_identity.public_key()
        sites = {u: SecAggSite(u, config, self._identities[u], roster, server_key,
                               run=self.site_runs.get(u)) for u in order}
        self.site_runs.update({u: site.run for u, site in sites.items()})
        return _drive(server, sites, vectors, order, dropping, drop_phase, network, first)


def _drive(server: SecAggServer, sites: Mapping[int, SecAggSite],
           vectors: Mapping[int, np.ndarray], order: list[int], dropping: set[int],
           drop_phase: DropPhase | None, network: Callable[[int, str, bytes], bytes] | None,
           first: bool) -> SecureSumResult:
    """Carry one round's bytes between the sites and the server."""
    clock = _Clock()
    sent = dict.fromkeys(order, 0)
    rejected: dict[int, str] = {}

    def deliver(u: int, data: bytes, step: str) -> None:
        if network is not None:
            data = network(u, step, data)
        sent[u] += len(data) if isinstance(data, bytes | bytearray) else 0
        try:
            clock.server_call(server.receive, data)
        except ProtocolError as exc:  # no valid message from u: u has dropped out
            rejected.setdefault(u, server.rejected.get(u, f"{step}: {exc}"))

    def advance() -> dict[int, bytes]:
        return clock.server_call(server.advance)  # type: ignore[return-value]

    def active(phase: DropPhase) -> list[int]:
        return [u for u in order if not (drop_phase is phase and u in dropping)]

    if first:  # the run's keys: advertised and checked once
        for u in order:
            deliver(u, clock.site_call(sites[u].advertise_keys), "advertise_keys")
        key_lists = advance()
    for u in active(DropPhase.AFTER_KEY_EXCHANGE):
        if not first:
            deliver(u, clock.site_call(sites[u].share_keys), "share_keys")
        elif u in key_lists:
            deliver(u, clock.site_call(sites[u].share_keys, key_lists[u]), "share_keys")
    bundles = advance()
    live = [u for u in active(DropPhase.AFTER_KEY_EXCHANGE) if u in bundles]
    for u in [u for u in active(DropPhase.AFTER_KEY_SHARING) if u in live]:
        deliver(u, clock.site_call(sites[u].masked_input, bundles[u], vectors[u]), "masked_input")
    requests = advance()
    live = [u for u in active(DropPhase.AFTER_KEY_SHARING) if u in requests]
    for u in [u for u in active(DropPhase.AFTER_MASKED_INPUT) if u in live]:
        deliver(u, clock.site_call(sites[u].sign_consistency, requests[u]), "sign_consistency")
    unmask_requests = advance()
    for u in [u for u in active(DropPhase.DURING_UNMASK) if u in unmask_requests]:
        deliver(u, clock.site_call(sites[u].unmask, unmask_requests[u]), "unmask")
    advance()
    outcome = server.outcome
    return SecureSumResult(
        total=outcome.total,
        contributors=outcome.contributors,
        dropped=tuple(sorted(dropping)),
        bytes_sent_per_site=sent,
        bytes_received_by_server=sum(sent.values()),
        seconds_site=clock.site,
        seconds_server=clock.server,
        rejected={**outcome.rejected, **rejected},
    )
