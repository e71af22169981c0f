"""A run that selects some types (a backfill of one raw asset) reads only what can belong to them: a file named
after another type the service pulls is left for that type's own asset, not quarantined as "not requested"."""
from __future__ import annotations

from pathlib import Path

import orjson

from etl.ingest.ndjson_dir import files_to_read, sync_ndjson_directory
from tests.sync_helpers import warehouse

PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-01-01"}
OBSERVATION = {"resourceType": "Observation", "id": "o1", "status": "final", "subject": {"reference": "Patient/p1"},
               "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
               "effectiveDateTime": "2019-02-01"}
CONDITION = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
             "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "M33.2"}]}}
PRACTITIONER = {"resourceType": "Practitioner", "id": "dr1"}


def export(tmp_path: Path) -> Path:
    files = tmp_path / "export"
    files.mkdir()
    for name, resource in [("Patient.ndjson", PATIENT), ("Observation.000.ndjson", OBSERVATION),
                           ("Practitioner.ndjson", PRACTITIONER), ("export.ndjson", CONDITION)]:
        (files / name).write_bytes(orjson.dumps(resource) + b"\n")
    return files


def test_the_files_of_a_pulled_type_not_selected_are_left_out_and_the_others_kept(tmp_path):
    files = sorted(export(tmp_path).iterdir())

    kept, others = files_to_read(files, ["Patient"])

    assert [p.name for p in kept] == ["Patient.ndjson", "Practitioner.ndjson", "export.ndjson"]
    assert others == {"Observation"}


def test_a_backfill_of_one_type_quarantines_nothing_of_another_pulled_type(tmp_path):
    files = export(tmp_path)
    wh = warehouse(tmp_path)

    reports = sync_ndjson_directory(wh, files, ["Patient"], workers=1)

    assert wh.current_ids("Patient") == {"p1"} and set(reports) == {"Patient"}
    assert reports["Patient"].as_metadata()["notes"] == "not read: the files of Observation (not selected in this run)"
    q = wh.read_table("quarantine")
    # A type the service does not pull, and a file that names no type, are still read: what is not asked for
    # there is quarantined with its reason, as before. The Observation file is not touched.
    assert sorted(q["resource_type"]) == ["Condition", "Practitioner"]
    assert all("was not requested" in e for e in q["errors"])
    assert wh.current_ids("Observation") == set()


def test_the_left_out_type_loads_when_its_own_asset_runs_and_the_first_stays(tmp_path):
    files = export(tmp_path)
    wh = warehouse(tmp_path)
    sync_ndjson_directory(wh, files, ["Patient"], workers=1)

    reports = sync_ndjson_directory(wh, files, ["Observation"], workers=1)

    assert wh.current_ids("Observation") == {"o1"} and reports["Observation"].load.applied.inserted == 1
    assert wh.current_ids("Patient") == {"p1"}  # not selected this time: neither read nor deleted
