"""A wrong or hostile FHIR server (issue 13), played by a stub on 127.0.0.1: every case ends in a clear
error or a quarantine row within a bounded time, and the token reaches no other origin."""
from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from etl.fhir.client import FhirClient, FhirError
from etl.ingest.bulk import BulkExportClient, sync_bulk
from etl.ingest.rest import sync_rest
from etl.ingest.scoped import Seed, sync_cohort_first
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


# -- holes found by a second reading (issue 13) -----------------------------------------------------------

def test_a_token_endpoint_that_redirects_elsewhere_does_not_forward_the_assertion(monkeypatch):
    """httpx re-sends a POST body on a 307: the signed client assertion must not follow a redirect."""
    from etl.fhir.auth import AuthError, SmartBackendAuth
    from tests.etl.fhir.test_smart_auth import KEYS, pem

    with StubServer(lambda m, p, h: json_response(orjson.dumps({"access_token": "stolen", "expires_in": 300}))) as evil:
        def handle(method, path, headers):
            if path.endswith("/.well-known/smart-configuration"):
                return json_response(orjson.dumps({"token_endpoint": f"{server.base_url}/token"}))
            return 307, {"Location": f"{evil.origin}/steal"}, b""
        with StubServer(handle) as server:
            monkeypatch.setenv("K", pem(KEYS["RS384"]))
            auth = SmartBackendAuth(server.base_url, "me", "K", "key-RS384", "RS384")
            with FhirClient(server.base_url, auth=auth) as c:
                with pytest.raises(AuthError, match="HTTP 307"):
                    c.count("Patient")
        assert evil.requests == []


def test_expired_links_without_progress_or_from_an_unsorted_server_stop_instead_of_losing_data(monkeypatch):
    def looping(method, path, headers):
        if "page=" in path:
            return 410, {}, b""
        return json_response(bundle([patient("a")], f"{server.base_url}/Patient?page=2"))

    with StubServer(looping) as server:
        with client(server.base_url, monkeypatch) as c:
            with pytest.raises(FhirError, match="keep expiring without progress"):
                list(c.search("Patient", {"_sort": "_lastUpdated"}))
    assert len(server.requests) < 10

    unsorted = [patient("p1", "2024-01-03T00:00:00Z"), patient("p2", "2024-01-01T00:00:00Z")]

    def ignores_sort(method, path, headers):
        if "page=" in path:
            return 410, {}, b""
        return json_response(bundle(unsorted, f"{server.base_url}/Patient?page=2"))

    with StubServer(ignores_sort) as server:
        with client(server.base_url, monkeypatch) as c:
            with pytest.raises(FhirError, match="does not sort by _lastUpdated"):
                list(c.search("Patient", {"_sort": "_lastUpdated"}))


@pytest.mark.parametrize("resource_text, phrase", [
    (b'{"resourceType":"Patient","id":"deep","extension":[' + b'{"url":"http://x","extension":[' * 150 + b'{"url":"http://x","valueString":"y"}'
     + b"]}" * 150 + b"]}", "nested too deeply"),
    (b'{"resourceType":"Patient","id":"sur","name":[{"text":"\\ud800"}]}', "invalid JSON"),
])
def test_resources_orjson_cannot_write_are_quarantined_from_a_page(monkeypatch, tmp_path, resource_text, phrase):
    page = (b'{"resourceType":"Bundle","type":"searchset","entry":[{"resource":' + orjson.dumps(patient("good"))
            + b'},{"resource":' + resource_text + b'}]}')

    def handle(method, path, headers):
        return json_response(bundle([], total=2) if "_summary=count" in path else page)

    with StubServer(handle) as server:
        with client(server.base_url, monkeypatch) as c:
            wh = warehouse(tmp_path)
            sync_rest(c, wh, ["Patient"])
    assert wh.current_ids("Patient") == {"good"}
    assert phrase in wh.read_table("quarantine")["errors"].iloc[0]


@pytest.mark.parametrize("page", [
    bundle([patient("a")], search_mode_list=True),
    orjson.dumps({"resourceType": "Bundle", "type": "searchset", "meta": "yesterday", "entry": [{"resource": patient("a")}]}),
    orjson.dumps({"resourceType": "Bundle", "type": "searchset", "entry": [
        {"resource": {"resourceType": "OperationOutcome", "issue": ["odd", {"details": "text"}]}, "search": {"mode": "outcome"}},
        {"resource": patient("a"), "search": {"mode": ["match"]}}]}),
])
def test_odd_page_shapes_do_not_crash(monkeypatch, page):
    with StubServer(lambda m, p, h: json_response(page)) as server:
        with client(server.base_url, monkeypatch) as c:
            assert [e.resource["id"] for e in c.search("Patient")] == ["a"]


