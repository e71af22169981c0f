"""Descriptive result tables: baseline characteristics (Tables 1-2), assessment-scale and HRCT changes
(Figures 2-4) and the safety summary (Supplementary Table 1). SciPy and matplotlib are imported by the step
(preloaded by the fork server), not by the definitions."""
import dagster as dg

from ..resources import StudyResource, WarehouseResource
from .checks import asset_check_specs, table_check_results
from .publish import asset_specs, image_markdown, save_figure, table_result, write_tables


@dg.multi_asset(specs=asset_specs("descriptive_tables", kinds={"sql", "scipy"},
                                  deps=["cohort", "prospective_cohort", "prospective_visits", "safety_events"]),
                check_specs=asset_check_specs("descriptive_tables"))
def descriptive_tables(context: dg.AssetExecutionContext, warehouse: WarehouseResource, study: StudyResource):
    from analytics import summaries
    from analytics.figures import scale_boxplots

    wh = warehouse.get()
    retro, prosp = wh.read_table("cohort"), wh.read_table("prospective_cohort")
    visits, events = wh.read_table("prospective_visits"), wh.read_table("safety_events")
    categories = list(study.concepts().domains["adverse_event_categories"])
    tables = summaries.descriptive_tables(retro, prosp, visits, events, categories)
    write_tables(wh, context.run.run_id, study, tables, {"table_set": "descriptive_tables"})
    png = scale_boxplots(visits, list(summaries.SCALE_MEASURES), "Assessment scales by visit, prospective cohort")
    path = save_figure(study, "scale_boxplots.png", png)
    context.log.info(f"descriptive tables written; figure {path}")
    extra = {"scale_changes": {"scale_boxplots": dg.MetadataValue.md(image_markdown(png, "scales")),
                               "figure": dg.MetadataValue.path(str(path))}}
    for name, frame in tables.items():
        yield table_result(name, frame, preview_rows=20, extra=extra.get(name))
    yield from table_check_results(context, wh, study)
