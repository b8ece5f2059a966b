"""docs/deployment.md §11: how a site pins the code its SuperNode runs.

With stock Flower 1.41 tools, no federation needed: ``flwr build`` makes the
same FAB (same SHA-256, which its file name carries) from the same app
directory, so a site can rebuild the reviewed release and compare; and the
SuperNode's own check behind ``--trusted-entities`` (Flower's functions, as
``flwr app review`` signs and the SuperLink passes the signatures on)
accepts the FAB signed by a reviewer the site trusts and refuses a changed
FAB, another signer's signature and an unsigned FAB.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

DOC = Path(__file__).resolve().parents[2] / "docs" / "deployment.md"


def _smoke_pyproject() -> str:
    """The smoke app's ``pyproject.toml``, exactly as the deployment guide shows it."""
    text = DOC.read_text()
    section = text[text.index("## 8. Smoke test"):]
    return re.search(r"```toml\n(.*?)```", section, re.S).group(1)


def _build(app: Path, out: Path) -> Path:
    out.mkdir()
    subprocess.run(["flwr", "build", "--app", str(app)], cwd=out, check=True,
                   capture_output=True, timeout=120)
    (fab,) = out.glob("*.fab")
    return fab


@pytest.fixture(scope="module")
def fabs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fab")
    app = root / "smoke"
    app.mkdir()
    (app / "pyproject.toml").write_text(_smoke_pyproject())
    copy = root / "copy"
    shutil.copytree(app, copy)
    return {"first": _build(app, root / "a"), "rebuilt": _build(copy, root / "b")}


def test_flwr_build_is_reproducible_and_names_its_hash(fabs):
    digest = hashlib.sha256(fabs["first"].read_bytes()).hexdigest()
    assert fabs["first"].read_bytes() == fabs["rebuilt"].read_bytes()
    assert fabs["first"].name == fabs["rebuilt"].name
    assert fabs["first"].name.endswith(f".{digest[:8]}.fab")


def _trusted_entities(tmp_path: Path, reviewer: Ed25519PrivateKey) -> dict[str, str]:
    """The site's ``--trusted-entities`` file, read by the SuperNode's own parser."""
    from flwr.supernode.cli.flower_supernode import (
        _try_obtain_trusted_entities,
        _validate_public_keys_ed25519,
    )

    public = reviewer.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                serialization.PublicFormat.OpenSSH).decode()
    path = tmp_path / "trusted-entities.yaml"
    path.write_text(f"fpk_0d5c6a0e-consortium-reviewer: {public} consortium review key\n")
    entities = _try_obtain_trusted_entities(path)
    _validate_public_keys_ed25519(entities)
    return entities


def _signed(content: bytes, reviewer: Ed25519PrivateKey, key_id: str):
    """A FAB as the SuperLink hands it on: the reviewer's signature (``flwr app review``)."""
    from flwr.cli.app_cmd.review import _sign_fab
    from flwr.supercore.fab import Fab
    from flwr.superlink.servicer.control.control_handlers import _format_verification

    signature, signed_at = _sign_fab(content, reviewer)
    record = {"public_key_id": key_id, "signed_at": signed_at,
              "signature": base64.urlsafe_b64encode(signature).rstrip(b"=").decode()}
    return Fab(hashlib.sha256(content).hexdigest(), content, _format_verification([record]))


def test_the_supernode_runs_only_a_fab_its_trusted_reviewer_signed(fabs, tmp_path):
    from flwr.supercore.fab import Fab
    from flwr.supernode.start_client_internal import _verify_fab

    reviewer = Ed25519PrivateKey.generate()
    entities = _trusted_entities(tmp_path, reviewer)
    (key_id,) = entities
    content = fabs["first"].read_bytes()
    assert _verify_fab(_signed(content, reviewer, key_id), entities)
    changed = _signed(content, reviewer, key_id)
    changed = Fab(changed.hash_str, content.replace(b"flower_client", b"flower_clienX"),
                  changed.verifications)  # the coordinator's own site code, same signature
    assert not _verify_fab(changed, entities)
    assert not _verify_fab(_signed(content, Ed25519PrivateKey.generate(), key_id), entities)
    unsigned = Fab(hashlib.sha256(content).hexdigest(), content, {"valid_license": ""})
    assert not unsigned.verifications.get("valid_license")  # refused before any check
    assert not _verify_fab(unsigned, entities)
