"""The cohort step reads the warehouse in chunks of patients (assets/study/cohort_source.py); its tables
must equal, row for row and dtype for dtype, those of the whole hospital flattened at once."""
from __future__ import annotations

import random
from datetime import date

import orjson
import pandas as pd
import pytest

from analytics.cohort.concepts import load_concept_map
from analytics.cohort.params import RuleParams
from analytics.cohort.tables import COHORT_TABLES
from assets.study.cohort_source import derive_in_chunks, derive_whole_hospital, index_hospital
from etl.fhir.types import RESOURCE_TYPES
from etl.records import RawRow
from etl.warehouse import Warehouse
from synthetic import fhir_builders as fb
from synthetic.fhir_builders import ICD10, LOINC, RXNORM
from synthetic.hospital import HospitalParams, generate_hospital
from synthetic.variants import SERVER_BASE, VARIANTS
from tests.fhir_fixtures import CTX, PID, day, new_id, reference_patient

SMALL = HospitalParams(n_retrospective=70, n_prospective_enrolled=12, n_noise=30, attrition_per_reason=1)
PARAMS = RuleParams(data_cutoff=date(2026, 1, 1))
CHUNK = 7  # patients per chunk: a small hospital still spans many chunks


def load(wh: Warehouse, resources: list[dict]) -> None:
    wh.ensure_schema(RESOURCE_TYPES)
    by_type: dict[str, list[dict]] = {}
    for r in resources:
        by_type.setdefault(r["resourceType"], []).append(r)
    for rtype, rows in by_type.items():
        wh.apply(rtype, [RawRow.of(r, "test") for r in rows])


def assert_same_tables(wh: Warehouse, base: str | None = SERVER_BASE, workers: int = 1, chunk: int = CHUNK) -> dict[str, pd.DataFrame]:
    concepts = load_concept_map()
    whole, whole_ids = derive_whole_hospital(wh, concepts, PARAMS, base)
    chunked, chunked_ids = derive_in_chunks(wh, concepts, PARAMS, base, chunk_patients=chunk, workers=workers)
    assert chunked_ids == whole_ids
    assert set(chunked.tables) == set(COHORT_TABLES)
    for name in COHORT_TABLES:
        pd.testing.assert_frame_equal(chunked.tables[name], whole.tables[name], check_exact=True, obj=name)
    return whole.tables


@pytest.fixture(scope="module")
def small_hospital():
    return generate_hospital(SMALL)


@pytest.mark.parametrize("workers", [1, 2])
def test_the_synthetic_hospital_in_chunks_gives_every_table_unchanged(any_warehouse, small_hospital, workers):
    """In this process and in two worker processes (whose outcomes are gathered in chunk order)."""
    load(any_warehouse, small_hospital.resources)
    tables = assert_same_tables(any_warehouse, workers=workers)
    assert len(tables["cohort"]) > 3 * CHUNK, "the cohort must span several chunks"
    assert not tables["prospective_cohort"].empty and not tables["safety_events"].empty


@pytest.mark.parametrize("name", [v.name for v in VARIANTS])
def test_every_variant_in_chunks_gives_every_table_unchanged(name, tmp_path, small_hospital):
    """The messy-but-legal rewrites (and the fact-changing ones): codings in any order, absolute and
    versioned references, ids of every shape, preliminary results, entered-in-error copies."""
    wh = Warehouse(f"sqlite:///{tmp_path / 'w.sqlite'}")
    load(wh, next(v for v in VARIANTS if v.name == name).apply(small_hospital.resources, random.Random(name)).resources)
    assert_same_tables(wh)


def test_patients_outside_the_candidates_still_count_in_attrition_and_data_quality(tmp_path):
    """Only IIM-coded patients and ResearchSubjects are read whole; everyone else is still counted: in the
    first attrition step, and in data quality (a glucocorticoid without a dose, a death without a date,
    a resource about nobody, a reference to an absent patient)."""
    wh = Warehouse(f"sqlite:///{tmp_path / 'w.sqlite'}")
    when = date(2016, 3, 1)
    no_dose = fb.medication_statement("ms-x", "other", RXNORM, "8640", when, None, dose=None)
    nobody = fb.observation("obs-nobody", "other", LOINC, "2276-4", when, valueQuantity=fb.quantity(5, "ng/mL"))
    nobody.pop("subject")
    resources = [
        fb.patient("iim", "female", "1960-01-01"), fb.condition("c1", "iim", ICD10, "M33.10", when),
        fb.patient("other", "male", "1950-01-01", deceased=True), no_dose, nobody,
        fb.condition("c2", "other", ICD10, "J84.10", when),  # ILD alone: not a candidate, fails no_iim_condition
        fb.observation("obs-absent", "ghost", LOINC, "2276-4", when, valueQuantity=fb.quantity(5, "ng/mL")),
    ]
    load(wh, resources)
    index = index_hospital(wh, load_concept_map(), None)
    assert index.candidates == {"iim"}
    tables = assert_same_tables(wh, None)
    attrition = tables["cohort_attrition"].set_index(["cohort", "reason"])["n_excluded"]
    assert attrition[("retrospective", "no_iim_condition")] == 1
    assert attrition[("retrospective", "no_ild_condition")] == 1
    quality = tables["cohort_data_quality"].set_index(["cohort", "issue"])["n_patients"].to_dict()
    assert quality == {("retrospective", "death_date_unknown"): 1, ("retrospective", "glucocorticoid_dose_not_computable"): 1,
                       ("retrospective", "reference_to_absent_patient"): 1,
                       ("retrospective", "resource_without_patient_subject"): 1}


