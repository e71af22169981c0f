"""The study report, end to end on a small synthetic hospital: NDJSON -> every study asset -> the
study_report asset. Every number the HTML prints is read back and compared with the warehouse
table it names (the expected values come from the warehouse and published.yaml, never from this
file); the PDF has a page per section or a few more; headless Chromium finds every section."""
from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pytest
import yaml
from lxml import html as lxml_html

from assets.definitions import all_assets, defs
from assets.report import DRAWN_FILE, ReportResource, _drawn, _pdf, study_report, study_report_figures
from assets.resources import FhirServerResource, StudyResource, WarehouseResource
from etl.warehouse import Warehouse
from report.pdf import PdfError, PdfPrint, find_chromium, html_to_pdf
from report.published import PublishedItem, agreement
from report.render import REPORT_TABLES, SECTION_IDS, MissingTables, render_report
from report.sections import ReportBuilder
from report.suppression import Mark, SmallCellPolicy
from synthetic.hospital import HospitalParams, generate_hospital
from synthetic.load import write_ndjson
from tests.paths import ROOT

ARTIFACTS = ROOT / "test-artifacts"
PUBLISHED_YAML = ROOT / "report" / "published.yaml"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
# Small enough to run in seconds, big enough that both prospective groups and every comparison have
# patients, and that some counts fall below the threshold and some do not.
HOSPITAL = HospitalParams(seed=7, n_retrospective=50, n_prospective_enrolled=20, n_noise=5, attrition_per_reason=1)
THRESHOLD = 5
SOURCED = ("data-src", "data-published", "data-setting", "data-fixed", "data-label")


@dataclass
class Built:
    tables: dict[str, pd.DataFrame]
    html_path: Path
    pdf_path: Path
    doc: Any
    metadata: dict[str, Any]
    started: datetime


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Built:
    base = tmp_path_factory.mktemp("report")
    write_ndjson(generate_hospital(HOSPITAL), base / "ndjson")
    url = f"sqlite:///{base / 'w.sqlite'}"
    started = datetime.now(timezone.utc)
    result = dg.materialize([*all_assets, study_report_figures, study_report], resources={
        "fhir": FhirServerResource(sync_mode="ndjson", ndjson_dir=str(base / "ndjson")),
        "warehouse": WarehouseResource(url=url),
        "study": StudyResource(pseudonym_key="test-pseudonym-key-0123456789", data_cutoff="2026-01-01",
                               bootstrap_replicates=24, figures_dir=str(base / "figures")),
        "report": ReportResource(reports_dir=str(base / "reports"), small_cell_threshold=THRESHOLD),
    })
    assert result.success
    event = next(e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey("study_report"))
    metadata = {k: v.value for k, v in event.materialization.metadata.items()}
    wh = Warehouse(url)
    tables = {name: wh.read_table(name) for name in REPORT_TABLES}
    html_path = Path(metadata["path"])
    return Built(tables, html_path, Path(metadata["pdf_path"]), lxml_html.fromstring(html_path.read_bytes()), metadata,
                 started)


# ---------------------------------------------------------------- an independent reading of a locator
def locate(tables: dict[str, pd.DataFrame], spec: dict[str, Any]) -> Any:
    """The warehouse value a ``data-src`` names, read here without the report's code."""
    if "ratio" in spec:
        return 100 * float(locate(tables, spec["ratio"]["numerator"])) / float(locate(tables, spec["ratio"]["denominator"]))
    frame = tables[spec["table"]]
    if "join" in spec:
        j = spec["join"]
        frame = frame.merge(tables[j["table"]][[j["on"], *j["columns"]]], on=j["on"], how="left")
    for column, value in spec["where"].items():
        frame = frame[frame[column].isna()] if value is None else frame[frame[column].astype(str) == str(value)]
    values = frame[spec["column"]]
    agg = spec.get("agg")
    if agg == "ess":
        w = values.astype(float)
        return w.sum() ** 2 / (w ** 2).sum() if len(w) else math.nan
    if agg == "same":
        assert values.nunique(dropna=False) == 1, spec
        return values.iloc[0]
    if agg:
        return {"sum": values.sum, "count": lambda: len(values), "nunique": values.nunique, "min": values.min,
                "max": values.max, "median": values.median}[agg]()
    assert len(values) == 1, (spec, len(values))
    value = values.iloc[0]
    for key in spec.get("json", []):
        value = json.loads(value) if isinstance(value, str) else value
        value = value.get(key) if isinstance(value, dict) else (value[key] if isinstance(value, list) else None)
    return value


def missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def check_number(text: str, value: Any, where: str) -> None:
    """The printed text is the value rounded to the decimals printed (or a dash for a missing value)."""
    if text in ("–", "not estimable"):
        assert missing(value), where
        return
    if text == "<0.001":
        assert float(value) < 0.001, where
        return
    if text in ("∞", "−∞"):
        assert math.isinf(float(value)), where
        return
    decimals = len(text.split(".")[1]) if "." in text else 0
    assert abs(float(text) - float(value)) <= 0.5 * 10 ** -decimals + 1e-9, (where, text, value)


def check_count(text: str, value: Any, where: str) -> None:
    if text == "–":
        assert missing(value), where
        return
    assert int(text) == int(float(value)), (where, text, value)
    assert not 0 < int(text) < THRESHOLD, f"{where}: a count of {text} is printed unsuppressed"


def check_suppressed(el: Any, kind: str, text: str, value: Any, tables: dict[str, pd.DataFrame], where: str) -> None:
    """A hidden cell shows its mark's label; a primary one hides a small count, a small-group one a statistic of a
    small group (its n is named in data-count); a secondary one hides a count that would reveal a small one."""
    mark = Mark(el.get("data-suppressed"))
    assert text == {Mark.PRIMARY: f"<{THRESHOLD}", Mark.SECONDARY: "*", Mark.SMALL_GROUP: f"n<{THRESHOLD}"}[mark], where
    if mark is Mark.PRIMARY and kind == "count":
        assert int(float(value)) < THRESHOLD, where
    if mark is Mark.PRIMARY and kind == "text":  # an "n (%)" summary
        assert int(re.match(r"\d+", str(value)).group()) < THRESHOLD, where
    if mark is Mark.SMALL_GROUP:
        assert int(float(locate(tables, json.loads(el.get("data-count"))))) < THRESHOLD, where


def sourced(el: Any) -> bool:
    while el is not None:
        if any(el.get(a) is not None for a in SOURCED):
            return True
        el = el.getparent()
    return False


# ---------------------------------------------------------------- the HTML
def test_every_number_printed_is_the_warehouse_value_it_names(built):
    checked = 0
    for el in built.doc.xpath("//*[@data-src]"):
        spec, kind, text = json.loads(el.get("data-src")), el.get("data-kind"), el.text_content()
        value = locate(built.tables, spec)
        where = f"{el.get('data-src')} printed {text!r}"
        if el.get("data-suppressed"):
            check_suppressed(el, kind, text, value, built.tables, where)
        elif kind == "count":
            check_count(text, value, where)
        elif kind in ("number", "p"):
            check_number(text, value, where)
        elif kind == "text":
            assert text == ("–" if missing(value) else str(value)), where
            count = re.match(r"(\d+) \(", text)  # an "n (%)" summary
            assert not (count and 0 < int(count.group(1)) < THRESHOLD), f"{where}: printed unsuppressed"
        else:
            pytest.fail(f"unknown data-kind {kind}: {where}")
        checked += 1
    assert checked > 500


def test_no_digit_is_printed_without_a_source(built):
    """A number without data-src (or a published, setting, fixed or label marker) fails here: whoever adds a
    number to a template must say where it comes from."""
    loose = []
    for el in built.doc.body.iter():
        if el.tag in ("style", "script") or not isinstance(el.tag, str):
            continue
        for text, owner in ((el.text, el), (el.tail, el.getparent())):
            if text and re.search(r"\d", text) and not sourced(owner):
                loose.append(text.strip()[:60])
    assert loose == [], loose


