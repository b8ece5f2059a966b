"""A site's policy file, its release record and its refusal codes (no transport here)."""

from __future__ import annotations

import dataclasses
import json
import threading

import pytest

from securefed.cli import main
from securefed.policy.enforce import canonical_formula
from securefed.policy.model import DEFAULT_TEXT, PolicyError, SitePolicy, load_policy
from securefed.policy.record import ReleaseRecord
from securefed.policy.refusal import PolicyRefused, Refusal


def test_the_commented_default_file_is_the_built_in_default(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(DEFAULT_TEXT)
    loaded = load_policy(path)
    assert loaded == SitePolicy.default(tmp_path / "releases")
    assert loaded.layers == ("secagg", "ckks") and "none" not in loaded.layers
    assert loaded.min_sites >= 3 and loaded.min_contributors >= 3 and loaded.min_cell_count >= 3


@pytest.mark.parametrize(("text", "match"), [
    ("[protection]\nlayer = [\"none\"]\n", "unknown setting 'layer'"),
    ("[protections]\n", "unknown section"),
    ("[protection]\nlayers = [\"plain\"]\n", "layers must be"),
    ("[disclosure]\nmin_cell_count = 0\n", "at least 1"),
    ("[parameters]\nmax_abs_beta = \"big\"\n", "must be a number"),
    ("[parameters]\nlog_sd_min = 3.0\nlog_sd_max = 1.0\n", "log_sd_min < log_sd_max"),
    ("[roster\n", "not valid TOML"),
])
def test_a_malformed_policy_is_refused_in_one_line(tmp_path, text, match):
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(PolicyError, match=match) as err:
        load_policy(path)
    assert "\n" not in str(err.value)


def test_site_init_writes_the_commented_default_and_never_overwrites(tmp_path, capsys):
    data = tmp_path / "rows.csv"
    data.write_text("y,age,hospital\n1,50,a\n")
    assert main(["site", "init", str(tmp_path / "site"), "--data", str(data)]) == 0
    path = tmp_path / "site" / "policy.toml"
    assert path.read_text().count("#") > 20  # commented
    policy = load_policy(path)
    assert policy.columns == ("y", "age", "hospital")
    assert policy.record_dir == (tmp_path / "site" / "releases").resolve()
    assert dataclasses.replace(policy, columns=()) == SitePolicy.default(policy.record_dir)
    assert main(["site", "init", str(tmp_path / "site")]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["site", "check", str(tmp_path / "site")]) == 0


def test_formulas_compare_by_their_terms_not_their_spacing():
    assert canonical_formula("y ~ x1+x2 + (1|g)") == canonical_formula("y~x1 + x2+( 1 | g )")
    assert canonical_formula("y ~ x1 + x2") != canonical_formula("y ~ x1")


def test_refusals_carry_a_code_and_a_fixed_message_only():
    for refusal in Refusal:
        text = str(PolicyRefused(refusal))
        assert text.startswith(f"refused[{refusal.value}]: ") and "\n" not in text
        assert not any(ch.isdigit() for ch in text)


def test_the_record_persists_and_refuses_another_roster(tmp_path):
    ReleaseRecord(tmp_path).admit("k", ["A", "B", "C"], None, 10)
    record = ReleaseRecord(tmp_path)  # a new process reading the same folder
    assert record.admit("k", ["C", "B", "A"], None, 10) is None  # same roster, any order
    assert record.admit("k", ["A", "B"], None, 10) == "differencing"
    assert record.admit("k", ["A", "B"], None, 10, differencing=False) is None  # under DP
    assert record.rosters() == {"k": ["A", "B", "C"]}
    assert (tmp_path / "releases.json").stat().st_mode & 0o077 == 0
    assert not list(tmp_path.glob(".releases.*"))  # no temporary file left behind


def test_the_record_counts_releases_per_model_atomically_across_threads(tmp_path):
    results: list[str | None] = []

    def ask(k: int) -> None:
        results.append(ReleaseRecord(tmp_path).admit(f"key{k}", ["A", "B", "C"], "m", 5))

    threads = [threading.Thread(target=ask, args=(k,)) for k in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(None) == 5 and results.count("rounds") == 19
    assert json.loads((tmp_path / "releases.json").read_text())["models"] != {}


def test_refusals_are_logged_without_data(tmp_path):
    record = ReleaseRecord(tmp_path)
    record.log_refusal("differencing", 3, "design-summary")
    [entry] = record.refusals()
    assert set(entry) == {"time", "code", "round", "purpose"} and entry["round"] == 3