def test_a_next_link_with_an_impossible_port_is_refused(monkeypatch):
    with StubServer(lambda m, p, h: json_response(bundle([patient("a")], "http://127.0.0.1:99999/fhir/Patient?p=2"))) as server:
        with client(server.base_url, monkeypatch) as c:
            with pytest.raises(FhirError, match="refused"):
                list(c.search("Patient"))


def test_a_foreign_bulk_status_url_is_refused_before_it_is_recorded(monkeypatch, tmp_path):
    def handle(method, path, headers):
        return 202, {"Content-Location": "https://evil.example.org/status/1"}, b""

    wh = warehouse(tmp_path)
    with StubServer(handle) as server:
        with client(server.base_url, monkeypatch) as c:
            with pytest.raises(FhirError, match="refused: the Bulk status URL"):
                sync_bulk(c, wh, ["Patient"], exporter=BulkExportClient(c, initial_poll_s=0.01))
    assert wh.open_bulk_job() is None


def test_a_malformed_bulk_manifest_is_a_clear_permanent_error(monkeypatch, tmp_path):
    def handle(method, path, headers):
        if "$export" in path:
            return 202, {"Content-Location": f"{server.base_url}/status/1"}, b""
        return json_response(orjson.dumps({"output": ["not-an-object"]}))

    with StubServer(handle) as server:
        with client(server.base_url, monkeypatch) as c:
            with pytest.raises(FhirError, match="well-formed manifest") as caught:
                sync_bulk(c, warehouse(tmp_path), ["Patient"], exporter=BulkExportClient(c, initial_poll_s=0.01))
    assert caught.value.permanent


def test_a_dripping_bulk_file_hits_the_file_deadline(monkeypatch, tmp_path):
    line = orjson.dumps(patient("a")) + b"\n"

    def handle(method, path, headers):
        if "$export" in path:
            return 202, {"Content-Location": f"{server.base_url}/status/1"}, b""
        if path.startswith("/fhir/status"):
            return json_response(orjson.dumps({"transactionTime": "2024-01-01T00:00:00Z", "requiresAccessToken": True,
                                               "output": [{"type": "Patient", "url": f"{server.base_url}/file"}]}))
        return 200, {}, drip(line * 20, 0.02)

    with StubServer(handle) as server:
        with client(server.base_url, monkeypatch) as c:
            started = time.monotonic()
            with pytest.raises(FhirError, match="file deadline"):
                sync_bulk(c, warehouse(tmp_path), ["Patient"],
                          exporter=BulkExportClient(c, initial_poll_s=0.01, file_deadline_s=0.5))
    assert time.monotonic() - started < 10


def test_cohort_first_applies_the_same_text_checks(monkeypatch, tmp_path):
    """A NUL in a string is quarantined in cohort-first mode too (PostgreSQL could not store it)."""
    bad = {**patient("p1"), "name": [{"text": "Ann\u0000Lee"}]}

    def handle(method, path, headers):
        if path.startswith("/fhir/Condition"):
            return json_response(bundle([{"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
                                          "code": {"text": "x"}}]))
        return json_response(bundle([bad]))

    with StubServer(handle) as server:
        with client(server.base_url, monkeypatch) as c:
            wh = warehouse(tmp_path)
            sync_cohort_first(c, wh, ["Patient"], [Seed("Condition", {"code": "x"})])
    assert wh.current_ids("Patient") == set()
    assert "control character" in wh.read_table("quarantine")["errors"].iloc[0]


def test_a_gzip_compressed_page_is_read_once_decoded(monkeypatch):
    """Most servers compress: the deadline-bounded reader must leave decoding to httpx, once."""
    import gzip

    body = gzip.compress(bundle([patient("a"), patient("b")]))
    with StubServer(lambda m, p, h: (200, {"Content-Type": "application/fhir+json", "Content-Encoding": "gzip"}, body)) as server:
        with client(server.base_url, monkeypatch) as c:
            assert [e.resource["id"] for e in c.search("Patient")] == ["a", "b"]


def test_back_off_without_retry_after_is_bounded_by_the_total_wait_too(monkeypatch):
    with StubServer(lambda m, p, h: (503, {}, b"")) as server:
        with client(server.base_url, monkeypatch, backoff_s=0.2, max_wait_s=0.3, max_retries=20) as c:
            with pytest.raises(FhirError, match="would pass the bound"):
                list(c.search("Patient"))