def test_every_section_has_sourced_numbers_and_the_ids_match_the_template(built):
    sections = built.doc.xpath("//section[contains(@class, 'page')]")
    assert tuple(s.get("id") for s in sections) == SECTION_IDS
    for section in sections:
        if section.get("id") not in ("figure-s1", "figure-s3"):  # the flowcharts are figures only
            assert section.xpath(".//*[@data-src]"), section.get("id")
        assert section.xpath(".//h2|.//h3"), section.get("id")
    assert len(built.doc.xpath("//figure/img[starts-with(@src, 'data:image/svg+xml;base64,')]")) >= 20


def test_every_published_number_is_printed_as_the_paper_prints_it(built):
    items = {item["id"]: item for item in yaml.safe_load(PUBLISHED_YAML.read_text())["items"]}
    shown = built.doc.xpath("//*[@data-published]")
    assert {el.get("data-published") for el in shown} == set(items)
    for el in shown:
        item, field = items[el.get("data-published")], el.get("data-field")
        expected = item["published"][field] if field in item["published"] else item[field]
        assert el.text_content() == expected, (item["id"], field)


def test_the_settings_printed_are_the_settings_used(built):
    threshold = {el.text_content() for el in built.doc.xpath("//*[@data-setting='small_cell_threshold']")}
    assert threshold == {str(THRESHOLD)} and built.metadata["small_cell_threshold"] == THRESHOLD
    (generated,) = {el.text_content() for el in built.doc.xpath("//*[@data-setting='generated_at']")}
    moment = datetime.strptime(generated, "%Y-%m-%d %H:%M UTC").replace(tzinfo=timezone.utc)
    assert built.started - timedelta(minutes=1) <= moment <= datetime.now(timezone.utc)


def test_small_counts_are_suppressed_and_the_report_says_so(built):
    marks = {el.get("data-suppressed") for el in built.doc.xpath("//*[@data-suppressed]")}
    assert Mark.PRIMARY.value in marks and marks <= {m.value for m in Mark}
    statement = " ".join(built.doc.get_element_by_id("suppression").text_content().split())
    assert f"<{THRESHOLD}" in statement and "review them before the report leaves the hospital" in statement


def test_agreement_never_gives_away_a_suppressed_count(built):
    for row in built.doc.xpath("//table[contains(@class, 'published')]//tbody/tr"):
        reproduced, verdict = row[3], row[4].text_content()
        if reproduced.xpath(".//*[@data-suppressed]"):
            assert verdict == "not shown (small count)"


def test_the_report_holds_no_patient_key(built):
    text = built.html_path.read_text()
    keys = set(built.tables["cohort"]["patient_key"]) | set(built.tables["iptw_weights"]["patient_key"])
    assert keys and not any(key in text for key in keys)


def test_the_html_needs_no_network(built):
    refs = built.doc.xpath("//@src|//@href")
    assert refs and all(r.startswith(("data:", "#")) for r in refs)


# ---------------------------------------------------------------- the files and the metadata
def test_metadata_records_the_files_and_the_headline(built):
    assert built.metadata["size_bytes"] == built.html_path.stat().st_size
    assert built.metadata["pdf_size_bytes"] == built.pdf_path.stat().st_size
    assert built.metadata["link"] == built.html_path.resolve().as_uri()
    main = built.doc.xpath("//table[contains(@class, 'headline')]//tbody/tr[1]/td")
    assert "Tacrolimus vs conventional" in built.metadata["summary"]
    assert " | ".join(td.text_content() for td in main) in built.metadata["summary"]


def test_the_pdf_has_a_page_for_each_section_and_not_many_more(built):
    from pypdf import PdfReader

    pages = len(PdfReader(built.pdf_path).pages)
    sections = len(built.doc.xpath("//section[contains(@class, 'page')]"))
    assert sections <= pages <= 2.5 * sections


