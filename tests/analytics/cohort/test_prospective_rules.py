"""The prospective cohort rules of study-contract.md §3, and safety events, one fixture each."""
from __future__ import annotations

from datetime import date

import pytest

from analytics.cohort.params import RuleParams
from analytics.cohort.prospective import ProspectiveParams, derive_prospective
from analytics.cohort.safety import drug_discontinuations, safety_events
from synthetic import fhir_builders as fb
from synthetic.fhir_builders import LOCAL, RXNORM
from tests.fhir_fixtures import PID, day, drug, facts_of, new_id, reference_patient

STUDY = fb.research_study("study")
PIRFENIDONE = "1592254"


def enrol(start: int = -3, status: str = "off-study", end: int | None = 365) -> dict:
    return fb.research_subject(new_id("rs"), PID, "study", day(start), status=status, end=None if end is None else day(end))


def pirfenidone(start: int, per_dose: float, times_a_day: int = 3) -> dict:
    return fb.medication_statement(new_id("ms"), PID, RXNORM, PIRFENIDONE, day(start), day(365), dose=per_dose,
                                   frequency=times_a_day)


def scale(code: str, d: int, value: int) -> dict:
    return fb.observation(new_id("obs"), PID, LOCAL, code, day(d), valueInteger=value)


def derive(resources: list[dict]):
    return derive_prospective(facts_of([STUDY, *resources]), ProspectiveParams(rules=RuleParams(data_cutoff=date(2025, 1, 1))))


def outcome(result) -> str:
    if len(result.cohort):
        return str(result.cohort["group"].iloc[0])
    return str(result.exclusions["reason"].iloc[0])


def params_2016() -> ProspectiveParams:
    """The fixtures' index (2016) is before the contract's enrolment window: shift the window, not the data."""
    return ProspectiveParams(rules=RuleParams(data_cutoff=date(2025, 1, 1)), enrolment_start=date(2016, 1, 1),
                             enrolment_end=date(2016, 12, 31))


def derive16(resources: list[dict]):
    return derive_prospective(facts_of([STUDY, *resources]), params_2016())


def test_enrolled_patient_on_tacrolimus_without_pirfenidone_is_in_the_tacrolimus_group():
    result = derive16(reference_patient() + [enrol()])
    row = result.cohort.iloc[0]
    assert (row["group"], row["index_date"], row["enrolment_date"]) == ("tacrolimus", day(0), day(-3))


def test_only_subjects_of_the_study_count():
    other = fb.research_study("other")
    other["identifier"][0]["value"] = "ChiCTR0000000000"
    rs = enrol()
    rs["study"] = {"reference": "ResearchStudy/other"}
    result = derive_prospective(facts_of([STUDY, other, *reference_patient(), rs]), params_2016())
    assert result.attrition.loc[0, "n_remaining"] == 0


def test_enrolment_outside_the_window():
    assert outcome(derive(reference_patient() + [enrol()])) == "enrolment_outside_window"


def test_no_tacrolimus_after_enrolment():
    assert outcome(derive16(reference_patient(agent="3002") + [enrol()])) == "no_tacrolimus"


@pytest.mark.parametrize("per_dose, start, expected", [(200, 10, "combination"), (300, 90, "combination"),
                                                       (600, 10, "pirfenidone_other_dose"),
                                                       (300, 91, "pirfenidone_other_dose"),
                                                       (150, 10, "pirfenidone_other_dose")])
def test_low_dose_pirfenidone_started_within_90_days(per_dose, start, expected):
    result = derive16(reference_patient() + [enrol(), pirfenidone(start, per_dose)])
    assert outcome(result) == expected
    if expected == "combination":
        assert result.cohort["pirfenidone_mg_day"].iloc[0] == per_dose * 3


def test_withdrawal_before_12_months_excludes_but_death_does_not():
    assert outcome(derive16(reference_patient() + [enrol(status="withdrawn", end=200)])) == "withdrawn_before_12m"
    died = derive16(reference_patient(deceased=day(200), last_contact=190) + [enrol(status="off-study", end=200)])
    assert outcome(died) == "tacrolimus" and died.cohort["death_event"].iloc[0] == 1


