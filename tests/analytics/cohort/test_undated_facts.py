"""Facts without a date, and adverse events without a mapped category: never a silent drop (README Definitions).

An undated Condition still counts where the contract asks only whether a diagnosis exists (inclusion, the
exclusions without a window, the diagnosis subset); the rules measured from a date read dated Conditions only.
Every undated fact of a mapped concept, and every actual adverse event of no mapped category, is counted in
``cohort_data_quality`` once per patient.
"""
from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from analytics.cohort.params import RuleParams
from analytics.cohort.prospective import ProspectiveParams, derive_prospective
from analytics.cohort.retrospective import RetrospectiveResult
from analytics.cohort.tables import derive_cohort_tables
from synthetic import fhir_builders as fb
from synthetic.fhir_builders import ICD10, LOCAL, LOINC, SNOMED
from tests.fhir_fixtures import (
    MTX,
    PID,
    PREDNISONE,
    TACROLIMUS,
    day,
    derive,
    drug,
    facts_of,
    new_id,
    obs_quantity,
    only_row,
    reason,
    reference_patient,
)

DATE_FIELDS = ("onsetDateTime", "recordedDate", "effectivePeriod", "effectiveDateTime", "performedDateTime",
               "performedPeriod", "date")


def undated(resource: dict) -> dict:
    """The resource with every date the contract reads taken away."""
    return {k: v for k, v in resource.items() if k not in DATE_FIELDS}


def code_of(resource: dict) -> str | None:
    return resource.get("code", {}).get("coding", [{}])[0].get("code")


def with_condition_undated(resources: list[dict], code: str) -> list[dict]:
    """``resources`` with the Condition coded ``code`` made undated."""
    return [undated(r) if r["resourceType"] == "Condition" and code_of(r) == code else r for r in resources]


def quality(result: RetrospectiveResult) -> dict[str, int]:
    return dict(zip(result.data_quality["issue"], result.data_quality["n_patients"], strict=True))


@pytest.mark.parametrize("code, expected", [("G72.41", "inclusion_body_myositis"), ("M35.1", "overlap_myositis"),
                                            ("M33.00", "juvenile_dm"), ("M33.09", "juvenile_dm")])
def test_an_undated_exclusion_condition_excludes(code, expected):
    result = derive(reference_patient() + [undated(fb.condition(new_id(), PID, ICD10, code, day(0)))])
    assert reason(result) == expected
    assert quality(result) == {"condition_without_date": 1}


def test_a_condition_with_a_recorded_date_only_is_dated():
    res = reference_patient() + [fb.condition(new_id(), PID, ICD10, "G72.41", day(0), recorded_only=True)]
    result = derive(res)
    assert reason(result) == "inclusion_body_myositis" and quality(result) == {}


def test_an_undated_refuted_exclusion_is_ignored_and_not_counted():
    res = reference_patient() + [undated(fb.condition(new_id(), PID, ICD10, "G72.41", day(0), verification="refuted"))]
    result = derive(res)
    assert only_row(result)["group"] == "tacrolimus" and quality(result) == {}


def test_an_undated_iim_beside_a_dated_one_keeps_the_patient_and_is_counted():
    result = derive(reference_patient() + [undated(fb.condition(new_id(), PID, ICD10, "M33.20", day(0)))])
    assert only_row(result)["diagnosis_subset"] == "DM"
    assert quality(result) == {"condition_without_date": 1}


def test_only_an_undated_iim_passes_inclusion_and_the_malignancy_window_cannot_be_placed():
    """A malignancy 10 days after the (undated) IIM diagnosis, maybe: with no dated IIM the window has no start."""
    res = with_condition_undated(reference_patient(), "M33.10") + [fb.condition(new_id(), PID, ICD10, "C34.90", day(0))]
    result = derive(res)
    row = only_row(result)
    assert (row["group"], row["diagnosis_subset"]) == ("tacrolimus", "DM")
    assert quality(result) == {"condition_without_date": 1, "malignancy_window_not_evaluable": 1}


def test_an_undated_malignancy_does_not_exclude():
    result = derive(reference_patient() + [undated(fb.condition(new_id(), PID, ICD10, "C34.90", day(0)))])
    assert only_row(result)["group"] == "tacrolimus"
    assert quality(result) == {"condition_without_date": 1, "malignancy_window_not_evaluable": 1}


