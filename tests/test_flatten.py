"""Flattening rules that the study depends on (etl.flatten)."""
from __future__ import annotations

from datetime import date

from etl.flatten import clinical_date, medication_statements, observations, reference_id


def test_clinical_date_is_the_local_date_written_in_the_resource():
    assert clinical_date("2016-03-04T01:30:00+08:00") == date(2016, 3, 4)  # UTC would say 3 March
    assert clinical_date("2016") == date(2016, 1, 1)
    assert clinical_date("2016-07") == date(2016, 7, 1)
    assert clinical_date(None) is None


def test_reference_id_reads_relative_and_absolute_references():
    assert reference_id({"reference": "Patient/p1"}, "Patient") == "p1"
    assert reference_id({"reference": "https://h.org/fhir/Patient/p1/_history/3"}, "Patient") == "p1"
    assert reference_id({"reference": "Group/g"}, "Patient") is None
    assert reference_id(None, "Patient") is None


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
    assert frame.loc[2, "value_code"] == "positive"
