"""No FHIR id in what Dagster stores (issue 13): check metadata names patients by pseudonym, error messages
carry no search query, and failed SQL statements carry no rows."""
from __future__ import annotations

import orjson
import pytest
import sqlalchemy as sa

from analytics.pseudonym import patient_key
from assets.fhir.checks import raw_expectations
from assets.resources import StudyResource
from etl.fhir.client import FhirClient, FhirError
from etl.ingest.ndjson_dir import sync_ndjson_directory
from etl.warehouse import Warehouse
from tests.stub_fhir import StubServer

KEY = "test-pseudonym-key-0123456789"
CANARY = "canary-patient-7f3a"


def test_a_failing_raw_check_names_the_patient_by_pseudonym_only(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    ferritin = {"resourceType": "Observation", "id": f"{CANARY}-obs1", "status": "final",
                "subject": {"reference": f"Patient/{CANARY}"}, "effectiveDateTime": "2019-01-01",
                "code": {"coding": [{"system": "http://loinc.org", "code": "2276-4"}]},
                "valueQuantity": {"value": 3, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"}}
    (export / "Observation.ndjson").write_bytes(orjson.dumps(ferritin) + b"\n")
    url = f"sqlite:///{tmp_path / 'w.sqlite'}"
    sync_ndjson_directory(Warehouse(url), export, ["Observation"], workers=1)
    result = raw_expectations("Observation", Warehouse(url), StudyResource(pseudonym_key=KEY))
    text = str(result.metadata)
    assert not result.passed and patient_key(CANARY, KEY) in text
    assert CANARY not in text


def test_error_messages_name_the_path_not_the_query_of_a_failed_search():
    with StubServer(lambda m, p, h: (500, {}, b"boom")) as server:
        with FhirClient(server.base_url, max_retries=0) as client:
            with pytest.raises(FhirError) as caught:
                list(client.search("Observation", {"patient": f"Patient/{CANARY},Patient/other"}))
    assert "/fhir/Observation" in str(caught.value) and CANARY not in str(caught.value)


def test_a_failed_statement_does_not_carry_its_rows_into_the_message(tmp_path):
    wh = Warehouse(f"sqlite:///{tmp_path / 'w.sqlite'}")
    with wh.engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (id TEXT PRIMARY KEY, body TEXT)"))
        conn.execute(sa.text("INSERT INTO t VALUES (:i, :b)"), {"i": CANARY, "b": "{}"})
    with pytest.raises(sa.exc.IntegrityError) as caught:
        with wh.engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO t VALUES (:i, :b)"), {"i": CANARY, "b": '{"secret": 1}'})
    assert CANARY not in str(caught.value) and "secret" not in str(caught.value)
