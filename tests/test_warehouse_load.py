"""Upsert semantics of etl.warehouse.Warehouse.apply: versions, history, child tables, atomicity."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from etl.validation import validation_errors
from etl.warehouse import QuarantineRow, RawRow, Tombstone
from tests.sync_helpers import warehouse

MS = {"resourceType": "MedicationStatement", "id": "m", "status": "active", "subject": {"reference": "Patient/p"},
      "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "42316"}]},
      "dosage": [{"doseAndRate": [{"doseQuantity": {"value": 2, "unit": "mg", "code": "mg"}}]}]}


def version(resource: dict, v: str, when: str) -> RawRow:
    return RawRow.of({**resource, "meta": {"versionId": v, "lastUpdated": when}}, "test")


def rows(wh, sql: str) -> list[tuple]:
    with wh.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(sql))]


def test_r4_only_element_is_accepted():
    # ResearchSubject.individual is R4 (R5 renamed it): an R5 model would reject it.
    rs = {"resourceType": "ResearchSubject", "id": "r", "status": "on-study",
          "study": {"reference": "ResearchStudy/s"}, "individual": {"reference": "Patient/a"}}
    assert validation_errors(rs, "ResearchSubject") == []


@pytest.mark.parametrize("text", [
    b'{"resourceType":"Patient","id":"p","active":"no"}',
    b'{"resourceType":"Patient","id":"p","activ\\u0065":"no"}',  # an escaped key still reads as "active"
    b'{"resourceType":"Patient","id":"p","multipleBirthInteger":"2"}',
])
def test_string_booleans_and_integers_are_refused_with_or_without_the_raw_line(text):
    import orjson

    resource = orjson.loads(text)
    assert validation_errors(resource, "Patient", text) == validation_errors(resource, "Patient") != []


def test_newer_versions_replace_older_ones_never_the_reverse(tmp_path):
    wh = warehouse(tmp_path)
    wh.ensure_schema(["MedicationStatement"])
    v1, v2 = version(MS, "1", "2024-01-01T00:00:00Z"), version({**MS, "status": "completed"}, "2", "2024-02-01T00:00:00Z")
    assert wh.apply("MedicationStatement", [v2]).inserted == 1
    late = wh.apply("MedicationStatement", [v1])  # a stale page arriving late
    assert late.stale == 1 and wh.raw_resources("MedicationStatement")[0]["status"] == "completed"
    assert wh.apply("MedicationStatement", [v2]).unchanged == 1
    assert rows(wh, "SELECT statement_id, dose_value, dose_unit FROM fhir_dosage") == [("m", 2.0, "mg")]
    assert rows(wh, "SELECT path, code FROM fhir_coding") == [("medicationCodeableConcept", "42316")]


def test_a_tombstone_removes_the_current_row_and_its_children_but_history_keeps_it(tmp_path):
    wh = warehouse(tmp_path)
    wh.ensure_schema(["MedicationStatement"])
    wh.apply("MedicationStatement", [version(MS, "1", "2024-01-01T00:00:00Z")])
    result = wh.apply("MedicationStatement", tombstones=[Tombstone("m", "2", "2024-03-01T00:00:00Z", "history")])
    assert result.deleted == 1 and wh.current_ids("MedicationStatement") == set()
    assert rows(wh, "SELECT count(*) FROM fhir_dosage") == [(0,)] and rows(wh, "SELECT count(*) FROM fhir_coding") == [(0,)]
    assert rows(wh, "SELECT version_id, deleted FROM raw_history ORDER BY version_id") == [("1", 0), ("2", 1)]
    again = wh.apply("MedicationStatement", tombstones=[Tombstone("m", "2", "2024-03-01T00:00:00Z", "history")])
    assert again.writes == 0  # replaying a delete is a no-op


def test_an_invalid_newer_version_takes_the_resource_out_of_the_current_table(tmp_path):
    wh = warehouse(tmp_path)
    wh.ensure_schema(["MedicationStatement"])
    wh.apply("MedicationStatement", [version(MS, "1", "2024-01-01T00:00:00Z")])
    wh.apply("MedicationStatement", quarantined=[QuarantineRow("MedicationStatement", "m", "{}", ["broken"], "s", "2")])
    assert wh.current_ids("MedicationStatement") == set() and wh.quarantined_current("MedicationStatement") == 1


def test_a_failed_batch_writes_nothing(tmp_path):
    wh = warehouse(tmp_path)
    wh.ensure_schema(["MedicationStatement"])
    good = version(MS, "1", "2024-01-01T00:00:00Z")
    broken = RawRow("b", "1", None, {"resourceType": "MedicationStatement", "id": "b", "x": {1, 2}}, "s")  # unserialisable
    with pytest.raises(TypeError):
        wh.apply("MedicationStatement", [good, broken])
    assert wh.current_ids("MedicationStatement") == set() and rows(wh, "SELECT count(*) FROM raw_history") == [(0,)]


def test_a_sqlite_warehouse_file_runs_in_wal_mode_so_readers_do_not_wait_for_a_load(tmp_path):
    wh = warehouse(tmp_path)
    wh.ensure_schema(["Patient"])
    assert rows(wh, "PRAGMA journal_mode") == [("wal",)]
    assert rows(wh, "PRAGMA synchronous") == [(1,)]  # NORMAL: no sync per commit; WAL keeps commit order
