"""Every report kind rendered in headless Chromium: what a reader sees, measured by the browser.

The GLMM (``fit``), BFI (with the pooled comparison), Cox and audit reports are written by the
CLI, then each page is opened by headless Chromium (``--dump-dom``) with a probe script added to
a copy beside it. The probe runs in the browser after the page and its images have loaded and
records the laid-out page: the viewport and document widths, every table's cell text and right
edge, every image's loaded size and position, and the page's visible text. The tests assert on
those: the tables show the numbers of the result JSON, no table, image or the page itself runs
past the window (no horizontal scrolling), the figures are drawn. ``privacy-curve`` writes a
CSV and a PNG, no page, so it has no report here. Without Chromium the tests are skipped,
saying so (``docs/check_report_renders.sh`` installs it on a workstation).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from securefed.cli import main
from securefed.data import builtin_path
from securefed.synthetic import make_hospitals

REPO = Path(__file__).resolve().parents[2]
WIDTH = 1000  # the browser window, CSS pixels
CHROMIUM = next((p for p in ("/usr/lib/chromium/chromium", "/usr/bin/chromium",
                             shutil.which("chromium") or "", shutil.which("chromium-browser") or "",
                             shutil.which("google-chrome") or "") if p and Path(p).exists()), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed: the "
                                "report pages are not rendered (apt-get install chromium)")

PROBE = """<script>
window.addEventListener("load", () => {
  const box = (el) => el.getBoundingClientRect();
  const scroller = (el) => {  // the right edge of the box that scrolls el sideways, if any
    for (let p = el.parentElement; p && p !== document.body; p = p.parentElement) {
      if (["auto", "scroll"].includes(getComputedStyle(p).overflowX)) return box(p).right;
    }
    return null;
  };
  const out = {
    innerWidth: window.innerWidth,
    scrollWidth: document.documentElement.scrollWidth,
    text: document.body.innerText,
    headings: [...document.querySelectorAll("h1, h2")].map((h) => h.innerText.trim()),
    tables: [...document.querySelectorAll("table")].map((t) => ({
      id: t.id, right: box(t).right, scroller: scroller(t),
      rows: [...t.rows].map((r) => [...r.cells].map((c) => c.innerText.trim())),
    })),
    images: [...document.images].map((i) => ({
      src: i.getAttribute("src"), alt: i.alt, loaded: i.complete && i.naturalWidth > 0,
      naturalWidth: i.naturalWidth, width: box(i).width, height: box(i).height,
      left: box(i).left, right: box(i).right,
    })),
  };
  const probe = document.createElement("pre");
  probe.id = "layout-probe";
  probe.textContent = JSON.stringify(out);
  document.body.appendChild(probe);
});
</script>"""


def _render_all(pages: dict[str, Path], tmp: Path) -> dict[str, dict]:
    """Open every page in its own headless Chromium, all at once; each page's probe record."""
    running = {}
    for name, page in pages.items():
        probed = page.with_name(f"{page.stem}_probe.html")
        probed.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"),
                          encoding="utf-8")
        running[name] = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--no-first-run", f"--user-data-dir={tmp / f'profile-{name}'}",
             f"--window-size={WIDTH},1400", "--virtual-time-budget=3000", "--dump-dom",
             probed.as_uri()], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    rendered = {}
    for name, proc in running.items():
        dom, _ = proc.communicate(timeout=120)
        found = re.search(r'<pre id="layout-probe">(.*?)</pre>', dom, re.S)
        assert found, f"{name}: the probe did not run (exit {proc.returncode})"
        text = found.group(1).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
        rendered[name] = json.loads(text)
    return rendered


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, dict]:
    tmp = tmp_path_factory.mktemp("reports")
    data = tmp / "hospitals.csv"
    make_hospitals(6, 60, seed=2).to_csv(data, index=False)
    runs = {
        "fit": ["fit", str(data), "--formula", "y ~ x2 + x6 + x7 + (1 | hospital)",
                "--site-column", "hospital", "--protect", "secagg", "--audit-log",
                str(tmp / "run.jsonl")],
        "bfi": ["bfi", str(builtin_path("Nurses")), "--formula",
                "stress ~ age + gender + experien + wardtype", "--site-column", "hospital",
                "--standardize", "age,experien,stress", "--compare-pooled"],
        "cox": ["cox", str(REPO / "tests" / "golden" / "cox" / "lung.csv"), "--formula",
                "Surv(time, status) ~ age + sex + ph.ecog", "--site-column", "site"],
    }
    pages, results = {}, {}
    for name, args in runs.items():
        assert main([*args, "--json", str(tmp / f"{name}.json"), "--quiet"]) == 0
        results[name] = json.loads((tmp / f"{name}.json").read_text())
        assert main(["report", str(tmp / f"{name}.json"), "--out", str(tmp / f"{name}.html"),
                     "--quiet"]) == 0
        pages[name] = tmp / f"{name}.html"
    main(["audit", "report", str(tmp / "run.jsonl"), "--format", "html", "--out",
          str(tmp / "audit.html")])
    pages["audit"] = tmp / "audit.html"
    return {"pages": _render_all(pages, tmp), "results": results}


