"""A resource a server sends over the size limit is a bad version of that id, never taken for a delete."""
import time

import orjson
import sqlalchemy as sa

from etl.fhir.ndjson import Line
from etl.fhir.wire import MAX_RESOURCE_BYTES
from etl.ingest.pipeline import ValidatingLoader
from etl.ingest.report import PassEnd, TypeReport, finish_pass
from etl.records import RawRow
from etl.warehouse import Warehouse

OBSERVATION = {"resourceType": "Observation", "id": "o1", "meta": {"versionId": "1", "lastUpdated": "2024-01-01T00:00:00Z"},
               "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/p"}}


def test_an_oversize_entry_the_client_parsed_is_quarantined_under_its_id_and_the_full_pass_deletes_nothing(tmp_path):
    wh = Warehouse(f"sqlite:///{tmp_path / 'w.sqlite'}")
    wh.ensure_schema(["Observation"])
    wh.apply("Observation", [RawRow.of(OBSERVATION, "page:1")])
    huge = orjson.dumps({**OBSERVATION, "meta": {"versionId": "2"}, "note": [{"text": "x" * MAX_RESOURCE_BYTES}]})
    loader = ValidatingLoader(wh, ["Observation"], track_ids=True)
    loader.load([Line("page:2", huge, "Observation", ("o1", "2"))])
    report = finish_pass(wh, loader.loader("Observation"), TypeReport("Observation", "full"), PassEnd(
        watermark=None, watermark_source="test", full=True, seen=loader.seen("Observation"), deletes_source="test"),
        time.monotonic())
    assert report.load.applied.deleted == 0 and report.load.quarantined_seen == 1
    with wh.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM raw_history WHERE deleted")).scalar() == 0
        row = conn.execute(sa.text("SELECT resource_id, version_id, errors, \"current\" FROM quarantine")).one()
    assert (row[0], row[1]) == ("o1", "2") and "MB limit" in row[2]
    assert row[3]  # the newest version is the bad one: o1 is out of the current table, as an invalid version
    assert wh.current_ids("Observation") == set()


def test_an_oversize_ndjson_line_without_a_known_id_still_counts_as_without_id(tmp_path):
    wh = Warehouse(f"sqlite:///{tmp_path / 'w.sqlite'}")
    loader = ValidatingLoader(wh, ["Observation"], track_ids=True)
    loader.load([Line("f.ndjson:1", b'{"resourceType":"Observation","id":"o9",' + b" " * MAX_RESOURCE_BYTES + b"}", "Observation")])
    loader.flush()
    assert loader.without_id == {"Observation": 1} and len(loader.seen("Observation")) == 0
