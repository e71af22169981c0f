"""Validation, quarantine and the atomic raw load (etl.validation, etl.ingest, etl.warehouse)."""
from __future__ import annotations

import orjson
import pandas as pd
import respx

from etl.fhir_client import FhirClient
from etl.ingest import ingest_resource_type
from etl.validation import validation_errors
from etl.warehouse import Warehouse

BASE = "https://fhir.example.org/r4"
GOOD = {"resourceType": "Patient", "id": "a", "gender": "female", "birthDate": "1970",
        "meta": {"versionId": "1", "lastUpdated": "2024-01-01T00:00:00Z"}}


def test_valid_r4_resource_has_no_errors():
    assert validation_errors(GOOD, "Patient") == []


def test_r4_only_element_is_accepted():
    # ResearchSubject.individual is R4 (R5 renamed it): an R5 model would reject it.
    rs = {"resourceType": "ResearchSubject", "id": "r", "status": "on-study",
          "study": {"reference": "ResearchStudy/s"}, "individual": {"reference": "Patient/a"}}
    assert validation_errors(rs, "ResearchSubject") == []


def test_invalid_resources_are_explained():
    assert validation_errors({**GOOD, "resourceType": "Group"}, "Patient") == ["resourceType is 'Group', expected 'Patient'"]
    assert any("favouriteColour" in e for e in validation_errors({**GOOD, "favouriteColour": "red"}, "Patient"))
    assert validation_errors({**GOOD, "birthDate": "1970-13-45"}, "Patient")
    assert validation_errors([1, 2], "Patient") == ["not a JSON object: list"]
    assert validation_errors({"resourceType": "Patient"}, "Patient") == ["resource has no id"]


def _serve(entries: list[dict]) -> None:
    respx.get(f"{BASE}/Patient").respond(json={"resourceType": "Bundle", "type": "searchset", "entry": entries})


@respx.mock
def test_every_resource_is_loaded_or_quarantined_and_duplicates_collapse(tmp_path):
    newer = {**GOOD, "gender": "male", "meta": {"versionId": "2", "lastUpdated": "2024-02-01T00:00:00Z"}}
    bad = {"resourceType": "Patient", "id": "b", "gender": "female", "deceasedDateTime": "2020-01-01T10:00:00"}
    _serve([{"resource": GOOD}, {"resource": bad}, {"resource": newer}])
    wh = Warehouse(f"sqlite:///{tmp_path / 'w.sqlite'}")
    with FhirClient(BASE) as client:
        report = ingest_resource_type(client, wh, "Patient")
    assert (report.received, report.loaded, report.quarantined, report.duplicates) == (3, 1, 1, 1)
    assert wh.raw_resources("Patient")[0]["gender"] == "male"
    q = wh.read_table("quarantine")
    assert list(q["resource_id"]) == ["b"] and "deceasedDateTime" in q["errors"].iloc[0]
    assert orjson.loads(q["raw"].iloc[0]) == bad


@respx.mock
def test_a_rerun_replaces_the_pull_exactly(tmp_path):
    wh = Warehouse(f"sqlite:///{tmp_path / 'w.sqlite'}")
    _serve([{"resource": GOOD}, {"resource": {**GOOD, "id": "c"}}])
    with FhirClient(BASE) as client:
        ingest_resource_type(client, wh, "Patient")
        first = wh.read_table("raw_patient")[["id", "resource"]]
        ingest_resource_type(client, wh, "Patient")
        again = wh.read_table("raw_patient")[["id", "resource"]]
    pd.testing.assert_frame_equal(first, again)
    respx.get(f"{BASE}/Patient").respond(json={"resourceType": "Bundle", "type": "searchset",
                                              "entry": [{"resource": GOOD}]})
    with FhirClient(BASE) as client:
        ingest_resource_type(client, wh, "Patient")
    assert list(wh.read_table("raw_patient")["id"]) == ["a"]  # deleted on the server, gone here


def test_a_failed_load_leaves_the_previous_pull(tmp_path, monkeypatch):
    from etl.warehouse import RawRow

    wh = Warehouse(f"sqlite:///{tmp_path / 'w.sqlite'}")
    wh.replace_raw("Patient", [RawRow("a", "1", None, GOOD, "s")], [])
    broken = RawRow("b", "1", None, {"x": {1, 2}}, "s")  # a set cannot be serialised: fails mid-transaction
    try:
        wh.replace_raw("Patient", [RawRow("c", "1", None, GOOD, "s"), broken], [])
    except TypeError:
        pass
    assert [r["id"] for r in wh.raw_resources("Patient")] == ["a"]
