"""A Bulk ``_typeFilter`` re-applied locally (etl.fhir.type_filter): what it keeps, and what it cannot evaluate."""
from etl.fhir.type_filter import TypeFilter, keep_function


def condition(code: str, patient: str = "Patient/p1") -> dict:
    return {"resourceType": "Condition", "id": "c", "subject": {"reference": patient},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "123"}, {"system": "urn:local", "code": code}]}}


def test_a_token_matches_any_coding_of_the_element_by_system_and_code():
    wanted = TypeFilter.parse("Condition?code=urn:local|ild")
    assert wanted.matches(condition("ild")) and not wanted.matches(condition("other"))
    assert TypeFilter.parse("Condition?code=ild").matches(condition("ild"))  # a bare code: any system


def test_patient_reads_the_subject_field_of_the_type():
    """``patient=`` names a ResearchSubject's ``individual``, a Condition's ``subject`` (etl.fhir.types)."""
    enrolment = {"resourceType": "ResearchSubject", "id": "rs", "individual": {"reference": "Patient/p1"},
                 "study": {"reference": "ResearchStudy/s"}}
    assert TypeFilter.parse("ResearchSubject?patient=Patient/p1").matches(enrolment)
    assert not TypeFilter.parse("ResearchSubject?patient=Patient/p2").matches(enrolment)
    assert TypeFilter.parse("Condition?patient=p1").matches(condition("ild"))
    assert not TypeFilter.parse("Condition?patient=p1").matches(condition("ild", "Patient/p2"))


def test_a_type_keeps_what_any_of_its_filters_matches_and_other_types_are_untouched():
    keep = keep_function([TypeFilter.parse("Condition?code=ild"), TypeFilter.parse("Condition?code=dm")])
    assert keep("Condition", condition("dm")) and not keep("Condition", condition("x"))
    assert keep("Observation", {"resourceType": "Observation", "id": "o"})


def test_parameters_it_cannot_evaluate_are_named():
    assert TypeFilter.parse("Observation?code=x&date=ge2020").unsupported() == ["date"]
