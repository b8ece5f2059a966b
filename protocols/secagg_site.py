"""The site side of secure aggregation (Bonawitz et al. 2017, Bell et al. 2020).

A :class:`SecAggSite` is a one-round state machine. Each public method is one
protocol step, allowed in exactly one :class:`SiteStage`; it consumes the
server's bytes and returns the bytes to send:

    READY --advertise_keys--> ADVERTISED --share_keys--> KEYS_SHARED
      --masked_input--> INPUT_SENT --sign_consistency--> CONSISTENCY_SIGNED
      --unmask--> DONE

Any other call raises :class:`StageError`. Any failed check (bad signature,
replay, inconsistent view, too few holders) moves the site to ABORTED, drops
its round secrets and raises; an aborted site never answers again.

Masked input (u's holders H(u) = N(u) ∪ {u}, U2 the holders that shared keys):

    y_u = q(x_u) + PRG(b_u) + Σ_{v ∈ U2∩N(u), v > u} PRG(s_uv) − Σ_{v ∈ U2∩N(u), v < u} PRG(s_uv)

in Z_{2^64}^{w·d}, with s_uv = HKDF(X25519(s_sk_u, s_pk_v), info = session,
round, "pairwise-mask", min, max). When the round names a CKKS public context
(``config.ckks_context``), y_u leaves the site only encrypted under it, as
16-bit limbs (:class:`EncryptedMaskedInput`).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Mapping
from types import MappingProxyType

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocols.errors import AbortError, InvalidMessage, StageError
from protocols.primitives import (
    AgreementKey,
    derive_key,
    open_sealed,
    prg_words,
    random_seed,
    seal,
    sign,
    verify,
)
from protocols.secagg_config import CKKS_LIMB_BITS, SERVER_ID, SecAggConfig
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
from protocols.shamir import SHARE_BYTES, Share, split

__all__ = ["SiteStage", "SecAggSite", "share_aad", "pair_key"]


class SiteStage(enum.Enum):
    """Where a site is in its round."""

    READY = "ready"
    ADVERTISED = "advertised"
    KEYS_SHARED = "keys-shared"
    INPUT_SENT = "input-sent"
    CONSISTENCY_SIGNED = "consistency-signed"
    DONE = "done"
    ABORTED = "aborted"


def share_aad(config: SecAggConfig, sender: int, recipient: int) -> bytes:
    """Associated data of an encrypted share: session, round, sender, recipient."""
    return (
        b"securefed/secagg/v1/share"
        + bytes([len(config.session_id)])
        + config.session_id
        + struct.pack(">Qqq", config.round_id, sender, recipient)
    )


def pair_key(
    config: SecAggConfig, secret: AgreementKey, peer_public: bytes, me: int, peer: int, purpose: str
) -> bytes:
    """HKDF of the X25519 secret between ``me`` and ``peer`` for one purpose."""
    return derive_key(
        secret.exchange(peer_public),
        session_id=config.session_id,
        round_id=config.round_id,
        purpose=purpose,
        low=min(me, peer),
        high=max(me, peer),
    )


class SecAggSite:
    """One site's half of a secure-aggregation round.

    Parameters
    ----------
    site_id : int
        This site's id in ``config.site_ids``.
    config : SecAggConfig
        Public round parameters (same object contents at every party).
    identity : Ed25519PrivateKey
        The site's long-term signing key (its public half is in ``roster``).
    roster : Mapping[int, Ed25519PublicKey]
        Registered identity keys of all sites.
    server_key : Ed25519PublicKey
        The server's identity key.
    """

    def __init__(
        self,
        site_id: int,
        config: SecAggConfig,
        identity: Ed25519PrivateKey,
        roster: Mapping[int, Ed25519PublicKey],
        server_key: Ed25519PublicKey,
    ) -> None:
        if site_id not in config.site_ids:
            raise AbortError("site is not in this round's roster")
        if set(roster) != set(config.site_ids):
            raise AbortError("roster does not match the round's sites")
        self.site_id = site_id
        self._config = config
        self._identity = identity
        self._roster = dict(roster)
        self._server_key = server_key
        self._holders = config.holders(site_id)
        self._stage = SiteStage.READY
        self._cipher_key: AgreementKey | None = None
        self._mask_key: AgreementKey | None = None
        self._self_seed: bytes | None = None
        self._peer_keys: dict[int, AdvertiseKeys] = {}
        self._held: dict[int, tuple[Share, Share]] = {}
        self._share_keys_by_peer: dict[int, bytes] = {}
        self._alive: tuple[int, ...] | None = None
        self._advertisement = b""
        self._revealed: dict[int, str] = {}

    @property
    def stage(self) -> SiteStage:
        """The current stage."""
        return self._stage

    @property
    def revealed(self) -> Mapping[int, str]:
        """Site id → the one kind of share revealed for it ("self-mask" or "mask-key")."""
        return MappingProxyType(self._revealed)

    # ----------------------------------------------------------------- helpers
    def _step(self, expected: SiteStage, nxt: SiteStage, action: Callable[[], bytes]) -> bytes:
        if self._stage is not expected:
            raise StageError(f"site {self.site_id} is {self._stage.value}, not {expected.value}")
        try:
            out = action()
        except Exception:  # fail closed: any error ends the round for this site
            self._abort()
            raise
        self._stage = nxt
        if nxt is SiteStage.DONE:
            self._forget()
        return out

    def _abort(self) -> None:
        self._stage = SiteStage.ABORTED
        self._forget()

    def _forget(self) -> None:
        self._cipher_key = self._mask_key = None
        self._self_seed = None
        self._held = {}
        self._share_keys_by_peer = {}

    def _send(self, body: Body) -> bytes:
        return Message.build(
            body,
            session_id=self._config.session_id,
            round_id=self._config.round_id,
            sender=self.site_id,
            recipient=SERVER_ID,
            identity=self._identity,
        )

    def _receive(self, data: bytes, body_type: type) -> Body:
        message = Message.parse(data)
        message.verify(self._server_key)
        message.header.expect(
            kind=body_type.KIND,
            session_id=self._config.session_id,
            round_id=self._config.round_id,
        )
        if message.header.sender != SERVER_ID or message.header.recipient != self.site_id:
            raise InvalidMessage("message not from the server to this site")
        return message.body

    def _need(self, present: set[int] | frozenset[int], what: str) -> None:
        if len(present & self._holders) < self._config.t:
            raise AbortError(f"fewer than t = {self._config.t} holders {what}")

    # ------------------------------------------------------------------- steps
    def advertise_keys(self) -> bytes:
        """Round 0: generate two X25519 key pairs and send their signed public keys."""

        def action() -> bytes:
            self._cipher_key = AgreementKey.generate()
            self._mask_key = AgreementKey.generate()
            self._advertisement = self._send(
                AdvertiseKeys(self._cipher_key.public_bytes, self._mask_key.public_bytes)
            )
            return self._advertisement

        return self._step(SiteStage.READY, SiteStage.ADVERTISED, action)

    def share_keys(self, key_list: bytes) -> bytes:
        """Round 1: check the holders' keys, Shamir-share b_u and s_sk_u, encrypt the shares."""
        return self._step(
            SiteStage.ADVERTISED, SiteStage.KEYS_SHARED, lambda: self._share_keys(key_list)
        )

    def _share_keys(self, key_list: bytes) -> bytes:
        body = self._receive(key_list, KeyList)
        keys: dict[int, AdvertiseKeys] = {}
        for raw in body.advertisements:
            advert = Message.parse(raw)
            sender = advert.header.sender
            if sender not in self._holders or advert.header.recipient != SERVER_ID:
                raise AbortError("key list contains a site outside this site's neighbourhood")
            if sender == self.site_id:
                if raw != self._advertisement:
                    raise AbortError("key list does not carry this site's own keys")
            else:
                advert.verify(self._roster[sender])
            advert.header.expect(
                kind=AdvertiseKeys.KIND,
                session_id=self._config.session_id,
                round_id=self._config.round_id,
            )
            if sender in keys:
                raise AbortError("key list names a site twice")
            keys[sender] = advert.body
        mine = keys.get(self.site_id)
        if mine is None or mine != AdvertiseKeys(
            self._cipher_key.public_bytes, self._mask_key.public_bytes
        ):
            raise AbortError("key list does not carry this site's own keys")
        publics = [k.cipher_public for k in keys.values()] + [k.mask_public for k in keys.values()]
        if len(set(publics)) != len(publics):
            raise AbortError("duplicate public keys in key list")
        self._need(set(keys), "advertised keys")
        self._peer_keys = keys
        self._self_seed = random_seed()
        recipients = sorted(keys)
        points = [v + 1 for v in recipients]
        seed_shares = split(self._self_seed, points, self._config.t)
        key_shares = split(self._mask_key.private_bytes_for_sharing(), points, self._config.t)
        ciphertexts = []
        for v in recipients:
            pair = (seed_shares[v + 1], key_shares[v + 1])
            if v == self.site_id:
                self._held[v] = pair
                continue
            # Sender and recipient are bound by the associated data, not repeated inside.
            plaintext = b"".join(s.value_bytes() for s in pair)
            key = pair_key(
                self._config,
                self._cipher_key,
                keys[v].cipher_public,
                self.site_id,
                v,
                "share-encryption",
            )
            self._share_keys_by_peer[v] = key
            aad = share_aad(self._config, self.site_id, v)
            ciphertexts.append((v, seal(key, plaintext, aad)))
        return self._send(ShareKeys(tuple(ciphertexts)))

    def masked_input(self, share_bundle: bytes, values: np.ndarray) -> bytes:
        """Round 2: store received shares, encode ``values`` (checked first) and mask them."""
        return self._step(
            SiteStage.KEYS_SHARED,
            SiteStage.INPUT_SENT,
            lambda: self._masked_input(share_bundle, values),
        )

    def _masked_input(self, share_bundle: bytes, values: np.ndarray) -> bytes:
        encoded = self._config.encoder.encode(values)
        body = self._receive(share_bundle, ShareBundle)
        me = self.site_id
        for sender, sealed in body.ciphertexts:
            if sender == me or sender not in self._share_keys_by_peer or sender in self._held:
                raise AbortError("share bundle from a site that did not advertise keys")
            plaintext = open_sealed(
                self._share_keys_by_peer[sender], sealed, share_aad(self._config, sender, me)
            )
            if len(plaintext) != 2 * SHARE_BYTES:
                raise InvalidMessage("share plaintext malformed")
            self._held[sender] = (
                Share.from_value_bytes(me + 1, plaintext[:SHARE_BYTES]),
                Share.from_value_bytes(me + 1, plaintext[SHARE_BYTES:]),
            )
        self._need(set(self._held), "shared keys")
        masked = encoded + prg_words(self._self_seed, encoded.size)
        for v in sorted(self._held):
            if v == me:
                continue
            seed = pair_key(
                self._config, self._mask_key, self._peer_keys[v].mask_public, me, v, "pairwise-mask"
            )
            if v > me:
                masked += prg_words(seed, encoded.size)
            else:
                masked -= prg_words(seed, encoded.size)
        self._self_seed = None
        self._share_keys_by_peer = {}
        return self._send(self._input_body(masked))

    def _input_body(self, masked: np.ndarray) -> MaskedInput | EncryptedMaskedInput:
        if self._config.ckks_context is None:
            return MaskedInput(masked)
        from protocols.ckks import encrypt_ring_vector

        return EncryptedMaskedInput(
            encrypt_ring_vector(
                self._config.ckks_context, masked, ring_bits=64, limb_bits=CKKS_LIMB_BITS
            )
        )

    def sign_consistency(self, request: bytes) -> bytes:
        """Round 3: check U3 against this site's view and sign it."""
        return self._step(
            SiteStage.INPUT_SENT,
            SiteStage.CONSISTENCY_SIGNED,
            lambda: self._sign_consistency(request),
        )

    def _sign_consistency(self, request: bytes) -> bytes:
        alive = self._receive(request, ConsistencyRequest).alive
        alive_set = set(alive)
        if self.site_id not in alive_set:
            raise AbortError("consistency list omits this site's own input")
        if not (alive_set & self._holders) <= set(self._held):
            raise AbortError("consistency list is not a subset of the sites that shared keys")
        if len(alive) < self._config.min_contributors:
            raise AbortError("fewer sites than the minimum number of contributors")
        self._need(alive_set, "sent masked inputs")
        self._alive = alive
        signature = sign(self._identity, self._config.consistency_payload(alive))
        return self._send(ConsistencySignature(signature))

    def unmask(self, request: bytes) -> bytes:
        """Round 4: reveal b-shares of alive holders-of-ours or key shares of dropped ones."""
        return self._step(
            SiteStage.CONSISTENCY_SIGNED, SiteStage.DONE, lambda: self._unmask(request)
        )

    def _unmask(self, request: bytes) -> bytes:
        body = self._receive(request, UnmaskRequest)
        alive, dropped = set(body.alive), set(body.dropped)
        if body.alive != self._alive:
            raise AbortError("unmask list differs from the list this site signed")
        if alive & dropped:
            raise AbortError("a site is listed both as alive and as dropped")
        shared = set(self._held)
        if (dropped & self._holders) != shared - alive:
            raise AbortError("dropped list inconsistent with this site's view")
        payload = self._config.consistency_payload(body.alive)
        signers = set()
        for signer, signature in body.signatures:
            if signer not in alive or signer not in self._holders:
                raise AbortError("consistency signature from an unexpected site")
            verify(self._roster[signer], signature, payload)
            signers.add(signer)
        self._need(signers, "confirmed the alive list")
        seed_shares, key_shares = [], []
        for v in sorted(shared):
            if v in alive:
                seed_shares.append((v, self._held[v][0].value_bytes()))
                self._revealed[v] = "self-mask"
            else:
                key_shares.append((v, self._held[v][1].value_bytes()))
                self._revealed[v] = "mask-key"
        return self._send(UnmaskShares(tuple(seed_shares), tuple(key_shares)))
