"""Several random-effects terms per site: terms, the parameter layout, a site's structure.

A model with terms ``t = 1..T`` (lme4's ``(1 | a/b)`` is ``(1 | a) + (1 | a:b)``)
has, for row ``i``,

    eta_i = x_i' beta + sum_t z_ti' Lambda_t u_{t, g_t(i)},     u_{t, j} ~ N(0, I_{q_t}),

with ``g_t(i)`` the level of term ``t``'s grouping factor in row ``i`` and
``Lambda_t`` the lower Cholesky factor of term ``t``'s covariance (log-Cholesky
scale, as :class:`core_stats.glmm.ParameterLayout`). An uncorrelated term
``(1 + x || g)`` is, as in lme4, one scalar term per column (named ``g``,
``g.1``, ...). Two rows are in the same *block* when they share a level of any
term (closing over chains of shared levels): the connected components of the
bipartite graph rows -- levels. Random effects of different blocks are
independent given the data, so the marginal log-likelihood is a sum over
blocks, and a site holding whole blocks contributes a summable term
(federated = pooled exactly). Nested factors give one block per top-level
unit; crossed factors within a site may join a site's units into larger blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from core_stats.glmm import ParameterLayout

__all__ = ["RandomTerm", "MultiLayout", "MultiRows", "multi_rows", "split_uncorrelated",
           "term_layout", "level_in_two_sites", "terms_from_designs"]


@dataclass(frozen=True)
class RandomTerm:
    """One random-effects term of a site's rows, as the formula parser produces it.

    Parameters
    ----------
    name : str
        The grouping factor as lme4 prints it (``"BROOD:LOCATION"``, ``"LOCATION"``).
    Z : ndarray (n, q)
        The columns of the term's expression (``1`` is a column of ones).
    group_codes : ndarray (n,)
        The level of the grouping factor in each row (any labels that compare equal).
    correlated : bool
        False for ``(expr || g)``: a diagonal covariance.
    random_names : tuple of str
        Names of ``Z``'s columns (``"(Intercept)"``, ``"x"``); ``"(Intercept)"`` by default
        for one column.
    """

    name: str
    Z: np.ndarray
    group_codes: np.ndarray
    correlated: bool = True
    random_names: tuple[str, ...] = ()

    def names(self) -> tuple[str, ...]:
        q = np.atleast_2d(np.asarray(self.Z).T).shape[0]
        if self.random_names:
            if len(self.random_names) != q:
                raise ValueError(f"term {self.name!r} names {len(self.random_names)} columns "
                                 f"but Z has {q}")
            return tuple(self.random_names)
        if q == 1:
            return ("(Intercept)",)
        return tuple(f"z{k + 1}" for k in range(q))


def _as_matrix(Z: np.ndarray) -> np.ndarray:  # noqa: N802
    Z = np.asarray(Z, dtype=float)
    return Z[:, None] if Z.ndim == 1 else Z


def split_uncorrelated(terms: list[RandomTerm] | tuple[RandomTerm, ...]) -> tuple[RandomTerm, ...]:
    """Terms with ``correlated=False`` and ``q > 1`` as one scalar term per column.

    lme4 expands ``(1 + x || g)`` to ``(1 | g) + (0 + x | g)`` and prints the groups
    ``g``, ``g.1``, ...; so do we.
    """
    out: list[RandomTerm] = []
    for term in terms:
        Z = _as_matrix(term.Z)
        names = term.names()
        if term.correlated or Z.shape[1] == 1:
            out.append(replace(term, Z=Z, random_names=names, correlated=True))
            continue
        for k in range(Z.shape[1]):
            label = term.name if k == 0 else f"{term.name}.{k}"
            out.append(RandomTerm(label, Z[:, [k]], term.group_codes, True, (names[k],)))
    return tuple(out)


def terms_from_designs(designs) -> tuple[RandomTerm, ...]:
    """A site's terms from :class:`core_stats.formula.RandomDesign` s (the parser's output).

    The parser expands ``(1 + x || g)`` into scalar bars that share the group name; as
    lme4 prints them, the later ones are named ``g.1``, ``g.2``, ...
    """
    seen: dict[str, int] = {}
    out = []
    for design in designs:
        name = design.term.group_name
        count = seen.get(name, 0)
        seen[name] = count + 1
        out.append(RandomTerm(name if count == 0 else f"{name}.{count}", design.Z,
                              np.asarray(design.groups), design.term.correlated,
                              tuple(design.names)))
    return split_uncorrelated(out)


def level_in_two_sites(site_terms: dict[str, tuple[RandomTerm, ...]]
                       ) -> tuple[str, str, str] | None:
    """The first ``(factor, site, other site)`` where a level of a term's grouping factor
    appears in two sites, or None: every level must lie in one site, so that the sites'
    blocks are disjoint and the log-likelihood a sum over sites. (No level is returned:
    a refusal names the factor and the two sites only.)"""
    seen: dict[tuple[str, object], str] = {}
    for site, terms in site_terms.items():
        for term in terms:
            for level in np.unique(np.asarray(term.group_codes)).tolist():
                other = seen.setdefault((term.name, level), site)
                if other != site:
                    return term.name, other, site
    return None


def term_layout(term: RandomTerm) -> ParameterLayout:
    """A term's own covariance layout (no fixed effects, no dispersion)."""
    return ParameterLayout((), term.names(), term.name, has_dispersion=False)


