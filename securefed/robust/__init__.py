"""Bounded influence under secure aggregation (``--robust``) and disputes about one site.

Modules: :mod:`.influence` (leave-one-out numerics), :mod:`.validator` (the
party that holds the sites' summaries and refuses, naming the site),
:mod:`.runs` (the hooks the GLMM and BFI runs call), :mod:`.dispute` and
:mod:`.cli_dispute` (``securefed audit dispute``). Nothing is imported here, so
the CLI's start-up stays light.
"""

from __future__ import annotations

__all__: list[str] = []
