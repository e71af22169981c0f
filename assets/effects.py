"""The comparative-effect tables and figures: one pass over every comparison of the contract."""
import base64
from pathlib import Path

import dagster as dg
import pandas as pd

from analytics.comparisons import PROSPECTIVE_COMPARISON, study_results
from analytics.figures import km_plot, love_plot, ps_overlap

from .automation import STUDY_AUTOMATION, STUDY_FRESHNESS
from .dictionary import DICTIONARY
from .metadata import table_metadata
from .provenance import record_provenance
from .resources import StudyResource, WarehouseResource
from .views import refresh_views

STUDY_GROUP = "study"
OUTCOME_LABELS = {"death": "Survival", "relapse": "Relapse-free", "resp_relapse": "Free of respiratory relapse"}
EMBEDDED = {("tacrolimus_vs_conventional", "death"), ("tacrolimus_vs_conventional", "relapse"),
            (PROSPECTIVE_COMPARISON, "resp_relapse")}

_TABLES = {
    "iptw_weights": "Propensity scores and IPTW weights per patient and comparison (the propensity model is refit "
                    "within each pair).",
    "covariate_balance": "Standardized mean differences before and after weighting, per comparison.",
    "effect_estimates": "IPTW-weighted Cox hazard ratios with robust 95% CIs and the IPTW log-rank p, for every "
                        "comparison, outcome and weighting analysis; the prospective comparison unweighted.",
    "survival_curves": "Kaplan-Meier curves (IPTW-weighted for the retrospective comparisons) with log-log 95% CIs "
                       "and weighted numbers at risk.",
    "rmst_differences": "Restricted mean survival time to day 365 per group and its difference with a 95% CI.",
    "e_values": "E-values for every hazard ratio: how strong unmeasured confounding would have to be to explain it away.",
    "cumulative_incidence": "IPTW Aalen-Johansen cumulative incidence of relapse, with death before relapse as a "
                            "competing risk.",
}


def _image(png: bytes, alt: str) -> str:
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


@dg.multi_asset(specs=[dg.AssetSpec(name, description=desc, group_name=STUDY_GROUP, kinds={"sql", "python"},
                        automation_condition=STUDY_AUTOMATION, freshness_policy=STUDY_FRESHNESS,
                                    deps=["cohort", "prospective_cohort"]) for name, desc in _TABLES.items()])
def comparative_effects(context: dg.AssetExecutionContext, warehouse: WarehouseResource, study: StudyResource):
    wh = warehouse.get()
    cohort = wh.read_table("cohort")
    results = study_results(cohort, wh.read_table("prospective_cohort"), bootstrap_replicates=study.bootstrap_replicates,
                            seed=study.seed)
    tables = {"iptw_weights": results.iptw_weights, "covariate_balance": results.covariate_balance,
              "effect_estimates": results.effect_estimates, "survival_curves": results.survival_curves,
              "rmst_differences": results.rmst_differences, "e_values": results.e_values,
              "cumulative_incidence": results.cumulative_incidence}
    keys = {"iptw_weights": ["patient_key", "analysis"], "covariate_balance": ["analysis", "covariate"],
            "effect_estimates": ["analysis", "comparison", "outcome"]}
    for name, frame in tables.items():
        wh.replace_table(name, frame, keys.get(name))
    record_provenance(wh, context.run.run_id, study, tables, {"table_set": "comparative_effects",
                                                          "ps_truncation": "1st/99th percentile (truncated_1_99)"})
    refresh_views(wh, set(tables) | {"provenance"})

    figures_dir = Path(study.figures_directory())
    figures_dir.mkdir(parents=True, exist_ok=True)
    effects = results.effect_estimates
    primary = effects[effects["analysis"] == "primary"]
    km_md, paths = [], {}
    for (comparison, outcome), curves in results.survival_curves.groupby(["comparison", "outcome"], sort=False):
        row = primary[(primary["comparison"] == comparison) & (primary["outcome"] == outcome)].iloc[0]
        png = km_plot(curves, f"{comparison.replace('_', ' ')}: {outcome.replace('_', ' ')}",
                      label=OUTCOME_LABELS[outcome], logrank_p=row["logrank_p"],
                      hazard_ratio=(row["hazard_ratio"], row["ci_lower"], row["ci_upper"]),
                      weighted=comparison != PROSPECTIVE_COMPARISON)
        path = figures_dir / f"km_{comparison}_{outcome}.png"
        path.write_bytes(png)
        paths[f"figure_km_{comparison}_{outcome}"] = dg.MetadataValue.path(str(path))
        if (comparison, outcome) in EMBEDDED:
            km_md.append(_image(png, f"{comparison} {outcome}"))

    main = "tacrolimus_vs_conventional"
    balance = results.covariate_balance[results.covariate_balance["analysis"] == main]
    weights = results.iptw_weights[results.iptw_weights["analysis"] == main]
    treated = cohort.set_index("patient_key").loc[weights["patient_key"], "group"].eq("tacrolimus").to_numpy()
    love = love_plot(balance, "Covariate balance, tacrolimus vs conventional")
    overlap_png = ps_overlap(weights["propensity_score"].reset_index(drop=True), pd.Series(treated),
                             "Propensity score overlap, tacrolimus vs conventional")
    (figures_dir / "love_plot.png").write_bytes(love)
    (figures_dir / "ps_overlap.png").write_bytes(overlap_png)
    diagnostics = pd.DataFrame({name: {k: v for k, v in d.items() if k != "coefficients"}
                                for name, d in results.diagnostics.items()}).T
    context.log.info(f"{len(effects)} effect estimates for {effects['comparison'].nunique()} comparisons; "
                     f"figures in {figures_dir}")

    extra = {
        "iptw_weights": {"diagnostics": dg.MetadataValue.md(diagnostics.to_markdown(floatfmt=".3f")),
                         "ps_overlap": dg.MetadataValue.md(_image(overlap_png, "propensity score overlap"))},
        "covariate_balance": {"love_plot": dg.MetadataValue.md(_image(love, "love plot"))},
        "effect_estimates": {"primary_estimates": dg.MetadataValue.md(
            primary.drop(columns=["analysis"]).to_markdown(index=False, floatfmt=".4g"))},
        "survival_curves": {"kaplan_meier": dg.MetadataValue.md("\n\n".join(km_md)), **paths},
        "rmst_differences": {}, "e_values": {}, "cumulative_incidence": {},
    }
    for name, frame in tables.items():
        preview = name not in ("survival_curves", "cumulative_incidence")
        yield dg.MaterializeResult(asset_key=name, metadata={
            **table_metadata(frame, preview=preview, descriptions=DICTIONARY.get(name)), **extra[name]})

