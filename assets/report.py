"""The study report: the paper's tables and figures regenerated from the warehouse, beside the
published numbers, as one self-contained HTML file and a PDF of it under REPORTS_DIR.

Thin: reads the study tables, calls ``report`` to render them, writes the files and records them
in the asset's metadata. Contributes its own Definitions (the asset and its resource), merged
into the service's in ``assets/definitions.py``.
"""

import base64
import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import dagster as dg

from report.inputs import DESCRIPTIVE_FIGURE_TABLES, POOLED_TABLES, REPORT_TABLES
from report.pdf import PdfError, PdfPrint, find_chromium
from report.suppression import DEFAULT_THRESHOLD, SmallCellPolicy

from .resources import STATE_DIR, WarehouseResource, env
from .study.automation import STUDY_AUTOMATION

REPORT_FILE = "study_report"
DRAWN_FILE = ".study_report_figures.json"  # the descriptive figures, drawn ahead by study_report_figures
PDF_MODES = ("auto", "required", "off")
# provenance is written beside the tables by each study asset; it is read, not an asset of its own.
REPORT_INPUTS = [name for name in REPORT_TABLES if name != "provenance"]
FIGURES_ASSET = "study_report_figures"


class ReportResource(dg.ConfigurableResource):
    """Where the study report is written and what it may show."""

    reports_dir: str = ""                           # empty = <state dir>/reports
    small_cell_threshold: int = DEFAULT_THRESHOLD   # counts 1 … threshold−1 are suppressed; 0 = off
    pdf: str = "auto"                               # auto (when a Chromium is found) | required | off
    chromium: str = ""                              # a path or command; empty = chromium on PATH

    def directory(self) -> Path:
        return Path(self.reports_dir or STATE_DIR / "reports")

    def policy(self) -> SmallCellPolicy:
        return SmallCellPolicy(self.small_cell_threshold)


def report_resources_from_env() -> dict[str, dg.ConfigurableResource]:
    return {"report": ReportResource(reports_dir=env("REPORTS_DIR", ""),
                                     small_cell_threshold=int(env("REPORT_SMALL_CELL_THRESHOLD", str(DEFAULT_THRESHOLD))),
                                     pdf=env("REPORT_PDF", "auto"), chromium=env("CHROMIUM", ""))}


def _write_atomically(path: Path, data: bytes) -> None:
    """A reader (or the UI's link) never sees half a report: write beside it, then rename."""
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def _start_pdf(context: dg.AssetExecutionContext, report: ReportResource,
               pdf_path: Path) -> tuple[PdfPrint | None, dict[str, dg.MetadataValue]]:
    """Chromium started on the PDF (to print the page once it is rendered), or why there is no PDF."""
    if report.pdf not in PDF_MODES:
        raise ValueError(f"REPORT_PDF must be one of {', '.join(PDF_MODES)}, not {report.pdf!r}")
    if report.pdf == "off":
        return None, {"pdf": dg.MetadataValue.text("not produced (REPORT_PDF=off)")}
    chromium = find_chromium(report.chromium)
    if chromium is None:
        message = "no Chromium found: install chromium or set CHROMIUM to a Chromium or Chrome binary"
        if report.pdf == "required":
            raise PdfError(message)
        context.log.warning(f"study report: HTML only, {message}")
        return None, {"pdf": dg.MetadataValue.text(f"not produced: {message}")}
    partial = pdf_path.with_name(pdf_path.name + ".partial")
    return PdfPrint(partial, chromium, name=f"{REPORT_FILE}.html"), {}


def _finish_pdf(printer: PdfPrint, page: bytes, pdf_path: Path) -> dict[str, dg.MetadataValue]:
    size = printer.print(page)
    os.replace(printer.pdf_path, pdf_path)
    return {"pdf_path": dg.MetadataValue.path(str(pdf_path)), "pdf_size_bytes": dg.MetadataValue.int(size),
            "pdf_link": dg.MetadataValue.url(pdf_path.resolve().as_uri())}


def _pdf(context: dg.AssetExecutionContext, report: ReportResource, html_path: Path) -> dict[str, dg.MetadataValue]:
    """The PDF of an HTML file already written (or why there is none)."""
    pdf_path = html_path.with_suffix(".pdf")
    printer, skipped = _start_pdf(context, report, pdf_path)
    if printer is None:
        return skipped
    with printer:
        return _finish_pdf(printer, html_path.read_bytes(), pdf_path)


