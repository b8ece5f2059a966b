"""The simulated sites' in-memory release record: the file record's rules, and in force.

An in-process run's sites (:mod:`securefed.transport.loopback`) keep their
release record in memory (the CLI wrote their policy; the record would be
deleted with the run); it must decide exactly as the file-locked record a
real site keeps, and the runtime must consult it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from protocols.stack import PlaintextSum
from securefed.policy.record import MemoryReleaseRecord, ReleaseRecord
from securefed.site import Site
from securefed.transport.calls import SiteCall
from securefed.transport.flower_server import SiteRefused
from securefed.transport.loopback import loopback_rounds

ASKS = [("k", ["A", "B", "C"], None, 10, True), ("k", ["C", "B", "A"], None, 10, True),
        ("k", ["A", "B"], None, 10, True), ("k", ["A", "B"], None, 10, False),
        ("m1", ["A", "B"], "model", 2, True), ("m2", ["A", "B"], "model", 2, True),
        ("m3", ["A", "B"], "model", 2, True), ("m1", ["A", "B"], "model", 2, True)]


def test_the_memory_record_decides_as_the_file_record(tmp_path):
    on_disk, in_memory = ReleaseRecord(tmp_path), MemoryReleaseRecord()
    decisions = [(on_disk.admit(k, r, m, n, differencing=d), in_memory.admit(
        k, r, m, n, differencing=d)) for k, r, m, n, d in ASKS]
    assert [a for a, _ in decisions] == [b for _, b in decisions]
    assert [a for a, _ in decisions] == [None, None, "differencing", None, None, None,
                                         "rounds", None]
    assert in_memory.rosters() == on_disk.rosters()
    in_memory.log_refusal("differencing", 3, "design-summary")
    [entry] = in_memory.refusals()
    assert set(entry) == {"time", "code", "round", "purpose"} and entry["round"] == 3


def test_a_simulated_site_refuses_differencing_from_its_memory_record():
    rng = np.random.default_rng(3)
    sites = {n: Site(n, pd.DataFrame({"y": rng.normal(size=6)})) for n in "ABCD"}
    with loopback_rounds(sites, PlaintextSum()) as rounds:
        engine = rounds._rounds.engine
        total = engine.run_round(1, "count", SiteCall("count_vector"), "ABCD").total
        np.testing.assert_array_equal(total, [24.0, 4.0])
        assert engine.run_round(2, "count", SiteCall("count_vector"), "ABCD").total[1] == 4
        with pytest.raises(SiteRefused, match="differencing"):
            engine.run_round(3, "count", SiteCall("count_vector"), "ABC")
