"""Canonical encoding (stable, byte-exact, float-free) and salted commitments."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from securefed.audit_log import SALT_BYTES, commit_release, open_commitment
from securefed.canonical import (
    canonical_bytes,
    decode_float,
    encode_float,
    parse_canonical,
    to_canonical,
    vector_bytes,
)


def test_canonical_bytes_are_sorted_compact_utf8() -> None:
    value = {"b": [1, True, None], "a": {"y": "é", "x": -3}}
    assert canonical_bytes(value) == '{"a":{"x":-3,"y":"é"},"b":[1,true,null]}'.encode()
    assert parse_canonical(canonical_bytes(value)) == value


def test_floats_are_refused_and_must_be_encoded_as_strings() -> None:
    with pytest.raises(TypeError, match="encode_float"):
        canonical_bytes({"epsilon": 0.5})
    with pytest.raises(TypeError):
        canonical_bytes({"epsilon": np.float64(0.5)})
    with pytest.raises(ValueError, match="float literal"):
        parse_canonical(b'{"epsilon":0.5}')
    assert to_canonical({"e": 0.1, "n": np.int64(3), "v": np.array([1.5, -0.0])}) == \
        {"e": "0.1", "n": 3, "v": ["1.5", "-0.0"]}


@given(st.floats(allow_nan=False))
def test_float_encoding_round_trips_bit_exactly(value: float) -> None:
    decoded = decode_float(encode_float(value))
    assert np.float64(decoded).tobytes() == np.float64(value).tobytes()


def test_non_canonical_text_is_rejected() -> None:
    with pytest.raises(ValueError, match="canonical"):
        parse_canonical(b'{"b":1,"a":2}')
    with pytest.raises(ValueError, match="canonical"):
        parse_canonical(b'{"a": 2}')
    with pytest.raises(ValueError, match="not JSON"):
        parse_canonical(b"{")


def test_vector_bytes_are_float64_little_endian_c_order() -> None:
    matrix = np.array([[1.0, 2.0], [3.0, -0.0]])
    assert vector_bytes(matrix) == np.array([1.0, 2.0, 3.0, -0.0], dtype="<f8").tobytes()
    assert vector_bytes([1, 2]) == vector_bytes(np.array([1.0, 2.0], dtype=np.float32))
    assert vector_bytes([0.0]) != vector_bytes([-0.0])


_GOLDEN_PROGRAM = textwrap.dedent("""
    import hashlib, sys
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from securefed.audit_log import AuditLog, EventKind
    from securefed.keys import Identity
    ticks = iter(range(100))
    log = AuditLog.create(sys.argv[1], clock=lambda: f"2026-01-01T00:00:{next(ticks):02d}.000000Z")
    coord = Identity("coordinator", Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
    log.append(EventKind.RESULT, coord, {"run_id": "r", "result_kind": "fit",
               "result_hash": "0" * 64, "values": {"z": 0.1, "a": [1e-300, -2.5, "é"]}})
    log.append(EventKind.RESULT, coord, {"run_id": "r", "result_kind": "fit",
               "result_hash": "1" * 64, "set": sorted({"b", "a", "c"})})
    print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())
""")


def test_log_bytes_are_identical_across_processes_and_hash_seeds(tmp_path) -> None:
    digests = set()
    for seed in ("0", "1", "12345"):
        path = tmp_path / f"log{seed}.jsonl"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", _GOLDEN_PROGRAM, str(path)], env=env,
                             capture_output=True, text=True, check=True)
        digests.add(out.stdout.strip())
    # Pinned: a change here changes every existing log's bytes (and breaks its chain).
    assert digests == {"fa250134e9e439c6df464c0807a2c4b3f06cf05516d58d3559f1385b0ea6b5b4"}
    first_line, second_line = (tmp_path / "log0.jsonl").read_bytes().splitlines()
    unsigned = json.loads(first_line)
    del unsigned["signature"]
    recomputed = hashlib.sha256(json.dumps(unsigned, sort_keys=True, separators=(",", ":"),
                                           ensure_ascii=False).encode()).hexdigest()
    assert json.loads(second_line)["prev_hash"] == recomputed
    assert first_line.startswith(b'{"actor":"coordinator","kind":"RESULT","payload":{"result_hash"')
    assert b'"values":{"a":["1e-300","-2.5","\xc3\xa9"],"z":"0.1"}' in first_line


def test_commitment_opens_only_with_the_right_salt_and_vector() -> None:
    vector = np.array([0.25, -1.0, 3.5])
    commitment = commit_release(vector)
    assert len(commitment.salt) == SALT_BYTES
    expected = hashlib.sha256(commitment.salt + vector.astype("<f8").tobytes()).hexdigest()
    assert commitment.digest == expected
    assert open_commitment(vector, commitment.salt, commitment.digest)
    assert open_commitment(vector.tolist(), commitment.salt, commitment.digest.upper())
    wrong_salt = bytes(b ^ 1 for b in commitment.salt)
    assert not open_commitment(vector, wrong_salt, commitment.digest)
    assert not open_commitment(vector + np.array([0, 0, 1e-15]), commitment.salt,
                               commitment.digest)
    assert not open_commitment(vector[:2], commitment.salt, commitment.digest)
    assert not open_commitment(vector, commitment.salt[:16], commitment.digest)
    assert commitment.salt.hex() not in repr(commitment)


def test_commitments_to_the_same_vector_differ_by_salt() -> None:
    vector = np.zeros(4)
    assert commit_release(vector).digest != commit_release(vector).digest
