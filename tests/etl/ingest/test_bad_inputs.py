"""Every kind of bad input ends in quarantine with a readable reason, never a crash or a silent drop.

Each case is one NDJSON line handed over in a directory (the loader every path shares); the
REST path gets the same treatment in test_bad_inputs_over_rest below."""
from __future__ import annotations

from datetime import date, timedelta

import orjson
import pytest

from etl.fhir.client import FhirClient
from etl.ingest.ndjson_dir import sync_ndjson_directory
from etl.ingest.rest import sync_rest
from synthetic.load import load_server
from synthetic.sandbox import SandboxFhirServer
from tests.sync_helpers import warehouse

FUTURE = (date.today() + timedelta(days=400)).isoformat()
P = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-01-01"}
REF = {"reference": "Patient/p1"}


def ms(**kw) -> dict:
    dose = kw.pop("dose", {"value": 10, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"})
    return {"resourceType": "MedicationStatement", "id": kw.pop("id", "m1"), "status": "active", "subject": REF,
            "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "42316"}]},
            "effectivePeriod": {"start": "2019-01-01"}, "dosage": [{"doseAndRate": [{"doseQuantity": dose}]}], **kw}


def obs(**kw) -> dict:
    return {"resourceType": "Observation", "id": "o1", "status": "final", "subject": REF,
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]}, "effectiveDateTime": "2019-02-01",
            "valueQuantity": {"value": 60, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}, **kw}


def nested_extension(depth: int) -> dict:
    node: dict = {"url": "http://example.org/x", "valueString": "leaf"}
    for _ in range(depth):
        node = {"url": "http://example.org/x", "extension": [node]}
    return node


NESTED = nested_extension(125)