def _pdf_content(path: Path) -> bytes:
    """A PDF without what changes from one print to the next: its dates, and the browser's DOM node ids that
    name the tagged structure's elements (their numbering depends on the browser's session, not the page)."""
    return re.sub(rb"\(node\d+\)", b"(node)", re.sub(rb"/(CreationDate|ModDate) \(D:[^)]*\)", b"", path.read_bytes()))


def test_the_pdf_chromium_printed_while_the_report_rendered_is_the_pdf_of_the_html_file(built, tmp_path):
    """The asset starts Chromium before rendering and serves it the page (report/pdf.py, PdfPrint); printing
    the HTML file it wrote gives the same PDF."""
    from_file = tmp_path / "from_file.pdf"
    html_to_pdf(built.html_path, from_file, find_chromium())
    assert _pdf_content(built.pdf_path) == _pdf_content(from_file)


def test_a_print_started_early_stops_its_browser_when_the_page_never_comes(tmp_path):
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium")
    printer = PdfPrint(tmp_path / "never.pdf", chromium)
    printer.close()  # as the asset does when rendering fails
    assert printer._process.poll() is not None and not (tmp_path / "never.pdf").exists()


def test_the_figures_drawn_ahead_are_the_figures_the_report_would_draw(built):
    """study_report_figures draws the descriptive figures in a step of its own; the report that uses them is the
    report drawn in one piece, byte for byte."""
    assert built.metadata["descriptive_figures"] == "drawn ahead (study_report_figures)"
    drawn = _drawn(built.html_path.parent, built.tables)
    assert drawn is not None and set(drawn) == {"figure_2", "figure_3", "figure_s4", "figure_4"}
    when, policy = datetime(2026, 1, 2, 3, 4, tzinfo=timezone.utc), SmallCellPolicy(THRESHOLD)
    assert (render_report(built.tables, generated_at=when, policy=policy, drawn=drawn).html
            == render_report(built.tables, generated_at=when, policy=policy).html)


def test_figures_drawn_from_other_tables_are_not_reused(built, tmp_path):
    (tmp_path / DRAWN_FILE).write_bytes((built.html_path.parent / DRAWN_FILE).read_bytes())
    assert _drawn(tmp_path, built.tables) is not None
    changed = {**built.tables, "hrct_changes": built.tables["hrct_changes"].iloc[1:]}
    assert _drawn(tmp_path, changed) is None
    assert _drawn(tmp_path / "nothing_drawn", built.tables) is None


def test_missing_tables_are_named():
    with pytest.raises(MissingTables, match="cohort_attrition"):
        render_report({}, generated_at=datetime.now(timezone.utc))


def test_without_chromium_the_pdf_is_skipped_with_a_reason_or_required(tmp_path):
    context = dg.build_asset_context()
    page = tmp_path / "r.html"
    page.write_text("<p>x</p>")
    skipped = _pdf(context, ReportResource(chromium=str(tmp_path / "no-such-browser")), page)
    assert skipped["pdf"].value.startswith("not produced: no Chromium found")
    with pytest.raises(PdfError, match="no Chromium found"):
        _pdf(context, ReportResource(chromium=str(tmp_path / "no-such-browser"), pdf="required"), page)
    assert _pdf(context, ReportResource(pdf="off"), page)["pdf"].value == "not produced (REPORT_PDF=off)"


def test_the_report_follows_the_study_tables_in_the_definitions():
    graph = defs.resolve_asset_graph()
    parents = {k.to_user_string() for k in graph.get(dg.AssetKey("study_report")).parent_keys}
    assert {"effect_estimates", "baseline_characteristics", "survival_curves", "scale_changes", "hrct_changes",
            "safety_summary", "cohort_attrition"} <= parents


