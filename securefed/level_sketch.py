"""Is a level of a grouping factor in two sites? Asked of the sites without showing levels.

With several random-effects terms the marginal log-likelihood is a sum over
sites only if every level of every grouping factor lies in one site. In
process the coordinator holds the rows and checks that directly
(:func:`securefed.glmm_run._check_nested`). Over a network nobody holds every
site's levels, so the sites answer it together, through the round's own
protection (secure aggregation: only the sum is seen):

* every site holds the consortium's *level key* ``K`` (node config
  ``level-key``: a file of 32 random bytes that the sites share and the
  coordinator never has, distributed as the registry is; :func:`new_level_key`);
* stage 0: for each checked factor ``f`` a site releases the 0/1 indicator
  over ``M_f`` bins of ``h_0(l) = HMAC-SHA256(K, nonce | f | 0 | l) mod M_f``
  for its levels ``l``; summed over sites, a bin ``>= 2`` means two sites hold
  a level there — one level in both, or two levels hashed alike;
* stage ``s >= 1``: for each flagged bin path only, the indicator over
  :data:`SUB_BINS` bins of ``h_s``; a level in two sites is flagged at every
  stage, two different levels with probability ``1 / SUB_BINS`` per stage;
* no bin flagged: no level is in two sites (certain: a shared level is never
  missed). Still flagged after :data:`MAX_STAGES` stages: a shared level
  (a false alarm has probability about ``pairs / (M_f SUB_BINS^S)``, below
  1e-12 for 2,000 levels), and the run is refused.

What the coordinator learns, not knowing ``K``: how many sites hold a level
in each pseudorandom bin (about the number of levels, which the counts round
gives anyway) and whether a level is shared; no label, and under secure
aggregation not which sites. Checked factors are those not nested in another
term's factor by the formula (``LOCATION`` for ``(1 | LOCATION/BROOD)``: a
level of ``BROOD:LOCATION`` in two sites would put its ``LOCATION`` in both).
A site colluding with the coordinator gives it ``K``; then it can test a
guessed label for presence in some site (not which). See
``threat_model/README.md``.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["LevelSketchRequest", "LEVEL_KEY", "MAX_STAGES", "SUB_BINS", "new_level_key",
           "load_level_key", "first_bins", "sketch_vector", "flagged_paths", "checked_terms"]

LEVEL_KEY = "level-key"  # node config: the path of the consortium's level key
KEY_BYTES = 32
SUB_BINS = 64
MAX_STAGES = 6
MIN_BINS, MAX_BINS = 256, 1 << 16


@dataclass(frozen=True)
class LevelSketchRequest:
    """One stage of the sketch, as the coordinator asks it (public values only).

    Parameters
    ----------
    terms : tuple of int
        Indices of the checked terms in the model's (split) term list.
    names : tuple of str
        Their grouping factors' names, bound into the hash.
    bins : tuple of int
        Stage 0's number of bins per checked term.
    nonce : str
        The run's random nonce (fresh hashes every run).
    stage : int
        0, then 1, 2, ... on the flagged paths.
    paths : tuple of (int, tuple of int)
        Stage ``s >= 1``: the flagged ``(checked term, bins of stages 0..s-1)``.
    """

    terms: tuple[int, ...]
    names: tuple[str, ...]
    bins: tuple[int, ...]
    nonce: str
    stage: int = 0
    paths: tuple[tuple[int, tuple[int, ...]], ...] = ()

    @property
    def length(self) -> int:
        return sum(self.bins) if self.stage == 0 else len(self.paths) * SUB_BINS


def new_level_key(path: str | Path) -> Path:
    """Write a fresh level key (mode 0600): give the same file to every site, never to
    the coordinator."""
    path = Path(path)
    path.write_bytes(secrets.token_bytes(KEY_BYTES))
    path.chmod(0o600)
    return path


def load_level_key(path: str | Path) -> bytes:
    key = Path(path).read_bytes()
    if len(key) != KEY_BYTES:
        raise ValueError(f"the level key must be {KEY_BYTES} bytes")
    return key


def first_bins(n_levels: int) -> int:
    """Stage 0's bins for a factor with about ``n_levels`` levels in all (a power of two,
    about four per level, within ``[MIN_BINS, MAX_BINS]``)."""
    return int(min(MAX_BINS, max(MIN_BINS, 1 << math.ceil(math.log2(4 * max(n_levels, 1))))))


def _label_text(label: object) -> str:
    """A level as text, alike at every site (an integer read as 1.0 at one site is 1)."""
    if isinstance(label, (float, np.floating)) and float(label).is_integer():
        return str(int(label))
    if isinstance(label, (np.integer,)):
        return str(int(label))
    return str(label)


def _hash(key: bytes, nonce: str, name: str, stage: int, label: str, bins: int) -> int:
    message = "\x1f".join(("securefed-level-sketch", nonce, name, str(stage), label))
    digest = hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") % bins


def sketch_vector(request: LevelSketchRequest, level_labels: tuple[tuple, ...],
                  key: bytes) -> np.ndarray:
    """A site's 0/1 indicators for ``request`` from its levels (``level_labels[t]``: the
    distinct levels of term ``t`` at this site)."""
    out = np.zeros(request.length)
    if request.stage == 0:
        start = 0
        for k, (t, bins) in enumerate(zip(request.terms, request.bins, strict=True)):
            for label in level_labels[t]:
                out[start + _hash(key, request.nonce, request.names[k], 0,
                                  _label_text(label), bins)] = 1.0
            start += bins
        return out
    wanted = {path: j for j, path in enumerate(request.paths)}
    for k, (t, bins) in enumerate(zip(request.terms, request.bins, strict=True)):
        for label in level_labels[t]:
            text = _label_text(label)
            path = tuple(_hash(key, request.nonce, request.names[k], s, text,
                               bins if s == 0 else SUB_BINS) for s in range(request.stage))
            j = wanted.get((k, path))
            if j is not None:
                out[j * SUB_BINS + _hash(key, request.nonce, request.names[k], request.stage,
                                         text, SUB_BINS)] = 1.0
    return out


def flagged_paths(request: LevelSketchRequest, total: np.ndarray
                  ) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """The bins of the summed stage where two or more sites hold a level, as paths."""
    hits = np.flatnonzero(np.asarray(total) >= 1.5)
    if request.stage == 0:
        starts = np.cumsum([0, *request.bins])
        out = []
        for index in hits.tolist():
            k = int(np.searchsorted(starts, index, side="right") - 1)
            out.append((k, (int(index - starts[k]),)))
        return tuple(out)
    return tuple((request.paths[i // SUB_BINS][0],
                  (*request.paths[i // SUB_BINS][1], int(i % SUB_BINS))) for i in hits.tolist())


def checked_terms(groups: tuple[tuple[str, ...], ...]) -> tuple[int, ...]:
    """The terms whose grouping columns contain no other term's columns (one per set):
    checking them checks every factor nested in them."""
    sets = [frozenset(g) for g in groups]
    out, seen = [], set()
    for t, cols in enumerate(sets):
        if cols in seen or any(other < cols for other in sets):
            continue
        seen.add(cols)
        out.append(t)
    return tuple(out)


if __name__ == "__main__":  # python -m securefed.level_sketch PATH: a new level key
    import sys

    if len(sys.argv) != 2 or Path(sys.argv[1]).exists():
        sys.exit("usage: python -m securefed.level_sketch PATH (a new file: the sites' "
                 "level key)")
    print(new_level_key(sys.argv[1]))
