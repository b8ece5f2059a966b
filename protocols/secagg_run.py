"""What a secure-aggregation *run* keeps between its rounds, at a site and at the server.

Keys are agreed once per run: in its first round every site advertises two
X25519 public keys (signed), checks its holders' signed keys once, and keeps
two 32-byte pair keys per neighbour v,

    K^c_uv = HKDF(X25519(c_sk_u, c_pk_v), run, "run-share-encryption", u, v)
    K^s_uv = HKDF(X25519(s_sk_u, s_pk_v), run, "run-pairwise-mask", u, v)

after which the X25519 private keys are dropped. Every round r (round session
σ_r, round id r) then derives its own keys from them by HKDF-Expand
(:func:`~protocols.primitives.round_key`),

    AEAD key of r's shares  = Expand(K^c_uv, σ_r ‖ r ‖ "share-encryption" ‖ u ‖ v)
    pairwise seed s_uv^(r)  = Expand(K^s_uv, σ_r ‖ r ‖ "pairwise-mask" ‖ u ‖ v)

so no key or mask is ever used in two rounds, while the self-mask b_u and its
Shamir shares are drawn afresh in every round. When a site v drops out of
round r before its masked input, each live neighbour u reveals only s_uv^(r)
(a one-round value), never a key that would unmask other rounds; v never
takes part in the run again. See ``threat_model/secagg.md`` §4a.

:class:`SiteRun` and :class:`ServerRun` are plain state: every check runs in
:mod:`protocols.secagg_site` and :mod:`protocols.secagg_server`. A run ends
for good (``closed``) when a round of it aborts at that party.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocols.errors import AbortError
from protocols.primitives import AgreementKey, derive_key, round_key
from protocols.secagg_config import SecAggConfig
from protocols.secagg_messages import AdvertiseKeys, Message

__all__ = ["SiteRun", "ServerRun", "run_pair_key", "pair_seed"]


def run_pair_key(
    config: SecAggConfig, secret: AgreementKey, peer_public: bytes, me: int, peer: int, purpose: str
) -> bytes:
    """The run's pair key: HKDF of the X25519 secret between ``me`` and ``peer``."""
    return derive_key(
        secret.exchange(peer_public),
        session_id=config.run_session,
        round_id=0,
        purpose=f"run-{purpose}",
        low=min(me, peer),
        high=max(me, peer),
    )


def pair_seed(config: SecAggConfig, pair_key: bytes, me: int, peer: int, purpose: str) -> bytes:
    """This round's key for one purpose, expanded from a run pair key."""
    return round_key(
        pair_key,
        session_id=config.session_id,
        round_id=config.round_id,
        purpose=purpose,
        low=min(me, peer),
        high=max(me, peer),
    )


def _refusal(run: SiteRun | ServerRun, config: SecAggConfig) -> str | None:
    """Why ``config`` cannot be ``run``'s next round (None if it can)."""
    if run.closed:
        return "this secure-aggregation run has ended"
    if config.run_session != run.run_session or config.run_sites != run.run_sites:
        return "round does not belong to this run"
    if run.active is not None:
        return "a round of this run is still open"
    if run.last_round is not None and config.round_id <= run.last_round:
        return "round id does not follow the run's last round"
    if run.last_round is not None and not run.keyed:
        return "this run's keys were never agreed"
    return None


