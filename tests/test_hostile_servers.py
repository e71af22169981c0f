"""A wrong or hostile FHIR server (issue 13), played by a stub on 127.0.0.1: every case ends in a clear
error or a quarantine row within a bounded time, and the token reaches no other origin."""
from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from etl.bulk import BulkExportClient, sync_bulk
from etl.fhir_client import FhirClient, FhirError
from etl.scoped import Seed, sync_cohort_first
from etl.sync import sync_rest
from tests.stub_fhir import StubServer, bundle, drip, json_response
from tests.sync_helpers import warehouse

TOKEN = "s3cret-token-value"


def patient(pid: str, updated: str = "2024-01-01T00:00:00Z") -> dict:
    return {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1970-01-01",
            "meta": {"versionId": "1", "lastUpdated": updated}}


def client(base_url: str, monkeypatch, **kw) -> FhirClient:
    monkeypatch.setenv("STUB_TOKEN", TOKEN)
    kw.setdefault("backoff_s", 0.01)
    return FhirClient(base_url, bearer_token_env="STUB_TOKEN", **kw)


def tokens_seen(server: StubServer) -> int:
    return sum(TOKEN in seen.headers.get("authorization", "") for seen in server.requests)


def test_a_next_link_to_another_origin_is_refused_and_gets_no_token(monkeypatch):
    with StubServer(lambda m, p, h: json_response(bundle([patient("evil")]))) as evil:
        with StubServer(lambda m, p, h: json_response(bundle([patient("good")], f"{evil.base_url}/Patient?page=2"))) as server:
            with client(server.base_url, monkeypatch) as c:
                got = []
                with pytest.raises(FhirError, match="refused: the next page link .* is not on the FHIR server's origin"):
                    for entry in c.search("Patient"):
                        got.append(entry.resource["id"])
            assert got == ["good"] and tokens_seen(server) == 1
        assert evil.requests == []


def bulk_server(file_origin: str, requires_token: bool = True):
    def handle(method, path, headers):
        if "$export" in path:
            return 202, {"Content-Location": f"{server.base_url}/status/1"}, b""
        if path.startswith("/fhir/status/1"):
            if method == "DELETE":
                return 202, {}, b""
            return json_response(orjson.dumps({"transactionTime": "2024-01-01T00:00:00Z", "requiresAccessToken": requires_token,
                                               "output": [{"type": "Patient", "url": f"{file_origin}/files/Patient.ndjson"}],
                                               "error": []}))
        if path.startswith("/files/"):
            return 200, {"Content-Type": "application/fhir+ndjson"}, orjson.dumps(patient("from-files")) + b"\n"
        return 404, {}, b""
    server = StubServer(handle)
    return server


def test_a_bulk_file_on_another_origin_is_refused_unless_the_operator_trusts_it(monkeypatch, tmp_path):
    with bulk_server("") as files:  # the file host (serves /files/ only)
        with bulk_server(files.origin) as server:
            with client(server.base_url, monkeypatch) as c:
                with pytest.raises(FhirError, match="refused: the Bulk output file"):
                    sync_bulk(c, warehouse(tmp_path, "a"), ["Patient"], exporter=BulkExportClient(c, initial_poll_s=0.01))
            assert files.requests == []
            # An operator who trusts the file store (FHIR_TRUSTED_ORIGINS) gets the file, token included.
            with client(server.base_url, monkeypatch, trusted_origins=(files.origin,)) as c:
                wh = warehouse(tmp_path, "b")
                sync_bulk(c, wh, ["Patient"], exporter=BulkExportClient(c, initial_poll_s=0.01))
            assert wh.current_ids("Patient") == {"from-files"} and tokens_seen(files) == 1


def test_a_next_link_that_points_to_itself_is_a_paging_loop(monkeypatch):
    with StubServer(lambda m, p, h: json_response(bundle([patient("a")], f"{server.base_url}/Patient?page=same"))) as server:
        with client(server.base_url, monkeypatch) as c:
            started = time.monotonic()
            with pytest.raises(FhirError, match="paging loop"):
                list(c.search("Patient"))
    assert time.monotonic() - started < 10 and len(server.requests) == 2


