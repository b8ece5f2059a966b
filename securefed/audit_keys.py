"""Persistent identities for an in-process run's audit trail (``--site-keys DIR``).

``securefed keygen`` writes one folder per consortium::

    DIR/coordinator.key   DIR/NAME.key (one per site)   DIR/registry.json

:func:`load_trail_keys` reads the coordinator's and every site's signing key,
checks that each is the key ``registry.json`` holds for that party, and, when
the sites agreed on a registry fingerprint out of band, refuses a registry
with any other (:func:`check_pinned`). A trail signed with these keys can be
pinned by a reviewer (``securefed audit verify --expect-fingerprint``); a run
without them signs with keys made for the run and never written, so its trail
is only self-consistent (:data:`EPHEMERAL_NOTE`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from securefed.errors import InputError
from securefed.keys import COORDINATOR, Identity, Registry, parse_fingerprint

if TYPE_CHECKING:
    from securefed.study import Study

__all__ = ["EPHEMERAL_NOTE", "KEY_ORIGINS", "TrailKeys", "check_pinned", "load_trail_keys",
           "study_trail_keys", "trail_note"]

#: RUN_START ``key_origin``: consortium keys loaded from files, or keys made for the run.
KEY_ORIGINS = ("consortium", "ephemeral")

EPHEMERAL_NOTE = ("audit trail signed with keys made for this run (no --site-keys): it is "
                  "only self-consistent, nothing can be pinned")


@dataclass(frozen=True)
class TrailKeys:
    """The coordinator's and the sites' identities and the registry holding their keys."""

    coordinator: Identity
    sites: Mapping[str, Identity]
    registry: Registry
    where: str

    def for_sites(self, names: Sequence[str]) -> dict[str, Identity]:
        """The identities of ``names``; :class:`InputError` naming the first without a key."""
        missing = [name for name in names if name not in self.sites]
        if missing:
            raise InputError(f"no signing key for site {missing[0]!r} in {self.where}: "
                             f"make one with securefed keygen --site {missing[0]}")
        return {name: self.sites[name] for name in names}


def check_pinned(registry: Registry, expected: str | None, where: str) -> None:
    """Refuse (:class:`InputError`, exit 2) a registry whose fingerprint is not ``expected``."""
    if expected is None:
        return
    pinned = parse_fingerprint(expected, "the expected fingerprint")
    if registry.fingerprint != pinned:
        raise InputError(f"registry {where} has fingerprint {registry.fingerprint[:16]}..., "
                         f"not the pinned {pinned[:16]}... the sites agreed on: refusing to run")


def load_trail_keys(folder: str | os.PathLike[str] | None,
                    site_names: Sequence[str] | None = None, *,
                    site_keys: Mapping[str, str | os.PathLike[str]] | None = None,
                    registry: str | os.PathLike[str] | None = None,
                    coordinator_key: str | os.PathLike[str] | None = None,
                    expect_fingerprint: str | None = None) -> TrailKeys:
    """Load and check the signing keys of a run.

    Parameters
    ----------
    folder : path-like, optional
        The ``securefed keygen`` folder: ``registry.json``, ``coordinator.key`` and
        ``NAME.key`` per site (the defaults of the other arguments).
    site_names : sequence of str, optional
        The run's sites; each needs a key. Default: every party of the registry
        with a ``NAME.key`` in ``folder`` (a run then refuses a site without one).
    site_keys : mapping, optional
        A key file per site, overriding ``folder/NAME.key``.
    registry, coordinator_key : path-like, optional
        Override ``folder/registry.json`` and ``folder/coordinator.key``.
    expect_fingerprint : str, optional
        The registry fingerprint the sites agreed on; any other registry is refused.

    Raises
    ------
    InputError
        A file is missing or readable beyond its owner, a key is not the one the
        registry holds for its party, or the registry is not the pinned one.
    """
    base = None if folder is None else Path(folder)
    if base is not None and not base.is_dir():
        raise InputError(f"--site-keys {base}: no such folder (make it with securefed keygen)")

    def path_of(given, default: str) -> Path:
        if given is not None:
            return Path(given)
        if base is None:
            raise InputError(f"no {default} given: name the securefed keygen folder")
        return base / default

    registry_path = path_of(registry, "registry.json")
    loaded = Registry.load(registry_path)
    check_pinned(loaded, expect_fingerprint, str(registry_path))
    site_keys = dict(site_keys or {})
    if site_names is None:
        site_names = [n for n in loaded.parties if n != COORDINATOR and base is not None
                      and (n in site_keys or (base / f"{n}.key").is_file())]
    paths = {COORDINATOR: path_of(coordinator_key, f"{COORDINATOR}.key")}
    paths.update({name: path_of(site_keys.get(name), f"{name}.key") for name in site_names})
    identities = {}
    for name, path in paths.items():
        if not path.is_file():
            raise InputError(f"no signing key for {name!r}: {path} does not exist "
                             f"(make it with securefed keygen --site {name})")
        identity = Identity.load(path, name)
        if name not in loaded or loaded.public_key_hex(name) != identity.public_key_hex:
            raise InputError(f"{path} is not the key {registry_path} holds for {name!r}")
        identities[name] = identity
    coordinator = identities.pop(COORDINATOR)
    return TrailKeys(coordinator, identities, loaded, str(base or registry_path.parent))


def trail_note(keys: TrailKeys | None) -> str:
    """One line for a run's summary: which keys signed its audit trail."""
    if keys is None:
        return EPHEMERAL_NOTE
    return (f"audit trail signed with the consortium keys of registry fingerprint "
            f"{keys.registry.fingerprint}")


def study_trail_keys(study: Study, site_keys: str | os.PathLike[str] | None = None,
                     expect_fingerprint: str | None = None) -> TrailKeys | None:
    """The keys of an in-process study run: its ``[audit]`` and ``key =`` entries.

    ``site_keys`` and ``expect_fingerprint`` come from the command line
    (``securefed run --site-keys DIR --expect-fingerprint HEX``); the folder replaces
    the study's ``site_keys``, and a fingerprint that differs from the one the study
    pins is refused. ``None`` when no keys are named (keys made for the run). Every
    problem is an :class:`InputError` naming the study's ``[audit]`` line.
    """
    audit = study.audit
    pinned = audit.expect_fingerprint
    try:
        if expect_fingerprint is not None:
            given = parse_fingerprint(expect_fingerprint, "--expect-fingerprint")
            if pinned is not None and given != pinned:
                raise InputError("--expect-fingerprint differs from the study's "
                                 "expect_fingerprint: the sites agreed on one registry")
            pinned = given
        folder = site_keys if site_keys is not None else audit.site_keys
        keyed = {s.name: s.key for s in study.sites if s.key is not None}
        if folder is None and audit.registry is None and not keyed:
            if pinned is not None:
                raise InputError("expect_fingerprint pins the registry of the trail's keys: "
                                 "add [audit] site_keys = DIR (or run with --site-keys DIR)")
            return None
        return load_trail_keys(folder, [s.name for s in study.sites], site_keys=keyed,
                               registry=audit.registry, coordinator_key=audit.coordinator_key,
                               expect_fingerprint=pinned)
    except InputError as err:
        study.fail(audit.line, str(err))
