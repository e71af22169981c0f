"""Upsert semantics of etl.warehouse.Warehouse.apply: versions, history, atomicity."""
from __future__ import annotations

from datetime import datetime, timezone

import orjson
import pytest
import sqlalchemy as sa

from etl.fhir.validation import validation_errors
from etl.warehouse import QuarantineRow, RawRow, SeenIds, Tombstone
from etl.warehouse.schema import HISTORY
from etl.warehouse.writes import driver_time
from tests.sync_helpers import warehouse

MS = {"resourceType": "MedicationStatement", "id": "m", "status": "active", "subject": {"reference": "Patient/p"},
      "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "42316"}]},
      "dosage": [{"doseAndRate": [{"doseQuantity": {"value": 2, "unit": "mg", "code": "mg"}}]}]}


NOW = datetime(2024, 6, 1, tzinfo=timezone.utc)


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


def test_newer_versions_replace_older_ones_never_the_reverse(any_warehouse):
    wh = any_warehouse
    wh.ensure_schema(["MedicationStatement"])
    v1, v2 = version(MS, "1", "2024-01-01T00:00:00Z"), version({**MS, "status": "completed"}, "2", "2024-02-01T00:00:00Z")
    assert wh.apply("MedicationStatement", [v2]).inserted == 1
    late = wh.apply("MedicationStatement", [v1])  # a stale page arriving late
    assert late.stale == 1 and wh.raw_resources("MedicationStatement")[0]["status"] == "completed"
    assert wh.apply("MedicationStatement", [v2]).unchanged == 1


def test_a_tombstone_removes_the_current_row_but_history_keeps_it(any_warehouse):
    wh = any_warehouse
    wh.ensure_schema(["MedicationStatement"])
    wh.apply("MedicationStatement", [version(MS, "1", "2024-01-01T00:00:00Z")])
    result = wh.apply("MedicationStatement", tombstones=[Tombstone("m", "2", "2024-03-01T00:00:00Z", "history")])
    assert result.deleted == 1 and wh.current_ids("MedicationStatement") == set()
    assert rows(wh, "SELECT version_id, deleted FROM raw_history ORDER BY version_id") == [("1", 0), ("2", 1)]
    again = wh.apply("MedicationStatement", tombstones=[Tombstone("m", "2", "2024-03-01T00:00:00Z", "history")])
    assert again.writes == 0  # replaying a delete is a no-op


def test_an_invalid_newer_version_takes_the_resource_out_of_the_current_table(any_warehouse):
    wh = any_warehouse
    wh.ensure_schema(["MedicationStatement"])
    wh.apply("MedicationStatement", [version(MS, "1", "2024-01-01T00:00:00Z")])
    wh.apply("MedicationStatement", quarantined=[QuarantineRow("MedicationStatement", "m", "{}", ["broken"], "s", "2")])
    assert wh.current_ids("MedicationStatement") == set() and wh.quarantined_current("MedicationStatement") == 1


def test_a_failed_batch_writes_nothing(any_warehouse):
    wh = any_warehouse
    wh.ensure_schema(["MedicationStatement"])
    good = version(MS, "1", "2024-01-01T00:00:00Z")
    broken = RawRow("b", "1", None, {"resourceType": "MedicationStatement", "id": "b", "x": {1, 2}}, "s")  # unserialisable
    with pytest.raises(TypeError):
        wh.apply("MedicationStatement", [good, broken])
    assert wh.current_ids("MedicationStatement") == set() and rows(wh, "SELECT count(*) FROM raw_history") == [(0,)]


AWKWARD = "tab\there\nnew line, back\\slash, \\N, \"double\" 'single' quotes, ünïcode — ✓"