def test_a_body_dripped_byte_by_byte_hits_the_request_deadline(monkeypatch):
    body = bundle([patient("a")])
    with StubServer(lambda m, p, h: (200, {"Content-Type": "application/fhir+json"}, drip(body, 0.05))) as server:
        with client(server.base_url, monkeypatch, request_deadline_s=1.0, timeout_s=5) as c:
            started = time.monotonic()
            with pytest.raises(FhirError, match="request deadline"):
                list(c.search("Patient"))
    assert time.monotonic() - started < 5


def test_a_huge_retry_after_is_capped_and_the_total_wait_is_bounded(monkeypatch):
    with StubServer(lambda m, p, h: (503, {"Retry-After": "1000000000"}, b"")) as server:
        with client(server.base_url, monkeypatch, retry_after_cap_s=0.2, max_wait_s=0.5) as c:
            started = time.monotonic()
            with pytest.raises(FhirError, match=r"capped at 0s each and 0s per request|waits are capped"):
                list(c.search("Patient"))
    assert time.monotonic() - started < 5 and len(server.requests) <= 4


@pytest.mark.parametrize("page, reason", [
    (orjson.dumps({"resourceType": "Bundle", "type": "searchset", "entry": {"resource": patient("a")}}), "entry or link is not a list"),
    (orjson.dumps({"resourceType": "OperationOutcome", "issue": []}), "not a Bundle"),
])
def test_a_malformed_page_fails_with_a_clear_message(monkeypatch, page, reason):
    with StubServer(lambda m, p, h: json_response(page)) as server:
        with client(server.base_url, monkeypatch) as c:
            with pytest.raises(FhirError, match=reason):
                list(c.search("Patient"))


def test_one_nan_in_a_page_quarantines_that_resource_and_loads_the_rest(monkeypatch, tmp_path):
    page = bundle([patient("good"), {**patient("bad"), "multipleBirthInteger": 1}]).replace(b'"multipleBirthInteger":1',
                                                                                            b'"multipleBirthInteger":NaN')
    def handle(method, path, headers):
        return json_response(bundle([], total=2) if "_summary=count" in path else page)

    with StubServer(handle) as server:
        with client(server.base_url, monkeypatch) as c:
            wh = warehouse(tmp_path)
            reports = sync_rest(c, wh, ["Patient"])
    assert wh.current_ids("Patient") == {"good"}
    q = wh.read_table("quarantine")
    assert len(q) == 1 and "invalid JSON" in q["errors"].iloc[0] and reports["Patient"].load.received == 2


def test_cohort_first_survives_an_expired_page_link(monkeypatch, tmp_path):
    """Cohort-first searches are sorted by _lastUpdated, so a 410 restarts the window from the last instant."""
    people = [patient(f"p{i}", f"2024-01-0{i}T00:00:00Z") for i in range(1, 5)]
    expired = {"done": False}

    def handle(method, path, headers):
        query = parse_qs(urlsplit(path).query)
        if path.startswith("/fhir/Condition"):
            conds = [{"resourceType": "Condition", "id": f"c{p['id']}", "subject": {"reference": f"Patient/{p['id']}"},
                      "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "J84.10"}]},
                      "meta": {"lastUpdated": "2024-01-01T00:00:00Z"}} for p in people]
            return json_response(bundle(conds))
        if path.startswith("/fhir/Patient") and "page" in query:
            if not expired["done"]:
                expired["done"] = True
                return 410, {}, b""
        if path.startswith("/fhir/Patient"):
            assert query.get("_sort") == ["_lastUpdated"]
            since = next((v[2:] for v in query.get("_lastUpdated", []) if v.startswith("ge")), "")
            rest = [p for p in people if p["meta"]["lastUpdated"] >= since]
            first, more = rest[:2], rest[2:]
            return json_response(bundle(first, f"{server.base_url}/Patient?page=2" if more and not since else None)
                                 if not since else bundle(rest))
        return json_response(bundle([]))

    with StubServer(handle) as server:
        with client(server.base_url, monkeypatch) as c:
            wh = warehouse(tmp_path)
            reports = sync_cohort_first(c, wh, ["Patient"], [Seed("Condition", {"code": "x"})])
    assert wh.current_ids("Patient") == {"p1", "p2", "p3", "p4"} and reports["Patient"].search.restarts == 1
