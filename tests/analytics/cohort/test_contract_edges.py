"""Contract rules (study-contract.md §1-3) and README "Definitions" readings that no other test pinned: the
attrition order as the contract types it, patients failing two adjacent steps, one-fact medications, subsets
without DM, and the edges of windows (each end included, the next day excluded)."""
from __future__ import annotations

from datetime import date

import pytest

from analytics.cohort import prospective, retrospective
from analytics.cohort.concepts import load_concept_map
from analytics.cohort.facts import build_facts, daily_dose_mg
from analytics.cohort.params import RuleParams
from assets.resources import StudyResource
from etl.fhir.types import flatten_all
from synthetic import fhir_builders as fb
from synthetic.fhir_builders import ICD10, LOCAL, RXNORM
from tests.fhir_fixtures import (
    CTX,
    INDEX,
    PID,
    PREDNISONE,
    day,
    derive,
    drug,
    exacerbation,
    new_id,
    obs_quantity,
    only_row,
    radiological,
    reason,
    reference_patient,
)

# -- attrition order ---------------------------------------------------------------------------------------------
# Typed from study-contract.md, not imported: the test fails if the code's order moves away from the contract's.
CONTRACT_RETROSPECTIVE = (
    "no_iim_condition", "no_ild_condition", "inclusion_body_myositis", "overlap_myositis", "juvenile_dm",
    "malignancy_within_3y", "no_qualifying_immunosuppressant", "no_glucocorticoid_at_index",
    "index_outside_window", "age_under_18", "mixed_exposure", "death_date_unknown")
CONTRACT_PROSPECTIVE = ("enrolment_outside_window", "no_tacrolimus", "pirfenidone_other_dose", "withdrawn_before_12m",
                        "lost_to_follow_up_before_12m")


def test_the_retrospective_attrition_order_is_the_contracts():
    assert retrospective.ATTRITION_REASONS == CONTRACT_RETROSPECTIVE


def test_the_prospective_attrition_order_is_the_contracts_then_death_date_unknown():
    """§3 lists five reasons; the code adds ``death_date_unknown`` last, by §1 (a death without a date is excluded
    from time-to-event analyses "with a reason"; README "Death without a date, prospective cohort")."""
    assert prospective.ATTRITION_REASONS == (*CONTRACT_PROSPECTIVE, "death_date_unknown")


def with_conditions(*codes: str) -> list[dict]:
    return [fb.condition(new_id("cond"), PID, ICD10, code, day(-60)) for code in codes]


@pytest.mark.parametrize("resources, params, expected", [
    # index 2016-03-01 outside a window starting 2017, and 16 years old at index
    pytest.param(lambda: reference_patient(birth="2000-01-01"), {"window_start": date(2017, 1, 1)},
                 "index_outside_window", id="outside_window+under_18"),
    # tacrolimus with CTX in the first year, and dead without a date
    pytest.param(lambda: reference_patient(deceased=True) + [drug(CTX, 10, 100)], {},
                 "mixed_exposure", id="mixed_exposure+death_date_unknown"),
    # juvenile DM, and a malignancy recorded on the day of the first IIM condition
    pytest.param(lambda: reference_patient() + with_conditions("M33.01", "C50.9"), {},
                 "juvenile_dm", id="juvenile_dm+malignancy"),
])
def test_a_patient_failing_two_adjacent_steps_leaves_at_the_first(resources, params, expected):
    result = derive(resources(), **params)
    assert reason(result) == expected
    counts = result.attrition.set_index("reason")["n_excluded"]
    assert counts[expected] == 1 and counts.sum() == 1  # counted once, at that step


# -- one fact per statement and concept --------------------------------------------------------------------------
HOSPITAL_DRUGS = "urn:oid:2.16.840.1.113883.3.9999.7"


def prednisone_coded_twice(second: dict) -> list[dict]:
    statement = drug(PREDNISONE, -5, 400, dose=50)
    statement["medicationCodeableConcept"]["coding"].append(second)
    return reference_patient(gc=None) + [statement]