def test_awkward_text_and_missing_values_load_byte_for_byte(any_warehouse):
    """PostgreSQL loads through COPY, whose text format gives tabs, newlines, backslashes and \\N a
    meaning of their own: none of it may leak into the stored values."""
    wh = any_warehouse
    wh.ensure_schema(["MedicationStatement"])
    ms = {**MS, "id": "m-1", "note": [{"text": AWKWARD}],
          "medicationCodeableConcept": {"coding": [{"system": "urn:x", "code": "c", "display": AWKWARD}]},
          "dosage": [{"text": AWKWARD, "doseAndRate": [{"doseQuantity": {"value": 2.5, "unit": "mg"}}]}]}
    no_meta = RawRow.of({**MS, "id": "m-2"}, "file.ndjson:7")  # no versionId, no lastUpdated
    assert wh.apply("MedicationStatement", [version(ms, "1", "2024-01-01T00:00:00Z"), no_meta]).inserted == 2
    assert sorted(wh.raw_resources("MedicationStatement"), key=lambda r: r["id"])[0] == \
        {**ms, "meta": {"versionId": "1", "lastUpdated": "2024-01-01T00:00:00Z"}}
    assert orjson.loads(rows(wh, "SELECT resource FROM raw_history WHERE id = 'm-1'")[0][0])["note"] == [{"text": AWKWARD}]
    assert rows(wh, "SELECT version_id, last_updated, source FROM raw_history WHERE id = 'm-2'") == \
        [(None, None, "file.ndjson:7")]


def test_the_retired_child_tables_are_dropped_not_left_stale(any_warehouse):
    """fhir_coding, fhir_observation_component and fhir_dosage were derived copies of the raw JSON that nothing
    read; a warehouse that still has them from an older version loses them rather than keep rows that no
    longer follow the raw tables."""
    wh = any_warehouse
    with wh.engine.begin() as conn:
        if wh.postgres:
            conn.execute(sa.text('CREATE SCHEMA IF NOT EXISTS "fhir"'))
        conn.execute(sa.text(f"CREATE TABLE {wh.qualified('fhir_coding')} (resource_id TEXT)"))
    assert wh.has_table("fhir_coding")
    wh.ensure_schema(["MedicationStatement"])
    assert not wh.has_table("fhir_coding") and wh.has_table("raw_medicationstatement")


def test_a_replayed_batch_and_an_id_seen_twice_are_stored_once(any_warehouse):
    wh = any_warehouse
    wh.ensure_schema(["MedicationStatement"])
    batch = [version(MS, "1", "2024-01-01T00:00:00Z"), version({**MS, "id": "n"}, "1", "2024-01-01T00:00:00Z")]
    wh.apply("MedicationStatement", batch)
    with wh.engine.begin() as conn:  # a replayed page: its history rows are already there
        wh.insert_rows(conn, wh.table(HISTORY), ("resource_type", "id", "version_key", "version_id", "last_updated",
                                                  "deleted", "resource", "source", "loaded_at"),
                        [("MedicationStatement", "m", "1", "1", None, False, "{}", "replay", driver_time(wh.engine, NOW))] * 2,
                        ignore_conflicts=True)
    assert wh.apply("MedicationStatement", batch).unchanged == 2
    assert rows(wh, "SELECT id, version_key, source FROM raw_history ORDER BY id") == [("m", "1", "test"), ("n", "1", "test")]
    seen = SeenIds(wh, "MedicationStatement", batch_size=2)
    for rid in ("m", "n", "m", "m"):  # the repeat lands in a later flush than the first sighting
        seen.add(rid)
    assert len(seen) == 2 and list(wh.ids_missing_from(seen)) == []


def test_a_sqlite_warehouse_file_runs_in_wal_mode_so_readers_do_not_wait_for_a_load(tmp_path):
    wh = warehouse(tmp_path)
    wh.ensure_schema(["Patient"])
    assert rows(wh, "PRAGMA journal_mode") == [("wal",)]
    assert rows(wh, "PRAGMA synchronous") == [(1,)]  # NORMAL: no sync per commit; WAL keeps commit order
