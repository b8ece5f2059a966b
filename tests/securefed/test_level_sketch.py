"""The keyed level sketch: a level in two sites is always found, different levels are not
taken for one, and without the sites' key the bins say nothing about the labels."""

from __future__ import annotations

import numpy as np
import pytest

from securefed.level_sketch import (
    MAX_STAGES,
    SUB_BINS,
    LevelSketchRequest,
    checked_terms,
    first_bins,
    flagged_paths,
    sketch_vector,
)

KEY = bytes(range(32))


def _run(sites: list[list[object]], key: bytes = KEY, bins: int = 256):
    """Stages until nothing is flagged: (stages run, last flagged paths)."""
    request = LevelSketchRequest((0,), ("g",), (bins,), "nonce")
    for stage in range(MAX_STAGES + 1):
        total = sum(sketch_vector(request, (tuple(levels),), key) for levels in sites)
        paths = flagged_paths(request, total)
        if not paths:
            return stage + 1, paths
        request = LevelSketchRequest((0,), ("g",), (bins,), "nonce", stage + 1, paths)
    return stage + 1, paths


def test_disjoint_sites_pass_even_when_stage_zero_collides():
    rng = np.random.default_rng(3)
    labels = rng.permutation(5000)[:1200]  # 1,200 levels in 256 bins: many false alarms
    sites = [labels[k::4].tolist() for k in range(4)]
    stages, paths = _run(sites)
    assert paths == () and stages > 1


def test_a_level_in_two_sites_is_always_found():
    for seed in range(5):
        rng = np.random.default_rng(seed)
        labels = rng.permutation(5000)[:800].tolist()
        sites = [labels[k::4] for k in range(4)]
        sites[2].append(sites[0][seed])  # one level of site 0 also in site 2
        stages, paths = _run(sites)
        assert stages == MAX_STAGES + 1 and len(paths) == 1


def test_the_same_level_read_as_float_or_integer_is_one_level():
    _, paths = _run([[1, 2, 3], [4.0, 3.0]])
    assert len(paths) == 1
    _, paths = _run([[1, 2, 3], [4.0, 5.0]])
    assert paths == ()


def test_without_the_key_the_bins_do_not_tell_the_labels():
    request = LevelSketchRequest((0,), ("g",), (256,), "nonce")
    ours = sketch_vector(request, (("ward-7",),), KEY)
    other = sketch_vector(request, (("ward-7",),), bytes(32))
    assert ours.sum() == other.sum() == 1
    assert np.flatnonzero(ours) != np.flatnonzero(other)  # the key decides the bin


def test_later_stages_only_split_flagged_paths():
    request = LevelSketchRequest((0,), ("g",), (256,), "n", 1, ((0, (3,)),))
    assert request.length == SUB_BINS
    assert sketch_vector(request, ((),), KEY).sum() == 0


@pytest.mark.parametrize(("groups", "expected"), [
    ((("LOCATION", "BROOD"), ("LOCATION",)), (1,)),  # (1 | LOCATION/BROOD)
    ((("mom",), ("comm",)), (0, 1)),  # crossed: both
    ((("g",), ("g",)), (0,)),  # (1 + x || g): one factor
])
def test_checked_factors_are_those_not_nested_in_another(groups, expected):
    assert checked_terms(groups) == expected


def test_bins_grow_with_the_levels():
    assert first_bins(1) == 256 and first_bins(118) == 512 and first_bins(10**6) == 1 << 16


@pytest.mark.parametrize("bad", [
    LevelSketchRequest((0,), ("g",), (256,), "n", MAX_STAGES + 1, ((0, (1,) * 7),)),
    LevelSketchRequest((0,), ("g",), (256,), "n", 2, ((0, (1,)),)),  # path of stage 1
    LevelSketchRequest((0,), ("g",), (256,), "n", 1, ((3, (1,)),)),  # no term 3
    LevelSketchRequest((0,), ("g",), (256,), "n", 1, ()),  # a later stage with no path
    LevelSketchRequest((0,), ("g",), (1 << 21,), "n"),  # too many bins
])
def test_a_site_refuses_a_sketch_request_out_of_shape(bad):
    from securefed.transport.calls import SiteCall

    text = SiteCall("level_sketch_vector", {"request": bad}).to_json()
    with pytest.raises(ValueError, match="out of shape"):
        SiteCall.from_json(text)