def test_a_statement_with_two_rxnorm_codings_of_prednisone_is_one_dose():
    """README Definitions: two codings of one resource that carry the same concept are one fact, not two."""
    res = prednisone_coded_twice({"system": RXNORM, "code": PREDNISONE, "display": "predniSONE 5 MG Oral Tablet"})
    assert only_row(derive(res))["initial_pred_mg_day"] == 50


def test_a_statement_coded_as_prednisone_in_rxnorm_and_in_a_hospitals_mapped_system_is_one_dose(tmp_path):
    """A hospital map adds its own prednisone code (ingredient prednisone): a statement carrying both codings is
    still one 50 mg/day statement."""
    extra = tmp_path / "map.yaml"
    extra.write_text("medications:\n  glucocorticoid:\n"
                     f"    - {{system: '{HOSPITAL_DRUGS}', code: PRED, factor: 1, ingredient: prednisone}}\n")
    res = prednisone_coded_twice({"system": HOSPITAL_DRUGS, "code": "PRED"})
    by_type: dict[str, list[dict]] = {}
    for r in res:
        by_type.setdefault(r["resourceType"], []).append(r)
    facts = build_facts(flatten_all(by_type), load_concept_map(str(extra)))
    assert len(facts.exposures[facts.exposures["concept"] == "glucocorticoid"]) == 1
    result = retrospective.derive_retrospective(facts, RuleParams(data_cutoff=date(2025, 1, 1)))
    assert only_row(result)["initial_pred_mg_day"] == 50


# -- subsets without DM ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("code, subset", [("cadm", "CADM"), ("antisynthetase-syndrome", "ASS")])
def test_a_patient_whose_only_iim_condition_is_cadm_or_ass_is_included_with_that_subset(code, subset):
    res = [r for r in reference_patient() if r.get("code", {}).get("coding", [{}])[0].get("code") != "M33.10"]
    res.append(fb.condition(new_id("cond"), PID, LOCAL, code, day(-60)))
    assert not any("M33" in str(r.get("code")) for r in res)
    assert only_row(derive(res))["diagnosis_subset"] == subset


# -- edges of windows --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ild_day, expected", [(30, None), (31, "no_qualifying_immunosuppressant")])
def test_an_immunosuppressant_starting_exactly_30_days_before_the_first_ild_qualifies(ild_day, expected):
    """Tacrolimus starts on day 0; the first ILD condition on day 30 (exactly 30 days later) or day 31."""
    res = reference_patient(ild=False) + [fb.condition(new_id("cond"), PID, ICD10, "J84.10", day(ild_day))]
    result = derive(res)
    assert reason(result) == expected
    if expected is None:
        assert only_row(result)["index_date"] == INDEX


@pytest.mark.parametrize("window, expected", [
    ({"window_start": INDEX}, None), ({"window_end": INDEX}, None),
    ({"window_start": day(1)}, "index_outside_window"), ({"window_end": day(-1)}, "index_outside_window"),
])
def test_an_index_on_either_end_of_the_study_window_is_included_and_a_day_outside_is_not(window, expected):
    assert reason(derive(reference_patient(), **window)) == expected


# CTX starting on index+365 overlaps the first year, and so does one ending on index (started before the first
# ILD condition minus 30 days, so that it cannot be the index itself).
@pytest.mark.parametrize("start, end, expected", [
    (365, 400, "mixed_exposure"), (366, 400, None), (-100, 0, "mixed_exposure"), (-100, -1, None),
])
def test_a_statement_overlapping_the_first_year_on_its_last_or_first_day_counts_for_the_group(start, end, expected):
    result = derive(reference_patient() + [drug(CTX, start, end)])
    assert reason(result) == expected
    if expected is None:
        assert only_row(result)["group"] == "tacrolimus"


@pytest.mark.parametrize("cutoff_day, death_event, followup", [(100, 1, 100), (99, 0, 99)])
def test_a_death_after_the_data_cutoff_is_not_an_event(cutoff_day, death_event, followup):
    row = only_row(derive(reference_patient(deceased=day(100)), data_cutoff=day(cutoff_day)))
    assert (row["death_event"], row["death_days"], row["followup_days"]) == (death_event, followup, followup)


