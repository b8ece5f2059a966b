"""The server side of secure aggregation: collect, route, check, unmask, decode.

:class:`SecAggServer` is a state machine over :class:`ServerStage`. In each
collection stage the transport calls :meth:`SecAggServer.receive` for every
message that arrives and then :meth:`SecAggServer.advance` when the stage
closes (all expected messages or a timeout); ``advance`` returns the bytes to
send to each site for the next step. The server never sees an unmasked input:

    Σ_{u∈U3} q(x_u) = Σ_{u∈U3} y_u − Σ_{u∈U3} PRG(b_u)
                      − Σ_{v∈U2∖U3} Σ_{u∈U3∩N(v)} sign(u, v) PRG(s_uv^(r))

with sign(u, v) = +1 if u < v else −1, b_u rebuilt from t of this round's
shares held by H(u), and s_uv^(r) — this round's pairwise seed of u with a
dropped v — revealed by u itself (so every u ∈ U3 that masked with a dropped
v must answer the unmask request, or the round aborts).

The server object is one round of a run (:class:`~protocols.secagg_run.ServerRun`):
the first round collects and forwards the sites' signed keys; later rounds
start at COLLECT_SHARES, and a round may list only sites that completed the
run's previous round.

Under CKKS (``config.ckks_context``) the server never holds a single y_u:
sites send CKKS ciphertexts of y_u, the server checks each against the
public context on arrival, adds those of U3 and hands the encrypted sum to
the key holder (``decrypt_masked_total``), which returns Σ_{u∈U3} y_u; the
unmasking above is unchanged.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocols.errors import AbortError, InvalidMessage, ProtocolError, ReplayError, StageError
from protocols.primitives import SEED_BYTES, prg_words, verify
from protocols.secagg_config import CKKS_LIMB_BITS, SERVER_ID, ConfigError, SecAggConfig
from protocols.secagg_messages import (
    AdvertiseKeys,
    Body,
    ConsistencyRequest,
    ConsistencySignature,
    EncryptedMaskedInput,
    KeyList,
    MaskedInput,
    Message,
    ShareBundle,
    ShareKeys,
    UnmaskRequest,
    UnmaskShares,
)
from protocols.secagg_run import ServerRun
from protocols.shamir import PRIME, SHARE_BYTES, ShamirError, Share, robust_combine

if TYPE_CHECKING:
    from protocols.ckks import CkksAggregate

__all__ = ["ServerStage", "SecAggServer", "AggregateOutcome"]


class ServerStage(enum.Enum):
    """What the server is collecting."""

    COLLECT_KEYS = "collect-keys"
    COLLECT_SHARES = "collect-shares"
    COLLECT_INPUTS = "collect-inputs"
    COLLECT_CONSISTENCY = "collect-consistency"
    COLLECT_UNMASK = "collect-unmask"
    DONE = "done"
    ABORTED = "aborted"


_EXPECTED = {
    ServerStage.COLLECT_KEYS: AdvertiseKeys,
    ServerStage.COLLECT_SHARES: ShareKeys,
    ServerStage.COLLECT_INPUTS: MaskedInput,
    ServerStage.COLLECT_CONSISTENCY: ConsistencySignature,
    ServerStage.COLLECT_UNMASK: UnmaskShares,
}
_NEXT = {
    ServerStage.COLLECT_KEYS: ServerStage.COLLECT_SHARES,
    ServerStage.COLLECT_SHARES: ServerStage.COLLECT_INPUTS,
    ServerStage.COLLECT_INPUTS: ServerStage.COLLECT_CONSISTENCY,
    ServerStage.COLLECT_CONSISTENCY: ServerStage.COLLECT_UNMASK,
    ServerStage.COLLECT_UNMASK: ServerStage.DONE,
}


@dataclass(frozen=True, eq=False)
class AggregateOutcome:
    """The only thing a round releases: the decoded sum and whose inputs are in it."""

    total: np.ndarray
    contributors: tuple[int, ...]
    dropped: tuple[int, ...]
    #: site → why the server stopped counting it (a rejected message; see ``dropouts``)
    rejected: Mapping[int, str] = field(default_factory=dict)


class SecAggServer:
    """The aggregating server of one round.

    Parameters
    ----------
    config : SecAggConfig
        Public round parameters.
    identity : Ed25519PrivateKey
        The server's signing key (sites hold its public half).
    roster : Mapping[int, Ed25519PublicKey]
        Registered identity keys of the sites.
    decrypt_masked_total : callable, optional
        Required exactly when ``config.ckks_context`` is set: the key holder's
        decryption of the encrypted Σ_{u∈U3} y_u to uint64 words (a round trip
        to the key holder; the server holds only the public context).
    run : ServerRun, optional
        The run this round continues; a fresh run (whose first round this
        is) when None. A round the run cannot admit raises :class:`AbortError`.
    """

    def __init__(
        self,
        config: SecAggConfig,
        identity: Ed25519PrivateKey,
        roster: Mapping[int, Ed25519PublicKey],
        *,
        decrypt_masked_total: Callable[[CkksAggregate], np.ndarray] | None = None,
        run: ServerRun | None = None,
    ) -> None:
        if set(roster) != set(config.site_ids):
            raise AbortError("roster does not match the round's sites")
        if (config.ckks_context is None) != (decrypt_masked_total is None):
            raise ConfigError("a CKKS round needs the key holder's decryption, and only it does")
        run = ServerRun.for_config(config) if run is None else run
        run.begin(config)
        self._run = run
        self._decrypt_masked_total = decrypt_masked_total
        self._expected = dict(_EXPECTED)
        if config.ckks_context is not None:
            self._expected[ServerStage.COLLECT_INPUTS] = EncryptedMaskedInput
        self._config = config
        self._identity = identity
        self._roster = dict(roster)
        self._stage = ServerStage.COLLECT_KEYS
        self._inbox: dict[ServerStage, dict[int, Message]] = {s: {} for s in _EXPECTED}
        self._sets: list[set[int]] = [set(config.site_ids)]  # U0 ⊇ U1 ⊇ … ⊇ U5
        if run.keyed:  # a later round: the run's keys stand (U1 = the roster)
            self._stage = ServerStage.COLLECT_SHARES
            self._sets.append(set(config.site_ids) & set(run.adverts))
        self._outcome: AggregateOutcome | None = None
        self._bundled: dict[int, frozenset[int]] = {}  # recipient → whose shares it got
        self._consistency_payload = b""
        self._rejected: dict[int, str] = {}

    @property
    def stage(self) -> ServerStage:
        """The current stage."""
        return self._stage

    @property
    def rejected(self) -> Mapping[int, str]:
        """Site → why its message was rejected (the site counts as dropped from then on).

        Only senders whose signature verified are named here; a message that
        does not parse or verify names nobody (the transport records it).
        """
        return dict(self._rejected)

    @property
    def outcome(self) -> AggregateOutcome:
        """The released sum (only after a successful final :meth:`advance`)."""
        if self._outcome is None:
            raise StageError("no sum has been released")
        return self._outcome

    def _send(self, body: Body, recipient: int) -> bytes:
        return Message.build(
            body,
            session_id=self._config.session_id,
            round_id=self._config.round_id,
            sender=SERVER_ID,
            recipient=recipient,
            identity=self._identity,
        )

    @property
    def run(self) -> ServerRun:
        """The run this round belongs to."""
        return self._run

    def _abort(self, reason: str) -> AbortError:
        self._stage = ServerStage.ABORTED
        self._run.close()
        return AbortError(reason)

    def receive(self, data: bytes) -> None:
        """Accept one site message for the current stage; reject anything else.

        Raises
        ------
        InvalidMessage, ReplayError, StageError
            Bad signature or format, other session/round or duplicate, wrong stage.
        """
        if self._stage not in self._expected:
            raise StageError(f"server is {self._stage.value} and takes no messages")
        message = Message.parse(data)
        sender = message.header.sender
        if sender not in self._roster or message.header.recipient != SERVER_ID:
            raise InvalidMessage("message not from a registered site to the server")
        message.verify(self._roster[sender])
        inbox = self._inbox[self._stage]
        if sender in inbox:
            raise ReplayError("second message from the same site in one stage")
        if sender not in self._sets[-1]:
            raise InvalidMessage("site did not complete the previous stage")
        body_type = self._expected[self._stage]
        try:
            message.header.expect(kind=body_type.KIND, session_id=self._config.session_id,
                                  round_id=self._config.round_id)
            self._check_body(sender, message.body)
        except ReplayError:
            raise  # a signed message of another round or session: anyone could replay it
        except ProtocolError as exc:  # the site signed a malformed message: it drops out
            self._rejected.setdefault(sender, f"{self._stage.value}: {exc}")
            raise
        self._rejected.pop(sender, None)  # a valid message later in the same stage counts
        inbox[sender] = message

    def _check_body(self, sender: int, body: Body) -> None:
        config = self._config
        if isinstance(body, AdvertiseKeys):
            keys = {body.cipher_public, body.mask_public}
            if keys & self._run.seen_keys or len(keys) < 2:
                raise InvalidMessage("public key already advertised")
            self._run.seen_keys |= keys
        elif isinstance(body, ShareKeys):
            if {v for v, _ in body.ciphertexts} != self._sets[-1] & config.graph[sender]:
                raise InvalidMessage("shares must go to exactly the sender's live neighbours")
        elif isinstance(body, MaskedInput):
            if body.words.shape != (config.encoder.n_words,):
                raise InvalidMessage("masked input has the wrong length")
        elif isinstance(body, EncryptedMaskedInput):
            from protocols.ckks import PayloadKind, check_ciphertext

            check_ciphertext(  # CkksMismatch (an InvalidMessage) on any difference
                config.ckks_context,
                body.ciphertext,
                n_values=config.encoder.n_words,
                kind=PayloadKind.RING_LIMBS,
                ring_bits=64,
                limb_bits=CKKS_LIMB_BITS,
            )
        elif isinstance(body, ConsistencySignature):
            verify(self._roster[sender], body.signature, self._consistency_payload)
        elif isinstance(body, UnmaskShares):
            alive, dropped = self._sets[3], self._sets[2] - self._sets[3]
            seeds = {v for v, _ in body.self_mask_shares}
            pairs = {v for v, _ in body.pair_seeds}
            holders_of = {v for v in self._sets[2] if sender in config.holders(v)}
            if seeds & pairs or not seeds <= alive & holders_of:
                raise InvalidMessage("unmask response reveals shares it should not")
            if pairs != dropped & self._bundled.get(sender, frozenset()):
                raise InvalidMessage("unmask response must give its pair seed with exactly "
                                     "its dropped neighbours")
            for _, value in body.self_mask_shares:
                if len(value) != SHARE_BYTES or int.from_bytes(value, "big") >= PRIME:
                    raise InvalidMessage("a share value is not a field element of 33 bytes")
            if any(len(value) != SEED_BYTES for _, value in body.pair_seeds):
                raise InvalidMessage("a pair seed has 32 bytes")

    def advance(self) -> dict[int, bytes]:
        """Close the current stage; return the next message for each live site.

        Raises
        ------
        AbortError
            Some holder set has fewer than t live members, or fewer than
            ``min_contributors`` inputs arrived. Nothing is released.
        """
        if self._stage not in self._expected:
            raise StageError(f"server is {self._stage.value}")
        stage = self._stage
        live = set(self._inbox[stage])
        self._sets.append(live)
        out = getattr(self, f"_after_{stage.name.lower()}")(live)
        self._stage = _NEXT[stage]
        return out

    def _require(self, live: set[int], sites: set[int], what: str) -> None:
        t = self._config.t
        for u in sorted(sites):
            if len(live & self._config.holders(u)) < t:
                raise self._abort(f"site {u} has fewer than t = {t} holders that {what}")

    def _after_collect_keys(self, live: set[int]) -> dict[int, bytes]:
        self._require(live, live, "advertised keys")
        inbox = self._inbox[ServerStage.COLLECT_KEYS]
        self._run.adverts = {v: inbox[v] for v in sorted(live)}
        return {
            u: self._send(
                KeyList(
                    tuple(
                        inbox[v].signed_bytes + inbox[v].signature
                        for v in sorted(live & self._config.holders(u))
                    )
                ),
                u,
            )
            for u in sorted(live)
        }

    def _after_collect_shares(self, live: set[int]) -> dict[int, bytes]:
        self._require(live, live, "shared keys")
        inbox = self._inbox[ServerStage.COLLECT_SHARES]
        bundles: dict[int, list[tuple[int, bytes]]] = {u: [] for u in live}
        for sender in sorted(live):
            for recipient, sealed in inbox[sender].body.ciphertexts:
                if recipient in live:
                    bundles[recipient].append((sender, sealed))
        self._bundled = {u: frozenset(s for s, _ in b) for u, b in bundles.items()}
        return {u: self._send(ShareBundle(tuple(b)), u) for u, b in sorted(bundles.items())}

    def _after_collect_inputs(self, live: set[int]) -> dict[int, bytes]:
        if len(live) < self._config.min_contributors:
            raise self._abort("fewer inputs than the minimum number of contributors")
        dropped = self._sets[2] - live
        self._require(live, live | dropped, "sent masked inputs")
        request = ConsistencyRequest(tuple(sorted(live)))
        self._consistency_payload = self._config.consistency_payload(request.alive)
        return {u: self._send(request, u) for u in sorted(live)}

    def _after_collect_consistency(self, live: set[int]) -> dict[int, bytes]:
        alive, dropped = self._sets[3], self._sets[2] - self._sets[3]
        self._require(live, alive | dropped, "confirmed the alive list")
        inbox = self._inbox[ServerStage.COLLECT_CONSISTENCY]
        out = {}
        for u in sorted(live):
            signers = sorted(live & self._config.holders(u))[: self._config.t]
            signatures = tuple((v, inbox[v].body.signature) for v in signers)
            out[u] = self._send(
                UnmaskRequest(tuple(sorted(alive)), tuple(sorted(dropped)), signatures), u
            )
        return out

    def _after_collect_unmask(self, live: set[int]) -> dict[int, bytes]:
        config = self._config
        alive, dropped = self._sets[3], self._sets[2] - self._sets[3]
        self._require(live, alive | dropped, "answered the unmask request")
        responses = self._inbox[ServerStage.COLLECT_UNMASK]
        n_words = config.encoder.n_words
        total = self._masked_total(sorted(alive))
        seed_shares = self._index(responses, "self_mask_shares")
        try:
            for u in sorted(alive):
                seed = self._reconstruct(u, seed_shares)
                total -= prg_words(seed, n_words)
        except ShamirError as exc:
            raise self._abort("shares do not reconstruct a secret") from exc
        pair_seeds = {u: dict(responses[u].body.pair_seeds) for u in responses}
        for u in sorted(alive):
            for v in sorted(dropped & self._bundled.get(u, frozenset())):
                if u not in pair_seeds:  # u masked with v and cannot say with what
                    raise self._abort(f"site {u} did not reveal its pair seed with dropped "
                                      f"site {v}; its mask cannot be removed")
                if v > u:  # y_u carries +PRG(s_uv) for v > u, −PRG(s_uv) for v < u
                    total -= prg_words(pair_seeds[u][v], n_words)
                else:
                    total += prg_words(pair_seeds[u][v], n_words)
        self._outcome = AggregateOutcome(
            config.encoder.decode(total), tuple(sorted(alive)), tuple(sorted(dropped)),
            dict(self._rejected),
        )
        completed = frozenset(alive & set(responses)) - set(self._rejected)
        self._run.finish(config.round_id, completed)
        return {}

    def _masked_total(self, alive: list[int]) -> np.ndarray:
        """Σ_{u∈U3} y_u in Z_{2^64}: added in the clear, or under CKKS and decrypted."""
        inputs = self._inbox[ServerStage.COLLECT_INPUTS]
        n_words = self._config.encoder.n_words
        if self._decrypt_masked_total is None:
            total = np.zeros(n_words, dtype=np.uint64)
            for u in alive:
                total += inputs[u].body.words
            return total
        from protocols.ckks import add_ciphertexts

        try:
            aggregate = add_ciphertexts(
                self._config.ckks_context, [inputs[u].body.ciphertext for u in alive]
            )
            total = np.asarray(self._decrypt_masked_total(aggregate))
        except ProtocolError as exc:
            raise self._abort("the key holder did not decrypt the masked sum") from exc
        if total.dtype != np.uint64 or total.shape != (n_words,):
            raise self._abort("the key holder returned a masked sum of the wrong size")
        return total.copy()

    @staticmethod
    def _index(responses: Mapping[int, Message], field: str) -> dict[int, list[Share]]:
        shares: dict[int, list[Share]] = {}
        for holder in sorted(responses):
            for owner, value in getattr(responses[holder].body, field):
                shares.setdefault(owner, []).append(Share.from_value_bytes(holder + 1, value))
        return shares

    def _reconstruct(self, owner: int, shares: Mapping[int, list[Share]]) -> bytes:
        """``owner``'s secret from its holders' shares; a holder whose share is off the
        polynomial the others agree on is recorded in :attr:`rejected` (the secret stands)."""
        received = shares.get(owner, [])
        if len(received) < self._config.t:
            raise self._abort(f"fewer than t shares for site {owner}")
        secret, wrong = robust_combine(received, self._config.t)
        for x in wrong:
            self._rejected.setdefault(x - 1, f"{ServerStage.COLLECT_UNMASK.value}: its share "
                                             f"of site {owner}'s secret disagrees with the others")
        return secret
