"""Flattening rules that the study depends on (etl.fhir.flatten)."""
from __future__ import annotations

from datetime import date

import pytest

from etl.fhir.flatten import (
    adverse_events,
    clinical_date,
    conditions,
    first_dosage,
    has_quantity_value,
    medication_statements,
    observations,
    quantity_unit,
    reference_id,
)


def test_clinical_date_is_the_local_date_written_in_the_resource():
    assert clinical_date("2016-03-04T01:30:00+08:00") == date(2016, 3, 4)  # UTC would say 3 March
    assert clinical_date("2016") == date(2016, 1, 1)
    assert clinical_date("2016-07") == date(2016, 7, 1)
    assert clinical_date(None) is None


def test_reference_id_reads_relative_versioned_and_our_absolute_references():
    assert reference_id({"reference": "Patient/p1"}, "Patient") == "p1"
    assert reference_id({"reference": "Patient/p1/_history/3"}, "Patient") == "p1"
    assert reference_id({"reference": "https://h.org/fhir/Patient/p1/_history/3"}, "Patient", "https://h.org/fhir") == "p1"
    assert reference_id({"reference": "https://h.org/fhir/Patient/p1"}, "Patient", "https://h.org/fhir/") == "p1"
    assert reference_id({"reference": "Group/g"}, "Patient") is None
    assert reference_id(None, "Patient") is None


@pytest.mark.parametrize("reference", [
    "https://evil.example.org/fhir/Patient/good",   # another server's patient "good" is not ours
    "https://h.org/fhir-other/Patient/good",         # a base that only starts like ours
    "Patient/../Patient/good", "Patient/./good", "../Patient/good", "Patient/good/extra",
    "Patient/" + "x" * 65, "Patient/bad id", "urn:uuid:0b5d2f3c-1111-2222-3333-444455556666", "Patient/",
])
def test_references_that_are_not_exactly_one_of_our_patients_are_not_read_as_one(reference):
    assert reference_id({"reference": reference}, "Patient", "https://h.org/fhir") is None


def test_an_absolute_reference_is_not_ours_when_no_base_is_known():
    assert reference_id({"reference": "https://h.org/fhir/Patient/p1"}, "Patient") is None


def test_one_row_per_coding_so_foreign_codings_do_not_hide_ours():
    ms = {"resourceType": "MedicationStatement", "id": "m", "status": "active", "subject": {"reference": "Patient/p"},
          "medicationCodeableConcept": {"coding": [{"system": "urn:local:pharmacy", "code": "TAC-1MG"},
                                                   {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "42316"}]},
          "effectiveDateTime": "2020-01-01"}
    frame = medication_statements([ms])
    assert list(frame["code"]) == ["TAC-1MG", "42316"]
    assert list(frame["effective_kind"]) == ["datetime", "datetime"]


def test_observation_values_of_every_kind():
    base = {"resourceType": "Observation", "id": "o", "status": "final", "subject": {"reference": "Patient/p"},
            "code": {"coding": [{"system": "urn:iim-ild:concept", "code": "x"}]}, "effectiveDateTime": "2020-01-01"}
    frame = observations([{**base, "valueQuantity": {"value": 2.5, "unit": "mg/dL", "code": "mg/dL"}},
                          {**base, "id": "b", "valueBoolean": True},
                          {**base, "id": "c", "valueCodeableConcept": {"coding": [{"system": "s", "code": "positive"}]}}])
    assert frame.loc[0, "value_quantity"] == 2.5 and frame.loc[0, "value_unit"] == "mg/dL"
    assert bool(frame.loc[1, "value_boolean"]) is True
    assert frame.loc[2, "value_codings"] == (("s", "positive"),)


def test_coded_values_and_statuses_keep_every_coding_in_an_order_free_form():
    """The regression of issue 12: a SNOMED coding before ours must not hide our code (no coding is read by position)."""
    local, snomed = {"system": "urn:iim-ild:concept", "code": "respiratory"}, {"system": "http://snomed.info/sct", "code": "267036007"}
    base = {"resourceType": "Observation", "id": "o", "status": "final", "subject": {"reference": "Patient/p"},
            "code": {"coding": [{"system": "urn:iim-ild:concept", "code": "symptom-exacerbation"}]},
            "effectiveDateTime": "2020-01-01"}
    one = observations([{**base, "valueCodeableConcept": {"coding": [snomed, local]}}])
    other = observations([{**base, "valueCodeableConcept": {"coding": [local, snomed]}}])
    assert one.loc[0, "value_codings"] == other.loc[0, "value_codings"]
    assert set(one.loc[0, "value_codings"]) == {("urn:iim-ild:concept", "respiratory"), ("http://snomed.info/sct", "267036007")}
    ver = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
    cond = conditions([{"resourceType": "Condition", "id": "c", "subject": {"reference": "Patient/p"},
                        "code": {"coding": [{"system": "x", "code": "y"}]},
                        "verificationStatus": {"coding": [{"system": "urn:local", "code": "R"}, {"system": ver, "code": "refuted"}]}}])
    assert (ver, "refuted") in cond.loc[0, "verification_codings"]
    ae = adverse_events([{"resourceType": "AdverseEvent", "id": "a", "actuality": "actual", "subject": {"reference": "Patient/p"},
                          "event": {"coding": [{"system": "urn:iim-ild:concept", "code": "infection"}]},
                          "seriousness": {"coding": [{"system": "urn:local", "code": "SER"},
                                                     {"system": "http://terminology.hl7.org/CodeSystem/adverse-event-seriousness",
                                                      "code": "serious"}]}}])
    assert ("http://terminology.hl7.org/CodeSystem/adverse-event-seriousness", "serious") in ae.loc[0, "seriousness_codings"]


def test_quantity_unit_is_the_ucum_code_else_the_unit_text():
    assert quantity_unit({"value": 1, "unit": "milligram", "system": "http://unitsofmeasure.org", "code": "mg"}) == "mg"
    assert quantity_unit({"value": 1, "unit": "mg"}) == "mg"
    assert quantity_unit({"value": 1, "unit": "mg", "system": "urn:pharmacy:units", "code": "MGM"}) == "mg"


def test_first_dosage_follows_sequence_not_array_position():
    later, first = {"sequence": 2, "text": "then as directed"}, {"sequence": 1, "text": "50 mg daily"}
    assert first_dosage([later, first]) is first
    assert first_dosage([{"text": "a"}, {"text": "b"}]) == {"text": "a"}  # no sequence: the array order is all there is
    assert first_dosage(None) == {}


@pytest.mark.parametrize("value, expected", [
    ({"valueQuantity": {"value": 0, "unit": "mg/L"}}, True),
    ({"valueQuantity": {"value": -2.5}}, True),
    ({"valueQuantity": {"unit": "mg/L", "code": "mg/L"}}, False),   # a quantity with no number
    ({"valueString": "high"}, False),
    ({"valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "1"}]}}, False),
    ({"component": [{"code": {"coding": [{"code": "x"}]}, "valueQuantity": {"value": 1}}]}, False),  # a component's only
])
def test_has_quantity_value_says_whether_observations_gives_a_value_quantity(value, expected):
    resource = {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"coding": [{"code": "c"}]}, **value}
    assert has_quantity_value(resource) is expected
    assert observations([resource])["value_quantity"].notna().any() == expected
