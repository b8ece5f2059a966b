"""``securefed audit dispute``: honest data reproduce the commitments, poisoned data do not.

The auditor holds the site's data file and the salt file the site reveals; the
coordinator's log holds the commitments the site signed (threat_model/poisoning.md).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import securefed.bfi_run as bfi_run
import securefed.glmm_run as glmm_run
from securefed.cli import main
from securefed.data import builtin_path
from securefed.errors import InputError
from securefed.robust.dispute import dispute_site
from securefed.site import Site
from securefed.study import load_study, run_study
from securefed.synthetic import make_hospitals

POISONED = "s2"


def _study(tmp_path, model: str, frames: list[pd.DataFrame]) -> tuple:
    for i, frame in enumerate(frames):
        frame.to_csv(tmp_path / f"s{i + 1}.csv", index=False)
    sites = "".join(f'[[sites]]\nname = "s{i + 1}"\ndata = "s{i + 1}.csv"\n'
                    for i in range(len(frames)))
    path = tmp_path / "study.toml"
    path.write_text(model + '[protection]\nlayers = ["secagg"]\n[output]\ndir = "out"\n' + sites)
    return path, load_study(path)


def _dispute(study_path, out, site: str, capsys) -> tuple[int, str]:
    code = main(["audit", "dispute", str(out / "audit.jsonl"), "--study", str(study_path),
                 "--site", site, "--salts", str(out / f"audit.site-{site}.salts.jsonl")])
    return code, capsys.readouterr().out


def test_bfi_dispute_names_the_poisoned_release(tmp_path, monkeypatch, capsys) -> None:
    trauma = pd.read_csv(builtin_path("trauma")).drop(columns="hospital")
    frames = [trauma.iloc[i::3] for i in range(3)]
    model = ('[model]\nkind = "bfi"\nformula = "mortality ~ age + ISS + GCS"\n'
             'family = "binomial"\nstandardize = ["age", "ISS"]\n')
    path, study = _study(tmp_path, model, frames)
    class Crafting(Site):  # the poisoned site adds 1 to b_age (passes every sum check)
        def bfi_terms_vector(self, *args, **kwargs):
            vector = np.array(super().bfi_terms_vector(*args, **kwargs), dtype=float)
            vector[10 + 1] += 1.0
            return vector

    monkeypatch.setattr(bfi_run, "Site", lambda name, part: (Crafting if name == POISONED
                                                             else Site)(name, part))
    run_study(study)
    out = study.output_dir
    code, text = _dispute(path, out, "s1", capsys)
    assert code == 0 and "site s1: 3 of 3 releases reproduced" in text
    code, text = _dispute(path, out, POISONED, capsys)
    assert code == 1 and "bfi-terms: differs" in text and "bfi-count: reproduced" in text, text
    code = main(["audit", "dispute", str(out / "audit.jsonl"), "--study", str(path), "--site",
                 POISONED, "--salts", str(out / f"audit.site-{POISONED}.salts.jsonl"),
                 "--quiet"])
    assert code == 1 and capsys.readouterr().out.splitlines() == [
        "round 3 bfi-terms: differs",
        f"site {POISONED}: 2 of 3 releases reproduced from its data, 1 differ, "
        "0 not re-derivable"]
    # without the run's result the standardised terms cannot be re-derived
    report = dispute_site(out / "audit.jsonl", "s1", frames[0], study.options,
                          out / "audit.site-s1.salts.jsonl")
    assert [r.status for r in report.releases][-1] == "not re-derivable"
    # a salt file that is not the site's own does not open its commitments
    report = dispute_site(out / "audit.jsonl", "s1", frames[0], study.options,
                          out / "audit.site-s3.salts.jsonl",
                          json.loads((out / "result.json").read_text()))
    assert {r.status for r in report.releases} == {"differs"}


def test_glmm_dispute_and_the_config_hash(tmp_path, monkeypatch, capsys) -> None:
    data = make_hospitals(n_sites=3, rows_per_site=60, seed=4)
    frames = [data[data.hospital == h].drop(columns="hospital").assign(hospital=h)
              for h in (1, 2, 3)]
    model = ('[model]\nkind = "glmm"\nformula = "y ~ x2 + x6 + (1 | hospital)"\n'
             'family = "binomial"\nrobust = true\n')
    path, study = _study(tmp_path, model, frames)

    class Doubling(Site):  # claims each of its rows twice in the design summary
        def design_summary_vector(self):
            return 2.0 * super().design_summary_vector()

    monkeypatch.setattr(glmm_run, "Site", lambda name, part: (Doubling if name == POISONED
                                                               else Site)(name, part))
    run_study(study)
    out = study.output_dir
    code, text = _dispute(path, out, "s1", capsys)
    assert code == 0 and "design-summary: reproduced" in text and "glmm-counts: reproduced" \
        in text and "glmm-terms: not re-derivable" in text
    code, text = _dispute(path, out, POISONED, capsys)
    assert code == 1 and "design-summary: differs" in text
    other = path.with_name("other.toml")
    other.write_text(path.read_text().replace("robust = true", "robust = false"))
    with pytest.raises(InputError, match="study_config_hash"):
        dispute_site(out / "audit.jsonl", "s1", frames[0], load_study(other).options,
                     out / "audit.site-s1.salts.jsonl")
