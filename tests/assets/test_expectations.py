"""The Great Expectations gates catch what they promise, name the failing rows, and block."""
from __future__ import annotations

from datetime import date

import dagster as dg
import pandas as pd
import pytest

from assets.resources import StudyResource, WarehouseResource
from assets.study.checks import check_name, table_check_results
from etl.warehouse import Warehouse
from expectations import suites
from expectations.runner import run_suite

WINDOW = ("2014-01-01", "2020-09-30")


def good_cohort() -> pd.DataFrame:
    return pd.DataFrame([{
        "patient_key": "k1", "group": "tacrolimus", "conventional_agent": None, "index_date": date(2016, 3, 1), "age": 50,
        "sex": "female", "diagnosis_subset": "DM", "initial_pred_mg_day": 50.0, "plasma_exchange": 0, "ivig": 1,
        "followup_days": 365, "death_event": 0, "death_days": 365, "relapse_event": 1, "relapse_days": 100,
        "resp_relapse_event": 0, "resp_relapse_days": 365}, {
        "patient_key": "k2", "group": "conventional", "conventional_agent": "CTX", "index_date": date(2019, 5, 1),
        "age": 61, "sex": "male", "diagnosis_subset": "CADM", "initial_pred_mg_day": 675.0, "plasma_exchange": 1,
        "ivig": 0, "followup_days": 80, "death_event": 1, "death_days": 80, "relapse_event": 0, "relapse_days": 80,
        "resp_relapse_event": 0, "resp_relapse_days": 80}])


def failures(suite: suites.Suite) -> dict[str, tuple[str, int, list]]:
    outcome = run_suite("t", suite.frame, suite.expectations, suite.key_columns)
    return {f"{f.expectation}:{f.column}": (f.severity, f.unexpected_count, f.examples) for f in outcome.failures}


def test_a_valid_cohort_passes():
    assert failures(suites.cohort(good_cohort(), WINDOW)) == {}


@pytest.mark.parametrize("column, value, failing", [
    ("age", 17, "expect_column_values_to_be_between:age"),
    ("group", "mixed", "expect_column_values_to_be_in_set:group"),
    ("index_date", date(2021, 1, 1), "expect_column_values_to_be_between:index_date"),
    ("relapse_days", 366, "expect_column_values_to_be_between:relapse_days"),
    ("death_days", 370, "expect_column_pair_values_a_to_be_greater_than_b:followup_days,death_days"),
    ("initial_pred_mg_day", -5.0, "expect_column_values_to_be_between:initial_pred_mg_day"),
    ("conventional_agent", "MTX", "expect_column_values_to_be_in_set:agent_matches_group"),
    ("sex", "F", "expect_column_values_to_be_in_set:sex"),
])
def test_each_cohort_rule_fails_critically_naming_the_patient(column, value, failing):
    frame = good_cohort()
    frame.loc[0, column] = value
    found = failures(suites.cohort(frame, WINDOW))
    assert failing in found
    severity, count, examples = found[failing]
    assert severity == "critical" and count == 1 and examples[0]["patient_key"] == "k1"


def test_duplicate_patient_keys_fail():
    frame = pd.concat([good_cohort(), good_cohort().iloc[[0]]], ignore_index=True)
    assert "expect_column_values_to_be_unique:patient_key" in failures(suites.cohort(frame, WINDOW))


def test_attrition_that_does_not_add_up_fails():
    frame = pd.DataFrame({"cohort": ["retrospective"] * 3, "step": [0, 1, 2], "reason": ["all_patients", "a", "b"],
                          "n_excluded": [0, 5, 3], "n_remaining": [100, 95, 91]})
    found = failures(suites.cohort_attrition(frame))
    assert found["expect_column_pair_values_to_be_equal:n_remaining,n_remaining_expected"][2] == [
        {"cohort": "retrospective", "step": 2, "reason": "b", "n_remaining": 91, "n_remaining_expected": 92}]


def test_extreme_weights_warn_but_impossible_scores_block():
    frame = pd.DataFrame({"patient_key": ["a", "b", "c"], "analysis": ["primary"] * 3,
                          "propensity_score": [0.5, 0.01, 1.0], "weight": [2.0, 100.0, 1.0],
                          "stabilized_weight": [1.0, 1.0, 1.0]})
    found = failures(suites.iptw_weights(frame))
    assert found["expect_column_values_to_be_between:weight"][:2] == ("warning", 1)
    assert found["expect_column_values_to_be_between:propensity_score"][:2] == ("critical", 1)


def test_warnings_alone_do_not_block():
    frame = pd.DataFrame({"patient_key": ["a", "b"], "analysis": ["primary"] * 2, "propensity_score": [0.5, 0.01],
                          "weight": [2.0, 100.0], "stabilized_weight": [1.0, 1.0]})
    suite = suites.iptw_weights(frame)
    outcome = run_suite("t", suite.frame, suite.expectations, suite.key_columns)
    assert len(outcome.failures) == 1 and not outcome.blocking


def test_visit_taken_outside_its_window_fails():
    frame = pd.DataFrame({"patient_key": ["a", "a"], "measure": ["mmrc", "mmrc"], "visit_month": [1, 3],
                          "nominal_day": [30, 90], "day": [30, 130], "value": [2.0, 1.0]})
    found = failures(suites.prospective_visits(frame))
    assert found["expect_column_values_to_be_in_set:day_in_visit_window"][2][0]["visit_month"] == 3


def test_a_failing_error_check_blocks_the_downstream_assets(tmp_path):
    url = f"sqlite:///{tmp_path / 'w.sqlite'}"
    bad = good_cohort()
    bad.loc[1, "age"] = 12

    @dg.asset(name="cohort", check_specs=[dg.AssetCheckSpec(check_name("cohort"), asset="cohort", blocking=True)])
    def cohort_double(context, study: StudyResource):  # writes, then checks in its step
        Warehouse(url).replace_table("cohort", bad)
        yield dg.MaterializeResult()
        yield from table_check_results(context, Warehouse(url), study)

    @dg.asset(deps=["cohort"])
    def downstream() -> None:
        raise AssertionError("must not run after a failed blocking check")

    result = dg.materialize([cohort_double, downstream], raise_on_error=False,
                            resources={"warehouse": WarehouseResource(url=url),
                                       "study": StudyResource(pseudonym_key="x" * 20)})
    evaluation = result.get_asset_check_evaluations()[0]
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert "patient_key=k2" in evaluation.metadata["failures"].value
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialized == {"cohort"}