# (name, file name, line bytes, a phrase the quarantine reason must contain)
CASES = [
    ("invalid JSON", "Patient.ndjson", b'{"resourceType": "Patient", "id": ', "invalid JSON"),
    ("JSON array, not an object", "Patient.ndjson", b"[1, 2]", "not a JSON object"),
    ("wrong resourceType in a type's file", "Patient.ndjson", orjson.dumps({**P, "resourceType": "Group"}), "expected 'Patient'"),
    ("missing id", "Patient.ndjson", orjson.dumps({k: v for k, v in P.items() if k != "id"}), "no id"),
    ("unknown element", "Patient.ndjson", orjson.dumps({**P, "favouriteColour": "red"}), "favouriteColour"),
    ("dateTime with a time but no zone", "Patient.ndjson", orjson.dumps({**P, "deceasedDateTime": "2020-01-01T10:00:00"}),
     "deceasedDateTime"),
    ("empty string", "Patient.ndjson", orjson.dumps({**P, "gender": ""}), "gender"),
    ("impossible date", "Patient.ndjson", orjson.dumps({**P, "birthDate": "1970-13-45"}), "birthDate"),
    ("wrong JSON type", "Patient.ndjson", orjson.dumps({**P, "deceasedBoolean": "yes"}), "deceasedBoolean"),
    ("invalid id characters", "Patient.ndjson", orjson.dumps({**P, "id": "has space/and slash"}), "id"),
    ("birth date in the future", "Patient.ndjson", orjson.dumps({**P, "birthDate": FUTURE}), "in the future"),
    ("missing required subject", "Condition.ndjson",
     orjson.dumps({"resourceType": "Condition", "id": "c1", "code": {"text": "x"}}), "subject"),
    ("Observation about no patient", "Observation.ndjson",
     orjson.dumps({k: v for k, v in obs().items() if k != "subject"}), "belongs to no patient"),
    ("subject that is not a Patient", "Observation.ndjson", orjson.dumps(obs(subject={"reference": "Group/g1"})),
     "not a Patient reference"),
    # Issue 13's hostile data, accepted silently before:
    ("id of 65 characters (R4 allows 64)", "Patient.ndjson", orjson.dumps({**P, "id": "x" * 65}), "1 to 64"),
    ("a body weight of 10^30 kg", "Observation.ndjson",
     orjson.dumps(obs(valueQuantity={"value": 1e30, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"})),
     "outside 0.2-700 kg"),
    ("birth date in year 1", "Patient.ndjson", orjson.dumps({**P, "birthDate": "0001-01-01"}), "before 1850"),
    ("death before birth", "Patient.ndjson", orjson.dumps({**P, "deceasedDateTime": "1960-05-01"}), "before birthDate"),
    ("duplicate JSON keys", "Patient.ndjson", b'{"resourceType":"Patient","id":"dupA","id":"dupB","gender":"female"}',
     "duplicate JSON keys ['id']"),
    ("a NUL character in a string", "Patient.ndjson",
     orjson.dumps({**P, "name": [{"text": "Ann\u0000Lee"}]}), "control character"),
    ("a 50 MB string", "Patient.ndjson", orjson.dumps({**P, "name": [{"text": "x" * 50_000_000}]}), "4 MB limit"),
    ("125 nested extensions", "Patient.ndjson", orjson.dumps({**P, "extension": [NESTED]}), "nested too deeply"),
    ("450 nested extensions", "Patient.ndjson", b'{"resourceType":"Patient","id":"p1","extension":['
     + b'{"url":"http://x","extension":[' * 450 + b'{"url":"http://x","valueString":"y"}' + b"]}" * 450 + b"]}", "nested too deeply"),
    ("subject with a path traversal", "Observation.ndjson", orjson.dumps(obs(subject={"reference": "Patient/../Patient/good"})),
     "not a Patient reference"),
    ("observation date in the future", "Observation.ndjson", orjson.dumps(obs(effectiveDateTime=FUTURE)), "in the future"),
    ("negative body weight", "Observation.ndjson",
     orjson.dumps(obs(valueQuantity={"value": -60, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"})),
     "negative kg"),
    ("negative dose", "MedicationStatement.ndjson",
     orjson.dumps(ms(dose={"value": -5, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"})), "negative dose"),
    ("absurd dose", "MedicationStatement.ndjson",
     orjson.dumps(ms(dose={"value": 500, "unit": "g", "system": "http://unitsofmeasure.org", "code": "g"})), "above 100 g"),
    ("dose in a volume unit", "MedicationStatement.ndjson",
     orjson.dumps(ms(dose={"value": 5, "unit": "mL", "system": "http://unitsofmeasure.org", "code": "mL"})), "not a mass unit"),
    ("period that ends before it starts", "MedicationStatement.ndjson",
     orjson.dumps(ms(effectivePeriod={"start": "2019-05-01", "end": "2019-01-01"})), "before it starts"),
    ("unknown status code type", "MedicationStatement.ndjson", orjson.dumps(ms(status=7)), "status"),
    ("a type that was not asked for", "Extra.ndjson", orjson.dumps({"resourceType": "Practitioner", "id": "dr"}),
     "was not requested"),
]


@pytest.mark.parametrize("name,file,line,reason", CASES, ids=[c[0] for c in CASES])
def test_bad_line_is_quarantined_with_its_reason(tmp_path, name, file, line, reason):
    files = tmp_path / "export"
    files.mkdir()
    (files / "Patient.000.ndjson").write_bytes(orjson.dumps({**P, "id": "good"}) + b"\n")
    (files / file).write_bytes((files / file).read_bytes() + line + b"\n" if (files / file).exists() else line + b"\n")
    wh = warehouse(tmp_path)
    types = ["Patient", "Condition", "Observation", "MedicationStatement"]
    reports = sync_ndjson_directory(wh, files, types, workers=1)
    q = wh.read_table("quarantine")
    assert len(q) == 1, q
    assert reason in q["errors"].iloc[0], q["errors"].iloc[0]
    assert f"{file}:1" in q["source"].iloc[0]
    assert wh.current_ids("Patient") == {"good"}  # the good line still loads
    unrequested = 0 if q["resource_type"].iloc[0] in reports else 1
    assert sum(r.load.received for r in reports.values()) + unrequested == 2  # nothing dropped silently


def test_duplicate_ids_with_different_content_keep_the_first_and_quarantine_the_other(tmp_path):
    files = tmp_path / "export"
    files.mkdir()
    a = {**P, "meta": {"versionId": "1", "lastUpdated": "2024-01-01T00:00:00Z"}}
    b = {**a, "gender": "male"}
    (files / "Patient.ndjson").write_bytes(orjson.dumps(a) + b"\n" + orjson.dumps(b) + b"\n" + orjson.dumps(a) + b"\n")
    wh = warehouse(tmp_path)
    reports = sync_ndjson_directory(wh, files, ["Patient"], workers=1)
    assert wh.raw_resources("Patient")[0]["gender"] == "female"
    q = wh.read_table("quarantine")
    assert len(q) == 1 and "different content" in q["errors"].iloc[0] and not q["current"].iloc[0]
    assert reports["Patient"].load.applied.conflicts == 1


def test_quarantine_remembers_first_seen_and_retires_rows_that_were_fixed(tmp_path):
    files = tmp_path / "export"
    files.mkdir()
    bad = {**P, "birthDate": FUTURE, "meta": {"versionId": "1"}}
    (files / "Patient.ndjson").write_bytes(orjson.dumps(bad) + b"\n")
    wh = warehouse(tmp_path)
    sync_ndjson_directory(wh, files, ["Patient"], workers=1)
    first = wh.read_table("quarantine")
    sync_ndjson_directory(wh, files, ["Patient"], workers=1)
    second = wh.read_table("quarantine")
    assert len(second) == 1 and second["first_seen"].iloc[0] == first["first_seen"].iloc[0]
    assert second["last_seen"].iloc[0] >= first["last_seen"].iloc[0] and bool(second["current"].iloc[0])
    assert wh.counts("Patient")["quarantined_current"] == 1 and wh.counts("Patient")["server_count"] == 1
    fixed = {**P, "meta": {"versionId": "2"}}
    (files / "Patient.ndjson").write_bytes(orjson.dumps(fixed) + b"\n")
    sync_ndjson_directory(wh, files, ["Patient"], workers=1)
    third = wh.read_table("quarantine")
    assert len(third) == 1 and not bool(third["current"].iloc[0]) and wh.current_ids("Patient") == {"p1"}


def test_bad_inputs_over_rest(tmp_path, small_hospital):
    """The sandbox accepts anything (inbound validation off), as sloppy hospital servers do."""
    bad = [{**P, "id": "future", "birthDate": FUTURE}, {**P, "id": "naive", "deceasedDateTime": "2020-01-01T10:00:00"},
           obs(id="neg", valueQuantity={"value": -1, "unit": "kg", "code": "kg", "system": "http://unitsofmeasure.org"})]
    with SandboxFhirServer(tmp_path / "server") as server:
        load_server(server.base_url, [P, *bad])
        wh = warehouse(tmp_path)
        with FhirClient(server.base_url) as client:
            reports = sync_rest(client, wh, ["Patient", "Observation"])
    q = wh.read_table("quarantine")
    assert sorted(q["resource_id"]) == ["future", "naive", "neg"]
    assert all(q["source"].str.startswith(server.base_url))
    for t in ("Patient", "Observation"):
        assert reports[t].server_count == reports[t].warehouse_count + reports[t].quarantined_current
