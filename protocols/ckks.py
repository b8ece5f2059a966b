"""CKKS homomorphic encryption of flat vectors (TenSEAL / Microsoft SEAL).

Key model
---------
One *key holder* generates the CKKS key pair and keeps the secret key inside a
:class:`CkksKeyHolder`; nothing in this module hands the secret key out. It
publishes a **public context** (parameters + public key only: no secret key,
no Galois or relinearisation keys, which addition does not need). Sites
encrypt with the public context, the coordinator adds ciphertexts with the
public context, and the key holder decrypts only the aggregate.

TenSEAL has no threshold decryption: a key holder colluding with the
coordinator can decrypt a single site's ciphertext. The mitigation is to run
CKKS on top of secure-aggregation masks — sites encrypt their *masked* ring
elements (:func:`encrypt_ring_vector`), so one decrypted ciphertext is a
uniformly masked vector. See ``threat_model/ckks_dp.md``.

Precision and the release grid
------------------------------
CKKS is approximate. With scale :math:`2^{s}`, :math:`s = 40`, the absolute
slot noise after summing :math:`n \\le 100` fresh ciphertexts is about
:math:`10^{-7} \\approx 2^{-23}` (``benchmarks/results/ckks.md``), plus a
relative floor of about :math:`10^{-15}` from the double-precision FFT.
Raw decryptions carry key-dependent noise and can leak the secret key when
they are released (Li & Micciancio, EUROCRYPT 2021). So we never release
them: sites quantise every value to the grid :math:`2^{-r}`,
:math:`r = s - 24` (``release_bits``), the exact sum of quantised values lies
on the grid, and the key holder rounds the decryption back to it, refusing
to release if any slot is more than a quarter grid step away. The released
sum is then *exactly* :math:`\\sum_u 2^{-r}\\operatorname{round}(2^r x_u)`, a
deterministic function of the inputs that carries no information about the
CKKS noise. Values must satisfy :math:`|x| \\le 2^{36 - r}` (``max_abs_value``);
:class:`CoordinateScaling` pre-scales each coordinate into that window.
"""

from __future__ import annotations

import enum
import hashlib
import math
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import tenseal as ts
from numpy.typing import ArrayLike, NDArray

from protocols.errors import EncodingError, InvalidMessage, ProtocolError
from protocols.secret_files import create_secret_file

__all__ = [
    "HE_STANDARD_MAX_MODULUS_BITS",
    "SUM_HEADROOM_BITS",
    "GRID_MARGIN_BITS",
    "PRECISION_BITS",
    "CkksError",
    "CkksParameterError",
    "CkksMismatch",
    "CkksKeyFileError",
    "CkksParams",
    "PayloadKind",
    "CkksCiphertext",
    "CkksAggregate",
    "CkksKeyHolder",
    "CoordinateScaling",
    "context_fingerprint",
    "public_context_params",
    "encrypt_vector",
    "encrypt_ring_vector",
    "check_ciphertext",
    "add_ciphertexts",
]

#: Largest total coefficient-modulus bit count for 128-bit classical security
#: with a ternary secret (HomomorphicEncryption.org standard, Table 1; SEAL's
#: ``CoeffModulus::MaxBitCount(N, sec_level_type::tc128)``).
HE_STANDARD_MAX_MODULUS_BITS: dict[int, int] = {
    1024: 27,
    2048: 54,
    4096: 109,
    8192: 218,
    16384: 438,
    32768: 881,
}
#: Bits of the data-level modulus reserved so that a sum of up to
#: :math:`2^{20}` ciphertexts cannot wrap.
SUM_HEADROOM_BITS = 20
#: The release grid sits this many bits above :math:`2^{-s}`: :math:`r = s - 24`,
#: i.e. 7 bits above the measured noise (:math:`\\approx 2^{-23}` at n = 100).
GRID_MARGIN_BITS = 24
#: Bits between the grid and the largest per-site value: :math:`|x| 2^r \\le 2^{36}`,
#: so quantised values and their sums stay exact in float64 and the FFT error
#: (:math:`\\approx 2^{-50}` relative) stays far below the grid.
PRECISION_BITS = 36
#: Largest limb sum the decoder trusts to be exact: :math:`n (2^b - 1) < 2^{40}`.
_MAX_LIMB_SUM_BITS = 40
_FINGERPRINT_TAG = b"securefed/ckks/public-context/v1\x00"