@dataclass(frozen=True)
class MultiLayout:
    """Where each parameter sits in ``theta = (beta, phi_1, ..., phi_T, [log sigma])``.

    Each term is a :class:`ParameterLayout` with no fixed effects and no
    dispersion: its ``zero_columns`` / ``linear_columns`` / ``random_effects``
    say where that term stands on its covariance boundary (``random_effects=False``:
    the term's covariance is fixed at 0).
    """

    fixed_names: tuple[str, ...]
    terms: tuple[ParameterLayout, ...]
    has_dispersion: bool

    @property
    def p(self) -> int:
        return len(self.fixed_names)

    @property
    def beta(self) -> slice:
        return slice(0, self.p)

    def term_slice(self, t: int) -> slice:
        start = self.p + sum(term.n_cov for term in self.terms[:t])
        return slice(start, start + self.terms[t].n_cov)

    @property
    def n_cov(self) -> int:
        return sum(term.n_cov for term in self.terms)

    @property
    def size(self) -> int:
        return self.p + self.n_cov + int(self.has_dispersion)

    @property
    def scale_index(self) -> int | None:
        return self.p + self.n_cov if self.has_dispersion else None

    def lambda_matrices(self, theta: np.ndarray) -> list[np.ndarray]:
        """Each term's ``q_t x q_t`` lower Cholesky factor."""
        return [term.lambda_matrix(np.asarray(theta)[self.term_slice(t)])
                for t, term in enumerate(self.terms)]

    def parameter_names(self) -> tuple[str, ...]:
        names = list(self.fixed_names)
        for term in self.terms:
            names += term.parameter_names()
        if self.has_dispersion:
            names.append("log_sigma_residual")
        return tuple(names)

    def with_term(self, t: int, term: ParameterLayout) -> MultiLayout:
        terms = list(self.terms)
        terms[t] = term
        return replace(self, terms=tuple(terms))

    def term_theta(self, theta: np.ndarray, t: int) -> np.ndarray:
        """Term ``t``'s covariance parameters, with ``log sigma`` appended for the
        Gaussian family (the layout of ``term.with_dispersion``, see :meth:`term_view`)."""
        theta = np.asarray(theta, dtype=float)
        parts = [theta[self.term_slice(t)]]
        if self.has_dispersion:
            parts.append(theta[[self.scale_index]])
        return np.concatenate(parts)

    def term_view(self, t: int) -> ParameterLayout:
        """Term ``t`` as a single-term layout (no fixed effects) with this model's
        dispersion: what :mod:`core_stats.glmm_boundary` reads, with :meth:`term_theta`."""
        return replace(self.terms[t], has_dispersion=self.has_dispersion)


@dataclass(frozen=True)
class MultiRows:
    """One site's rows and the index structures of its random effects.

    The random effects ``u`` are ordered block by block (within a block: term,
    level, column), so the random-effects Hessian is block diagonal with
    contiguous blocks ``u_starts[b]:u_starts[b + 1]``. ``positions[t][j, c]`` is
    the place in ``u`` of term ``t``'s level ``j``, column ``c``;
    ``levels[t][i]`` is row ``i``'s level of term ``t`` (site-local codes).
    """

    y: np.ndarray
    X: np.ndarray
    Z: tuple[np.ndarray, ...]
    levels: tuple[np.ndarray, ...]
    level_labels: tuple[tuple, ...]
    positions: tuple[np.ndarray, ...]
    block_of_row: np.ndarray
    block_of_u: np.ndarray
    u_starts: np.ndarray
    level_sums: tuple[sparse.csr_matrix, ...]  # (L_t x n) 0/1: row -> its level
    offset: np.ndarray | None = None  # a known term of each row's linear predictor (R's offset)
    weights: np.ndarray | None = None  # prior weights (binomial: trials), as glmer's weights=

    @property
    def n_rows(self) -> int:
        return self.y.shape[0]

    @property
    def n_blocks(self) -> int:
        return self.u_starts.shape[0] - 1

    @property
    def n_u(self) -> int:
        return int(self.u_starts[-1])

    def n_levels(self) -> tuple[int, ...]:
        return tuple(len(labels) for labels in self.level_labels)


