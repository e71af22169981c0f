"""Bulk Data $export v2 (etl.ingest.bulk) against the real sandbox server, and the protocol corners a
mocked server can stage (Retry-After dates, requiresAccessToken, error and deleted files)."""
from __future__ import annotations

import email.utils
import time
from typing import Iterator

import httpx
import orjson
import pytest
import respx
import sqlalchemy as sa

from etl.fhir.client import FhirClient, SearchStats
from etl.ingest.bulk import BulkExportClient, BulkExportError, ExportRequest, sync_bulk
from etl.ingest.rest import sync_rest
from synthetic.load import load_server
from synthetic.sandbox import SandboxFhirServer
from tests.sync_helpers import TYPES, assert_same, snapshot, warehouse


@pytest.fixture(scope="module")
def server(tmp_path_factory, small_hospital) -> Iterator[SandboxFhirServer]:
    with SandboxFhirServer(tmp_path_factory.mktemp("bulk-server")) as s:
        load_server(s.base_url, small_hospital.resources)
        yield s


def fast(client: FhirClient) -> BulkExportClient:
    return BulkExportClient(client, initial_poll_s=0.2, poll_cap_s=2)


def test_a_full_export_loads_exactly_what_rest_search_loads(server, tmp_path):
    by_rest, by_bulk = warehouse(tmp_path, "rest"), warehouse(tmp_path, "bulk")
    progress: list[str] = []
    with FhirClient(server.base_url) as client:
        sync_rest(client, by_rest, TYPES)
        report, reports = sync_bulk(client, by_bulk, list(TYPES), exporter=fast(client), workers=2,
                                    progress=progress.append)
    assert_same(snapshot(by_rest), snapshot(by_bulk))
    assert report.polls >= 2 and any("bulk export:" in p for p in progress)  # X-Progress was surfaced
    for t in TYPES:
        assert reports[t].server_count == reports[t].warehouse_count == report.manifest_counts[t]
        assert by_bulk.sync_state(t)["watermark"] == report.transaction_time
    with by_bulk.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT state FROM bulk_jobs")).scalar() == "done"


def test_the_next_export_asks_since_the_transaction_time_and_applies_only_changes(server, tmp_path):
    wh = warehouse(tmp_path)
    with FhirClient(server.base_url) as client:
        first, _ = sync_bulk(client, wh, ["Patient", "Condition"], exporter=fast(client))
        condition = httpx.get(f"{server.base_url}/Condition", params={"_count": "1"}).json()["entry"][0]["resource"]
        condition["note"] = [{"text": "bulk"}]
        httpx.put(f"{server.base_url}/Condition/{condition['id']}", json=condition)
        second, reports = sync_bulk(client, wh, ["Patient", "Condition"], exporter=fast(client))
    assert reports["Condition"].mode == "bulk incremental"
    assert reports["Condition"].load.received == 1 and reports["Condition"].load.applied.updated == 1
    assert reports["Patient"].load.received == 0
    assert second.transaction_time > first.transaction_time
    assert reports["Condition"].server_count == reports["Condition"].warehouse_count  # REST count after a _since export


def test_a_crashed_run_resumes_the_saved_export_instead_of_starting_another(server, tmp_path):
    wh = warehouse(tmp_path)
    with FhirClient(server.base_url) as client:
        exporter = fast(client)
        real_poll = exporter.poll

        def crash(*a, **k):
            raise KeyboardInterrupt("worker killed")

        exporter.poll = crash  # type: ignore[method-assign]
        with pytest.raises(KeyboardInterrupt):
            sync_bulk(client, wh, ["Patient"], exporter=exporter)
        saved = wh.open_bulk_job()
        exporter.poll = real_poll  # type: ignore[method-assign]
        report, reports = sync_bulk(client, wh, ["Patient"], exporter=exporter)
    assert report.resumed and report.status_url == saved["status_url"]
    assert reports["Patient"].warehouse_count == reports["Patient"].server_count > 0
    assert wh.open_bulk_job() is None