class CkksError(ProtocolError):
    """A CKKS operation failed."""


class CkksParameterError(CkksError):
    """CKKS parameters are invalid or below 128-bit security."""


class CkksMismatch(InvalidMessage):
    """A ciphertext or context does not match the expected parameters or key."""


class CkksKeyFileError(CkksError):
    """A secret-context file is missing, readable beyond its owner, or not a secret context."""


class PayloadKind(enum.Enum):
    """What the slots of a ciphertext hold."""

    REAL = "real"  # pre-scaled real numbers, summed approximately
    RING_LIMBS = "ring_limbs"  # limbs of ring elements mod 2^k, summed exactly


@dataclass(frozen=True)
class CkksParams:
    """CKKS parameters, validated against the HE standard at construction.

    Parameters
    ----------
    poly_modulus_degree : int
        Ring dimension N; N/2 slots per ciphertext.
    coeff_mod_bit_sizes : tuple of int
        Bit sizes of the RNS primes; the last one is SEAL's special prime.
        Their total must not exceed ``HE_STANDARD_MAX_MODULUS_BITS[N]``.
    scale_bits : int
        Encoding scale :math:`2^{s}`; at least 30. Sets the release grid
        :math:`2^{-r}`, :math:`r = s - 24`, and the value window
        :math:`|x| \\le 2^{36 - r}`.
    """

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 40, 60)
    scale_bits: int = 40

    def __post_init__(self) -> None:
        n = self.poly_modulus_degree
        if n not in HE_STANDARD_MAX_MODULUS_BITS:
            raise CkksParameterError(
                f"poly_modulus_degree must be one of {sorted(HE_STANDARD_MAX_MODULUS_BITS)}"
            )
        bits = tuple(int(b) for b in self.coeff_mod_bit_sizes)
        object.__setattr__(self, "coeff_mod_bit_sizes", bits)
        if len(bits) < 2 or any(not 20 <= b <= 60 for b in bits):
            raise CkksParameterError("need >= 2 coefficient primes of 20..60 bits each")
        if sum(bits) > HE_STANDARD_MAX_MODULUS_BITS[n]:
            raise CkksParameterError(
                f"total modulus {sum(bits)} bits exceeds the HE-standard 128-bit limit "
                f"{HE_STANDARD_MAX_MODULUS_BITS[n]} for N={n}"
            )
        if not 30 <= self.scale_bits <= self.data_modulus_bits - SUM_HEADROOM_BITS - 20:
            raise CkksParameterError(
                "scale_bits must be >= 30 and leave >= 40 bits of data modulus above the scale"
            )

    @property
    def slot_count(self) -> int:
        """Values per ciphertext, N/2."""
        return self.poly_modulus_degree // 2

    @property
    def data_modulus_bits(self) -> int:
        """Bits of the ciphertext modulus q (all primes but the special one)."""
        return sum(self.coeff_mod_bit_sizes[:-1])

    @property
    def release_bits(self) -> int:
        """r: values are quantised to, and sums released on, the grid :math:`2^{-r}`."""
        return self.scale_bits - GRID_MARGIN_BITS

    @property
    def max_abs_value(self) -> float:
        """Largest |value| a site may encrypt: :math:`\\min(2^{36 - r}, 2^{\\log_2 q - s - 21})`."""
        headroom = self.data_modulus_bits - self.scale_bits - 1 - SUM_HEADROOM_BITS
        return 2.0 ** min(PRECISION_BITS - self.release_bits, headroom)


@dataclass(frozen=True)
class CkksCiphertext:
    """One site's encrypted vector: serialised chunks of at most N/2 slots."""

    fingerprint: str
    n_values: int
    kind: PayloadKind
    chunks: tuple[bytes, ...]
    ring_bits: int = 0
    limb_bits: int = 0

    @property
    def nbytes(self) -> int:
        """Bytes on the wire (ciphertext chunks only)."""
        return sum(len(c) for c in self.chunks)