def test_a_dated_malignancy_outside_the_window_is_evaluable():
    result = derive(reference_patient() + [fb.condition(new_id(), PID, ICD10, "C34.90", day(-60 + 1096))])
    assert only_row(result)["group"] == "tacrolimus"
    assert "malignancy_window_not_evaluable" not in quality(result)


def test_the_malignancy_window_is_measured_from_the_first_dated_iim():
    """An undated IIM does not move the window's start: a malignancy within 3 years of the dated IIM excludes."""
    res = reference_patient() + [undated(fb.condition(new_id(), PID, ICD10, "M33.20", day(0))),
                                 fb.condition(new_id(), PID, ICD10, "C34.90", day(-60 + 1095))]
    assert reason(derive(res)) == "malignancy_within_3y"


def test_only_an_undated_ild_passes_inclusion_but_no_statement_can_qualify():
    result = derive(with_condition_undated(reference_patient(), "J84.10"))
    assert reason(result) == "no_qualifying_immunosuppressant"
    assert quality(result) == {"condition_without_date": 1, "ild_lookback_not_evaluable": 1}


def test_the_first_dated_ild_places_the_index_look_back():
    """An undated ILD beside a dated one 31 days after the immunosuppressant starts: the dated one decides."""
    res = reference_patient(ild=False) + [undated(fb.condition(new_id(), PID, ICD10, "J84.10", day(0))),
                                          fb.condition(new_id(), PID, ICD10, "J84.10", day(31))]
    assert reason(derive(res)) == "no_qualifying_immunosuppressant"


@pytest.mark.parametrize("system, code, subset", [(LOCAL, "cadm", "CADM"), (LOCAL, "antisynthetase-syndrome", "ASS")])
def test_an_undated_diagnosis_sets_the_diagnosis_subset(system, code, subset):
    result = derive(reference_patient() + [undated(fb.condition(new_id(), PID, system, code, day(0)))])
    assert only_row(result)["diagnosis_subset"] == subset


def undated_statement(code: str, **kw: Any) -> dict:
    return undated(drug(code, 0, 10, **kw))


def undated_procedure(**kw: Any) -> dict:
    return undated(fb.procedure(new_id("proc"), PID, SNOMED, "127788007", day(0), **kw))


def undated_observation(**kw: Any) -> dict:
    return undated(fb.observation(new_id("obs"), PID, LOINC, "2276-4", day(0), valueQuantity=fb.quantity(400, "ng/mL"), **kw))


def adverse_event(category: str = "infection", system: str = LOCAL, dated: bool = True) -> dict:
    """An actual, non-serious event on day 30 (or undated) coded ``category`` in ``system`` only."""
    ae = fb.adverse_event(new_id("ae"), PID, category, day(30), serious=False)
    ae["event"] = fb.concept(system, category)
    return ae if dated else undated(ae)


@pytest.mark.parametrize("issue, counted, not_counted", [
    ("medication_statement_without_date", [undated_statement(TACROLIMUS), undated_statement(PREDNISONE)],
     [undated_statement(MTX, status="entered-in-error"), undated_statement("99999")]),
    ("procedure_without_date", [undated_procedure(), undated_procedure()],
     [undated_procedure(status="not-done"), undated(fb.procedure(new_id(), PID, SNOMED, "1", day(0)))]),
    ("observation_without_date", [undated_observation(), undated_observation(status="preliminary")],
     [undated_observation(status="entered-in-error"), undated(fb.observation(new_id(), PID, LOINC, "0000-0", day(0)))]),
    ("adverse_event_without_date", [adverse_event(dated=False), adverse_event("hepatic", dated=False)],
     [{**adverse_event(dated=False), "actuality": "potential"}]),
    ("condition_without_date", [undated(fb.condition(new_id(), PID, ICD10, "M33.20", day(0))),
                                undated(fb.condition(new_id(), PID, ICD10, "J84.9", day(0)))],
     [undated(fb.condition(new_id(), PID, ICD10, "I10", day(0))),
      undated(fb.condition(new_id(), PID, ICD10, "C34.90", day(0), verification="entered-in-error"))]),
])
def test_each_undated_fact_of_a_mapped_concept_is_counted_once_per_patient(issue, counted, not_counted):
    """Two undated facts of mapped concepts count the patient once; undated facts of no concept, or ignored by
    their status, are not counted. The patient stays in the cohort: none of these facts is needed."""
    result = derive(reference_patient() + counted + not_counted)
    assert only_row(result)["group"] == "tacrolimus"
    assert quality(result) == {issue: 1}


