"""The coordinator never answers one query over two different sets of sites."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from protocols.errors import DifferencingRefused
from protocols.stack import DropPlan, SecAggSum
from securefed.coordinator import Coordinator
from securefed.site import Site


def _sites(n: int) -> list[Site]:
    return [Site(f"s{i}", pd.DataFrame({"v": [float(i)]})) for i in range(n)]


def _vector(site: Site) -> np.ndarray:
    return np.array([float(site.name[1:]), 1.0])


def test_repeated_query_over_the_same_sites_is_answered_from_cache() -> None:
    coordinator = Coordinator(_sites(4), SecAggSum())
    first = coordinator.secure_sum("q", _vector, key=("q", 1))
    again = coordinator.secure_sum("q", _vector, key=("q", 1))
    assert coordinator.round_id == 1
    np.testing.assert_allclose(first, again)
    np.testing.assert_allclose(first, [6.0, 4.0], atol=1e-9)


def test_a_dropout_counted_in_a_sum_is_never_differenced_away() -> None:
    drop = DropPlan(("s2",), "after-masked-input", round_id=1)
    coordinator = Coordinator(_sites(7), SecAggSum(drop=drop))
    total = coordinator.secure_sum("q", _vector, key=("q", 1))
    np.testing.assert_allclose(total, [21.0, 7.0], atol=1e-9)  # s2's input counted
    assert coordinator.dropped == ["s2"] and len(coordinator.live_sites) == 6
    with pytest.raises(DifferencingRefused):
        coordinator.secure_sum("q", _vector, key=("q", 1))
    other = coordinator.secure_sum("q", _vector, key=("q", 2))  # a new query is fine
    np.testing.assert_allclose(other, [19.0, 6.0], atol=1e-9)


def test_a_dropout_before_masked_input_is_not_counted_and_not_rerun() -> None:
    drop = DropPlan(("s2",), "after-key-exchange", round_id=1)
    coordinator = Coordinator(_sites(7), SecAggSum(drop=drop))
    total = coordinator.secure_sum("q", _vector, key=("q", 1))
    np.testing.assert_allclose(total, [19.0, 6.0], atol=1e-9)
    assert coordinator.round_id == 1