@dataclass(frozen=True)
class CkksAggregate:
    """Coordinator-side sum of ``n_summands`` ciphertexts, still encrypted."""

    fingerprint: str
    n_values: int
    kind: PayloadKind
    chunks: tuple[bytes, ...]
    n_summands: int
    ring_bits: int = 0
    limb_bits: int = 0

    @property
    def nbytes(self) -> int:
        """Bytes on the wire (ciphertext chunks only)."""
        return sum(len(c) for c in self.chunks)


def context_fingerprint(public_context: bytes) -> str:
    """SHA-256 of the serialised public context (parameters and public key).

    It binds every ciphertext to one key and one parameter set; it detects
    mistakes and stale keys, not forgery (envelopes are signed elsewhere).
    """
    return hashlib.sha256(_FINGERPRINT_TAG + public_context).hexdigest()


@dataclass(frozen=True)
class _PublicContext:
    context: ts.Context
    params: CkksParams
    fingerprint: str


def _params_of(context: ts.Context) -> CkksParams:
    """Read N, the prime sizes (from the modulus-switching chain) and the scale."""
    data = context.seal_context().data
    level = data.key_context_data()
    n = level.parms().poly_modulus_degree()
    totals = []
    while level is not None:
        totals.append(level.total_coeff_modulus_bit_count())
        level = level.next_context_data()
    # Each level drops the last prime; the key level also holds the special prime.
    special = totals[0] - totals[1]
    primes = [totals[-1]] + [totals[i] - totals[i + 1] for i in range(len(totals) - 2, 0, -1)]
    scale_bits = math.log2(context.global_scale)
    if scale_bits != int(scale_bits):
        raise CkksParameterError("the context scale is not a power of two")
    return CkksParams(n, (*primes, special), int(scale_bits))


@lru_cache(maxsize=8)
def _load_public_context(public_context: bytes) -> _PublicContext:
    """Parse and vet a public context: public key only, HE-standard parameters."""
    try:
        context = ts.context_from(public_context)
    except Exception as exc:  # TenSEAL raises bare ValueError / RuntimeError
        raise CkksMismatch("not a serialised TenSEAL context") from exc
    if context.is_private() or not context.has_public_key():
        raise CkksMismatch("a public context must hold the public key and no secret key")
    if context.has_galois_keys() or context.has_relin_keys():
        raise CkksMismatch("a public context must not carry Galois or relinearisation keys")
    return _PublicContext(context, _params_of(context), context_fingerprint(public_context))


def public_context_params(public_context: bytes) -> CkksParams:
    """Vet a serialised public context and return its parameters.

    Raises
    ------
    CkksMismatch
        Not a TenSEAL context, or one with a secret, Galois or relinearisation key.
    CkksParameterError
        Parameters outside the HE-standard rules of :class:`CkksParams`.
    """
    return _load_public_context(public_context).params


def _check_vector(values: ArrayLike) -> NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise EncodingError("expected a non-empty flat vector")
    if not np.all(np.isfinite(array)):
        raise EncodingError("vector contains NaN or infinite values")
    return array


def _encrypt_slots(public: _PublicContext, slots: NDArray[np.float64]) -> tuple[bytes, ...]:
    step = public.params.slot_count
    return tuple(
        ts.ckks_vector(public.context, slots[i : i + step].tolist()).serialize()
        for i in range(0, slots.size, step)
    )


def encrypt_vector(public_context: bytes, values: ArrayLike) -> CkksCiphertext:
    """Encrypt a real vector under the public context (site side).

    Each value is quantised to :math:`q(v) = 2^{-r}\\operatorname{round}(2^r v)`
    (error at most :math:`2^{-r-1}`) and the vector is split into
    ``ceil(len / (N/2))`` ciphertexts. Values must satisfy
    :math:`|v| \\le` ``max_abs_value`` (:math:`2^{20}` by default); pre-scale with
    :class:`CoordinateScaling` for a uniform relative error.

    Raises
    ------
    EncodingError
        NaN, infinite, or too-large values.
    CkksMismatch
        The context is not a valid public context.
    """
    array = _check_vector(values)
    public = _load_public_context(public_context)
    params = public.params
    if np.max(np.abs(array)) > params.max_abs_value:
        raise EncodingError(f"|value| exceeds the CKKS window {params.max_abs_value:.3g}")
    grid = 2.0**params.release_bits
    quantised = np.round(array * grid) / grid  # exact: |v| 2^r <= 2^36
    return CkksCiphertext(
        public.fingerprint, array.size, PayloadKind.REAL, _encrypt_slots(public, quantised)
    )