def quality_of(tables: dict[str, pd.DataFrame]) -> dict[tuple[str, str], int]:
    return tables["cohort_data_quality"].set_index(["cohort", "issue"])["n_patients"].to_dict()


def test_a_patient_absent_from_the_patient_table_and_not_a_candidate_still_counts_in_data_quality(tmp_path):
    """Resources about a patient the Patient table lacks, without an IIM Condition: their glucocorticoid without
    a dose and their observation in an unconvertible unit are reported, by both paths alike."""
    wh = Warehouse(f"sqlite:///{tmp_path / 'w.sqlite'}")
    when = date(2016, 3, 1)
    load(wh, [fb.patient("iim", "female", "1960-01-01"), fb.condition("c1", "iim", ICD10, "M33.10", when),
              fb.medication_statement("ms-ghost", "ghost", RXNORM, "8640", when, None, dose=None),
              fb.observation("obs-ghost", "ghost", LOINC, "2276-4", when, valueQuantity=fb.quantity(5, "furlong"))])
    assert quality_of(assert_same_tables(wh, None)) == {
        ("retrospective", "glucocorticoid_dose_not_computable"): 1, ("retrospective", "observation_unit_not_convertible"): 1,
        ("retrospective", "reference_to_absent_patient"): 1}


def test_a_non_candidate_observation_in_an_unconvertible_unit_is_reported(tmp_path):
    """Observations are read for everyone, not only candidates (``QUALITY_TYPES``)."""
    wh = Warehouse(f"sqlite:///{tmp_path / 'w.sqlite'}")
    when = date(2016, 3, 1)
    load(wh, [fb.patient("iim", "female", "1960-01-01"), fb.condition("c1", "iim", ICD10, "M33.10", when),
              fb.patient("other", "male", "1950-01-01"),
              fb.observation("obs-other", "other", LOINC, "2276-4", when, valueQuantity=fb.quantity(5, "furlong"))])
    assert quality_of(assert_same_tables(wh, None)) == {("retrospective", "observation_unit_not_convertible"): 1}


def test_a_resource_without_a_subject_is_counted_once_not_also_as_a_nameless_patient(tmp_path):
    """A dose-less glucocorticoid, an observation in an unconvertible unit and one whose value codings disagree,
    all about nobody: each is a resource_without_patient_subject, and no other issue counts a missing patient."""
    wh = Warehouse(f"sqlite:///{tmp_path / 'w.sqlite'}")
    when = date(2016, 3, 1)
    no_dose = fb.medication_statement("ms-nobody", "x", RXNORM, "8640", when, None, dose=None)
    bad_unit = fb.observation("obs-unit", "x", LOINC, "2276-4", when, valueQuantity=fb.quantity(5, "furlong"))
    disagree = fb.observation("obs-codes", "x", fb.LOCAL, "symptom-exacerbation", when,
                              valueCodeableConcept=fb.concept(fb.LOCAL, "skin"))
    disagree["valueCodeableConcept"]["coding"].append({"system": fb.LOCAL, "code": "muscular"})
    for r in (no_dose, bad_unit, disagree):
        r.pop("subject")
    load(wh, [fb.patient("iim", "female", "1960-01-01"), fb.condition("c1", "iim", ICD10, "M33.10", when),
              no_dose, bad_unit, disagree])
    assert quality_of(assert_same_tables(wh, None)) == {("retrospective", "resource_without_patient_subject"): 3}


def as_patient(resources: list[dict], pid: str) -> list[dict]:
    """The rule tests' reference patient (``tests.fhir_fixtures.PID``), renamed: its id and its resources' ids."""
    return orjson.loads(orjson.dumps(resources).replace(f'"{PID}'.encode(), f'"{pid}'.encode())
                        .replace(f'Patient/{PID}"'.encode(), f'Patient/{pid}"'.encode()))


def test_a_suspect_naming_another_patients_statement_is_not_named_whatever_the_chunks(tmp_path):
    """Two cohort patients in different chunks; a's adverse event names b's MedicationStatement as its suspect:
    no drug of a's is suspected, in one pass as in chunks of one patient."""
    wh = Warehouse(f"sqlite:///{tmp_path / 'w.sqlite'}")
    a, b = as_patient(reference_patient(), "a"), as_patient(reference_patient(agent=CTX), "b")
    b_statement = next(r["id"] for r in b if r["resourceType"] == "MedicationStatement")
    load(wh, a + b + [fb.adverse_event("ae-a", "a", "infection", day(30), serious=False, suspect=b_statement)])
    tables = assert_same_tables(wh, None, chunk=1)
    assert set(tables["cohort"]["patient_id"]) == {"a", "b"}
    events = tables["safety_events"]
    assert events[["patient_id", "category", "day", "suspected_drug"]].values.tolist() == [["a", "infection", 30, None]]


