"""The catalog of every table analysts query: name, description, columns and their meaning, primary key,
the asset that writes it and what its expectation check promises.

One place for each table's facts. The assets take their specs, the UI column schema and the
README's data dictionary (``make docs``) are rendered from it, the checks take their descriptions
from it, and a table whose written columns differ from its catalog entry is refused when it is
published (``assets.study.publish``). Long because it is data: one entry per table.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TableSpec:
    name: str
    asset: str | None = None                # the multi-asset that writes it; None: written by ingestion or provenance
    key: tuple[str, ...] = ()               # primary key (declared on PostgreSQL)
    description: str = ""
    check: str | None = None                # what its blocking expectation suite promises; None: no table check
    columns: dict[str, str] = field(default_factory=dict)  # column -> meaning, in the table's column order


CATALOG: dict[str, TableSpec] = {spec.name: spec for spec in (
    TableSpec(
        "cohort", asset="cohort", key=("patient_key",),
        description="The retrospective IPTW cohort (study-contract.md §2): one row per patient with group, covariates, follow-up and "
                    "event days.",
        check="Unique keys, allowed values, every patient with a group and an index date in the window, age ≥ 18, event days within 0 "
              "… follow-up ≤ 365, non-negative doses.",
        columns={
            "patient_key": "Pseudonym: HMAC-SHA256 of the FHIR Patient id under PSEUDONYM_KEY",
            "group": "tacrolimus | conventional (exposure overlapping index … index+365 d)",
            "conventional_agent": "CTX | MTX | AZA | MMF | CsA started at index (ties in that order); NULL for tacrolimus",
            "index_date": "Start of the first qualifying immunosuppressant with a glucocorticoid within ±30 d (ISO date)",
            "age": "Completed years at index (partial birth dates imputed to the first day)",
            "sex": "Patient.gender as sent: male | female | other | unknown",
            "diagnosis_subset": "CADM | ASS | DM | PM (first that applies, in that order)",
            "initial_pred_mg_day": "Prednisolone-equivalent mg/day on the index date, summed over covering GC statements",
            "plasma_exchange": "1 if a completed plasma exchange is dated index−30 … index+30 d, else 0",
            "ivig": "1 if an IVIg statement starts index−30 … index+30 d, else 0",
            "followup_days": "Days of follow-up: min(365, last contact, data cut-off), or the death day",
            "death_event": "1 if Patient.deceasedDateTime falls within follow-up",
            "death_days": "Days to death or censoring",
            "relapse_event": "1 if a relapse (exacerbation + criterion i, ii or iii within ±14 d) occurred in follow-up",
            "relapse_days": "Days to the first relapse, or censoring (death censors relapse)",
            "resp_relapse_event": "1 if a respiratory exacerbation with radiological progression within ±14 d occurred",
            "resp_relapse_days": "Days to the first respiratory relapse, or censoring",
        }),
    TableSpec(
        "cohort_attrition", asset="cohort", key=("cohort", "step"),
        description="Patients excluded at each step of each cohort's selection (the paper's flowcharts S1 and S3).",
        check="Attrition counts add up step by step, per cohort.",
        columns={
            "cohort": "retrospective | prospective",
            "step": "0 = everyone, then the contract's order",
            "reason": "The rule failed at this step",
            "n_excluded": "Patients whose first failed rule this is",
            "n_remaining": "Patients left after this step",
        }),
    TableSpec(
        "cohort_data_quality", asset="cohort",
        description="Facts that could not be evaluated, e.g. relapse criterion (iii) without a body weight.",
        columns={
            "cohort": "retrospective | prospective",
            "issue": "What could not be evaluated or read",
            "n_patients": "Distinct patients affected",
        }),
    TableSpec(
        "relapse_detail", asset="cohort",
        description="Which relapse criteria fired for each patient's first relapse and respiratory relapse.",
        columns={
            "patient_key": "Pseudonym",
            "kind": "relapse | resp_relapse",
            "day": "Days from index",
            "category": "Exacerbation category: respiratory | muscular | skin | general",
            "ferritin_esr": "Criterion (i) fired",
            "radiological": "Criterion (ii) fired",
            "gc_increase": "Criterion (iii) fired",
        }),
    TableSpec(
        "iptw_weights", asset="comparative_effects", key=("patient_key", "analysis"),
        description="Propensity scores and IPTW weights per patient and comparison (the propensity model is refit within each pair).",
        check="Propensity scores strictly inside (0, 1), ATE weights ≥ 1; weights above 50 are flagged.",
        columns={
            "patient_key": "Pseudonym",
            "analysis": "The comparison whose propensity model gave the weights: tacrolimus_vs_conventional, tacrolimus_vs_CTX, "
                        "tacrolimus_vs_MTX or tacrolimus_vs_AZA (refit within each pair)",
            "propensity_score": "P(tacrolimus | covariates), logistic regression",
            "weight": "1/ps (tacrolimus) or 1/(1−ps) (comparator)",
            "stabilized_weight": "weight × marginal probability of the group received",
        }),
    TableSpec(
        "effect_estimates", asset="comparative_effects", key=("analysis", "comparison", "outcome"),
        description="IPTW-weighted Cox hazard ratios with robust 95% CIs and the IPTW log-rank p, for every comparison, outcome and "
                    "weighting analysis; the prospective comparison unweighted.",
        check="One row per analysis, comparison and outcome; CI around the HR; p in [0, 1].",
        columns={
            "analysis": "primary = the paper's ATE weights 1/ps, 1/(1−ps); stabilized; truncated_1_99 (weights clipped at their 1st "
                        "and 99th percentiles). The prospective comparison is unweighted",
            "comparison": "tacrolimus_vs_conventional | tacrolimus_vs_CTX | tacrolimus_vs_MTX | tacrolimus_vs_AZA | "
                          "combination_vs_tacrolimus",
            "outcome": "death | relapse | resp_relapse",
            "hazard_ratio": "exp(coef) of the Cox model (Efron ties; IPTW case weights), = R coxph; NULL if not estimable",
            "ci_lower": "exp(coef − 1.96·SE): robust SE when weighted, model-based when not",
            "ci_upper": "exp(coef + 1.96·SE)",
            "p_value": "Wald p on the same SE",
            "logrank_p": "Weighted: the IPTW-adjusted log-rank test of Xie & Liu 2005; unweighted: the classical log-rank test (= R "
                         "survdiff)",
            "n_treated": "Patients in the treated group",
            "n_control": "Patients in the comparator group",
            "events_treated": "Unweighted events, treated",
            "events_control": "Unweighted events, comparator",
            "logrank_p_svy": "Weighted: the design-based IPTW log-rank test (= R survey::svylogrank); NULL unweighted",
        }),
    TableSpec(
        "patient_xref", asset="cohort", key=("patient_key",),
        description="Pseudonym to FHIR Patient id. Restricted: analysts need not be granted it.",
        columns={
            "patient_key": "Pseudonym",
            "fhir_patient_id": "FHIR Patient id (restricted table)",
        }),
    TableSpec(
        "provenance",
        description="Which run, code, concept map, contract parameters and data watermarks produced each study table (one row per "
                    "table and run; `current_provenance` is the latest).",
        columns={
            "table_name": "The study table this row describes",
            "run_id": "Dagster run that wrote it",
            "computed_at": "When (UTC)",
            "package_version": "iimild-pipeline version",
            "git_commit": "Code commit (GIT_COMMIT, else the checkout's HEAD, else unknown)",
            "concept_map_sha256": "Digest of the effective concept map (default + hospital additions)",
            "parameters": "JSON: windows, cut-off, thresholds and analysis settings used",
            "data_watermarks": "JSON per FHIR type: watermark, when it was last confirmed current, sync mode",
        }),
    TableSpec(
        "quarantine",
        description="Resources that failed validation or plausibility, with every reason. Restricted: real FHIR ids.",
        columns={
            "resource_type": "FHIR type it was read as",
            "fingerprint": "SHA-256 of the raw text (with the type, the key)",
            "resource_id": "Its id when it had one (restricted table: real ids)",
            "version_id": "Its meta.versionId",
            "raw": "The text exactly as received",
            "errors": "JSON list: every validation and plausibility error",
            "source": "Page URL or file:line it came from",
            "first_seen": "First pull that saw it",
            "last_seen": "Latest pull that saw it",
            "current": "Whether this bad version is still the server's latest",
        }),
    TableSpec(
        "baseline_characteristics", asset="descriptive_tables",
        description="Table 1 (retrospective) and Table 2 (prospective): mean ± SD or median [IQR], n (%), with the p-value of the test "
                    "shown and the SMD.",
        columns={
            "cohort": "retrospective | prospective",
            "variable": "age, sex, diagnosis_subset, initial_pred_mg_day, ..., n",
            "level": "Category level (categorical variables)",
            "group": "The cohort's groups",
            "summary": "mean ± SD, median [Q1-Q3] or n (%)",
            "p_value": "Welch t-test (both groups normal by Shapiro-Wilk), Mann-Whitney, chi-square (Yates for 2x2) or Fisher's exact "
                       "(2x2 with an expected count < 5), as R's t.test, wilcox.test, chisq.test, fisher.test",
            "test": "welch_t | mann_whitney | chi_square | fisher | none",
            "smd": "Standardized mean difference",
        }),
    TableSpec(
        "scale_changes", asset="descriptive_tables",
        description="Assessment scales and glucocorticoid dose at each prospective visit: median [IQR], paired Wilcoxon vs baseline "
                    "with Bonferroni, Mann-Whitney between the groups' changes.",
        check="p-values within [0, 1].",
        columns={
            "scale": "6mwt, mmrc, patient_global_activity, mmt8, myoact, mitax, mdi, cat, hama, hamd, gc_pred_mg_day",
            "group": "all | combination | tacrolimus",
            "visit_month": "0, 1, 3, 6, 12",
            "n": "Patients with a value",
            "median": "Median (R quantile type 7)",
            "q1": "First quartile",
            "q3": "Third quartile",
            "p_vs_baseline": "Paired Wilcoxon signed-rank vs baseline (= R wilcox.test(paired = TRUE))",
            "p_adjusted": "Bonferroni over the scale's follow-up visits",
            "p_between_groups": "Mann-Whitney on the change from baseline, combination vs tacrolimus",
        }),
    TableSpec(
        "hrct_changes", asset="descriptive_tables",
        description="HRCT total and component scores, baseline vs 12 months in survivors: within-group paired Wilcoxon and "
                    "Mann-Whitney on the change between groups.",
        check="p-values within [0, 1].",
        columns={
            "measure": "hrct_score and its components",
            "group": "combination | tacrolimus",
            "n": "Survivors with a baseline and a 12-month score",
            "baseline_median": "Median at baseline",
            "month12_median": "Median at 12 months",
            "p_within": "Paired Wilcoxon, baseline vs 12 months",
            "p_between_delta": "Mann-Whitney on the change, combination vs tacrolimus",
        }),
    TableSpec(
        "safety_summary", asset="descriptive_tables",
        description="Adverse events during follow-up by category and group: patients with events, serious events, Fisher's exact p and "
                    "conditional MLE odds ratio.",
        check="Percentages within 0-100, p-values within [0, 1].",
        columns={
            "cohort": "retrospective | prospective",
            "group": "The cohort's groups",
            "category": "any or an AE category",
            "n_patients_with_event": "Patients with at least one such event in follow-up",
            "n_patients": "Patients in the group",
            "percent": "100 × n_patients_with_event / n_patients",
            "serious_events": "Serious events (events, not patients)",
            "p_value": "Fisher's exact test, patients with vs without (= R fisher.test)",
            "odds_ratio": "Conditional MLE odds ratio, first group vs second (as R reports it)",
        }),
    TableSpec(
        "rmst_differences", asset="comparative_effects",
        description="Restricted mean survival time to day 365 per group and its difference with a 95% CI.",
        columns={
            "comparison": "As in effect_estimates",
            "outcome": "death | relapse | resp_relapse",
            "tau_days": "365",
            "rmst_treated": "Restricted mean event-free days to tau, first group (= R summary(survfit, rmean = tau))",
            "rmst_control": "The same, second group",
            "difference": "rmst_treated − rmst_control (days)",
            "ci_lower": "95% CI, infinitesimal-jackknife SE",
            "ci_upper": "95% CI upper limit",
            "p_value": "Wald p",
        }),
    TableSpec(
        "e_values", asset="comparative_effects",
        description="E-values for every hazard ratio: how strong unmeasured confounding would have to be to explain it away.",
        columns={
            "analysis": "As in effect_estimates",
            "comparison": "As in effect_estimates",
            "outcome": "As in effect_estimates",
            "hazard_ratio": "The estimate",
            "e_value_point": "E-value of the estimate (VanderWeele & Ding 2017)",
            "e_value_ci": "E-value of the CI limit closest to 1 (1 when the CI crosses 1)",
            "common_outcome": "1 if more than 15% had the outcome: the HR was converted to a risk ratio first",
        }),
    TableSpec(
        "cumulative_incidence", asset="comparative_effects",
        description="IPTW Aalen-Johansen cumulative incidence of relapse, with death before relapse as a competing risk.",
        columns={
            "comparison": "As in effect_estimates",
            "group": "As in survival_curves",
            "time_days": "Each distinct time",
            "cif_relapse": "Cumulative incidence of relapse (IPTW Aalen-Johansen; = R multi-state survfit pstate)",
            "cif_death_without_relapse": "Cumulative incidence of death before relapse (the competing risk)",
            "n_at_risk": "Number at risk (weighted when weighted)",
        }),
    TableSpec(
        "covariate_balance", asset="comparative_effects", key=("analysis", "covariate"),
        description="Standardized mean differences before and after weighting, per comparison.",
        columns={
            "analysis": "The comparison (as in iptw_weights)",
            "covariate": "A propensity-model column: age, sex[male], diagnosis_subset[level] (vs DM), initial_pred_mg_day, "
                         "plasma_exchange, ivig",
            "smd_unweighted": "Standardized mean difference before weighting (pooled unweighted SD)",
            "smd_weighted": "After IPTW, same denominator; |SMD| < 0.1 is balanced",
        }),
    TableSpec(
        "survival_curves", asset="comparative_effects",
        description="Kaplan-Meier curves (IPTW-weighted for the retrospective comparisons) with log-log 95% CIs and weighted numbers "
                    "at risk.",
        columns={
            "analysis": "primary",
            "comparison": "As in effect_estimates",
            "outcome": "death | relapse | resp_relapse",
            "group": "tacrolimus, conventional or the agent; combination or tacrolimus (prospective)",
            "time_days": "Each distinct observed time",
            "survival": "Kaplan-Meier estimate (IPTW-weighted, retrospective)",
            "ci_lower": "Log-log 95% lower limit (robust IJ SE when weighted, Greenwood when not), = R survfit; NULL before the first "
                        "event",
            "ci_upper": "Log-log 95% upper limit",
            "n_at_risk": "Number at risk (weighted when weighted)",
        }),
    TableSpec(
        "prospective_cohort", asset="cohort", key=("patient_key",),
        description="The prospective cohort (study-contract.md §3): tacrolimus with (combination) or without low-dose pirfenidone, "
                    "with covariates, follow-up and events.",
        check="Groups consistent with the pirfenidone dose (600–900 mg/day), dates present, flags 0/1.",
        columns={
            "patient_key": "Pseudonym",
            "group": "combination (pirfenidone 600–900 mg/day started ≤ 90 d after index) | tacrolimus (no pirfenidone)",
            "index_date": "Start of the earliest tacrolimus statement running on or after enrolment (ISO date)",
            "enrolment_date": "ResearchSubject.period.start in ChiCTR2100043595 (ISO date)",
            "age": "As in cohort",
            "sex": "As in cohort",
            "diagnosis_subset": "As in cohort",
            "initial_pred_mg_day": "As in cohort",
            "plasma_exchange": "As in cohort",
            "ivig": "As in cohort",
            "pirfenidone_mg_day": "Daily pirfenidone dose in mg (NULL for the tacrolimus group)",
            "anti_mda5": "Latest anti-MDA5 result up to index+7 d: 1 positive, 0 negative, NULL untested",
            "followup_days": "As in cohort",
            "death_event": "As in cohort",
            "death_days": "As in cohort",
            "relapse_event": "As in cohort",
            "relapse_days": "As in cohort",
            "resp_relapse_event": "As in cohort",
            "resp_relapse_days": "As in cohort",
            "hrct_analysable": "1 if alive at 12 months with a baseline and a 12-month HRCT score (the paper's HRCT analysis set)",
        }),
    TableSpec(
        "prospective_visits", asset="cohort", key=("patient_key", "measure", "visit_month"),
        description="Prospective visit values (baseline, months 1, 3, 6, 12): assessment scales, HRCT scores, labs and glucocorticoid "
                    "dose, the observation closest to the nominal day.",
        check="One value per patient, measure and visit, taken inside that visit's window.",
        columns={
            "patient_key": "Pseudonym",
            "measure": "6mwt (m), mmrc, patient_global_activity, mmt8, myoact, mitax, mdi, cat, hama, hamd; hrct_score and "
                       "hrct_ground_glass/consolidation/reticular/traction_bronchiectasis; ferritin (ng/mL), esr (mm/h), crp (mg/L), "
                       "creatine_kinase (U/L); gc_pred_mg_day (prednisolone-equivalent mg/day)",
            "visit_month": "0 (baseline, day −14…7), 1 (15…45), 3 (60…120), 6 (150…210), 12 (330…400)",
            "nominal_day": "0, 30, 90, 180, 365",
            "day": "Day of the chosen observation, from index",
            "value": "In the measure's canonical unit",
        }),
    TableSpec(
        "safety_events", asset="cohort",
        description="Adverse events during follow-up of either cohort: category, seriousness, suspected drug. One row per "
                    "event and category: an event coded in two categories has two rows with the same event_number.",
        check="Categories of the concept map, events within follow-up, event numbers from 1.",
        columns={
            "patient_key": "Pseudonym",
            "cohort": "retrospective | prospective",
            "group": "The patient's group in that cohort",
            "category": "infection | opportunistic-infection | glucose-metabolism | electrolyte | gastrointestinal | hepatic | renal | "
                        "hematologic | other",
            "serious": "1 if seriousness is serious",
            "day": "Days from index (0 … follow-up)",
            "suspected_drug": "Concept of the suspected MedicationStatement(s)",
            "event_number": "The event's number within the patient and cohort (1, 2, …, by day, then non-serious first, then "
                            "suspected drug, then categories): rows with the same patient_key, cohort and event_number are one event",
        }),
    TableSpec(
        "drug_discontinuations", asset="cohort",
        description="Drugs stopped because of an adverse event during follow-up, for either cohort.",
        columns={
            "patient_key": "Pseudonym",
            "cohort": "retrospective | prospective",
            "group": "The patient's group in that cohort",
            "drug": "Concept of the drug stopped",
            "day": "Days from index of its end",
        }),
)}


def columns_of(table: str) -> list[str]:
    """The table's columns in published order."""
    return list(CATALOG[table].columns)


def tables_of(asset: str) -> dict[str, TableSpec]:
    """The tables one multi-asset writes, in catalog order."""
    return {name: spec for name, spec in CATALOG.items() if spec.asset == asset}


def render_markdown() -> str:
    """The README's data dictionary section (kept in step by `make docs` and tests/deploy/test_readme.py)."""
    parts = []
    for table, spec in CATALOG.items():
        rows = "\n".join(f"| `{c}` | {d.replace('|', '&#124;')} |" for c, d in spec.columns.items())
        parts.append(f"**`{table}`**\n\n| column | meaning |\n|---|---|\n{rows}\n")
    return "\n".join(parts)