def encrypt_ring_vector(
    public_context: bytes, ring_values: ArrayLike, ring_bits: int, limb_bits: int = 16
) -> CkksCiphertext:
    """Encrypt ring elements of :math:`\\mathbb{Z}_{2^k}` exactly, as limbs.

    Each element :math:`x = \\sum_l x_l 2^{l b}` with limbs :math:`0 \\le x_l < 2^b`
    is written as :math:`\\lceil k / b \\rceil` slots; limb sums over sites are
    small integers that CKKS carries with error far below 1/2, so the key
    holder recovers :math:`\\sum_u x_u \\bmod 2^k` exactly. Used to encrypt
    secure-aggregation-masked vectors.
    """
    if not 1 <= ring_bits <= 64 or not 1 <= limb_bits <= 24:
        raise EncodingError("need 1 <= ring_bits <= 64 and 1 <= limb_bits <= 24")
    values = np.asarray(ring_values)
    if values.ndim != 1 or values.size == 0 or values.dtype.kind not in "ui":
        raise EncodingError("expected a non-empty flat integer vector")
    if values.dtype.kind == "i" and np.any(values < 0):
        raise EncodingError("ring elements must be non-negative")
    values = values.astype(np.uint64)
    if ring_bits < 64 and np.any(values >> np.uint64(ring_bits)):
        raise EncodingError(f"ring elements must be < 2^{ring_bits}")
    public = _load_public_context(public_context)
    n_limbs = -(-ring_bits // limb_bits)
    mask = np.uint64((1 << limb_bits) - 1)
    limbs = [(values >> np.uint64(l * limb_bits)) & mask for l in range(n_limbs)]
    slots = np.concatenate(limbs).astype(np.float64)
    return CkksCiphertext(
        public.fingerprint,
        values.size,
        PayloadKind.RING_LIMBS,
        _encrypt_slots(public, slots),
        ring_bits,
        limb_bits,
    )


def _load_chunk(public: _PublicContext, chunk: bytes, expected_size: int) -> ts.CKKSVector:
    """Deserialise one chunk and check it is a fresh ciphertext of our parameters."""
    try:
        vector = ts.ckks_vector_from(public.context, chunk)
    except Exception as exc:  # SEAL rejects data invalid for the context
        raise CkksMismatch("ciphertext is invalid for this context") from exc
    inner = vector.ciphertext()
    first_level = public.context.seal_context().data.first_context_data().parms_id()
    if (
        len(inner) != 1
        or inner[0].size() != 2
        or inner[0].parms_id() != first_level
        or inner[0].scale != 2.0**public.params.scale_bits
        or vector.size() != expected_size
    ):
        raise CkksMismatch("ciphertext level, scale or length differs from the context")
    return vector


def _chunk_sizes(n_slots: int, slot_count: int) -> list[int]:
    return [min(slot_count, n_slots - i) for i in range(0, n_slots, slot_count)]


def _slot_total(n_values: int, kind: PayloadKind, ring_bits: int, limb_bits: int) -> int:
    if kind is PayloadKind.REAL:
        return n_values
    return n_values * -(-ring_bits // limb_bits)


def _check_layout(
    public: _PublicContext, ciphertext: CkksCiphertext, layout: tuple[int, PayloadKind, int, int]
) -> list[int]:
    """Fingerprint, (length, kind, ring bits, limb bits) and chunk count; returns chunk sizes."""
    if ciphertext.fingerprint != public.fingerprint:
        raise CkksMismatch("ciphertext was made under a different public context")
    if (ciphertext.n_values, ciphertext.kind, ciphertext.ring_bits, ciphertext.limb_bits) != layout:
        raise CkksMismatch("ciphertexts differ in length or payload kind")
    sizes = _chunk_sizes(_slot_total(*layout), public.params.slot_count)
    if len(ciphertext.chunks) != len(sizes):
        raise CkksMismatch("ciphertext has the wrong number of chunks")
    return sizes


def check_ciphertext(
    public_context: bytes,
    ciphertext: CkksCiphertext,
    *,
    n_values: int,
    kind: PayloadKind,
    ring_bits: int = 0,
    limb_bits: int = 0,
) -> None:
    """Check one received ciphertext before accepting it (coordinator side).

    It must carry this context's fingerprint and the expected layout, and
    every chunk must parse as a fresh ciphertext (size 2, first level, scale
    :math:`2^s`) of this context's parameters with the expected slot count, so
    a ciphertext made under other parameters but relabelled with our
    fingerprint is caught here, before it can spoil a sum.

    Raises
    ------
    CkksMismatch
        Any difference.
    """
    public = _load_public_context(public_context)
    sizes = _check_layout(public, ciphertext, (n_values, kind, ring_bits, limb_bits))
    for chunk, size in zip(ciphertext.chunks, sizes, strict=True):
        _load_chunk(public, chunk, size)


def add_ciphertexts(public_context: bytes, ciphertexts: Sequence[CkksCiphertext]) -> CkksAggregate:
    """Sum ciphertexts homomorphically (coordinator side, public context only).

    :math:`\\mathrm{Enc}(\\sum_u x_u) = \\sum_u \\mathrm{Enc}(x_u)`, chunk by chunk.
    Every ciphertext must carry this context's fingerprint, the same length
    and payload kind, and decode as a fresh ciphertext at the context's
    first level and scale; anything else raises :class:`CkksMismatch`.
    """
    if not ciphertexts:
        raise CkksError("nothing to add")
    public = _load_public_context(public_context)
    head = ciphertexts[0]
    layout = (head.n_values, head.kind, head.ring_bits, head.limb_bits)
    sizes = _check_layout(public, head, layout)
    for ct in ciphertexts[1:]:
        _check_layout(public, ct, layout)
    if head.kind is PayloadKind.RING_LIMBS and (
        math.log2(len(ciphertexts)) + head.limb_bits > _MAX_LIMB_SUM_BITS
    ):
        raise CkksParameterError("too many summands for exact limb sums; use smaller limbs")
    summed = []
    for index, size in enumerate(sizes):
        total = _load_chunk(public, ciphertexts[0].chunks[index], size)
        for ct in ciphertexts[1:]:
            total.add_(_load_chunk(public, ct.chunks[index], size))
        summed.append(total.serialize())
    return CkksAggregate(
        public.fingerprint, *layout[:2], tuple(summed), len(ciphertexts), *layout[2:]
    )


class CkksKeyHolder:
    """Holder of the CKKS secret key; decrypts aggregates only.

    The secret key never leaves this object except through the deliberately
    named :meth:`save` (a mode-0600 file on the key holder's own disk, read
    back by :meth:`load`); the object refuses to be pickled.
    """

    def __init__(self, params: CkksParams, context: ts.Context, public_context: bytes) -> None:
        self._params = params
        self._context = context
        self._public_context = public_context
        self._fingerprint = context_fingerprint(public_context)

    @classmethod
    def generate(cls, params: CkksParams | None = None) -> CkksKeyHolder:
        """Generate a fresh key pair with OS randomness (SEAL's default PRNG)."""
        params = params or CkksParams()
        context = ts.context(
            ts.SCHEME_TYPE.CKKS,
            poly_modulus_degree=params.poly_modulus_degree,
            coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
        )
        context.global_scale = 2.0**params.scale_bits
        public = context.serialize(
            save_public_key=True,
            save_secret_key=False,
            save_galois_keys=False,
            save_relin_keys=False,
        )
        return cls(params, context, public)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the secret context (parameters, public and secret key) to a new file.

        The file is created with mode 0600 atomically and fsynced; an existing
        file is never overwritten (:class:`CkksKeyFileError`). Handle it as a secret:
        it belongs on the key holder's disk only.
        """
        secret = self._context.serialize(
            save_public_key=True,
            save_secret_key=True,
            save_galois_keys=False,
            save_relin_keys=False,
        )
        try:
            create_secret_file(path, secret)
        except FileExistsError:
            raise CkksKeyFileError(f"{path} exists; refusing to overwrite a secret key") from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CkksKeyHolder:
        """Read a secret context written by :meth:`save`.

        Raises
        ------
        CkksKeyFileError
            The file is missing, its group or other users may access it, or it
            holds no secret key (e.g. a public context).
        CkksParameterError
            Its parameters are outside the HE-standard rules of :class:`CkksParams`.
        """
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
            if mode & 0o077:
                raise CkksKeyFileError(f"secret context {path} has mode {mode:04o}, readable "
                                       f"beyond its owner; run: chmod 600 {path}")
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError as err:
            raise CkksKeyFileError(f"cannot read secret context {path}: {err.strerror}") from None
        try:
            context = ts.context_from(data)
        except Exception:  # TenSEAL raises bare ValueError / RuntimeError
            raise CkksKeyFileError(f"{path} is not a serialised TenSEAL context") from None
        if not context.is_private() or not context.has_public_key():
            raise CkksKeyFileError(f"{path} holds no secret key: it is not a key holder's file")
        public = context.serialize(
            save_public_key=True,
            save_secret_key=False,
            save_galois_keys=False,
            save_relin_keys=False,
        )
        return cls(_params_of(context), context, public)

    @property
    def params(self) -> CkksParams:
        """The parameters of this key pair."""
        return self._params

    @property
    def fingerprint(self) -> str:
        """Fingerprint of :meth:`public_context`."""
        return self._fingerprint

    def public_context(self) -> bytes:
        """Serialised context with the public key only (for sites and coordinator)."""
        return self._public_context

    def __reduce__(self) -> tuple:
        raise TypeError("CkksKeyHolder holds a secret key and cannot be serialised")

    def __repr__(self) -> str:
        return f"CkksKeyHolder(fingerprint={self._fingerprint[:16]}…)"

    def _decrypt_slots(self, aggregate: CkksAggregate, n_values: int) -> NDArray[np.float64]:
        if aggregate.fingerprint != self._fingerprint:
            raise CkksMismatch("aggregate was made under a different public context")
        if n_values != aggregate.n_values:
            raise CkksMismatch("n_values differs from the aggregate's length")
        total = _slot_total(n_values, aggregate.kind, aggregate.ring_bits, aggregate.limb_bits)
        sizes = _chunk_sizes(total, self._params.slot_count)
        if len(aggregate.chunks) != len(sizes):
            raise CkksMismatch("aggregate has the wrong number of chunks")
        parts = []
        for chunk, size in zip(aggregate.chunks, sizes, strict=True):
            try:
                vector = ts.ckks_vector_from(self._context, chunk)
            except Exception as exc:
                raise CkksMismatch("aggregate chunk is invalid for this key") from exc
            if vector.size() != size:
                raise CkksMismatch("aggregate chunk has the wrong length")
            parts.append(np.asarray(vector.decrypt(), dtype=np.float64))
        return np.concatenate(parts)

    def decrypt_sum(self, aggregate: CkksAggregate, n_values: int) -> NDArray[np.float64]:
        """Decrypt a REAL aggregate to the exact sum of the quantised site values.

        Returns :math:`2^{-r} \\operatorname{round}(2^{r} \\tilde{s})` with
        :math:`\\tilde{s}` the raw CKKS decryption and r = ``release_bits``.
        Because every site quantised to the same grid, this equals
        :math:`\\sum_u q(x_u)` exactly whenever the CKKS error is below
        :math:`2^{-r-2}`; if any slot is further from the grid the key holder
        refuses (:class:`CkksError`) rather than release noise-dependent bits.
        Against the unquantised sum the error is at most :math:`n\\,2^{-r-1}`.
        """
        if aggregate.kind is not PayloadKind.REAL:
            raise CkksMismatch("use decrypt_ring_sum for ring-limb aggregates")
        raw = self._decrypt_slots(aggregate, n_values) * 2.0**self._params.release_bits
        on_grid = np.round(raw)
        if np.any(np.abs(raw - on_grid) > 0.25):
            raise CkksError("decryption is not on the release grid; refusing to release")
        return on_grid / 2.0**self._params.release_bits

    def decrypt_ring_sum(self, aggregate: CkksAggregate, n_values: int) -> NDArray[np.uint64]:
        """Decrypt a RING_LIMBS aggregate to :math:`\\sum_u x_u \\bmod 2^k` exactly.

        Each limb sum is rounded to the nearest integer; a distance above 1/4
        or a value outside :math:`[0, n(2^b - 1)]` raises (the noise budget
        was exceeded or the aggregate is corrupt), so no inexact sum escapes.
        """
        if aggregate.kind is not PayloadKind.RING_LIMBS:
            raise CkksMismatch("use decrypt_sum for real aggregates")
        raw = self._decrypt_slots(aggregate, n_values)
        limb_sums = np.round(raw)
        ceiling = aggregate.n_summands * ((1 << aggregate.limb_bits) - 1)
        if np.any(np.abs(raw - limb_sums) > 0.25) or np.any(
            (limb_sums < 0) | (limb_sums > ceiling)
        ):
            raise CkksError("limb sums are not exact integers; refusing to release")
        limbs = limb_sums.astype(np.uint64).reshape(-1, n_values)
        total = np.zeros(n_values, dtype=np.uint64)
        for index, limb in enumerate(limbs):
            total += limb << np.uint64(index * aggregate.limb_bits)  # wraps mod 2^64
        if aggregate.ring_bits < 64:
            total &= np.uint64((1 << aggregate.ring_bits) - 1)
        return total


@dataclass(frozen=True, eq=False)
class CoordinateScaling:
    """Public per-coordinate power-of-two scales that fill CKKS's precision window.

    From public bounds :math:`|x_j| \\le B_j` (the same at every site),
    :math:`f_j = 2^{t - \\lceil \\log_2 B_j \\rceil}` maps each coordinate to
    :math:`|f_j x_j| \\le 2^t`. Powers of two make scaling and unscaling exact
    (for normal floats: a subnormal value below 2.2e-308 can underflow when
    :math:`f_j < 1`),
    and the released error of a sum of n sites becomes
    :math:`|e_j| \\le n\\,2^{-r-1} / f_j \\le n B_j 2^{-(r+t)}`, i.e.
    :math:`n B_j 2^{-36} \\approx 1.5\\times10^{-11}\\, n B_j` with the defaults
    (t = 20, r = 16); choose :math:`t \\le \\log_2` ``max_abs_value``.
    """

    bounds: NDArray[np.float64]
    factors: NDArray[np.float64]

    @classmethod
    def from_bounds(cls, bounds: ArrayLike, target_bits: int = 20) -> CoordinateScaling:
        """Build scales from positive, finite public bounds :math:`B_j`."""
        b = np.asarray(bounds, dtype=np.float64)
        if b.ndim != 1 or b.size == 0 or not np.all(np.isfinite(b)) or np.any(b <= 0):
            raise EncodingError("bounds must be a flat vector of positive finite numbers")
        if not 0 <= target_bits <= 40:
            raise EncodingError("target_bits must be in [0, 40]")
        exponents = target_bits - np.ceil(np.log2(b))
        return cls(b.copy(), np.ldexp(1.0, exponents.astype(int)))

    def apply(self, values: ArrayLike) -> NDArray[np.float64]:
        """Return :math:`f \\odot x` after checking :math:`|x_j| \\le B_j`."""
        array = _check_vector(values)
        if array.shape != self.bounds.shape:
            raise EncodingError("vector length differs from the declared bounds")
        if np.any(np.abs(array) > self.bounds):
            raise EncodingError("a value exceeds its declared public bound")
        return array * self.factors

    def invert(self, scaled_sum: ArrayLike) -> NDArray[np.float64]:
        """Return :math:`s_j / f_j` for a decrypted, pre-scaled sum."""
        array = _check_vector(scaled_sum)
        if array.shape != self.factors.shape:
            raise EncodingError("vector length differs from the declared bounds")
        return array / self.factors
