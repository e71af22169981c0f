"""Descriptive result tables: baseline characteristics (Tables 1-2), assessment-scale and HRCT changes
(Figures 2-4) and the safety summary (Supplementary Table 1)."""
import base64
from pathlib import Path

import dagster as dg
import pandas as pd

from analytics import summaries
from analytics.figures import scale_boxplots

from .automation import STUDY_AUTOMATION, STUDY_FRESHNESS
from .dictionary import DICTIONARY
from .metadata import table_metadata
from .provenance import record_provenance
from .resources import StudyResource, WarehouseResource
from .views import refresh_views

BASELINE_LABS = ["ferritin", "esr", "crp", "creatine_kinase", "hrct_score"]
_TABLES = {
    "baseline_characteristics": "Table 1 (retrospective) and Table 2 (prospective): mean ± SD or median [IQR], n (%), "
                                "with the p-value of the test shown and the SMD.",
    "scale_changes": "Assessment scales and glucocorticoid dose at each prospective visit: median [IQR], paired "
                     "Wilcoxon vs baseline with Bonferroni, Mann-Whitney between the groups' changes.",
    "hrct_changes": "HRCT total and component scores, baseline vs 12 months in survivors: within-group paired "
                    "Wilcoxon and Mann-Whitney on the change between groups.",
    "safety_summary": "Adverse events during follow-up by category and group: patients with events, serious events, "
                      "Fisher's exact p and conditional MLE odds ratio.",
}


def prospective_with_baseline_labs(cohort: pd.DataFrame, visits: pd.DataFrame) -> pd.DataFrame:
    base = visits[(visits["visit_month"] == 0) & visits["measure"].isin(BASELINE_LABS)]
    wide = base.pivot_table(index="patient_key", columns="measure", values="value", aggfunc="first")
    return cohort.merge(wide.reindex(columns=BASELINE_LABS), left_on="patient_key", right_index=True, how="left")


@dg.multi_asset(specs=[dg.AssetSpec(name, description=desc, group_name="study", kinds={"sql", "scipy"},
                        automation_condition=STUDY_AUTOMATION, freshness_policy=STUDY_FRESHNESS,
                                    deps=["cohort", "prospective_cohort", "prospective_visits", "safety_events"])
                       for name, desc in _TABLES.items()])
def descriptive_tables(context: dg.AssetExecutionContext, warehouse: WarehouseResource, study: StudyResource):
    wh = warehouse.get()
    retro, prosp = wh.read_table("cohort"), wh.read_table("prospective_cohort")
    visits, events = wh.read_table("prospective_visits"), wh.read_table("safety_events")
    categories = list(study.concepts().domains["adverse_event_categories"])
    tables = {
        "baseline_characteristics": pd.concat([
            summaries.baseline_characteristics("retrospective", retro, ("tacrolimus", "conventional"),
                                               ["age", "initial_pred_mg_day"],
                                               ["sex", "diagnosis_subset", "plasma_exchange", "ivig"]),
            summaries.baseline_characteristics("prospective", prospective_with_baseline_labs(prosp, visits),
                                               ("combination", "tacrolimus"), ["age", "initial_pred_mg_day", *BASELINE_LABS],
                                               ["sex", "diagnosis_subset", "anti_mda5", "plasma_exchange", "ivig"]),
        ], ignore_index=True),
        "scale_changes": summaries.scale_changes(prosp, visits),
        "hrct_changes": summaries.hrct_changes(prosp, visits),
        "safety_summary": pd.concat([
            summaries.safety_summary("retrospective", retro, events, ("tacrolimus", "conventional"), categories),
            summaries.safety_summary("prospective", prosp, events, ("combination", "tacrolimus"), categories),
        ], ignore_index=True),
    }
    for name, frame in tables.items():
        wh.replace_table(name, frame)
    record_provenance(wh, context.run.run_id, study, tables, {"table_set": "descriptive_tables"})
    refresh_views(wh, set(tables) | {"provenance"})
    png = scale_boxplots(visits, list(summaries.SCALE_MEASURES), "Assessment scales by visit, prospective cohort")
    path = Path(study.figures_directory()) / "scale_boxplots.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    context.log.info(f"descriptive tables written; figure {path}")
    for name, frame in tables.items():
        meta = table_metadata(frame, preview=True, descriptions=DICTIONARY.get(name), preview_rows=20)
        if name == "scale_changes":
            meta["scale_boxplots"] = dg.MetadataValue.md(
                f"![scales](data:image/png;base64,{base64.b64encode(png).decode()})")
            meta["figure"] = dg.MetadataValue.path(str(path))
        yield dg.MaterializeResult(asset_key=name, metadata=meta)