def test_an_adverse_event_of_no_mapped_category_is_counted_and_has_no_safety_row():
    """Coded in SNOMED only (a legal coding, not one the concept map names): no category, so no safety row, and the
    patient is counted; an event with a mapped coding beside it is read, whatever the other codings."""
    foreign = adverse_event("40733004", system=SNOMED)  # SNOMED: infectious disease
    both = adverse_event("hepatic")
    both["event"]["coding"].append({"system": SNOMED, "code": "235856003"})
    undated_foreign = adverse_event("40733004", system=SNOMED, dated=False)
    potential = {**adverse_event("40733004", system=SNOMED), "actuality": "potential"}
    tables = derive_cohort_tables(facts_of(reference_patient() + [foreign, both, undated_foreign, potential]),
                                  RuleParams(data_cutoff=date(2025, 1, 1))).tables
    events = tables["safety_events"]
    assert events[["patient_id", "category", "day"]].values.tolist() == [[PID, "hepatic", 30]]
    dq = tables["cohort_data_quality"]
    assert dq[dq["cohort"] == "retrospective"][["issue", "n_patients"]].values.tolist() == [["adverse_event_category_not_mapped", 1]]


def test_an_undated_adverse_event_has_no_safety_row():
    tables = derive_cohort_tables(facts_of(reference_patient() + [adverse_event(dated=False), adverse_event("renal")]),
                                  RuleParams(data_cutoff=date(2025, 1, 1))).tables
    assert tables["safety_events"]["category"].tolist() == ["renal"]
    dq = tables["cohort_data_quality"]
    assert dq[["issue", "n_patients"]].values.tolist() == [["adverse_event_without_date", 1]]


def test_patients_outside_the_cohort_are_counted_too():
    """Data quality covers every patient of the hospital: here one without any IIM condition."""
    other = [fb.patient("other", "male", "1950-01-01"),
             undated(fb.observation("o-other", "other", LOINC, "2276-4", day(0), valueQuantity=fb.quantity(5, "ng/mL")))]
    result = derive(reference_patient() + other)
    assert list(result.exclusions["reason"]) == ["no_iim_condition"]
    assert quality(result) == {"observation_without_date": 1}


def test_an_undated_weight_is_no_weight_for_the_relapse_rule():
    """An undated body weight cannot be 'on or before' a day: criterion (iii) stays unevaluable, as without it."""
    res = reference_patient(weight=None) + [undated(obs_quantity("29463-7", -3, 60.0, "kg"))]
    res += [drug(PREDNISONE, 40, 60, dose=80), fb.observation(new_id(), PID, LOCAL, "symptom-exacerbation", day(40),
                                                              valueCodeableConcept=fb.concept(LOCAL, "muscular"))]
    result = derive(res)
    assert only_row(result)["relapse_event"] == 0
    assert quality(result) == {"observation_without_date": 1, "relapse_gc_criterion_not_evaluable_no_weight": 1}


def test_an_undated_cadm_sets_the_prospective_diagnosis_subset_and_leaves_enrolment_alone():
    """The prospective rules read diagnoses only for the diagnosis subset (the shared covariates)."""
    params = ProspectiveParams(rules=RuleParams(data_cutoff=date(2025, 1, 1)), enrolment_start=date(2016, 1, 1),
                               enrolment_end=date(2016, 12, 31))
    res = [fb.research_study("study"), fb.research_subject(new_id("rs"), PID, "study", day(-3), status="off-study", end=day(365)),
           *with_condition_undated(reference_patient(), "M33.10"), undated(fb.condition(new_id(), PID, LOCAL, "cadm", day(0)))]
    result = derive_prospective(facts_of(res), params)
    assert result.cohort[["group", "diagnosis_subset"]].values.tolist() == [["tacrolimus", "CADM"]]