@pytest.mark.parametrize("weight_day, relapse", [(75, 0), (76, 1)])
def test_a_weight_dated_on_the_day_of_a_glucocorticoid_increase_is_used_for_that_day(weight_day, relapse):
    """60 kg on day -3; 80 kg on ``weight_day``. The 35 mg/day rescue of day 75 is not > 0.5 × 80 but is > 0.5 × 60."""
    res = reference_patient(gc=(-5, 27)) + [exacerbation(80), drug(PREDNISONE, 75, 90, dose=35),
                                            obs_quantity("29463-7", weight_day, 80, "kg")]
    assert only_row(derive(res))["relapse_event"] == relapse


@pytest.mark.parametrize("params, exacerbation_day, expected", [
    ({"data_cutoff": day(200)}, 200, (1, 200)), ({"data_cutoff": day(200)}, 201, (0, 200)),  # follow-up ends at the cut-off
    ({}, 365, (1, 365)), ({}, 366, (0, 365)),                                                 # or on day 365
])
def test_an_exacerbation_with_its_criterion_after_follow_up_ends_is_not_a_relapse(params, exacerbation_day, expected):
    res = reference_patient() + [exacerbation(exacerbation_day), radiological(exacerbation_day)]
    row = only_row(derive(res, **params))
    assert (row["relapse_event"], row["relapse_days"]) == expected


def test_the_window_around_an_exacerbation_is_not_cut_at_the_end_of_follow_up():
    """README Definitions, "Relapse windows": an exacerbation on day 360 with its criterion on day 370 (after day 365)."""
    row = only_row(derive(reference_patient() + [exacerbation(360), radiological(370)]))
    assert (row["followup_days"], row["relapse_event"], row["relapse_days"]) == (365, 1, 360)


@pytest.mark.parametrize("second_status, relapse", [("corrected", 0), ("preliminary", 1)])
def test_a_corrected_result_supersedes_a_same_day_preliminary(second_status, relapse):
    """Ferritin baseline 500: a preliminary 5000 on day 100 is a criterion unless a corrected 600 of that day replaces it."""
    prelim = obs_quantity("2276-4", 100, 5000, "ng/mL")
    prelim["status"] = "preliminary"
    second = obs_quantity("2276-4", 100, 600, "ng/mL")
    second["status"] = second_status
    assert only_row(derive(reference_patient() + [exacerbation(100), prelim, second]))["relapse_event"] == relapse


@pytest.mark.parametrize("dose, period_unit, mg_day", [(1500, "mo", 50.0), (18250, "a", 50.0), (50, "d", 50.0)])
def test_period_units_mo_and_a_are_30_and_365_days(dose, period_unit, mg_day):
    assert daily_dose_mg(dose, "mg", 1, 1, period_unit) == mg_day
    statement = fb.medication_statement(new_id("ms"), PID, RXNORM, PREDNISONE, day(-5), day(400), dose=dose, frequency=1,
                                        period_unit=period_unit)
    assert only_row(derive(reference_patient(gc=None) + [statement]))["initial_pred_mg_day"] == mg_day


def test_an_ongoing_statement_is_not_ended_by_another_of_the_same_ingredient_starting_the_same_day():
    """README Definitions: an ongoing statement ends the day before the next one that starts on a *later* day; a
    same-day statement with an explicit end runs beside it and the doses add."""
    ongoing = drug(PREDNISONE, -5, None, dose=50, status="active")
    ongoing["id"] = f"{PID}-a"  # sorted first, so a rule ending it at a same-day start would have to act on it
    boost = drug(PREDNISONE, -5, 10, dose=10)
    boost["id"] = f"{PID}-b"
    assert only_row(derive(reference_patient(gc=None) + [ongoing, boost]))["initial_pred_mg_day"] == 60


@pytest.mark.parametrize("setting, cutoff", [("", date(2024, 5, 6)), ("2023-01-31", date(2023, 1, 31))])
def test_the_data_cutoff_defaults_to_the_extraction_date_unless_data_cutoff_is_set(setting, cutoff):
    """README "DATA_CUTOFF": empty means the extraction date the cohort asset passes (``Warehouse.extraction_time``)."""
    study = StudyResource(pseudonym_key="k" * 32, data_cutoff=setting)
    assert study.retrospective_params(date(2024, 5, 6)).data_cutoff == cutoff
