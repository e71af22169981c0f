"""The comparative-effect tables and figures: one pass over every comparison of the contract.

The statistics and figures (SciPy, statsmodels, matplotlib: about 5 CPU s) are imported by the step, not by
the definitions every ``dagster`` command loads; the fork server has them preloaded (assets/forkserver.py)."""
import dagster as dg
import pandas as pd

from ..resources import StudyResource, WarehouseResource
from .checks import asset_check_specs, table_check_results
from .publish import asset_specs, image_markdown, save_figure, table_result, write_tables

OUTCOME_LABELS = {"death": "Survival", "relapse": "Relapse-free", "resp_relapse": "Free of respiratory relapse"}


@dg.multi_asset(specs=asset_specs("comparative_effects", kinds={"sql", "python"}, deps=["cohort", "prospective_cohort"]),
                check_specs=asset_check_specs("comparative_effects"))
def comparative_effects(context: dg.AssetExecutionContext, warehouse: WarehouseResource, study: StudyResource):
    from analytics.comparisons import PROSPECTIVE_COMPARISON, study_results
    from analytics.figures import km_plot, love_plot, ps_overlap

    embedded = {("tacrolimus_vs_conventional", "death"), ("tacrolimus_vs_conventional", "relapse"),
                (PROSPECTIVE_COMPARISON, "resp_relapse")}
    wh = warehouse.get()
    cohort = wh.read_table("cohort")
    results = study_results(cohort, wh.read_table("prospective_cohort"), bootstrap_replicates=study.bootstrap_replicates,
                            seed=study.seed)
    tables = {"iptw_weights": results.iptw_weights, "covariate_balance": results.covariate_balance,
              "effect_estimates": results.effect_estimates, "survival_curves": results.survival_curves,
              "rmst_differences": results.rmst_differences, "e_values": results.e_values,
              "cumulative_incidence": results.cumulative_incidence}
    write_tables(wh, context.run.run_id, study, tables, {"table_set": "comparative_effects",
                                                         "ps_truncation": "1st/99th percentile (truncated_1_99)"})

    effects = results.effect_estimates
    primary = effects[effects["analysis"] == "primary"]
    km_md, paths = [], {}
    for (comparison, outcome), curves in results.survival_curves.groupby(["comparison", "outcome"], sort=False):
        row = primary[(primary["comparison"] == comparison) & (primary["outcome"] == outcome)].iloc[0]
        png = km_plot(curves, f"{comparison.replace('_', ' ')}: {outcome.replace('_', ' ')}",
                      label=OUTCOME_LABELS[outcome], logrank_p=row["logrank_p"],
                      hazard_ratio=(row["hazard_ratio"], row["ci_lower"], row["ci_upper"]),
                      weighted=comparison != PROSPECTIVE_COMPARISON)
        path = save_figure(study, f"km_{comparison}_{outcome}.png", png)
        paths[f"figure_km_{comparison}_{outcome}"] = dg.MetadataValue.path(str(path))
        if (comparison, outcome) in embedded:
            km_md.append(image_markdown(png, f"{comparison} {outcome}"))

    main = "tacrolimus_vs_conventional"
    balance = results.covariate_balance[results.covariate_balance["analysis"] == main]
    weights = results.iptw_weights[results.iptw_weights["analysis"] == main]
    treated = cohort.set_index("patient_key").loc[weights["patient_key"], "group"].eq("tacrolimus").to_numpy()
    love = love_plot(balance, "Covariate balance, tacrolimus vs conventional")
    overlap_png = ps_overlap(weights["propensity_score"].reset_index(drop=True), pd.Series(treated),
                             "Propensity score overlap, tacrolimus vs conventional")
    save_figure(study, "love_plot.png", love)
    save_figure(study, "ps_overlap.png", overlap_png)
    diagnostics = pd.DataFrame({name: {k: v for k, v in d.items() if k != "coefficients"}
                                for name, d in results.diagnostics.items()}).T
    context.log.info(f"{len(effects)} effect estimates for {effects['comparison'].nunique()} comparisons; "
                     f"figures in {study.figures_directory()}")

    extra = {
        "iptw_weights": {"diagnostics": dg.MetadataValue.md(diagnostics.to_markdown(floatfmt=".3f")),
                         "ps_overlap": dg.MetadataValue.md(image_markdown(overlap_png, "propensity score overlap"))},
        "covariate_balance": {"love_plot": dg.MetadataValue.md(image_markdown(love, "love plot"))},
        "effect_estimates": {"primary_estimates": dg.MetadataValue.md(
            primary.drop(columns=["analysis"]).to_markdown(index=False, floatfmt=".4g"))},
        "survival_curves": {"kaplan_meier": dg.MetadataValue.md("\n\n".join(km_md)), **paths},
        "rmst_differences": {}, "e_values": {}, "cumulative_incidence": {},
    }
    for name, frame in tables.items():
        yield table_result(name, frame, preview=name not in ("survival_curves", "cumulative_incidence"), extra=extra[name])
    yield from table_check_results(context, wh, study)