def multi_rows(y: np.ndarray, X: np.ndarray, terms: tuple[RandomTerm, ...],
               offset: np.ndarray | None = None,
               weights: np.ndarray | None = None) -> MultiRows:
    """Index a site's rows for :func:`core_stats.glmm_multi_laplace.multi_site_terms`.

    ``terms`` must already be split (:func:`split_uncorrelated`).
    """
    y = np.asarray(y, dtype=float)
    n = y.shape[0]
    X = np.asarray(X, dtype=float).reshape(n, -1)
    Zs, levels, labels = [], [], []
    for term in terms:
        Z = _as_matrix(term.Z)
        codes = np.asarray(term.group_codes)
        if Z.shape[0] != n or codes.shape != (n,):
            raise ValueError(f"term {term.name!r}: Z and group_codes need one row per row of y")
        lab, lev = np.unique(codes, return_inverse=True)
        Zs.append(Z)
        levels.append(lev.astype(np.intp))
        labels.append(tuple(lab.tolist()))
    block_of_row, block_of_level = _blocks(n, levels, [len(lab) for lab in labels])
    positions, block_of_u, u_starts = _u_order(Zs, block_of_level)
    level_sums = tuple(sparse.csr_matrix((np.ones(n), (lev, np.arange(n))), shape=(len(lab), n))
                       for lev, lab in zip(levels, labels, strict=True))
    if offset is not None:
        offset = np.asarray(offset, dtype=float).reshape(n)
    if weights is not None:
        weights = np.asarray(weights, dtype=float).reshape(n)
    return MultiRows(y, X, tuple(Zs), tuple(levels), tuple(labels), tuple(positions),
                     block_of_row, block_of_u, u_starts, level_sums, offset, weights)


def _blocks(n: int, levels: list[np.ndarray], n_levels: list[int]
            ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Connected components of rows and levels; blocks numbered by their first row."""
    offsets = np.cumsum([n, *n_levels])
    rows = np.concatenate([np.arange(n)] * len(levels)) if levels else np.zeros(0, int)
    nodes = np.concatenate([lev + off for lev, off in zip(levels, offsets[:-1], strict=True)]) \
        if levels else np.zeros(0, int)
    size = int(offsets[-1])
    graph = sparse.coo_matrix((np.ones(rows.size), (rows, nodes)), shape=(size, size))
    _, label = connected_components(graph, directed=False)
    first = np.full(label.max() + 1, size)
    np.minimum.at(first, label[:n], np.arange(n))
    renumber = np.empty_like(first)
    renumber[np.argsort(first, kind="stable")] = np.arange(first.size)
    label = renumber[label]
    return label[:n], [label[off:off + k] for off, k in zip(offsets[:-1], n_levels, strict=True)]


def _u_order(Zs: list[np.ndarray], block_of_level: list[np.ndarray]):
    """Positions of every (term, level, column) in ``u``, ordered by block."""
    keys = []
    for t, (Z, blocks) in enumerate(zip(Zs, block_of_level, strict=True)):
        q = Z.shape[1]
        level = np.repeat(np.arange(blocks.size), q)
        keys.append(np.column_stack([np.repeat(blocks, q), np.full(level.size, t), level,
                                     np.tile(np.arange(q), blocks.size)]))
    key = np.vstack(keys) if keys else np.zeros((0, 4), int)
    order = np.lexsort((key[:, 3], key[:, 2], key[:, 1], key[:, 0]))
    place = np.empty(order.size, dtype=np.intp)
    place[order] = np.arange(order.size)
    positions, start = [], 0
    for Z, blocks in zip(Zs, block_of_level, strict=True):
        count = blocks.size * Z.shape[1]
        positions.append(place[start:start + count].reshape(blocks.size, Z.shape[1]))
        start += count
    block_of_u = key[order, 0].astype(np.intp)
    n_blocks = int(max((b.max() + 1 for b in block_of_level if b.size), default=0))
    u_starts = np.searchsorted(block_of_u, np.arange(n_blocks + 1)).astype(np.intp)
    return positions, block_of_u, u_starts
