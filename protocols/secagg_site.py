"""The site side of secure aggregation (Bonawitz et al. 2017, Bell et al. 2020).

A :class:`SecAggSite` is a one-round state machine inside a run
(:class:`~protocols.secagg_run.SiteRun`). Each public method is one protocol
step, allowed in exactly one :class:`SiteStage`; it consumes the server's
bytes and returns the bytes to send:

    READY --advertise_keys--> ADVERTISED --share_keys--> KEYS_SHARED
      --masked_input--> INPUT_SENT --sign_consistency--> CONSISTENCY_SIGNED
      --unmask--> DONE

The first round of a run starts in READY (keys are advertised and agreed);
every later round starts in ADVERTISED (the run's keys stand) and its
``share_keys`` takes no key list. Any other call raises :class:`StageError`.
Any failed check (bad signature, replay, inconsistent view, too few holders)
moves the site to ABORTED, ends its run and raises; an aborted site never
answers again.

Masked input of round r (H(u) = N(u) ∪ {u} in the round's roster, U2 the
holders whose self-mask shares reached u):

    y_u = q(x_u) + PRG(b_u) + Σ_{v ∈ U2∩N(u), v > u} PRG(s_uv^(r)) − Σ_{v < u} PRG(s_uv^(r))

in Z_{2^64}^{w·d}, with b_u fresh in every round and s_uv^(r) the round's
pairwise seed expanded from the run's pair key (:mod:`protocols.secagg_run`).
When the round names a CKKS public context (``config.ckks_context``), y_u
leaves the site only encrypted under it, as 16-bit limbs
(:class:`EncryptedMaskedInput`).
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
from protocols.secagg_run import SiteRun, pair_seed, run_pair_key
from protocols.shamir import SHARE_BYTES, Share, split

__all__ = ["SiteStage", "SecAggSite", "share_aad", "run_pair_key", "pair_seed"]


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
        Registered identity keys of the round's sites.
    server_key : Ed25519PublicKey
        The server's identity key.
    run : SiteRun, optional
        The run this round continues (its keys, last round and alive list);
        a fresh run whose first round this is when None. A round the run
        cannot admit (:meth:`SiteRun.begin`) raises :class:`AbortError`.
    """

    def __init__(
        self,
        site_id: int,
        config: SecAggConfig,
        identity: Ed25519PrivateKey,
        roster: Mapping[int, Ed25519PublicKey],
        server_key: Ed25519PublicKey,
        run: SiteRun | None = None,
    ) -> None:
        if site_id not in config.site_ids:
            raise AbortError("site is not in this round's roster")
        if set(roster) != set(config.site_ids):
            raise AbortError("roster does not match the round's sites")
        run = SiteRun.for_config(site_id, config) if run is None else run
        if run.site_id != site_id:
            raise AbortError("run belongs to another site")
        run.begin(config)
        self.site_id = site_id
        self._config = config
        self._identity = identity
        self._roster = dict(roster)
        self._server_key = server_key
        self._holders = config.holders(site_id)
        self._run = run
        self._stage = SiteStage.ADVERTISED if run.keyed else SiteStage.READY
        self._self_seed: bytes | None = None
        self._held: dict[int, Share] = {}
        self._share_keys_by_peer: dict[int, bytes] = {}
        self._alive: tuple[int, ...] | None = None
        self._revealed: dict[int, str] = {}

    @property
    def stage(self) -> SiteStage:
        """The current stage."""
        return self._stage

    @property
    def run(self) -> SiteRun:
        """The run this round belongs to."""
        return self._run

    @property
    def revealed(self) -> Mapping[int, str]:
        """Site id → the one kind of secret revealed for it ("self-mask" or "pair-seed")."""
        return MappingProxyType(self._revealed)

    # ----------------------------------------------------------------- helpers
    def _step(self, expected: SiteStage, nxt: SiteStage, action: Callable[[], bytes]) -> bytes:
        if self._stage is not expected:
            raise StageError(f"site {self.site_id} is {self._stage.value}, not {expected.value}")
        try:
            out = action()
        except Exception:  # fail closed: any error ends the round, and the run, for this site
            self._abort()
            raise
        self._stage = nxt
        if nxt is SiteStage.DONE:
            self._run.finish(self._config.round_id, self._alive or ())
            self._forget()
        return out

    def _abort(self) -> None:
        self._stage = SiteStage.ABORTED
        self._run.close()
        self._forget()

    def _forget(self) -> None:
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
        """First round of a run: two fresh X25519 key pairs, their public keys signed."""

        def action() -> bytes:
            run = self._run
            run.cipher_key = AgreementKey.generate()
            run.mask_key = AgreementKey.generate()
            run.advertisement = self._send(
                AdvertiseKeys(run.cipher_key.public_bytes, run.mask_key.public_bytes)
            )
            return run.advertisement

        return self._step(SiteStage.READY, SiteStage.ADVERTISED, action)

    def share_keys(self, key_list: bytes | None = None) -> bytes:
        """Shamir-share a fresh b_u among the live holders, each share encrypted to its holder.

        In a run's first round ``key_list`` (the holders' signed keys) is
        checked first and the run's pair keys are agreed; later rounds pass
        None and reuse them.
        """
        return self._step(
            SiteStage.ADVERTISED, SiteStage.KEYS_SHARED, lambda: self._share_keys(key_list)
        )

    def _agree(self, key_list: bytes) -> None:
        """Check the key list, then derive and keep the run's pair keys (X25519 once per run)."""
        run = self._run
        body = self._receive(key_list, KeyList)
        keys: dict[int, AdvertiseKeys] = {}
        for raw in body.advertisements:
            advert = Message.parse(raw)
            sender = advert.header.sender
            if sender not in self._holders or advert.header.recipient != SERVER_ID:
                raise AbortError("key list contains a site outside this site's neighbourhood")
            if sender == self.site_id:
                if raw != run.advertisement:
                    raise AbortError("key list does not carry this site's own keys")
            else:  # the same signed bytes reach every holder: verified once per process
                advert.verify(self._roster[sender], cache=True)
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
            run.cipher_key.public_bytes, run.mask_key.public_bytes
        ):
            raise AbortError("key list does not carry this site's own keys")
        publics = [k.cipher_public for k in keys.values()] + [k.mask_public for k in keys.values()]
        if len(set(publics)) != len(publics):
            raise AbortError("duplicate public keys in key list")
        self._need(set(keys), "advertised keys")
        me = self.site_id
        for v, advert in keys.items():
            if v != me:
                run.share_keys[v] = run_pair_key(
                    self._config, run.cipher_key, advert.cipher_public, me, v, "share-encryption"
                )
                run.mask_keys[v] = run_pair_key(
                    self._config, run.mask_key, advert.mask_public, me, v, "pairwise-mask"
                )
        run.peer_keys = keys
        run.cipher_key = run.mask_key = None  # the pair keys are all this run needs

    def _share_keys(self, key_list: bytes | None) -> bytes:
        run = self._run
        if run.keyed:
            if key_list is not None:
                raise StageError("this run's keys are agreed; a later round has no key list")
        elif key_list is None:
            raise StageError("the first round of a run needs the key list")
        else:
            self._agree(key_list)
        recipients = sorted(self._holders & set(run.peer_keys))
        self._need(set(recipients), "advertised keys")
        self._self_seed = random_seed()  # fresh in every round
        seed_shares = split(self._self_seed, [v + 1 for v in recipients], self._config.t)
        ciphertexts = []
        me = self.site_id
        for v in recipients:
            share = seed_shares[v + 1]
            if v == me:
                self._held[v] = share
                continue
            key = pair_seed(self._config, run.share_keys[v], me, v, "share-encryption")
            self._share_keys_by_peer[v] = key
            # Sender and recipient are bound by the associated data, not repeated inside.
            aad = share_aad(self._config, me, v)
            ciphertexts.append((v, seal(key, share.value_bytes(), aad)))
        return self._send(ShareKeys(tuple(ciphertexts)))

    def masked_input(self, share_bundle: bytes, values: np.ndarray) -> bytes:
        """Store received shares, encode ``values`` (checked first) and mask them."""
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
            if len(plaintext) != SHARE_BYTES:
                raise InvalidMessage("share plaintext malformed")
            self._held[sender] = Share.from_value_bytes(me + 1, plaintext)
        self._need(set(self._held), "shared keys")
        masked = encoded + prg_words(self._self_seed, encoded.size)
        mask_keys = self._run.mask_keys
        for v in sorted(self._held):
            if v == me:
                continue
            seed = pair_seed(self._config, mask_keys[v], me, v, "pairwise-mask")
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
        """Check U3 against this site's view and sign it."""
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
        """Reveal b-shares of alive holders-of-ours, and this round's pair seed with each
        dropped neighbour (never a key that serves another round)."""
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
            verify(self._roster[signer], signature, payload, cache=True)
            signers.add(signer)
        self._need(signers, "confirmed the alive list")
        seed_shares, pair_seeds = [], []
        me = self.site_id
        for v in sorted(shared):
            if v in alive:
                seed_shares.append((v, self._held[v].value_bytes()))
                self._revealed[v] = "self-mask"
            else:
                seed = pair_seed(self._config, self._run.mask_keys[v], me, v, "pairwise-mask")
                pair_seeds.append((v, seed))
                self._revealed[v] = "pair-seed"
        return self._send(UnmaskShares(tuple(seed_shares), tuple(pair_seeds)))