@dg.asset(group_name="report", kinds={"svg"}, deps=list(DESCRIPTIVE_FIGURE_TABLES), automation_condition=STUDY_AUTOMATION)
def study_report_figures(context: dg.AssetExecutionContext, warehouse: WarehouseResource, report: ReportResource) -> dg.MaterializeResult:
    """The study report's figures drawn from the descriptive tables alone (Figures 2, 3A-C, 4 and S4): drawn as
    soon as those tables exist, beside comparative_effects on the other core, instead of after it in the report's
    step. The report uses them only under the same key (the tables' contents and the drawing code); otherwise it
    draws them itself."""
    from report.render import descriptive_figures, drawing_key

    wh = warehouse.get()
    tables = {name: wh.read_table(name) for name in DESCRIPTIVE_FIGURE_TABLES if wh.has_table(name)}
    drawn = descriptive_figures(tables)
    directory = report.directory()
    directory.mkdir(parents=True, exist_ok=True)
    payload = {"key": drawing_key(tables),
               "figures": {name: None if svg is None else base64.b64encode(svg).decode() for name, svg in drawn.items()}}
    _write_atomically(directory / DRAWN_FILE, json.dumps(payload).encode())
    context.log.info(f"{sum(svg is not None for svg in drawn.values())} descriptive figures drawn for the study report")
    return dg.MaterializeResult(metadata={"path": dg.MetadataValue.path(str(directory / DRAWN_FILE)),
                                          "figures": dg.MetadataValue.int(sum(svg is not None for svg in drawn.values()))})


def _drawn(directory: Path, tables: dict[str, Any]) -> dict[str, bytes | None] | None:
    """The descriptive figures study_report_figures drew, if drawn from these very tables by this code."""
    from report.render import drawing_key

    try:
        payload = json.loads((directory / DRAWN_FILE).read_text())
    except (OSError, ValueError):
        return None
    if payload.get("key") != drawing_key(tables):
        return None
    return {name: None if svg is None else base64.b64decode(svg) for name, svg in payload["figures"].items()}


@dg.asset(group_name="report", kinds={"html", "pdf"}, deps=[*REPORT_INPUTS, FIGURES_ASSET], automation_condition=STUDY_AUTOMATION)
def study_report(context: dg.AssetExecutionContext, warehouse: WarehouseResource, report: ReportResource) -> dg.MaterializeResult:
    """The study report: every table and figure of the paper (flowcharts S1/S3, Tables 1-2, Figures 1-4,
    Supplementary Figures S2/S4 and Table 1), a forest plot of every comparison and analysis, propensity
    diagnostics, the methods as run and a published-vs-reproduced table, as one self-contained HTML file
    and its PDF under REPORTS_DIR, with small counts suppressed. Chromium starts before the report is
    rendered and prints it once it is (report/pdf.py, ``PdfPrint``)."""
    from report.render import render_report  # Jinja and matplotlib: the step's (preloaded by the fork server)

    directory = report.directory()
    directory.mkdir(parents=True, exist_ok=True)
    html_path = directory / f"{REPORT_FILE}.html"
    printer, pdf_metadata = _start_pdf(context, report, html_path.with_suffix(".pdf"))
    try:
        wh = warehouse.get()
        tables = {name: wh.read_table(name) for name in (*REPORT_TABLES, *POOLED_TABLES) if wh.has_table(name)}
        policy = report.policy()
        drawn = _drawn(directory, tables)
        rendered = render_report(tables, generated_at=datetime.now(timezone.utc), policy=policy, drawn=drawn)
        html = rendered.html.encode("utf-8")
        _write_atomically(html_path, html)
        if printer is not None:
            pdf_metadata = _finish_pdf(printer, html, html_path.with_suffix(".pdf"))
    finally:
        if printer is not None:
            printer.close()
    metadata: dict[str, dg.MetadataValue] = {
        "path": dg.MetadataValue.path(str(html_path)),
        "link": dg.MetadataValue.url(html_path.resolve().as_uri()),
        "size_bytes": dg.MetadataValue.int(len(html)),
        "sha256": dg.MetadataValue.text(hashlib.sha256(html).hexdigest()),
        "small_cell_threshold": dg.MetadataValue.int(policy.threshold),
        "summary": dg.MetadataValue.md(rendered.summary_markdown),
        "descriptive_figures": dg.MetadataValue.text("drawn ahead (study_report_figures)" if drawn else "drawn here"),
        **pdf_metadata,
    }
    context.log.info(f"study report written to {html_path} ({len(html)} bytes)")
    return dg.MaterializeResult(metadata=metadata)


def report_definitions() -> dg.Definitions:
    """The report's part of the service's Definitions: its asset and its resource (from the environment)."""
    return dg.Definitions(assets=[study_report_figures, study_report], resources=report_resources_from_env())