def test_cancel_deletes_the_export_on_the_server(server):
    with FhirClient(server.base_url) as client:
        exporter = fast(client)
        url = exporter.kickoff(ExportRequest(types=("Patient",)), SearchStats())
        exporter.cancel(url)
        assert httpx.get(url).status_code == 404


def test_type_filter_is_reapplied_locally(server, tmp_path):
    wh = warehouse(tmp_path)
    with FhirClient(server.base_url) as client:
        _, reports = sync_bulk(client, wh, ["Observation"], type_filters=("Observation?code=http://loinc.org|2276-4",),
                               exporter=fast(client))
    # Every loaded Observation carries the filtered LOINC coding (beside, perhaps, a hospital's own codings).
    loaded = wh.raw_resources("Observation")
    assert all(("http://loinc.org", "2276-4") in {(c.get("system"), c.get("code")) for c in r["code"]["coding"]}
               for r in loaded)
    assert loaded and reports["Observation"].load.received > 0


BASE = "https://bulk.example.org/fhir"


@respx.mock
def test_protocol_corners_retry_after_date_token_rules_errors_and_deletes(tmp_path, monkeypatch):
    monkeypatch.setenv("BULK_TOKEN", "s3cret-token")
    status = f"{BASE}/status/1"
    respx.get(f"{BASE}/$export").respond(202, headers={"Content-Location": status})
    retry_date = email.utils.formatdate(time.time() + 3, usegmt=True)
    manifest = {"transactionTime": "2026-01-01T00:00:00Z", "requiresAccessToken": False, "request": f"{BASE}/$export",
                "output": [{"type": "Patient", "url": "https://files.example.org/p.ndjson", "count": 2}],
                "deleted": [{"type": "Bundle", "url": "https://files.example.org/d.ndjson"}],
                "error": [{"type": "OperationOutcome", "url": "https://files.example.org/e.ndjson"}]}
    respx.get(status).mock(side_effect=[
        httpx.Response(202, headers={"X-Progress": "50% done", "Retry-After": retry_date}),
        httpx.Response(202, headers={"X-Progress": "90% done"}),
        httpx.Response(200, json=manifest)])
    respx.delete(status).respond(202)
    patients = [{"resourceType": "Patient", "id": "a", "meta": {"versionId": "1"}},
                {"resourceType": "Patient", "id": "b", "meta": {"versionId": "1"}}]
    file_route = respx.get("https://files.example.org/p.ndjson").respond(
        content=b"\n".join(orjson.dumps(p) for p in patients) + b"\n")
    deleted = {"resourceType": "Bundle", "type": "transaction",
               "entry": [{"request": {"method": "DELETE", "url": "Patient/old"}}]}
    respx.get("https://files.example.org/d.ndjson").respond(content=orjson.dumps(deleted) + b"\n")
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "processing",
                                                              "diagnostics": "Observation/x could not be exported"}]}
    respx.get("https://files.example.org/e.ndjson").respond(content=orjson.dumps(outcome) + b"\n")
    respx.get(f"{BASE}/Patient").respond(json={"resourceType": "Bundle", "type": "searchset", "total": 2})

    wh = warehouse(tmp_path)
    wh.ensure_schema(["Patient"])
    from etl.warehouse import RawRow
    wh.apply("Patient", [RawRow("old", "1", None, {"resourceType": "Patient", "id": "old"}, "earlier")])
    # An incremental export (_since): only the deleted file can remove "old".
    wh.save_sync_state("Patient", watermark="2025-12-01T00:00:00Z", watermark_source="test", mode="bulk", full=True)
    waits: list[float] = []
    from etl.fhir.auth import BearerTokenAuth
    # The operator trusts the file store (FHIR_TRUSTED_ORIGINS); files elsewhere are refused (test_hostile_servers).
    with FhirClient(BASE, auth=BearerTokenAuth("BULK_TOKEN"), trusted_origins=("https://files.example.org",)) as client:
        exporter = BulkExportClient(client, initial_poll_s=0.5, poll_cap_s=10, sleep=waits.append)
        report, reports = sync_bulk(client, wh, ["Patient"], exporter=exporter, workers=1)
    assert report.progress == ["50% done", "90% done"]
    assert 1.5 < waits[0] <= 3.5 and waits[1] == 0.5  # HTTP-date Retry-After, then the back-off
    assert "authorization" not in file_route.calls[0].request.headers  # requiresAccessToken: false
    assert sorted(wh.current_ids("Patient")) == ["a", "b"]  # "old" deleted by the deleted file
    q = wh.read_table("quarantine")
    assert list(q["resource_type"]) == ["OperationOutcome"] and "could not be exported" in q["errors"].iloc[0]
    assert reports["Patient"].mode == "bulk incremental" and reports["Patient"].server_count == 2
    assert respx.calls[0].request.url.params["_since"] == "2025-12-01T00:00:00Z"


