"""The warehouse tables the study report reads, apart from the renderer: the report's Dagster asset names them as
its inputs at load time, and the renderer (Jinja, matplotlib) is imported only by the step that renders."""

# The study tables the report needs (the study_report asset's inputs).
REPORT_TABLES = ("cohort_attrition", "baseline_characteristics", "effect_estimates", "survival_curves",
                 "covariate_balance", "iptw_weights", "cohort", "scale_changes", "hrct_changes", "safety_summary",
                 "prospective_visits", "drug_discontinuations", "provenance")
# The coordinator's tables: the pooled section is shown when the warehouse holds them.
POOLED_TABLES = ("pooled_effects", "meta_analysis", "site_heterogeneity")
# The tables the report's descriptive figures are drawn from (report.render.descriptive_figures), alone.
DESCRIPTIVE_FIGURE_TABLES = ("prospective_visits", "scale_changes", "hrct_changes")