def test_lost_to_follow_up_when_alive_and_last_seen_before_12_months():
    result = derive16(reference_patient(last_contact=300, gc=(-5, 250)) + [enrol(status="on-study", end=None)])
    assert outcome(result) == "lost_to_follow_up_before_12m"


def test_visit_value_is_the_closest_to_the_nominal_day_earlier_on_a_tie():
    res = reference_patient() + [enrol(), scale("mmrc", 25, 3), scale("mmrc", 35, 2), scale("mmrc", 100, 1),
                                 scale("mmrc", 80, 5), scale("mmrc", -20, 4)]
    visits = derive16(res).visits
    mmrc = visits[visits["measure"] == "mmrc"].set_index("visit_month")
    assert mmrc.loc[1, "value"] == 3 and mmrc.loc[1, "day"] == 25      # 25 and 35 tie at 5 days from 30
    assert mmrc.loc[3, "value"] == 5 and mmrc.loc[3, "day"] == 80      # days 80 and 100 tie at 10 from 90
    assert 0 not in mmrc.index                                          # day -20 is outside -14 … 7


def test_hrct_components_and_the_analysable_flag():
    def hrct(d: int, total: int) -> dict:
        obs = fb.observation(new_id("obs"), PID, LOCAL, "hrct-score", day(d), valueInteger=total)
        obs["component"] = [{"code": fb.concept(LOCAL, "reticular"), "valueInteger": total // 2}]
        return obs
    result = derive16(reference_patient() + [enrol(), hrct(0, 18), hrct(360, 7)])
    visits = result.visits.set_index(["measure", "visit_month"])["value"]
    assert (visits["hrct_score", 0], visits["hrct_score", 12], visits["hrct_reticular", 12]) == (18, 7, 3)
    assert result.cohort["hrct_analysable"].iloc[0] == 1


def test_gc_dose_is_reported_only_for_visits_within_follow_up():
    result = derive16(reference_patient(deceased=day(100), last_contact=90) + [enrol(end=100)])
    gc = result.visits[result.visits["measure"] == "gc_pred_mg_day"]
    assert list(gc["visit_month"]) == [0, 1, 3] and gc["value"].iloc[0] == 50


def test_adverse_events_in_follow_up_with_suspected_drug_and_discontinuation():
    res = reference_patient()
    tac_id = res[3]["id"]
    res += [fb.adverse_event(new_id("ae"), PID, "opportunistic-infection", day(40), serious=True, suspect=tac_id),
            fb.adverse_event(new_id("ae"), PID, "infection", day(-10), serious=False),   # before index: not counted
            drug(PIRFENIDONE, 1, 20, status="stopped", status_reason="adverse-event")]
    facts = facts_of(res)
    from analytics.cohort.retrospective import derive_retrospective

    cohort = derive_retrospective(facts, RuleParams(data_cutoff=date(2025, 1, 1))).cohort
    events = safety_events(facts, cohort, "retrospective")
    assert events[["category", "serious", "day", "suspected_drug"]].values.tolist() == [
        ["opportunistic-infection", 1, 40, "tacrolimus"]]
    stops = drug_discontinuations(facts, cohort, "retrospective")
    assert stops[["drug", "day"]].values.tolist() == [["pirfenidone", 20]]


def test_seriousness_and_stop_reason_are_read_from_any_coding():
    """A local coding listed first must not hide the HL7 `serious` or our `adverse-event` reason (issue 12)."""
    res = reference_patient()
    ae = fb.adverse_event(new_id("ae"), PID, "infection", day(40), serious=True)
    ae["seriousness"]["coding"].insert(0, {"system": "urn:hospital:ae-grade", "code": "G3"})
    ae["event"]["coding"].insert(0, {"system": "http://snomed.info/sct", "code": "40733004"})
    stop = drug(PIRFENIDONE, 1, 20, status="stopped", status_reason="adverse-event")
    stop["statusReason"][0]["coding"].insert(0, {"system": "urn:hospital:stop", "code": "AE"})
    facts = facts_of(res + [ae, stop])
    from analytics.cohort.retrospective import derive_retrospective

    cohort = derive_retrospective(facts, RuleParams(data_cutoff=date(2025, 1, 1))).cohort
    events = safety_events(facts, cohort, "retrospective")
    assert events[["category", "serious"]].values.tolist() == [["infection", 1]]
    assert drug_discontinuations(facts, cohort, "retrospective")[["drug", "day"]].values.tolist() == [["pirfenidone", 20]]


def test_an_adverse_event_reason_in_another_system_is_not_ours():
    stop = drug(PIRFENIDONE, 1, 20, status="stopped")
    stop["statusReason"] = [{"coding": [{"system": "urn:hospital:stop", "code": "adverse-event"}]}]
    facts = facts_of(reference_patient() + [stop])
    from analytics.cohort.retrospective import derive_retrospective

    cohort = derive_retrospective(facts, RuleParams(data_cutoff=date(2025, 1, 1))).cohort
    assert drug_discontinuations(facts, cohort, "retrospective").empty


def test_a_death_without_a_date_leaves_the_prospective_cohort_with_its_reason():
    """§1: deceasedBoolean without a date is excluded from time-to-event analyses with a reason (both cohorts)."""
    result = derive16(reference_patient(deceased=True) + [enrol()])
    assert outcome(result) == "death_date_unknown"
    assert result.attrition.set_index("reason").loc["death_date_unknown", "n_excluded"] == 1


@pytest.mark.parametrize("doses, expected", [((300, 300), "combination"), ((300, 700), "pirfenidone_other_dose"),
                                              ((200, 200), "pirfenidone_other_dose")])
def test_overlapping_pirfenidone_statements_add_their_daily_doses(doses, expected):
    """Two concurrent statements (explicit ends) of 300 mg/day each are 600 mg/day: low-dose combination."""
    pirf = [fb.medication_statement(new_id("ms"), PID, RXNORM, PIRFENIDONE, day(10), day(365), dose=d, frequency=1)
            for d in doses]
    result = derive16(reference_patient() + [enrol()] + pirf)
    assert outcome(result) == expected
    if expected == "combination":
        assert result.cohort["pirfenidone_mg_day"].iloc[0] == 600.0


@pytest.mark.parametrize("value, expected", [({"valueBoolean": True}, 1), ({"valueBoolean": False}, 0),
                                             ({"valueCodeableConcept": fb.concept(LOCAL, "positive")}, 1),
                                             ({"valueCodeableConcept": fb.concept(LOCAL, "negative")}, 0)])
def test_anti_mda5_from_a_boolean_or_a_coded_value(value, expected):
    mda5 = fb.observation(new_id("obs"), PID, LOCAL, "anti-mda5", day(-5), **value)
    assert derive16(reference_patient() + [enrol(), mda5]).cohort["anti_mda5"].iloc[0] == expected


@pytest.mark.parametrize("enrolled, expected", [(date(2018, 1, 1), "tacrolimus"), (date(2020, 12, 31), "tacrolimus"),
                                                (date(2017, 12, 31), "enrolment_outside_window")])
def test_the_enrolment_window_includes_both_ends(enrolled, expected):
    from datetime import timedelta

    shift = (enrolled - day(-3)).days
    res = [fb.patient(PID, "female", "1966-01-15"), fb.condition(new_id("cond"), PID, fb.ICD10, "M33.10", day(shift - 60)),
           fb.medication_statement(new_id("ms"), PID, RXNORM, "42316", enrolled + timedelta(days=3), None, dose=1.5,
                                   status="active"),
           fb.observation(new_id("obs"), PID, LOCAL, "mmrc", enrolled + timedelta(days=400), valueInteger=1),
           fb.research_subject(new_id("rs"), PID, "study", enrolled, status="off-study", end=enrolled + timedelta(days=400))]
    assert outcome(derive(res)) == expected


@pytest.mark.parametrize(("deceased", "analysable"), [(350, 0), (None, 1)])
def test_the_hrct_analysis_set_is_the_survivors_at_12_months_with_both_scans(deceased, analysable):
    """Both scans present, the 12-month one inside its window (day 340): a death on day 350, before 12 months,
    takes the patient out of the HRCT analysis; alive, the patient is in it."""
    def hrct(d: int, total: int) -> dict:
        return fb.observation(new_id("obs"), PID, LOCAL, "hrct-score", day(d), valueInteger=total)
    res = reference_patient(deceased=day(deceased) if deceased else None, last_contact=deceased or 370)
    result = derive16(res + [enrol(end=deceased or 365), hrct(0, 18), hrct(340, 7)])
    assert result.cohort["hrct_analysable"].iloc[0] == analysable


@pytest.mark.parametrize("first_id, second_id", [("a-1", "z-9"), ("z-9", "a-1")])
def test_same_day_duplicates_are_resolved_by_content_not_by_resource_id(first_id, second_id):
    """Ids are the hospital's choice (issue 12): a same-day tie picks the lower value, a positive anti-MDA5."""
    low = fb.observation(first_id, PID, LOCAL, "mmrc", day(30), valueInteger=1)
    high = fb.observation(second_id, PID, LOCAL, "mmrc", day(30), valueInteger=4)
    pos = fb.observation(first_id + "m", PID, LOCAL, "anti-mda5", day(-5), valueBoolean=True)
    neg = fb.observation(second_id + "m", PID, LOCAL, "anti-mda5", day(-5), valueBoolean=False)
    result = derive16(reference_patient() + [enrol(), high, low, neg, pos])
    visits = result.visits[result.visits["measure"] == "mmrc"].set_index("visit_month")
    assert visits.loc[1, "value"] == 1 and result.cohort["anti_mda5"].iloc[0] == 1


def test_an_adverse_event_that_did_not_happen_is_not_a_safety_event():
    """Contract §1: only AdverseEvent.actuality = actual counts (a potential event is a near miss)."""
    res = reference_patient()
    potential = fb.adverse_event(new_id("ae"), PID, "infection", day(40), serious=True)
    potential["actuality"] = "potential"
    res += [potential, fb.adverse_event(new_id("ae"), PID, "hepatic", day(50), serious=False)]
    facts = facts_of(res)
    from analytics.cohort.retrospective import derive_retrospective

    cohort = derive_retrospective(facts, RuleParams(data_cutoff=date(2025, 1, 1))).cohort
    assert safety_events(facts, cohort, "retrospective")["category"].tolist() == ["hepatic"]


def test_serious_events_are_counted_as_events_and_patients_once():
    """safety_summary: n_patients_with_event counts a patient once, serious_events counts every serious event."""
    import pandas as pd

    from analytics.summaries import safety_summary

    cohort = pd.DataFrame({"patient_key": ["a", "b", "c"], "group": ["tacrolimus", "tacrolimus", "conventional"]})
    events = pd.DataFrame({"patient_key": ["a", "a", "a", "c"], "cohort": "retrospective",
                           "group": ["tacrolimus", "tacrolimus", "tacrolimus", "conventional"],
                           "category": "infection", "serious": [1, 1, 0, 0], "day": [10, 20, 30, 40],
                           "suspected_drug": None, "event_number": [1, 2, 3, 1]})
    table = safety_summary("retrospective", cohort, events, ("tacrolimus", "conventional"), ["infection"])
    row = table[(table["group"] == "tacrolimus") & (table["category"] == "infection")].iloc[0]
    assert (row["n_patients_with_event"], row["n_patients"], row["serious_events"]) == (1, 2, 2)


def _two_category_event(rid: str, when: int, *, local_first: bool) -> dict:
    ae = fb.adverse_event(rid, PID, "opportunistic-infection", day(when), serious=True)
    second = {"system": LOCAL, "code": "infection"}
    ae["event"]["coding"].insert(0 if local_first else 1, second)
    return ae


def _events_and_any_row(resources: list[dict]):
    from analytics.cohort.retrospective import derive_retrospective
    from analytics.summaries import safety_summary

    facts = facts_of(reference_patient() + resources)
    cohort = derive_retrospective(facts, RuleParams(data_cutoff=date(2025, 1, 1))).cohort
    events = safety_events(facts, cohort, "retrospective")
    keyed = events.rename(columns={"patient_id": "patient_key"})
    summary = safety_summary("retrospective", cohort.rename(columns={"patient_id": "patient_key"}), keyed,
                             ("tacrolimus", "conventional"), ["infection", "opportunistic-infection"])
    rows = summary[summary["group"] == "tacrolimus"].set_index("category")
    return events, {c: (int(rows.loc[c, "n_patients_with_event"]), int(rows.loc[c, "serious_events"])) for c in rows.index}


def test_an_event_coded_in_two_categories_is_one_serious_event_in_the_any_row():
    """One AdverseEvent whose `event` carries two categories of the concept map: a row in each category, the same
    event_number, and the "any" row counts one serious event (serious_events counts events, contract §4)."""
    events, counts = _events_and_any_row([_two_category_event(new_id("ae"), 40, local_first=False),
                                             fb.adverse_event(new_id("ae"), PID, "infection", day(50), serious=True)])
    assert events[["category", "day", "event_number"]].values.tolist() == [
        ["infection", 40, 1], ["infection", 50, 2], ["opportunistic-infection", 40, 1]]
    assert counts == {"any": (1, 2), "infection": (1, 2), "opportunistic-infection": (1, 1)}


def test_event_numbers_depend_on_the_events_not_on_coding_order_or_ids():
    """Numbered by day and content, so neither the order of the categories' codings nor the FHIR ids (which the
    table does not hold) can move a row."""
    first, _ = _events_and_any_row([_two_category_event("ae-a", 40, local_first=False),
                                       fb.adverse_event("ae-b", PID, "hepatic", day(30), serious=False)])
    second, _ = _events_and_any_row([fb.adverse_event("ae-a", PID, "hepatic", day(30), serious=False),
                                        _two_category_event("ae-b", 40, local_first=True)])
    assert first.equals(second)
    assert first[["category", "day", "event_number"]].values.tolist() == [
        ["hepatic", 30, 1], ["infection", 40, 2], ["opportunistic-infection", 40, 2]]


@pytest.mark.parametrize("ids", [("a-1", "z-9", "m-5"), ("z-9", "a-1", "m-5"), ("m-5", "z-9", "a-1")])
def test_same_day_events_are_numbered_by_content_not_by_resource_id(ids):
    """Three events on one day: serious before non-serious in the file, one an exact copy of another in content.
    Whatever ids they carry, non-serious is numbered first and the rows are the same."""
    events, counts = _events_and_any_row([fb.adverse_event(ids[0], PID, "hepatic", day(40), serious=True),
                                          fb.adverse_event(ids[1], PID, "hepatic", day(40), serious=False),
                                          fb.adverse_event(ids[2], PID, "hepatic", day(40), serious=True)])
    assert events[["category", "serious", "day", "event_number"]].values.tolist() == [
        ["hepatic", 0, 40, 1], ["hepatic", 1, 40, 2], ["hepatic", 1, 40, 3]]
    assert counts["any"] == (1, 2)


def test_event_numbers_stay_integers_when_the_other_cohort_has_no_events():
    """The cohort step joins both cohorts' events: an empty cohort must not turn day and event_number into floats."""
    from analytics.cohort.tables import derive_cohort_tables

    facts = facts_of(reference_patient() + [_two_category_event(new_id("ae"), 40, local_first=True)])
    events = derive_cohort_tables(facts, RuleParams(data_cutoff=date(2025, 1, 1))).tables["safety_events"]
    assert events[["cohort", "day", "event_number"]].values.tolist() == [["retrospective", 40, 1], ["retrospective", 40, 1]]
    assert str(events["day"].dtype) == "int64" and str(events["event_number"].dtype) == "int64"


def test_a_safety_events_table_without_event_numbers_is_refused_not_miscounted():
    """A table written before event_number existed (or with a hole in it) would count events wrongly: a clear error."""
    import pandas as pd

    from analytics.summaries import safety_summary

    cohort = pd.DataFrame({"patient_key": ["a"], "group": ["tacrolimus"]})
    old = pd.DataFrame({"patient_key": ["a"], "cohort": "retrospective", "group": ["tacrolimus"], "category": "infection",
                        "serious": [0], "day": [10], "suspected_drug": None})
    for events in (old, old.assign(event_number=[None])):
        with pytest.raises(ValueError, match="materialize the cohort asset again"):
            safety_summary("retrospective", cohort, events, ("tacrolimus", "conventional"), ["infection"])


def test_a_suspect_naming_another_patients_statement_is_not_named():
    """suspectEntity.instance names the patient's own suspected MedicationStatement (contract); a reference to
    another patient's statement names no drug of this patient, while the patient's own suspect still counts."""
    res = reference_patient()
    tac_id = res[3]["id"]
    other = fb.medication_statement("other-ms", "other", RXNORM, "3002", day(0), None, dose=50, frequency=1)
    res += [fb.patient("other", "male", "1960-01-01"), other,
            fb.adverse_event(new_id("ae"), PID, "infection", day(30), serious=False, suspect="other-ms"),
            fb.adverse_event(new_id("ae"), PID, "hepatic", day(40), serious=False, suspect="other-ms")]
    res[-1]["suspectEntity"].append({"instance": {"reference": f"MedicationStatement/{tac_id}"}})
    facts = facts_of(res)
    from analytics.cohort.retrospective import derive_retrospective

    cohort = derive_retrospective(facts, RuleParams(data_cutoff=date(2025, 1, 1))).cohort
    events = safety_events(facts, cohort, "retrospective")
    assert events[["category", "day", "suspected_drug"]].values.tolist() == [["hepatic", 40, "tacrolimus"],
                                                                            ["infection", 30, None]]


def test_a_subject_whose_patient_is_absent_is_reported_not_enrolled_so_attrition_adds_up():
    """A ResearchSubject of a patient missing from the Patient table: nothing of that patient can be read, so it is
    not counted as enrolled (step 0), only as a reference_to_absent_patient; the attrition ends at the cohort's size."""
    ghost = fb.research_subject(new_id("rs"), "ghost", "study", day(-3), status="off-study", end=day(365))
    result = derive16(reference_patient() + [enrol(), ghost])
    assert outcome(result) == "tacrolimus"
    assert result.attrition["n_remaining"].tolist() == [1] * 7
    facts = facts_of([STUDY, *reference_patient(), ghost])
    assert facts.quality.values.tolist() == [["ghost", "reference_to_absent_patient"]]


def test_pirfenidone_without_a_computable_dose_is_excluded_and_reported():
    """A pirfenidone statement whose dose cannot be read (no dose) cannot be shown to be low-dose: excluded as
    pirfenidone_other_dose, and counted as pirfenidone_dose_not_computable."""
    pirf = fb.medication_statement(new_id("ms"), PID, RXNORM, PIRFENIDONE, day(10), day(365), dose=None)
    result = derive16(reference_patient() + [enrol(), pirf])
    assert outcome(result) == "pirfenidone_other_dose"
    assert result.data_quality.values.tolist() == [["prospective", "pirfenidone_dose_not_computable", 1]]


def test_prospective_participants_stay_in_the_retrospective_cohort():
    """Contract §2: prospective participants are not excluded from the retrospective cohort."""
    from analytics.cohort.retrospective import derive_retrospective

    facts = facts_of([STUDY, *reference_patient(), enrol()])
    retrospective = derive_retrospective(facts, RuleParams(data_cutoff=date(2025, 1, 1)))
    prospective = derive_prospective(facts, params_2016())
    assert retrospective.cohort[["patient_id", "group"]].values.tolist() == [[PID, "tacrolimus"]]
    assert prospective.cohort[["patient_id", "group"]].values.tolist() == [[PID, "tacrolimus"]]


def quality_of(result) -> dict[str, int]:
    return dict(zip(result.data_quality["issue"], result.data_quality["n_patients"], strict=True))


def test_a_death_before_index_is_no_withdrawal_no_event_and_is_shown():
    """A death dated before the tacrolimus start: death is an outcome, so no withdrawal or loss; it is outside
    follow-up (days 1 ... 365), so no event; a data error that data quality shows."""
    result = derive16(reference_patient(deceased=day(-5)) + [enrol(start=-10)])
    assert outcome(result) == "tacrolimus"
    row = result.cohort.iloc[0]
    assert (row["death_event"], row["followup_days"]) == (0, 0)
    assert quality_of(result) == {"death_before_index": 1}


def test_a_research_subject_without_a_start_is_outside_the_window_and_shown():
    undated = enrol()
    del undated["period"]["start"]
    result = derive16(reference_patient() + [undated])
    assert outcome(result) == "enrolment_outside_window"
    assert quality_of(result) == {"research_subject_without_date": 1}


def test_a_withdrawal_without_an_end_is_no_withdrawal_and_is_shown():
    result = derive16(reference_patient() + [enrol(status="withdrawn", end=None)])
    assert outcome(result) == "tacrolimus"
    assert quality_of(result) == {"withdrawal_without_date": 1}