@dataclass(eq=False)
class SiteRun:
    """One site's state for a whole run.

    Attributes
    ----------
    site_id, run_session, run_sites
        Who and which run (every round's config must name the same run).
    cipher_key, mask_key
        The run's X25519 key pairs, held only until the pair keys are agreed.
    advertisement
        The site's own signed AdvertiseKeys message (first round).
    peer_keys
        Neighbour → its verified advertised public keys (None before agreement).
    share_keys, mask_keys
        Neighbour → the run's pair keys K^c_uv and K^s_uv.
    last_round
        Id of the last round this site completed (None before the first).
    alive
        The alive list U3 of that round: a later round's roster must lie in it.
    active
        Id of the round in progress, if any (one at a time).
    closed
        The run is over for this site (a round aborted here); it never answers again.
    """

    site_id: int
    run_session: bytes
    run_sites: tuple[int, ...]
    cipher_key: AgreementKey | None = None
    mask_key: AgreementKey | None = None
    advertisement: bytes = b""
    peer_keys: dict[int, AdvertiseKeys] | None = None
    share_keys: dict[int, bytes] = field(default_factory=dict)
    mask_keys: dict[int, bytes] = field(default_factory=dict)
    last_round: int | None = None
    alive: tuple[int, ...] | None = None
    active: int | None = None
    closed: bool = False

    @classmethod
    def for_config(cls, site_id: int, config: SecAggConfig) -> SiteRun:
        """A fresh run whose first round is ``config``."""
        return cls(site_id, config.run_session, config.run_sites)

    @property
    def keyed(self) -> bool:
        """True once the run's pair keys are agreed."""
        return self.peer_keys is not None

    def begin(self, config: SecAggConfig) -> None:
        """Admit ``config`` as this run's next round, or close the run and raise.

        A round must name this run, come after the last one, start only when
        no other round is open, and list only sites whose inputs were counted
        in the previous round (a site that dropped out never returns).
        """
        why = _refusal(self, config)
        if why is None and self.site_id not in config.site_ids:
            why = "site is not in this round's roster"
        elif why is None and self.alive is not None and not set(config.site_ids) <= set(
                self.alive):
            why = "roster names a site that dropped out of this run"
        if why is not None:
            self.close()
            raise AbortError(why)
        self.active = config.round_id

    def finish(self, round_id: int, alive: tuple[int, ...]) -> None:
        """Record a completed round and its alive list."""
        self.last_round, self.alive, self.active = round_id, alive, None

    def close(self) -> None:
        """End the run here: forget every key."""
        self.closed = True
        self.active = None
        self.cipher_key = self.mask_key = None
        self.share_keys, self.mask_keys = {}, {}


@dataclass(eq=False)
class ServerRun:
    """The server's state for a whole run.

    Attributes
    ----------
    run_session, run_sites
        Which run.
    adverts
        Site → its verified AdvertiseKeys message (filled in the first round).
    seen_keys
        Every public key advertised in the run (none may appear twice).
    eligible
        The sites that may take part in the next round: those that completed
        the last one (their input counted and their unmask answer accepted).
    last_round, active, closed
        As in :class:`SiteRun`.
    """

    run_session: bytes
    run_sites: tuple[int, ...]
    adverts: dict[int, Message] | None = None
    seen_keys: set[bytes] = field(default_factory=set)
    eligible: frozenset[int] | None = None
    last_round: int | None = None
    active: int | None = None
    closed: bool = False

    @classmethod
    def for_config(cls, config: SecAggConfig) -> ServerRun:
        """A fresh run whose first round is ``config``."""
        return cls(config.run_session, config.run_sites)

    @property
    def keyed(self) -> bool:
        """True once the run's keys were collected."""
        return self.adverts is not None

    def begin(self, config: SecAggConfig) -> None:
        """Admit ``config`` as the run's next round (the same rules as :meth:`SiteRun.begin`)."""
        why = _refusal(self, config)
        if why is None and self.eligible is not None and not set(config.site_ids) <= self.eligible:
            gone = sorted(set(config.site_ids) - self.eligible)
            why = f"sites {gone} dropped out of this run earlier and cannot return"
        if why is not None:
            raise AbortError(why)
        self.active = config.round_id

    def finish(self, round_id: int, completed: frozenset[int]) -> None:
        """Record a released round and the sites that completed it."""
        self.last_round, self.eligible, self.active = round_id, completed, None

    def close(self) -> None:
        """End the run (a round aborted)."""
        self.closed, self.active = True, None