def test_an_enrolled_patient_without_iim_reaches_the_prospective_rules_and_an_absent_one_is_not_enrolled(tmp_path):
    """A ResearchSubject makes a candidate even with no IIM Condition (index_hospital): the patient reaches the
    prospective attrition in chunks exactly as in one pass. A subject whose patient the Patient table lacks is
    reported (reference_to_absent_patient), not enrolled: the attrition ends at the prospective cohort's size."""
    wh = Warehouse(f"sqlite:///{tmp_path / 'w.sqlite'}")
    load(wh, [fb.patient("iim", "female", "1960-01-01"), fb.condition("c1", "iim", ICD10, "M33.10", date(2016, 3, 1)),
              fb.patient("enrolled", "male", "1970-01-01"), fb.research_study("study"),
              fb.research_subject("rs1", "enrolled", "study", date(2019, 1, 1)),
              fb.research_subject("rs2", "ghost", "study", date(2019, 1, 1))])
    assert index_hospital(wh, load_concept_map(), None).candidates == {"iim", "enrolled", "ghost"}
    tables = assert_same_tables(wh, None, chunk=1)
    attrition = tables["cohort_attrition"]
    prospective = attrition[attrition["cohort"] == "prospective"].set_index("reason")
    assert prospective["n_excluded"].to_dict() == {"all_patients": 0, "enrolment_outside_window": 0, "no_tacrolimus": 1,
                                                   "pirfenidone_other_dose": 0, "withdrawn_before_12m": 0,
                                                   "lost_to_follow_up_before_12m": 0, "death_date_unknown": 0}
    assert prospective["n_remaining"].tolist() == [1, 1, 0, 0, 0, 0, 0] and tables["prospective_cohort"].empty
    assert quality_of(tables) == {("retrospective", "reference_to_absent_patient"): 1}


def _undated(resource: dict) -> dict:
    return {k: v for k, v in resource.items()
            if k not in ("onsetDateTime", "recordedDate", "effectivePeriod", "effectiveDateTime", "performedDateTime", "date")}


def _unreadable_facts(condition_code: str) -> list[dict]:
    """Resources of the rule tests' patient that data quality counts: an undated Condition of ``condition_code``,
    an undated statement, procedure, observation and adverse event of mapped concepts, and an adverse event coded
    in SNOMED only (no mapped category)."""
    foreign = fb.adverse_event(new_id("ae"), PID, "infection", day(30), serious=False)
    foreign["event"] = fb.concept(fb.SNOMED, "40733004")
    return [_undated(fb.condition(new_id("cond"), PID, ICD10, condition_code, day(0))),
            _undated(fb.medication_statement(new_id("ms"), PID, RXNORM, "8640", day(0), None, dose=10)),
            _undated(fb.procedure(new_id("proc"), PID, fb.SNOMED, "127788007", day(0))),
            _undated(fb.observation(new_id("obs"), PID, LOINC, "2276-4", day(0), valueQuantity=fb.quantity(5, "ng/mL"))),
            _undated(fb.adverse_event(new_id("ae"), PID, "hepatic", day(30), serious=False)), foreign]


def test_undated_facts_and_unmapped_adverse_events_are_counted_for_candidates_and_everyone_else_alike(tmp_path):
    """A candidate in the cohort, a patient without IIM (not a candidate: an undated inclusion body myositis) and a
    patient the Patient table lacks: each undated fact and unmapped adverse event is counted once per patient, in
    chunks of one patient as in one pass (``QUALITY_TYPES`` holds every type these come from)."""
    wh = Warehouse(f"sqlite:///{tmp_path / 'w.sqlite'}")
    candidate = as_patient(reference_patient() + _unreadable_facts("J84.9"), "a")
    other = as_patient([fb.patient(PID, "male", "1950-01-01")] + _unreadable_facts("G72.41"), "other")
    ghost = as_patient([_undated(fb.condition(new_id("cond"), PID, ICD10, "J84.10", day(0)))], "ghost")
    load(wh, candidate + other + ghost)
    assert index_hospital(wh, load_concept_map(), None).candidates == {"a"}
    tables = assert_same_tables(wh, None, chunk=1)
    assert list(tables["cohort"]["patient_id"]) == ["a"]
    assert quality_of(tables) == {
        ("retrospective", "adverse_event_category_not_mapped"): 2, ("retrospective", "adverse_event_without_date"): 2,
        ("retrospective", "condition_without_date"): 3, ("retrospective", "medication_statement_without_date"): 2,
        ("retrospective", "observation_without_date"): 2, ("retrospective", "procedure_without_date"): 2,
        ("retrospective", "reference_to_absent_patient"): 1}
