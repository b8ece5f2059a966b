"""A site's persistent record of what it released over which roster.

Differencing (the same statistic summed over two rosters that differ by one
site gives that site's vector) is refused by the site itself, from this file
on its own disk, so it holds across runs, processes and restarts. Every
release call has a key: the statistic (method and arguments) together with
the setup that decides which rows it sums (:func:`call_key`). The record also
counts the parameter-dependent releases per model (``max_rounds``).

The file ``releases.json`` is read and rewritten under an exclusive lock
(``releases.json.lock``) and replaced atomically (written to a temporary file,
flushed, then renamed), so two processes cannot both release past a check and
a crash never leaves half a file. ``refusals.jsonl`` logs every refusal (code,
round, purpose, time: no data).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ReleaseRecord", "MemoryReleaseRecord", "call_key", "model_key"]

RECORD_FILE = "releases.json"
REFUSAL_LOG = "refusals.jsonl"


def _digest(*texts: str) -> str:
    hasher = hashlib.sha256()
    for text in texts:
        hasher.update(len(text).to_bytes(8, "big"))
        hasher.update(text.encode())
    return hasher.hexdigest()


def call_key(setup: Sequence[str], call_text: str) -> str:
    """The key of a release: the call's canonical JSON with the setup calls before it."""
    return _digest("release", *sorted(setup), call_text)


def model_key(model: str) -> str:
    return _digest("model", model)


@dataclass
class _State:
    releases: dict[str, list[str]]
    models: dict[str, int]


def _decide(state: _State, key: str, names: list[str], model: str | None, max_rounds: int,
            differencing: bool) -> tuple[str | None, bool]:
    """:meth:`ReleaseRecord.admit`'s decision on ``state``: (refusal or None, state changed)."""
    if key in state.releases:
        if state.releases[key] == names or not differencing:
            return None, False
        return "differencing", False
    if model is not None:
        counted = model_key(model)
        if state.models.get(counted, 0) >= max_rounds:
            return "rounds", False
        state.models[counted] = state.models.get(counted, 0) + 1
    state.releases[key] = names
    return None, True


class ReleaseRecord:
    """The record in ``folder`` (created 0700 if missing); ``durable``: fsync each write."""

    def __init__(self, folder: str | Path, durable: bool = True) -> None:
        self.folder = Path(folder)
        self.durable = durable

    @contextmanager
    def _locked(self) -> Iterator[_State]:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_path = self.folder / (RECORD_FILE + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self._read()
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _read(self) -> _State:
        path = self.folder / RECORD_FILE
        if not path.exists():
            return _State({}, {})
        data = json.loads(path.read_text(encoding="utf-8"))
        return _State({str(k): [str(n) for n in v] for k, v in data["releases"].items()},
                      {str(k): int(v) for k, v in data["models"].items()})

    def _write(self, state: _State) -> None:
        text = json.dumps({"releases": state.releases, "models": state.models},
                          sort_keys=True, separators=(",", ":"))
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".releases.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                if self.durable:
                    os.fsync(handle.fileno())
            os.replace(tmp, self.folder / RECORD_FILE)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def admit(self, key: str, roster: Sequence[str], model: str | None,
              max_rounds: int, differencing: bool = True) -> str | None:
        """Check and record one release, atomically; a refusal reason or None.

        ``"differencing"`` if ``key`` was released over another roster (checked
        only with ``differencing``, i.e. for exact releases);
        ``"rounds"`` if ``model`` (parameter-dependent releases) is at its
        cap. The same key over the same roster is admitted again and not
        counted (it reveals nothing new).
        """
        names = sorted(str(n) for n in roster)
        with self._locked() as state:
            refused, changed = _decide(state, key, names, model, max_rounds, differencing)
            if changed:
                self._write(state)
        return refused

    def rosters(self) -> dict[str, list[str]]:
        """Every recorded key and its roster (for tests and the site's operator)."""
        with self._locked() as state:
            return dict(state.releases)

    def log_refusal(self, code: str, round_id: int, purpose: str) -> None:
        """Append one line to the refusal log (code, round, purpose; never data)."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        line = json.dumps({"time": round(time.time(), 3), "code": code, "round": int(round_id),
                           "purpose": str(purpose)[:80]}, sort_keys=True)
        fd = os.open(self.folder / REFUSAL_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    def refusals(self) -> list[dict]:
        path = self.folder / REFUSAL_LOG
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


class MemoryReleaseRecord:
    """:class:`ReleaseRecord`'s rules over a record held in memory, for one process only.

    For the simulated sites of an in-process run (:mod:`securefed.transport.loopback`),
    whose policy the CLI writes and whose record would be deleted with the run:
    the same decisions, without a lock, a file or an fsync per release. A
    real site never gets one (its record must outlive the process); the
    loopback hands it to each simulated site's runtime directly, never
    through a node config or a policy file.
    """

    def __init__(self) -> None:
        self._state = _State({}, {})
        self._refusals: list[dict] = []

    def admit(self, key: str, roster: Sequence[str], model: str | None,
              max_rounds: int, differencing: bool = True) -> str | None:
        """As :meth:`ReleaseRecord.admit`."""
        names = sorted(str(n) for n in roster)
        return _decide(self._state, key, names, model, max_rounds, differencing)[0]

    def rosters(self) -> dict[str, list[str]]:
        return dict(self._state.releases)

    def log_refusal(self, code: str, round_id: int, purpose: str) -> None:
        self._refusals.append({"time": round(time.time(), 3), "code": code,
                               "round": int(round_id), "purpose": str(purpose)[:80]})

    def refusals(self) -> list[dict]:
        return list(self._refusals)
