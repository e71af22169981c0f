"""The study report as one self-contained HTML document: Jinja2 templates filled with the sections
that ``sections.ReportBuilder`` builds from the warehouse tables. Pure: tables in, text out."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping

import jinja2
import pandas as pd

from . import cells, figures
from . import labels as L
from .inputs import DESCRIPTIVE_FIGURE_TABLES, POOLED_TABLES, REPORT_TABLES
from .pooled import SECTION_ID as POOLED_SECTION
from .pooled import pooled_section
from .published import load_published
from .sections import MAIN, PROSPECTIVE_COMPARISON, RETRO, Figure, ReportBuilder, Table, figure_2, figure_2_svg
from .suppression import SmallCellPolicy

# The warehouse tables the report reads (report/inputs.py); the coordinator's tables when present.
OPTIONAL_TABLES = POOLED_TABLES
DEFAULT_POLICY = SmallCellPolicy()
TITLE = "IIM-ILD study report: the paper's tables and figures, reproduced from this hospital's data"

_ENV = jinja2.Environment(loader=jinja2.PackageLoader("report", "templates"), autoescape=True,
                          undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


class MissingTables(ValueError):
    pass


@dataclass(frozen=True)
class RenderedReport:
    html: str
    summary_markdown: str
    section_ids: tuple[str, ...]


def _plain(part: Any) -> str:
    if isinstance(part, (list, tuple)):
        return "".join(_plain(p) for p in part)
    return part.text if isinstance(part, cells.Cell) else str(part)


def table_markdown(table: Table) -> str:
    """A table's text as markdown (the Dagster UI's summary): the same strings the report prints."""
    lines = ["| " + " | ".join(table.header) + " |", "|" + "---|" * len(table.header)]
    lines += ["| " + " | ".join(_plain(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def render_report(tables: Mapping[str, pd.DataFrame], *, generated_at: datetime,
                  policy: SmallCellPolicy = DEFAULT_POLICY, drawn: Mapping[str, bytes | None] | None = None) -> RenderedReport:
    """The report. ``drawn``: the descriptive figures as ``descriptive_figures`` drew them from these tables
    (by another step, earlier); drawn here when not given."""
    missing = [t for t in REPORT_TABLES if t not in tables]
    if missing:
        raise MissingTables(f"the study report needs the warehouse tables {', '.join(missing)}: materialize the study "
                            f"assets first (dagster asset materialize -w workspace.yaml --select '*')")
    drawn = drawn if drawn is not None else descriptive_figures(tables)
    paper, published = load_published()
    b = ReportBuilder(tables, policy, published)
    forest_figure, forest_table = b.forest()
    headline = b.headline()
    sections: dict[str, Any] = {
        "methods": b.methods(),
        "figure_s1": b.flowchart("figure-s1-plot", RETRO, "Supplementary Figure S1: retrospective cohort", MAIN),
        "table_1": b.baseline_table(RETRO, ("tacrolimus", "conventional")),
        "figure_1": [f for f in (b.km_figure("figure-1a", "Figure 1A: survival", MAIN, "death"),
                                 b.km_figure("figure-1b", "Figure 1B: relapse", MAIN, "relapse")) if f],
        "figure_s2": [f for f in (b.km_figure(f"figure-s2-{c.split('_vs_')[1].lower()}-{o}",
                                              f"{L.COMPARISONS[c]}: {L.OUTCOMES[o]}", c, o)
                                  for c in ("tacrolimus_vs_CTX", "tacrolimus_vs_MTX", "tacrolimus_vs_AZA")
                                  for o in ("death", "relapse")) if f],
        "forest": {"figure": forest_figure, "table": forest_table},
        "diagnostics": b.diagnostics(),
        "figure_s3": b.flowchart("figure-s3-plot", "prospective", "Supplementary Figure S3: prospective cohort",
                                 PROSPECTIVE_COMPARISON),
        "table_2": b.baseline_table("prospective", ("combination", "tacrolimus")),
        "figure_2": {"figure": figure_2(b, drawn["figure_2"]), "table": b.scale_table(("all",), tuple(L.SCALES), between=False)},
        "figure_3": {
            "figure": Figure("figure-3abc", "Figure 3A-C: scales, combination vs tacrolimus", drawn["figure_3"]),
            "table": b.scale_table(("combination", "tacrolimus"), L.FIGURE_3_SCALES, between=True),
            "km": [f for f in (b.km_figure("figure-3d", "Figure 3D: survival", PROSPECTIVE_COMPARISON, "death"),
                               b.km_figure("figure-3e", "Figure 3E: respiratory-related relapse", PROSPECTIVE_COMPARISON,
                                           "resp_relapse")) if f],
        },
        "figure_s4": {
            "figure": Figure("figure-s4-plot", "Supplementary Figure S4", drawn["figure_s4"]),
            "table": b.scale_table(("combination", "tacrolimus"), L.FIGURE_S4_SCALES, between=True),
        },
        "figure_4": {"figure": Figure("figure-4-plot", "Figure 4A-E: HRCT scores", drawn["figure_4"]),
                     "table": b.hrct_table(("combination", "tacrolimus"))},
        "table_s1": {"prospective": b.safety_table("prospective", ("combination", "tacrolimus")),
                     "retrospective": b.safety_table(RETRO, ("tacrolimus", "conventional"))},
        "published": b.published_table(),
        "pooled": pooled_section(tables),  # only where the warehouse holds the coordinator's tables (report/pooled.py)
    }
    html = _ENV.get_template("report.html.j2").render(
        title=TITLE, paper=paper, generated_at=cells.setting(generated_at.strftime("%Y-%m-%d %H:%M UTC"), "generated_at"),
        threshold=cells.setting(policy.threshold, "small_cell_threshold"), suppression_active=policy.active,
        headline=headline, s=sections, labels=L)
    summary = "\n\n".join([f"**{TITLE}**", table_markdown(headline),
                           f"Counts below {policy.threshold} are suppressed." if policy.active else "No small-cell suppression."])
    return RenderedReport(html, summary, tuple(SECTION_IDS) + ((POOLED_SECTION,) if sections["pooled"] else ()))


def descriptive_figures(tables: Mapping[str, pd.DataFrame]) -> dict[str, bytes | None]:
    """The figures drawn from the descriptive tables alone (``DESCRIPTIVE_FIGURE_TABLES``: no effect estimate, no
    suppression setting): Figures 2, 3A-C and 4 and Supplementary Figure S4, about half the report's drawing.
    The service draws them in a step of their own beside comparative_effects (assets/report.py)."""
    groups = ("combination", "tacrolimus")
    return {"figure_2": figure_2_svg(tables.get("prospective_visits")),
            "figure_3": figures.group_changes(tables["scale_changes"], L.FIGURE_3_SCALES, L.SCALES, groups,
                                              "Figure 3A-C: change by group", L.GROUPS),
            "figure_s4": figures.group_changes(tables["scale_changes"], L.FIGURE_S4_SCALES, L.SCALES, groups,
                                               "Supplementary Figure S4: change by group", L.GROUPS),
            "figure_4": figures.hrct_panels(tables["hrct_changes"], L.HRCT, groups, L.GROUPS)}


# What the descriptive figures are drawn with, beside their tables: a drawing keyed by an older version is not reused.
_DRAWING_CODE = ("report/figures.py", "report/sections.py", "report/render.py", "report/labels.py", "analytics/figures.py")


def drawing_key(tables: Mapping[str, pd.DataFrame]) -> str:
    """What the descriptive figures depend on: their tables' contents, the drawing code and matplotlib's version.
    A drawing is reused only under the same key, so reusing one cannot change the report."""
    import matplotlib

    digest = hashlib.sha256(matplotlib.__version__.encode())
    root = Path(__file__).resolve().parent.parent
    for source in _DRAWING_CODE:
        digest.update((root / source).read_bytes())
    for name in DESCRIPTIVE_FIGURE_TABLES:
        frame = tables.get(name)
        digest.update(name.encode())
        if frame is not None:
            digest.update(repr(list(frame.dtypes.astype(str).items())).encode())
            digest.update(frame.to_csv(index=True).encode())
    return digest.hexdigest()


# The sections of the document, in order (their element ids; each starts a printed page).
SECTION_IDS = ("summary", "methods", "figure-s1", "table-1", "figure-1", "figure-s2", "forest", "diagnostics",
               "figure-s3", "table-2", "figure-2", "figure-3", "figure-s4", "figure-4", "table-s1", "published")


POOLED_TITLE = "IIM-ILD consortium report: the study's comparisons pooled across the hospitals"


def render_pooled_page(tables: Mapping[str, pd.DataFrame], *, generated_at: datetime) -> str | None:
    """The pooled section as a self-contained HTML document (the coordinator's ``pooled_report``), or None
    without the coordinator's tables: the same section the study report includes, so one template says it."""
    section = pooled_section(tables)
    if section is None:
        return None
    return _ENV.get_template("pooled_page.html.j2").render(
        title=POOLED_TITLE, pooled=section,
        generated_at=cells.setting(generated_at.strftime("%Y-%m-%d %H:%M UTC"), "generated_at"))


def render_pooled(tables: Mapping[str, pd.DataFrame]) -> str | None:
    """The pooled section alone (the coordinator's tables in, an HTML fragment out), or None without those tables:
    what the study report includes, for a coordinator's own page or a test."""
    section = pooled_section(tables)
    return None if section is None else _ENV.get_template("pooled.html.j2").render(pooled=section)