@pytest.mark.parametrize("kind", ["fit", "bfi", "cox", "audit"])
def test_nothing_runs_past_the_window(rendered, kind) -> None:
    page = rendered["pages"][kind]
    assert page["innerWidth"] == WIDTH
    assert page["scrollWidth"] <= page["innerWidth"], "the page scrolls sideways"
    for table in page["tables"]:  # a wider table is in a box of its own that scrolls
        edge = table["right"] if table["scroller"] is None else table["scroller"]
        assert edge <= page["innerWidth"], f"table {table['id'] or table['rows'][0]} is cut off"
    for image in page["images"]:
        assert image["loaded"], f"{image['src']} did not load"
        assert image["left"] >= 0 and image["right"] <= page["innerWidth"], image["src"]
        assert image["width"] >= 300 and image["height"] >= 150, image  # readable, not a thumb


def _table(page: dict, table_id: str) -> list[list[str]]:
    return next(t["rows"] for t in page["tables"] if t["id"] == table_id)


def _shown(value: float, cell: str) -> bool:
    """The cell shows ``value`` to the digits it prints."""
    if "e" in cell.lower():
        return math.isclose(float(cell), value, rel_tol=1e-3)
    digits = len(cell.split(".")[1]) if "." in cell else 0
    return abs(float(cell) - value) <= 0.51 * 10.0**-digits


def test_the_glmm_page_shows_the_fit_with_z_p_and_method(rendered) -> None:
    page, result = rendered["pages"]["fit"], rendered["results"]["fit"]
    rows = _table(page, "coefficients")
    assert rows[0][:5] == ["term", "estimate", "Std. Error", "z value", "Pr(>|z|)"]
    assert [r[0] for r in rows[1:]] == [fe["term"] for fe in result["fixed_effects"]]
    for row, fe in zip(rows[1:], result["fixed_effects"], strict=True):
        assert _shown(fe["estimate"], row[1]) and _shown(fe["z_value"], row[3]), (row, fe)
    assert "Laplace" in page["text"] and "secagg" in page["text"]
    alts = " ".join(i["alt"] for i in page["images"])
    assert "forest" in alts and len(page["images"]) >= 2  # coefficients and convergence


def test_the_bfi_page_shows_both_sds_beside_the_pooled_fit(rendered) -> None:
    page, result = rendered["pages"]["bfi"], rendered["results"]["bfi"]
    rows = _table(page, "coefficients")
    assert rows[0][:3] == ["term", "estimate", "SD"]
    assert [r[0] for r in rows[1:]] == [e["term"] for e in result["estimates"]]
    for row, est in zip(rows[1:], result["estimates"], strict=True):
        assert _shown(est["estimate"], row[1]) and _shown(est["sd"], row[2]), (row, est)
    pooled_tables = [t for t in page["tables"] if any("pooled" in c.lower() for c in t["rows"][0])]
    assert pooled_tables, page["headings"]
    header = [c.lower() for c in pooled_tables[0]["rows"][0]]
    assert sum("sd" in c for c in header) >= 2, header  # BFI's SD and the pooled SD
    assert len(page["images"]) >= 2  # forest plot and the BFI-vs-pooled dots


def test_the_cox_page_shows_the_hazard_model(rendered) -> None:
    page, result = rendered["pages"]["cox"], rendered["results"]["cox"]
    rows = _table(page, "coefficients")
    assert [r[0] for r in rows[1:]] == [fe["term"] for fe in result["fixed_effects"]]
    for row, fe in zip(rows[1:], result["fixed_effects"], strict=True):
        assert _shown(fe["estimate"], row[1]) and _shown(fe["z_value"], row[3]), (row, fe)
    assert page["headings"][0] == "Stratified Cox model (strata: sites)"
    assert "partial likelihood" in page["text"] and "Laplace" not in page["text"]
    fit = _table(page, "cox-fit")
    assert fit[0][2] == "concordance" and _shown(result["concordance"]["concordance"], fit[1][2])


def test_the_audit_page_names_every_site_and_says_whether_it_verified(rendered) -> None:
    page = rendered["pages"]["audit"]
    assert "Integrity check: OK" in page["text"]
    per_site = next(t["rows"] for t in page["tables"] if t["rows"][0][0] == "site")
    assert [r[0] for r in per_site[1:]] == [str(k) for k in range(1, 7)]
    rounds = str(rendered["results"]["fit"]["rounds"])  # one release a round, countersigned
    assert all(r[1] == rounds and r[-1] == "yes" for r in per_site[1:]), per_site
