"""The study report's section on the consortium's pooled results (report/pooled.py): every number it prints
reads back from the coordinator table its ``data-src`` names, with a forest plot per comparison × outcome
pooled over at least two sites. The tables are the coordinator's own, built from the three committed sites
(tests/fixtures/pooling) by the functions coordinator/assets.py calls."""
from __future__ import annotations

import base64
import json
import re
from datetime import date

import pandas as pd
import pytest
from lxml import html as lxml_html

from analytics.cohort.concepts import load_concept_map
from coordinator.assets import POOLED_COLUMNS
from federation.aggregate import heterogeneity_table, meta_table, site_estimates
from federation.contract import contract_terms
from federation.package import build_site_package
from report import labels as L
from report.pooled import POOLED_TABLES
from report.render import render_pooled
from tests.paths import FIXTURES
from tests.pooling_sites import SITES, site_tables
from tests.report.test_study_report import check_number, locate

REF = json.loads((FIXTURES / "pooling" / "reference.json").read_text())
SMALL_ARM = "north refused: small_arm (limit 5): an arm of this fit has fewer patients than the site's minimum (limit: the minimum)"


def pooled_tables() -> dict[str, pd.DataFrame]:
    packages = {s: build_site_package(s, site_tables(s), terms=contract_terms(), concepts=load_concept_map(None),
                                      data_cutoff=date(2026, 1, 1)) for s in SITES}
    estimates = site_estimates(packages)
    started = "2026-03-01T09:00:00+00:00"
    pooled = [{"session_id": "s2026", "started_at": started, "comparison": c, "outcome": o, "status": "pooled", **v["pooled"],
               "n_sites": 3, "sites": "central,north,south", "rounds": 6, "reason": None}
              for c, comp in REF["comparisons"].items() for o, v in comp["outcomes"].items()]
    pooled.append({"session_id": "s2026", "started_at": started, "comparison": "tacrolimus_vs_MTX", "outcome": "death",
                   "status": "not pooled", "sites": "central,north,south", "rounds": 6, "reason": SMALL_ARM})
    # An older session's rows are not the ones shown, even when its id sorts after the latest's.
    pooled.append({**pooled[0], "session_id": "z-pilot", "started_at": "2025-11-30T23:00:00+00:00", "hazard_ratio": 77.7})
    return {"pooled_effects": pd.DataFrame(pooled, columns=POOLED_COLUMNS), "meta_analysis": meta_table(estimates),
            "site_heterogeneity": heterogeneity_table(estimates)}


@pytest.fixture(scope="module")
def tables() -> dict[str, pd.DataFrame]:
    return pooled_tables()


@pytest.fixture(scope="module")
def doc(tables):
    return lxml_html.fromstring(render_pooled(tables))


def test_every_number_in_the_pooled_section_is_the_coordinator_value_it_names(doc, tables):
    elements = doc.xpath("//*[@data-src]")
    assert len(elements) > 100
    for el in elements:
        spec, kind, text = json.loads(el.get("data-src")), el.get("data-kind"), el.text_content()
        assert spec["table"] in POOLED_TABLES
        value = locate(tables, spec)
        where = f"{el.get('data-src')} printed {text!r}"
        if kind in ("number", "p"):
            check_number(text, value, where)
        else:
            assert text == str(value), where


def test_the_exact_pooled_hazard_ratio_of_the_latest_session_is_printed(doc, tables):
    ref = REF["comparisons"]["tacrolimus_vs_conventional"]["outcomes"]["death"]["pooled"]
    comparison, outcome = L.label(L.COMPARISONS, "tacrolimus_vs_conventional"), L.label(L.OUTCOMES, "death")
    row = doc.xpath(f"//tr[th[text()='{comparison}'] and td[text()='{outcome}']]")
    assert row, "no row for tacrolimus vs conventional, death"
    printed = row[0].xpath(".//span[contains(@data-src, '\"pooled_effects\"') and contains(@data-src, '\"hazard_ratio\"')]")
    assert [float(p.text) for p in printed] == [round(ref["hazard_ratio"], 2)]
    assert "s2026" in printed[0].get("data-src") and "77.70" not in doc.text_content()
    assert doc.xpath(f"//td[contains(., \"{SMALL_ARM}\")]")


def test_a_forest_plot_for_each_comparison_and_outcome_pooled_over_two_or_more_sites(doc, tables):
    het = tables["site_heterogeneity"]
    expected = {f"pooled-forest-{c}-{o}".replace("_", "-").lower() for c, o in zip(het["comparison"], het["outcome"], strict=True)}
    figures = doc.xpath("//figure")
    assert {f.get("id") for f in figures} == expected and len(expected) >= 6
    for (c, o), h in het.groupby(["comparison", "outcome"], sort=False):
        f = doc.xpath(f"//figure[@id='{f'pooled-forest-{c}-{o}'.replace('_', '-').lower()}']")[0]
        assert f.xpath("./img/@src")[0].startswith("data:image/svg+xml;base64,")
        sites = [s.text for s in f.xpath(".//span[contains(@data-src, '\"site_id\",')]")]
        assert sites == list(h["site_id"]), (c, o)   # one row per site with an estimate, in the table's order
        svg = base64.b64decode(f.xpath("./img/@src")[0].split(",", 1)[1]).decode()
        plotted = [t for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg) if t in SITES]
        assert sorted(plotted) == sorted(h["site_id"]), (c, o)   # the plot's site rows: each site once, no other


def test_no_digit_is_printed_without_a_source(doc):
    for el in doc.iter():
        if el.tag in ("style", "script") or not isinstance(el.tag, str):
            continue
        for text, holder in ((el.text, el), (el.tail, el.getparent())):  # a tail belongs to the parent
            if text and re.search(r"\d", text):
                marked = False
                while holder is not None:
                    if any(holder.get(a) is not None for a in ("data-src", "data-fixed", "data-label", "data-setting")):
                        marked = True
                        break
                    holder = holder.getparent()
                assert marked, f"{text!r} has a digit without a source"


def test_without_the_coordinator_tables_there_is_no_section():
    assert render_pooled({}) is None