class BreaksAfter(httpx.SyncByteStream):
    """A download whose connection drops after ``at`` bytes, in the middle of a line."""

    def __init__(self, data: bytes, at: int) -> None:
        self.data, self.at = data, at

    def __iter__(self) -> Iterator[bytes]:
        for i in range(0, self.at, 100):
            yield self.data[i:min(i + 100, self.at)]
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")


@respx.mock
def test_a_broken_download_resumes_and_yields_every_line_once_with_its_file_line_number():
    lines = [orjson.dumps({"resourceType": "Patient", "id": f"p{i}"}) for i in range(1, 81)]
    lines[40] = b""  # a blank line keeps its number
    body = b"\n".join(lines) + b"\n"
    url = "https://files.example.org/p.ndjson"
    respx.get(url).mock(side_effect=[httpx.Response(200, stream=BreaksAfter(body, 1234)), httpx.Response(200, content=body)])
    stats = SearchStats()

    def sleep(_seconds: float) -> None:  # the retry receives the body cut at other places
        exporter.block_bytes = 300

    with FhirClient(BASE, trusted_origins=("https://files.example.org",)) as client:
        exporter = BulkExportClient(client, sleep=sleep, block_bytes=256)
        blocks = list(exporter.blocks(url, False, "Patient", stats))
    got = [(line.source, line.text) for block in blocks for line in block.lines()]
    assert got == [(f"{url}:{n}", text) for n, text in enumerate(lines, start=1) if text]
    assert stats.requests == 2 and stats.retries == 1
    assert len(blocks) > 4  # whole-line blocks, not one per line nor one per file


@respx.mock
def test_a_failed_export_reports_the_servers_reason():
    status = f"{BASE}/status/2"
    respx.get(f"{BASE}/$export").respond(202, headers={"Content-Location": status})
    respx.get(status).respond(500, json={"resourceType": "OperationOutcome",
                                         "issue": [{"severity": "error", "code": "exception", "diagnostics": "disk full"}]})
    with FhirClient(BASE, max_retries=0) as client:
        exporter = BulkExportClient(client, sleep=lambda s: None)
        url = exporter.kickoff(ExportRequest(), SearchStats())
        from etl.ingest.bulk import BulkReport
        with pytest.raises(BulkExportError, match="disk full"):
            exporter.poll(url, BulkReport(url, False))


def test_a_patient_level_export_loads_the_patients_compartments(server, tmp_path):
    by_rest, by_bulk = warehouse(tmp_path, "rest"), warehouse(tmp_path, "bulk")
    types = ["Patient", "Condition", "Observation"]
    with FhirClient(server.base_url) as client:
        sync_rest(client, by_rest, types)
        report, _ = sync_bulk(client, by_bulk, types, level="patient", exporter=fast(client))
    with by_bulk.engine.connect() as conn:
        assert '"level":"patient"' in conn.execute(sa.text("SELECT request FROM bulk_jobs")).scalar()
    assert_same(snapshot(by_rest, types), snapshot(by_bulk, types))
