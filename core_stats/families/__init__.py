"""Response distributions as classes, one module per family (as glum's ``Family``).

Each family is a frozen :class:`Family` subclass whose instance holds its
link; everything else the statistics and the orchestration ask of a family
is a class attribute or a method (see :mod:`core_stats.families.base`):

=================  =========  ===========================  ====================================
family             R name     links (first canonical)      dispersion in ``theta``
=================  =========  ===========================  ====================================
binomial           binomial   logit, probit, cloglog       none
poisson            poisson    log                          none
gaussian           gaussian   identity                     ``log sigma`` (residual SD)
Gamma              Gamma      inverse, log                 ``log sigma``, ``sigma^2 = 1/shape``
negative_binomial  nbinom2    log                          ``log theta`` (NB2 size)
=================  =========  ===========================  ====================================

A new family is one module here with its tests, and its class in ``FAMILY_CLASSES``.
"""

from __future__ import annotations

from core_stats.families.base import Dispersion, Family
from core_stats.families.binomial import Binomial
from core_stats.families.gamma import Gamma
from core_stats.families.gaussian import Gaussian
from core_stats.families.negative_binomial import NegativeBinomial
from core_stats.families.poisson import Poisson

__all__ = ["Family", "Dispersion", "Binomial", "Poisson", "Gaussian", "Gamma",
           "NegativeBinomial", "BINOMIAL", "POISSON", "GAUSSIAN", "GAMMA",
           "NEGATIVE_BINOMIAL", "FAMILIES", "FAMILY_CLASSES", "CANONICAL_LINKS", "LINKS",
           "get_family"]

FAMILY_CLASSES: tuple[type[Family], ...] = (Binomial, Poisson, Gaussian, Gamma,
                                            NegativeBinomial)
BINOMIAL, POISSON, GAUSSIAN, GAMMA, NEGATIVE_BINOMIAL = (cls() for cls in FAMILY_CLASSES)
FAMILIES: dict[str, Family] = {f.name: f for f in (BINOMIAL, POISSON, GAUSSIAN, GAMMA,
                                                   NEGATIVE_BINOMIAL)}
CANONICAL_LINKS = {f.name: f.link for f in FAMILIES.values()}
LINKS = {f.name: f.links for f in FAMILIES.values()}
_BY_NAME = {alias.lower(): type(f) for f in FAMILIES.values()
            for alias in (f.name, *f.aliases)}


def get_family(name: str, link: str | None = None) -> Family:
    """Look up a family by name or alias (any case) and a link it allows.

    ``ValueError`` names the valid choices.
    """
    try:
        cls = _BY_NAME[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown family {name!r}: choose one of {', '.join(FAMILIES)} (or nbinom2)"
        ) from None
    return cls() if link is None else cls(link)
