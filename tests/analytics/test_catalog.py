"""The table catalog (analytics.catalog) is the one description of every published table."""
import pandas as pd
import pytest

from analytics.catalog import CATALOG, tables_of
from assets.study.publish import CatalogMismatch, check_columns
from expectations.suites import TABLE_SUITES


def test_every_table_with_a_promised_check_has_a_suite_and_every_suite_a_promise():
    assert {name for name, spec in CATALOG.items() if spec.check} == set(TABLE_SUITES)


def test_every_study_asset_writes_catalogued_tables_with_keys_among_their_columns():
    assert set(tables_of("cohort")) >= {"cohort", "prospective_cohort", "patient_xref", "cohort_attrition"}
    assert set(tables_of("comparative_effects")) >= {"effect_estimates", "iptw_weights", "survival_curves"}
    assert set(tables_of("descriptive_tables")) == {"baseline_characteristics", "scale_changes", "hrct_changes", "safety_summary"}
    for spec in CATALOG.values():
        assert set(spec.key) <= set(spec.columns), spec.name
        assert spec.description and spec.columns, spec.name


def test_a_frame_whose_columns_drifted_from_its_catalog_entry_is_refused():
    columns = list(CATALOG["hrct_changes"].columns)
    check_columns("hrct_changes", pd.DataFrame(columns=columns))
    with pytest.raises(CatalogMismatch, match="hrct_changes"):
        check_columns("hrct_changes", pd.DataFrame(columns=[*columns, "undocumented"]))
    with pytest.raises(CatalogMismatch):
        check_columns("hrct_changes", pd.DataFrame(columns=list(reversed(columns))))


def test_every_table_the_study_computes_has_exactly_its_catalog_columns(small_hospital):
    """The producers themselves, not only the publishing guard: cohort tables (pseudonymised as published),
    comparative effects and descriptive tables from the small synthetic hospital."""
    from datetime import date

    from analytics.cohort.concepts import load_concept_map
    from analytics.cohort.facts import build_facts
    from analytics.cohort.params import RuleParams
    from analytics.cohort.tables import derive_cohort_tables
    from analytics.comparisons import study_results
    from analytics.pseudonym import pseudonymise
    from analytics.summaries import descriptive_tables
    from etl.fhir.types import flatten_all

    by_type: dict[str, list[dict]] = {}
    for r in small_hospital.resources:
        by_type.setdefault(r["resourceType"], []).append(r)
    concepts = load_concept_map()
    facts = build_facts(flatten_all(by_type), concepts)
    key = "catalog-test-key-0123456789"
    derived = {name: pseudonymise(frame, key) if "patient_id" in frame.columns else frame
               for name, frame in derive_cohort_tables(facts, RuleParams(data_cutoff=date(2026, 1, 1))).tables.items()}
    results = study_results(derived["cohort"], derived["prospective_cohort"], bootstrap_replicates=0)
    computed = {**derived,
                **{name: getattr(results, name) for name in ("iptw_weights", "covariate_balance", "effect_estimates",
                                                             "survival_curves", "rmst_differences", "e_values",
                                                             "cumulative_incidence")},
                **descriptive_tables(derived["cohort"], derived["prospective_cohort"], derived["prospective_visits"],
                                     derived["safety_events"], list(concepts.domains["adverse_event_categories"]))}
    assert set(computed) == {name for name, spec in CATALOG.items() if spec.asset} - {"patient_xref"}
    for name, frame in computed.items():
        check_columns(name, frame)


# Contract §4, typed from the contract: the public interface analysts query. The catalog may add columns after
# these, never rename, drop or reorder them.
CONTRACT_COLUMNS = {
    "cohort": ["patient_key", "group", "conventional_agent", "index_date", "age", "sex", "diagnosis_subset",
               "initial_pred_mg_day", "plasma_exchange", "ivig", "followup_days", "death_event", "death_days",
               "relapse_event", "relapse_days", "resp_relapse_event", "resp_relapse_days"],
    "patient_xref": ["patient_key", "fhir_patient_id"],
    "cohort_attrition": ["cohort", "step", "reason", "n_excluded", "n_remaining"],
    "iptw_weights": ["patient_key", "analysis", "propensity_score", "weight", "stabilized_weight"],
    "covariate_balance": ["analysis", "covariate", "smd_unweighted", "smd_weighted"],
    "effect_estimates": ["analysis", "comparison", "outcome", "hazard_ratio", "ci_lower", "ci_upper", "p_value",
                         "logrank_p", "n_treated", "n_control", "events_treated", "events_control"],
    "survival_curves": ["analysis", "comparison", "outcome", "group", "time_days", "survival", "ci_lower", "ci_upper",
                        "n_at_risk"],
    "baseline_characteristics": ["cohort", "variable", "level", "group", "summary", "p_value", "test"],
    "safety_summary": ["cohort", "group", "category", "n_patients_with_event", "n_patients", "percent",
                       "serious_events", "p_value"],
    "cohort_data_quality": ["cohort", "issue", "n_patients"],
    "prospective_cohort": ["patient_key", "group", "index_date", "enrolment_date", "age", "sex", "diagnosis_subset",
                           "initial_pred_mg_day", "plasma_exchange", "ivig"],
    "scale_changes": ["scale", "group", "visit_month", "n", "median", "q1", "q3", "p_vs_baseline", "p_adjusted"],
    "hrct_changes": ["measure", "group", "n", "baseline_median", "month12_median", "p_within", "p_between_delta"],
}


@pytest.mark.parametrize("table", list(CONTRACT_COLUMNS))
def test_the_contract_tables_keep_their_names_and_columns_in_order(table):
    catalogued = list(CATALOG[table].columns)
    assert [c for c in catalogued if c in CONTRACT_COLUMNS[table]] == CONTRACT_COLUMNS[table]