# ---------------------------------------------------------------- suppression rules on tiny inputs
def test_a_small_count_is_hidden_and_so_is_the_cell_that_would_reveal_it():
    policy = SmallCellPolicy(5)
    assert policy.partition([3, 7]) == [Mark.PRIMARY, Mark.SECONDARY]
    assert policy.partition([3, 2, 9]) == [Mark.PRIMARY, Mark.PRIMARY, None]
    assert policy.partition([0, 10]) == [None, None]
    assert policy.partition([8], hidden_remainder=2) == [Mark.SECONDARY]  # 8 of 10: the 2 without the event
    assert policy.partition([8], hidden_remainder=0) == [None]
    assert SmallCellPolicy(0).partition([1, 2]) == [None, None]


def test_a_group_smaller_than_the_threshold_shows_no_statistics_and_a_lone_small_level_takes_another_with_it():
    def row(variable, level, group, summary):
        return {"cohort": "prospective", "variable": variable, "level": level, "group": group, "summary": summary,
                "p_value": 0.5, "test": "welch_t", "smd": 0.1}

    baseline = pd.DataFrame([
        row("n", None, "combination", "12"), row("n", None, "tacrolimus", "3"),
        row("age", None, "combination", "50.0 ± 2.0"), row("age", None, "tacrolimus", "49.0 ± 1.0"),
        row("sex", "female", "combination", "9 (75.0%)"), row("sex", "female", "tacrolimus", "2 (66.7%)"),
        row("sex", "male", "combination", "3 (25.0%)"), row("sex", "male", "tacrolimus", "1 (33.3%)"),
    ])
    builder = ReportBuilder({"baseline_characteristics": baseline, "effect_estimates": pd.DataFrame(
        columns=["analysis", "comparison", "outcome"])}, SmallCellPolicy(5), ())
    table = builder.baseline_table("prospective", ("combination", "tacrolimus"))
    shown = {row[0].strip(): [getattr(c, "text", c) for c in row[1:3]] for row in table.rows}
    assert shown == {"Patients": ["12", "<5"], "Age (years)": ["50.0 ± 2.0", "n<5"], "Sex": ["", ""],
                     "female": ["*", "n<5"], "male": ["<5", "n<5"]}


def test_agreement_judges_direction_and_significance_not_equality():
    def item(kind, published, reproduced=None):
        return PublishedItem("x", "s", "w", kind, published, reproduced or {"table": "t"})

    hr = item("hr", {"hr": "0.330", "lower": "0.161", "upper": "0.675"})
    assert agreement(hr, {"hr": 0.40, "lower": 0.23, "upper": 0.69}) == "published HR inside reproduced CI"
    assert agreement(hr, {"hr": 0.80, "lower": 0.50, "upper": 1.30}) == "published HR outside reproduced CI"
    assert agreement(hr, {"hr": math.nan, "lower": math.nan, "upper": math.nan}) == "not estimable"
    assert agreement(item("p", {"value": "0.002"}), {"value": 0.03}) == "same significance"
    assert agreement(item("p", {"value": "0.002"}), {"value": 0.20}) == "different significance"
    assert agreement(item("p", {"value": "n.s."}), {"value": 0.20}) == "same significance"
    assert agreement(item("p", {"value": "<0.05"}), {"value": 0.049}) == "same significance"
    assert agreement(item("count", {"value": "93"}), {"value": 93}) == "equal"
    assert agreement(PublishedItem("x", "s", "w", "count", {"value": "3"}, None, "why"), {}) == "not comparable"


