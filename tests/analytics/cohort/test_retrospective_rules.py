"""The retrospective cohort rules of study-contract.md §2, one small FHIR fixture each."""
from __future__ import annotations

from datetime import date

import pytest

from synthetic import fhir_builders as fb
from synthetic.fhir_builders import ICD10, LOCAL
from tests.fhir_fixtures import (
    CTX,
    INDEX,
    MTX,
    PID,
    PREDNISOLONE,
    PREDNISONE,
    TACROLIMUS,
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


def test_reference_patient_is_in_the_tacrolimus_group_with_full_follow_up():
    row = only_row(derive(reference_patient()))
    assert row["group"] == "tacrolimus" and row["conventional_agent"] is None
    assert row["index_date"] == INDEX
    assert row["age"] == 50 and row["sex"] == "female" and row["diagnosis_subset"] == "DM"
    assert row["initial_pred_mg_day"] == 50.0
    assert (row["followup_days"], row["death_event"], row["relapse_event"], row["resp_relapse_event"]) == (365, 0, 0, 0)


def test_undotted_icd10_codes_match():
    res = reference_patient(ild=False) + [fb.condition(new_id(), PID, ICD10, "J8410", day(-30))]
    assert only_row(derive(res))["group"] == "tacrolimus"


def test_myositis_with_respiratory_involvement_counts_as_iim_and_ild():
    res = [r for r in reference_patient(ild=False) if r.get("code", {}).get("coding", [{}])[0].get("code") != "M33.10"]
    res.append(fb.condition(new_id(), PID, ICD10, "M33.11", day(-30)))
    assert only_row(derive(res))["diagnosis_subset"] == "DM"


def test_refuted_ild_is_ignored():
    res = reference_patient(ild=False) + [fb.condition(new_id(), PID, ICD10, "J84.10", day(-30), verification="refuted")]
    assert reason(derive(res)) == "no_ild_condition"


@pytest.mark.parametrize("gap_days, expected", [(1095, "malignancy_within_3y"), (-1095, "malignancy_within_3y"), (1096, None)])
def test_malignancy_within_three_years_of_first_iim(gap_days, expected):
    first_iim = -60
    res = reference_patient() + [fb.condition(new_id(), PID, ICD10, "C34.90", day(first_iim + gap_days))]
    assert reason(derive(res)) == expected


@pytest.mark.parametrize("gc_start, expected", [(30, None), (31, "no_glucocorticoid_at_index"), (-35, None)])
def test_glucocorticoid_within_30_days_of_the_immunosuppressant(gc_start, expected):
    # A GC course of 10 days starting gc_start: -35 ends on day -26, inside the ±30 d window.
    res = reference_patient(gc=(gc_start, gc_start + 9))
    assert reason(derive(res)) == expected


def test_immunosuppressant_started_more_than_30_days_before_ild_does_not_qualify():
    res = [r for r in reference_patient(ild=False)] + [fb.condition(new_id(), PID, ICD10, "J84.10", day(31))]
    assert reason(derive(res)) == "no_qualifying_immunosuppressant"


def test_tie_at_index_picks_the_first_agent_in_contract_order():
    res = reference_patient(agent=MTX) + [drug(CTX, 0, 100)]
    row = only_row(derive(res))
    assert (row["group"], row["conventional_agent"]) == ("conventional", "CTX")


def test_tacrolimus_and_ctx_in_the_first_year_is_mixed_exposure():
    assert reason(derive(reference_patient() + [drug(CTX, 200, 260)])) == "mixed_exposure"


def test_an_earlier_course_that_ended_before_index_does_not_make_mixed_exposure():
    # MTX started more than 30 d before the first ILD condition (day -30) and stopped before index.
    row = only_row(derive(reference_patient() + [drug(MTX, -200, -100)]))
    assert row["group"] == "tacrolimus" and row["index_date"] == INDEX


def test_entered_in_error_statement_is_ignored():
    res = reference_patient(agent=CTX) + [drug(TACROLIMUS, 10, None, status="entered-in-error")]
    assert only_row(derive(res))["group"] == "conventional"


@pytest.mark.parametrize("birth, age", [("1966", 50), ("1966-04", 49), ("1966-03-01", 50), ("1966-03-02", 49)])
def test_age_in_completed_years_with_partial_birth_dates_imputed(birth, age):
    assert only_row(derive(reference_patient(birth=birth)))["age"] == age


def test_under_18_at_index_is_excluded():
    assert reason(derive(reference_patient(birth="1998-03-02"))) == "age_under_18"


def test_index_outside_the_study_window_is_excluded():
    assert reason(derive(reference_patient(), window_end=date(2016, 2, 29))) == "index_outside_window"


def test_death_without_a_date_is_excluded_and_reported():
    result = derive(reference_patient(deceased=True))
    assert reason(result) == "death_date_unknown"
    assert result.data_quality.set_index("issue").loc["death_date_unknown", "n_patients"] == 1


def test_death_within_follow_up_ends_follow_up_and_censors_a_later_relapse():
    res = reference_patient(deceased=day(100), last_contact=90) + [exacerbation(150), radiological(150)]
    row = only_row(derive(res))
    assert (row["death_event"], row["death_days"], row["followup_days"]) == (1, 100, 100)
    assert (row["relapse_event"], row["relapse_days"]) == (0, 100)


def test_follow_up_is_censored_at_the_last_contact():
    row = only_row(derive(reference_patient(last_contact=200, gc=(-5, 150))))
    assert (row["followup_days"], row["death_event"]) == (200, 0)


def test_follow_up_is_censored_at_the_data_cutoff():
    row = only_row(derive(reference_patient(), data_cutoff=day(120)))
    assert row["followup_days"] == 120


@pytest.mark.parametrize("lab_day, value, expected", [(114, 1001, 1), (86, 1001, 1), (85, 1001, 0), (100, 1000, 0)])
def test_relapse_by_ferritin_above_twice_baseline_within_14_days(lab_day, value, expected):
    res = reference_patient() + [exacerbation(100), obs_quantity("2276-4", lab_day, value, "ng/mL")]
    row = only_row(derive(res))
    assert (row["relapse_event"], row["relapse_days"]) == (expected, 100 if expected else 365)


def test_relapse_by_radiological_progression_and_respiratory_relapse():
    res = reference_patient() + [exacerbation(50, "respiratory"), radiological(60)]
    row = only_row(derive(res))
    assert (row["relapse_event"], row["relapse_days"], row["resp_relapse_event"], row["resp_relapse_days"]) == (1, 50, 1, 50)


def test_negative_radiological_progression_is_not_a_criterion():
    row = only_row(derive(reference_patient() + [exacerbation(50, "respiratory"), radiological(50, positive=False)]))
    assert (row["relapse_event"], row["resp_relapse_event"]) == (0, 0)


@pytest.mark.parametrize("rescue_mg, expected", [(35, 1), (5, 0)])
def test_relapse_by_glucocorticoid_increase_above_half_mg_per_kg(rescue_mg, expected):
    # 60 kg: the total must exceed 30 mg/day. The taper gives 50 mg/day until day 27, then nothing.
    res = reference_patient(gc=(-5, 27)) + [exacerbation(80), drug(PREDNISONE, 75, 90, dose=rescue_mg)]
    assert only_row(derive(res))["relapse_event"] == expected


def test_glucocorticoid_increase_without_a_weight_is_counted_as_not_evaluable():
    res = reference_patient(gc=(-5, 27), weight=None) + [exacerbation(80), drug(PREDNISONE, 75, 90, dose=35)]
    result = derive(res)
    assert only_row(result)["relapse_event"] == 0
    issues = result.data_quality.set_index("issue")["n_patients"]
    assert issues["relapse_gc_criterion_not_evaluable_no_weight"] == 1


def test_initial_dose_sums_overlapping_statements_in_prednisolone_equivalents():
    # Methylprednisolone 0.5 g/day (×1.25) on top of prednisone 50 mg/day.
    pulse = fb.medication_statement(new_id("ms"), PID, fb.RXNORM, "6902", day(-2), day(0), dose=0.5, unit="g", frequency=1)
    assert only_row(derive(reference_patient() + [pulse]))["initial_pred_mg_day"] == 50 + 625


def test_plasma_exchange_and_ivig_within_30_days_of_index():
    res = reference_patient() + [
        fb.procedure(new_id("proc"), PID, fb.SNOMED, "127788007", day(30)),
        fb.medication_statement(new_id("ms"), PID, LOCAL, "ivig", day(31), day(35), dose=20, unit="g"),
    ]
    row = only_row(derive(res))
    assert (row["plasma_exchange"], row["ivig"]) == (1, 0)


def test_attrition_counts_each_patient_once_at_its_first_failed_step():
    result = derive(reference_patient(ild=False, gc=None))
    att = result.attrition.set_index("reason")
    assert att.loc["no_ild_condition", "n_excluded"] == 1
    assert att.loc["no_glucocorticoid_at_index", "n_excluded"] == 0
    assert list(att["n_remaining"])[-1] == 0


def test_relapse_by_esr_alone():
    row = only_row(derive(reference_patient() + [exacerbation(200), obs_quantity("4537-7", 205, 61, "mm/h")]))
    assert (row["relapse_event"], row["relapse_days"]) == (1, 200)


def test_weight_in_pounds_is_converted_before_the_half_mg_per_kg_threshold():
    # 150 lb = 68 kg: 35 mg/day is 0.51 mg/kg (relapse); read as kg it would be 0.23 (none).
    res = reference_patient(gc=(-5, 27), weight=None) + [obs_quantity("29463-7", -3, 150, "[lb_av]"), exacerbation(80),
                                                         drug(PREDNISONE, 75, 90, dose=35)]
    assert only_row(derive(res))["relapse_event"] == 1


def test_preliminary_result_is_superseded_by_the_final_one_of_the_same_day():
    prelim = obs_quantity("2276-4", 100, 5000, "ng/mL")
    prelim["status"] = "preliminary"
    final = obs_quantity("2276-4", 100, 600, "ng/mL")
    row = only_row(derive(reference_patient() + [exacerbation(100), prelim, final]))
    assert row["relapse_event"] == 0


def test_entered_in_error_observation_is_ignored():
    wrong = obs_quantity("2276-4", 100, 5000, "ng/mL")
    wrong["status"] = "entered-in-error"
    assert only_row(derive(reference_patient() + [exacerbation(100), wrong]))["relapse_event"] == 0


def test_a_procedure_that_was_not_completed_is_not_plasma_exchange():
    res = reference_patient() + [fb.procedure(new_id("proc"), PID, fb.SNOMED, "127788007", day(3), status="not-done")]
    assert only_row(derive(res))["plasma_exchange"] == 0


@pytest.mark.parametrize("status, relapse", [("completed", 0), ("active", 1)])
def test_effective_datetime_is_one_day_unless_active(status, relapse):
    # Prednisone 40 mg by effectiveDateTime on day 60; on day 90 prednisolone 5 mg is added. Only if the
    # prednisone is still running (active) does day 90 total 45 mg > 30 mg (0.5 mg/kg at 60 kg).
    res = reference_patient(gc=(-5, 27)) + [drug(PREDNISONE, 60, None, dose=40, status=status, single_day=True),
                                            drug(PREDNISOLONE, 90, 95, dose=5), exacerbation(90)]
    assert only_row(derive(res))["relapse_event"] == relapse


def test_an_ongoing_statement_ends_the_day_before_the_next_of_the_same_ingredient():
    from analytics.cohort.facts import OPEN_END
    from tests.fhir_fixtures import facts_of

    res = reference_patient(gc=None) + [drug(PREDNISONE, 0, None, dose=60, status="active"),
                                        drug(PREDNISONE, 100, None, dose=20, status="active"),
                                        drug(PREDNISOLONE, 50, None, dose=5, status="active")]
    ex = facts_of(res).exposures
    gc = ex[ex["concept"] == "glucocorticoid"].set_index("start")["end"].to_dict()
    assert gc == {day(0): day(99), day(100): OPEN_END, day(50): OPEN_END}  # prednisolone is another ingredient


def test_death_after_day_365_is_not_an_event():
    row = only_row(derive(reference_patient(deceased=day(366))))
    assert (row["death_event"], row["followup_days"]) == (0, 365)


def test_a_relapse_on_the_day_of_death_counts():
    res = reference_patient(deceased=day(100), last_contact=90) + [exacerbation(100), radiological(100)]
    row = only_row(derive(res))
    assert (row["death_event"], row["relapse_event"], row["relapse_days"]) == (1, 1, 100)


def test_exacerbation_on_index_day_and_criteria_before_day_1_do_not_count():
    res = reference_patient() + [exacerbation(0), radiological(0), exacerbation(10), radiological(0),
                                 obs_quantity("2276-4", 0, 5000, "ng/mL")]
    assert only_row(derive(res))["relapse_event"] == 0


def test_respiratory_relapse_needs_a_respiratory_exacerbation():
    row = only_row(derive(reference_patient() + [exacerbation(50, "skin"), radiological(55)]))
    assert (row["relapse_event"], row["resp_relapse_event"]) == (1, 0)


def test_facts_about_absent_or_missing_patients_are_counted_not_dropped():
    orphan = fb.condition(new_id(), "ghost", ICD10, "J84.10", day(0))
    nobody = fb.condition(new_id(), PID, ICD10, "J84.10", day(0))
    del nobody["subject"]
    result = derive(reference_patient() + [orphan, nobody])
    issues = result.data_quality.set_index("issue")["n_patients"]
    assert issues["reference_to_absent_patient"] == 1 and issues["resource_without_patient_subject"] == 1
    assert only_row(result)["group"] == "tacrolimus"


SNOMED_DYSPNEA = {"system": fb.SNOMED, "code": "267036007", "display": "Dyspnea"}


@pytest.mark.parametrize("order", ["snomed_first", "local_first"])
def test_respiratory_relapse_does_not_depend_on_coding_order(order):
    """Issue 12's regression: a SNOMED coding listed before the local `respiratory` one lost the relapse."""
    exac = exacerbation(50, "respiratory")
    codings = exac["valueCodeableConcept"]["coding"]
    exac["valueCodeableConcept"]["coding"] = [SNOMED_DYSPNEA, *codings] if order == "snomed_first" else [*codings, SNOMED_DYSPNEA]
    row = only_row(derive(reference_patient() + [exac, radiological(60)]))
    assert (row["resp_relapse_event"], row["resp_relapse_days"]) == (1, 50)


def test_an_exacerbation_whose_codings_disagree_has_no_category_and_is_counted():
    exac = exacerbation(50, "respiratory")
    exac["valueCodeableConcept"]["coding"].append({"system": LOCAL, "code": "skin"})
    result = derive(reference_patient() + [exac, radiological(60)])
    row = only_row(result)
    assert (row["relapse_event"], row["resp_relapse_event"]) == (1, 0)
    assert result.data_quality.set_index("issue")["n_patients"]["observation_value_codings_disagree"] == 1


def test_a_category_only_in_a_foreign_system_is_not_ours():
    """Without our coding (or a hospital concept-map entry for SNOMED), Dyspnea is not `respiratory`."""
    exac = exacerbation(50, "respiratory")
    exac["valueCodeableConcept"]["coding"] = [SNOMED_DYSPNEA]
    row = only_row(derive(reference_patient() + [exac, radiological(60)]))
    assert (row["relapse_event"], row["resp_relapse_event"]) == (1, 0)


@pytest.mark.parametrize("order", ["foreign_first", "foreign_last"])
def test_refuted_verification_status_is_read_from_any_coding(order):
    refuted = fb.condition(new_id("cond"), PID, ICD10, "J84.10", day(-30), verification="refuted")
    foreign = {"system": "urn:hospital:dx-status", "code": "R"}
    codings = refuted["verificationStatus"]["coding"]
    refuted["verificationStatus"]["coding"] = [foreign, *codings] if order == "foreign_first" else [*codings, foreign]
    assert reason(derive(reference_patient(ild=False) + [refuted])) == "no_ild_condition"


def test_a_hospital_with_no_conditions_or_no_patient_subjects_derives_empty_tables_not_a_crash():
    """Every statement about no known patient (and no Condition at all) ends in counts, not an exception."""
    nobody = drug(TACROLIMUS, 0, None)
    nobody["subject"] = {"reference": "https://evil.example.org/fhir/Patient/p1"}
    result = derive([fb.patient(PID, "female", "1966-01-15"), nobody])
    assert result.cohort.empty
    assert reason(result) == "no_iim_condition"
    assert result.data_quality.set_index("issue")["n_patients"]["resource_without_patient_subject"] == 1


# -- rules a second reading of the contract found without a pinning test -------------------------------------

def _dx(system: str, code: str, d: int = -60) -> dict:
    return fb.condition(new_id("cond"), PID, system, code, day(d))


@pytest.mark.parametrize("extra, subset", [
    ([(LOCAL, "cadm"), (LOCAL, "antisynthetase-syndrome"), (ICD10, "M33.20")], "CADM"),
    ([(LOCAL, "antisynthetase-syndrome"), (ICD10, "M33.20")], "ASS"),
    ([(ICD10, "M33.99")], "DM"),   # dermatopolymyositis, unspecified, counts as DM
])
def test_diagnosis_subset_priority_cadm_then_ass_then_dm_then_pm(extra, subset):
    res = reference_patient() + [_dx(s, c) for s, c in extra]
    assert only_row(derive(res))["diagnosis_subset"] == subset


def test_polymyositis_alone_is_pm():
    res = [r for r in reference_patient() if not (r["resourceType"] == "Condition" and "M33.10" in str(r["code"]))]
    assert only_row(derive(res + [_dx(ICD10, "M33.29")]))["diagnosis_subset"] == "PM"


@pytest.mark.parametrize("code, expected", [("G72.41", "inclusion_body_myositis"), ("M35.1", "overlap_myositis"),
                                            ("M33.05", "juvenile_dm")])
def test_each_exclusion_diagnosis_gives_its_own_attrition_reason(code, expected):
    assert reason(derive(reference_patient() + [_dx(ICD10, code, -50)])) == expected


def test_ivig_started_within_30_days_of_index_is_a_covariate():
    ivig = fb.medication_statement(new_id("ms"), PID, LOCAL, "ivig", day(30), day(34), dose=20, unit="g")
    assert only_row(derive(reference_patient() + [ivig]))["ivig"] == 1


def test_a_condition_with_only_a_recorded_date_counts_on_that_date():
    res = [r for r in reference_patient(ild=False)]
    res.append(fb.condition(new_id("cond"), PID, ICD10, "J84.10", day(-30), recorded_only=True))
    assert only_row(derive(res))["group"] == "tacrolimus"


def test_plasma_exchange_dated_by_performed_period_start():
    pe = fb.procedure(new_id("proc"), PID, fb.SNOMED, "127788007", day(10))
    pe["performedPeriod"] = {"start": pe.pop("performedDateTime")}
    pe_local = fb.procedure(new_id("proc"), PID, LOCAL, "plasma-exchange", day(-31))  # outside ±30 d
    assert only_row(derive(reference_patient() + [pe, pe_local]))["plasma_exchange"] == 1
    assert only_row(derive(reference_patient() + [pe_local]))["plasma_exchange"] == 0


def test_baseline_is_the_value_closest_to_index_the_earlier_on_a_tie_within_minus_30_to_plus_7():
    # Baselines 500 (day -2, from the reference patient); add 100 at day +2 (a tie: the earlier, 500, wins).
    res = reference_patient() + [obs_quantity("2276-4", 2, 100, "ng/mL"), exacerbation(100),
                                 obs_quantity("2276-4", 100, 900, "ng/mL")]
    assert only_row(derive(res))["relapse_event"] == 0           # 900 is not > 2 × 500
    res = reference_patient() + [obs_quantity("2276-4", 1, 100, "ng/mL"), exacerbation(100),
                                 obs_quantity("2276-4", 100, 900, "ng/mL")]
    assert only_row(derive(res))["relapse_event"] == 1           # day +1 is closer: 900 > 2 × 100


def test_relapse_gc_threshold_uses_the_latest_weight_on_or_before_the_day_and_is_strict():
    # 60 kg at day -3; 80 kg at day 70: a rescue of 35 mg/day on day 75 is not > 0.5 × 80.
    res = reference_patient(gc=(-5, 27)) + [exacerbation(80), drug(PREDNISONE, 75, 90, dose=35),
                                            obs_quantity("29463-7", 70, 80, "kg")]
    assert only_row(derive(res))["relapse_event"] == 0
    res = reference_patient(gc=(-5, 27)) + [exacerbation(80), drug(PREDNISONE, 75, 90, dose=30)]
    assert only_row(derive(res))["relapse_event"] == 0           # exactly 0.5 mg/kg is not "strictly >"


def test_death_before_a_respiratory_relapse_censors_it_at_death():
    res = reference_patient(deceased=day(40)) + [exacerbation(50, "respiratory"), radiological(50)]
    row = only_row(derive(res))
    assert (row["resp_relapse_event"], row["resp_relapse_days"], row["death_days"]) == (0, 40, 40)


@pytest.mark.parametrize("status", ["entered-in-error", "not-taken"])
def test_a_statement_with_an_ignored_status_gives_no_exposure(status):
    """Contract §1: MedicationStatement.status entered-in-error and not-taken are ignored (a tacrolimus statement
    with either leaves the patient conventional)."""
    res = reference_patient(agent=CTX) + [drug(TACROLIMUS, 10, None, status=status)]
    assert only_row(derive(res))["group"] == "conventional"


@pytest.mark.parametrize("status", ["entered-in-error", "cancelled"])
def test_an_observation_with_an_ignored_status_is_not_read(status):
    wrong = obs_quantity("2276-4", 100, 5000, "ng/mL")
    wrong["status"] = status
    assert only_row(derive(reference_patient() + [exacerbation(100), wrong]))["relapse_event"] == 0


def test_last_contact_counts_resources_of_every_kind_but_never_an_ignored_one_or_a_server_timestamp():
    """Last contact is the latest clinical date on any counted resource: an adverse event on day 250 extends
    follow-up; an entered-in-error observation on day 300 and a meta.lastUpdated on day 330 do not."""
    base = reference_patient(last_contact=200, gc=(-5, 150))
    ignored = obs_quantity("4537-7", 300, 20, "mm/h")
    ignored["status"] = "entered-in-error"
    touched = obs_quantity("4537-7", 150, 20, "mm/h")
    touched["meta"] = {"versionId": "2", "lastUpdated": f"{day(330).isoformat()}T08:00:00Z"}
    assert only_row(derive(base + [ignored, touched]))["followup_days"] == 200
    event = fb.adverse_event(new_id("ae"), PID, "infection", day(250), serious=False)
    assert only_row(derive(base + [ignored, touched, event]))["followup_days"] == 250


def test_the_index_is_the_first_immunosuppressant_that_has_a_glucocorticoid_within_30_days():
    """CTX on day -20 has no glucocorticoid within ±30 d (it starts on day 20); tacrolimus on day 0 has: the
    index is day 0, not the earlier start."""
    res = reference_patient(gc=(20, 400)) + [drug(CTX, -20, -15)]
    row = only_row(derive(res))
    assert (row["index_date"], row["group"]) == (day(0), "tacrolimus")


def test_an_entered_in_error_condition_is_ignored():
    """Contract §1: verificationStatus entered-in-error is ignored like refuted (its own rule, its own test)."""
    res = reference_patient(ild=False) + [fb.condition(new_id("cond"), PID, ICD10, "J84.10", day(-30), verification="entered-in-error")]
    assert reason(derive(res)) == "no_ild_condition"


def test_an_observation_in_a_unit_that_cannot_be_converted_has_no_value_and_is_reported():
    """A ferritin in furlongs is not read as a value (no relapse by ferritin from it) and counted in data quality."""
    result = derive(reference_patient() + [exacerbation(50), obs_quantity("2276-4", 52, 5000, "furlong")])
    row = only_row(result)
    assert row["relapse_event"] == 0
    assert result.data_quality.set_index("issue")["n_patients"].to_dict() == {"observation_unit_not_convertible": 1}


def test_a_missing_birth_date_excludes_at_the_age_step_and_is_reported():
    """No birthDate: age at index cannot be shown to be 18 or more; excluded as age_under_18 and reported."""
    res = reference_patient()
    del res[0]["birthDate"]
    result = derive(res)
    assert reason(result) == "age_under_18"
    assert result.data_quality.set_index("issue")["n_patients"].to_dict() == {"birth_date_missing": 1}


@pytest.mark.parametrize("first", [True, False])
def test_a_same_day_tie_of_baselines_is_decided_by_value_not_by_the_order_of_ids(first):
    """Two ferritins on the baseline's day (500 from the reference patient, 100 added): the lowest is the
    baseline whichever the table lists first (the warehouse lists by id, the hospital's choice)."""
    extra = obs_quantity("2276-4", -2, 100, "ng/mL")
    base = reference_patient()
    res = ([extra] + base if first else base + [extra]) + [exacerbation(100), obs_quantity("2276-4", 100, 900, "ng/mL")]
    assert only_row(derive(res))["relapse_event"] == 1  # 900 > 2 x 100 (not > 2 x 500)


@pytest.mark.parametrize("first", [True, False])
def test_a_same_day_tie_of_weights_is_decided_by_value_not_by_the_order_of_ids(first):
    """Two weights on the latest weighing day (60 kg from the reference patient, 80 kg added): the lowest is read,
    so a rescue of 35 mg/day (> 0.5 x 60, not > 0.5 x 80) is a relapse whichever the table lists first."""
    extra = obs_quantity("29463-7", -3, 80, "kg")
    base = reference_patient(gc=(-5, 27))
    res = ([extra] + base if first else base + [extra]) + [exacerbation(80), drug(PREDNISONE, 75, 90, dose=35)]
    assert only_row(derive(res))["relapse_event"] == 1


@pytest.mark.parametrize("death_day, issue", [(-5, "death_before_index"), (0, "death_on_index_day")])
def test_a_death_on_or_before_index_is_no_event_and_is_shown_in_data_quality(death_day, issue):
    """Contract §2: death is a death "within follow-up", and follow-up is days 1 ... 365 after index."""
    result = derive(reference_patient(deceased=day(death_day)))
    row = only_row(result)
    assert (row["death_event"], row["death_days"], row["followup_days"]) == (0, 0, 0)
    assert (row["relapse_event"], row["relapse_days"]) == (0, 0)
    issues = result.data_quality.set_index("issue")["n_patients"]
    assert issues[issue] == 1


def test_a_death_on_day_1_is_an_event_and_not_shown_in_data_quality():
    result = derive(reference_patient(deceased=day(1)))
    row = only_row(result)
    assert (row["death_event"], row["death_days"]) == (1, 1)
    assert not {"death_before_index", "death_on_index_day"} & set(result.data_quality["issue"])


def test_the_end_of_a_statement_without_a_start_is_still_a_last_contact():
    """Contract §2: last contact counts MedicationStatement effective start *or end*."""
    no_start = drug(PREDNISONE, 10, 300)
    del no_start["effectivePeriod"]["start"]
    row = only_row(derive(reference_patient(last_contact=200, gc=(-5, 27)) + [no_start]))
    assert row["followup_days"] == 300


@pytest.mark.parametrize("baseline_day, read", [(-30, True), (-31, False), (7, True), (8, False)])
def test_the_baseline_window_is_minus_30_to_plus_7_both_ends_included(baseline_day, read):
    """The reference patient's ferritin (500, day -2) is replaced by 100 on ``baseline_day``; 900 on day 100 is
    above twice 100, so a relapse shows that the value was read as the baseline."""
    base = [r for r in reference_patient() if not (r["resourceType"] == "Observation"
                                                    and r["code"]["coding"][0]["code"] == "2276-4")]
    res = base + [obs_quantity("2276-4", baseline_day, 100, "ng/mL"), exacerbation(100),
                  obs_quantity("2276-4", 100, 900, "ng/mL")]
    assert only_row(derive(res))["relapse_event"] == int(read)
