"""Identities and the registry: signing, private key files, permissions, lookups."""

from __future__ import annotations

import copy
import json
import os
import pickle
import stat

import pytest

from securefed.errors import InputError
from securefed.keys import (
    Identity,
    KeyFilePermissionError,
    Registry,
    UnknownPartyError,
    verify_signature,
)


def test_sign_and_verify_round_trip() -> None:
    site = Identity.generate("site-a")
    signature = site.sign(b"message").hex()
    assert verify_signature(site.public_key_hex, signature, b"message")
    assert not verify_signature(site.public_key_hex, signature, b"messagE")
    assert not verify_signature(Identity.generate("x").public_key_hex, signature, b"message")
    assert not verify_signature(site.public_key_hex, "zz", b"message")
    assert len(site.public_key_hex) == 64


def test_private_key_is_not_in_repr_and_cannot_be_pickled_or_copied() -> None:
    site = Identity.generate("site-a")
    raw = site.export_private_key_raw()
    text = repr(site) + str(site)
    assert raw.hex() not in text and "PRIVATE" not in text
    assert "site-a" in text
    with pytest.raises(TypeError):
        pickle.dumps(site)
    with pytest.raises(TypeError):
        copy.copy(site)
    with pytest.raises(TypeError):
        copy.deepcopy(site)


def test_save_writes_mode_0600_and_load_gives_back_the_same_key(tmp_path) -> None:
    site = Identity.generate("site-a")
    path = site.save_private_key(tmp_path / "site-a.key")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = Identity.load(path)
    assert loaded.name == "site-a"
    assert loaded.public_key_hex == site.public_key_hex
    assert verify_signature(site.public_key_hex, loaded.sign(b"m").hex(), b"m")


def test_save_refuses_to_overwrite(tmp_path) -> None:
    site = Identity.generate("site-a")
    site.save_private_key(tmp_path / "k.key")
    with pytest.raises(InputError, match="refusing to overwrite"):
        Identity.generate("site-a").save_private_key(tmp_path / "k.key")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o666])
def test_load_refuses_group_or_world_accessible_key_files(tmp_path, mode) -> None:
    path = Identity.generate("site-a").save_private_key(tmp_path / "site-a.key")
    os.chmod(path, mode)
    with pytest.raises(KeyFilePermissionError, match="chmod 600"):
        Identity.load(path)
    os.chmod(path, 0o400)
    assert Identity.load(path).name == "site-a"


def test_load_reports_missing_and_garbage_files(tmp_path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        Identity.load(tmp_path / "missing.key")
    garbage = tmp_path / "garbage.key"
    garbage.write_bytes(b"not a key")
    garbage.chmod(0o600)
    with pytest.raises(InputError, match="not an unencrypted PEM"):
        Identity.load(garbage)


@pytest.mark.parametrize("name", ["", "a b", "../etc", "x" * 65, ".."])
def test_bad_party_names_are_refused(name) -> None:
    with pytest.raises(InputError):
        Identity.generate(name)


def test_registry_save_load_add_and_lookup(tmp_path) -> None:
    a, b = Identity.generate("site-a"), Identity.generate("site-b")
    registry = Registry().add("site-a", a.public_key_hex).add("site-b", b.public_key_hex)
    path = registry.save(tmp_path / "registry.json")
    loaded = Registry.load(path)
    assert loaded == registry and loaded.fingerprint == registry.fingerprint
    assert loaded.public_key_hex("site-b") == b.public_key_hex
    assert registry.add("site-a", a.public_key_hex) == registry  # idempotent
    with pytest.raises(InputError, match="already registered"):
        registry.add("site-a", b.public_key_hex)
    with pytest.raises(UnknownPartyError, match="'site-z' is not in the registry"):
        loaded.public_key_hex("site-z")


def test_registry_fingerprint_is_order_independent() -> None:
    a, b = Identity.generate("site-a"), Identity.generate("site-b")
    assert Registry.of(a, b).fingerprint == Registry.of(b, a).fingerprint
    assert Registry.of(a).fingerprint != Registry.of(a, b).fingerprint


def test_registry_load_refuses_tampered_or_bad_files(tmp_path) -> None:
    a, b = Identity.generate("site-a"), Identity.generate("site-b")
    path = Registry.of(a).save(tmp_path / "registry.json")
    data = json.loads(path.read_text())
    data["parties"]["site-a"] = b.public_key_hex
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match="fingerprint does not match"):
        Registry.load(path)
    path.write_text("{not json")
    with pytest.raises(InputError, match="not JSON"):
        Registry.load(path)
    with pytest.raises(InputError, match="cannot read"):
        Registry.load(tmp_path / "absent.json")
    path.write_text(json.dumps({"format": "securefed-registry/1", "parties": {"a": "12"}}))
    with pytest.raises(InputError, match="bad public key"):
        Registry.load(path)