# ---------------------------------------------------------------- in a browser
@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="Debian's chromium and chromium-driver are not installed")
def test_chromium_opens_the_report_and_finds_every_section(built, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from tests.assets.test_ui_browser import FLAGS

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,1400"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        driver.get(built.html_path.resolve().as_uri())
        for section_id in SECTION_IDS:
            section = driver.find_element("id", section_id)
            driver.execute_script("arguments[0].scrollIntoView();", section)
            assert section.is_displayed() and section.find_element("css selector", "h2, h3").text, section_id
            assert section.screenshot(str(ARTIFACTS / f"report-{section_id}.png")), section_id
        images = driver.execute_script("return [...document.images].map(i => i.complete && i.naturalWidth > 0)")
        assert images and all(images)  # every embedded SVG decodes
    finally:
        driver.quit()


@pytest.mark.parametrize(("fig_id", "cohort", "comparison"), [
    ("figure-s1-plot", "retrospective", "tacrolimus_vs_conventional"),
    ("figure-s3-plot", "prospective", "combination_vs_tacrolimus")])
def test_the_flowcharts_draw_the_warehouse_counts(built, fig_id, cohort, comparison):
    """The numbers drawn in the S1 and S3 flowcharts (text in the SVG) are the attrition table's and the analysed
    groups' sizes, read back here from the warehouse tables."""
    import base64
    import html

    img = built.doc.get_element_by_id(fig_id).find("img")
    svg = base64.b64decode(img.get("src").split(",", 1)[1]).decode()
    lines = [html.unescape(t).strip() for t in re.findall(r"<text[^>]*>(.*?)</text>", svg, re.S)]
    remaining = sorted(int(n) for line in lines for n in re.findall(r"n = (\d+)", line))
    excluded = sorted(int(m.group(1)) for line in lines if (m := re.search(r":\s*(\d+)$", line)))
    attrition = built.tables["cohort_attrition"]
    steps = attrition[attrition["cohort"] == cohort].sort_values("step")
    shown = steps.iloc[1:][steps.iloc[1:]["n_excluded"] > 0]
    effects = built.tables["effect_estimates"]
    row = effects[(effects["analysis"] == "primary") & (effects["comparison"] == comparison)
                  & (effects["outcome"] == "death")].iloc[0]
    assert remaining == sorted([int(steps.iloc[0]["n_remaining"]), *shown["n_remaining"].astype(int),
                                int(row["n_treated"]), int(row["n_control"])])
    assert excluded == sorted(shown["n_excluded"].astype(int))


@pytest.mark.parametrize(("fig_id", "comparison", "outcome"), [
    ("figure-1a", "tacrolimus_vs_conventional", "death"), ("figure-1b", "tacrolimus_vs_conventional", "relapse"),
    ("figure-3d", "combination_vs_tacrolimus", "death")])
def test_the_numbers_at_risk_drawn_under_the_curves_are_the_warehouse_curves(built, fig_id, comparison, outcome):
    """The risk table under a Kaplan-Meier figure (the 8-point text of the SVG) holds, per group and every 60 days,
    the warehouse curve's number at risk on that day (the first time at or after it; 0 after the last)."""
    import base64

    img = built.doc.get_element_by_id(fig_id).find("img")
    svg = base64.b64decode(img.get("src").split(",", 1)[1]).decode()
    drawn = sorted(int(t) for t in re.findall(r"<text[^>]*font-size: 8px[^>]*>\s*(\d+)\s*</text>", svg))
    curves = built.tables["survival_curves"]
    curves = curves[(curves["analysis"] == "primary") & (curves["comparison"] == comparison)
                    & (curves["outcome"] == outcome)]
    expected = []
    for _, c in curves.groupby("group"):
        for day in range(0, 366, 60):
            later = c[c["time_days"] >= day].sort_values("time_days")
            expected.append(round(float(later["n_at_risk"].iloc[0])) if len(later) else 0)
    assert drawn and drawn == sorted(expected)


def test_with_the_coordinator_tables_the_report_gains_the_pooled_section(built):
    """A hospital that also coordinates holds pooled_effects, meta_analysis and site_heterogeneity: the report adds
    their section (tests/report/test_pooled_section.py reads its numbers back); without them it is unchanged."""
    from tests.report.test_pooled_section import pooled_tables

    rendered = render_report({**built.tables, **pooled_tables()}, generated_at=built.started,
                             policy=SmallCellPolicy(THRESHOLD))
    assert rendered.section_ids == (*SECTION_IDS, "pooled")
    doc = lxml_html.fromstring(rendered.html)
    assert doc.xpath("//section[@id='pooled']//figure") and doc.xpath("//ol[@class='toc']//a[@href='#pooled']")
    assert "pooled" not in render_report(built.tables, generated_at=built.started).section_ids
