"""Search paging and retries of etl.fhir.client, against a mocked transport (respx)."""
from __future__ import annotations

import threading
import time
from typing import Callable

import httpx
import pytest
import respx

from etl.fhir.client import FhirClient, FhirError, SearchStats

BASE = "https://fhir.example.org/r4"


def bundle(ids: list[str], next_url: str | None = None, total: int | None = None, extra: list | None = None) -> dict:
    b: dict = {"resourceType": "Bundle", "type": "searchset",
               "entry": [{"resource": {"resourceType": "Patient", "id": i}, "search": {"mode": "match"}} for i in ids]
               + (extra or []),
               "link": [{"relation": "self", "url": "x"}] + ([{"relation": "next", "url": next_url}] if next_url else [])}
    if total is not None:
        b["total"] = total
    return b


def wait_until(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    """Whether ``condition`` became true within ``seconds`` (the read-ahead runs in a thread of its own)."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


@respx.mock
def test_follows_next_links_exactly_and_ignores_total():
    respx.get(f"{BASE}/Patient", params={"_count": "2"}).respond(json=bundle(["a", "b"], f"{BASE}/opaque?page=XYZ", total=2))
    respx.get(f"{BASE}/opaque", params={"page": "XYZ"}).respond(json=bundle(["c"]))
    with FhirClient(BASE, page_size=2, backoff_s=0) as client:
        stats = SearchStats()
        ids = [e.resource["id"] for e in client.search("Patient", stats=stats)]
    assert ids == ["a", "b", "c"]
    assert stats.pages == 2 and stats.requests == 2


@respx.mock
def test_each_page_is_parsed_once_and_a_truncated_one_still_retried(monkeypatch):
    import etl.fhir.client as client_module

    parsed: list[int] = []
    real = client_module.load_page
    monkeypatch.setattr(client_module, "load_page", lambda content: parsed.append(len(content)) or real(content))
    whole = httpx.Response(200, json=bundle(["a", "b"], f"{BASE}/opaque?page=XYZ"))
    respx.get(f"{BASE}/Patient", params={"_count": "2"}).side_effect = [httpx.Response(200, content=whole.content[:-7]), whole]
    respx.get(f"{BASE}/opaque", params={"page": "XYZ"}).respond(json=bundle(["c"]))
    with FhirClient(BASE, page_size=2, backoff_s=0) as client:
        stats = SearchStats()
        ids = [e.resource["id"] for e in client.search("Patient", stats=stats)]
    assert ids == ["a", "b", "c"] and stats.pages == 2 and stats.retries == 1
    assert len(parsed) == 3  # the truncated body once (refused), then each whole page once


@respx.mock
def test_the_next_page_is_requested_while_this_pages_entries_are_still_being_handed_on():
    respx.get(f"{BASE}/Patient", params={"_count": "2"}).respond(json=bundle(["a", "b"], f"{BASE}/opaque?page=2"))
    second = respx.get(f"{BASE}/opaque", params={"page": "2"})
    second.respond(json=bundle(["c"]))
    with FhirClient(BASE, page_size=2, backoff_s=0) as client:
        entries = client.search("Patient")
        assert next(entries).resource["id"] == "a"
        assert wait_until(lambda: second.called)  # asked for before "b" was taken
        assert [e.resource["id"] for e in entries] == ["b", "c"]
    assert second.call_count == 1


@respx.mock
def test_a_next_page_that_fails_fails_the_search_after_this_pages_entries():
    respx.get(f"{BASE}/Patient", params={"_count": "2"}).respond(json=bundle(["a", "b"], f"{BASE}/opaque?page=2"))
    respx.get(f"{BASE}/opaque", params={"page": "2"}).respond(403, json={"resourceType": "OperationOutcome", "issue": []})
    got: list[str] = []
    with FhirClient(BASE, page_size=2, backoff_s=0) as client, pytest.raises(FhirError, match="HTTP 403"):
        for entry in client.search("Patient"):
            got.append(entry.resource["id"])
    assert got == ["a", "b"]


@respx.mock
def test_a_search_closed_early_leaves_no_read_ahead_waiting_on_a_throttled_page():
    respx.get(f"{BASE}/Patient", params={"_count": "2"}).respond(json=bundle(["a", "b"], f"{BASE}/opaque?page=2"))
    throttled = respx.get(f"{BASE}/opaque", params={"page": "2"})
    throttled.respond(503, headers={"Retry-After": "30"})
    with FhirClient(BASE, page_size=2, backoff_s=0) as client:
        entries = client.search("Patient")
        assert next(entries).resource["id"] == "a"
        assert wait_until(lambda: throttled.called)
        entries.close()  # the consumer stops; the page read ahead is waiting 30 s to retry
        assert wait_until(lambda: not any(t.name.startswith("fhir-read-ahead") for t in threading.enumerate()))
    assert throttled.call_count == 1  # no attempt after the close


@respx.mock
def test_a_next_link_that_is_not_a_url_fails_the_search_after_this_pages_entries():
    respx.get(f"{BASE}/Patient").respond(json=bundle(["a", "b"], "http://[broken/x"))
    got: list[str] = []
    with FhirClient(BASE, backoff_s=0) as client, pytest.raises(FhirError, match="not a URL"):
        for entry in client.search("Patient"):
            got.append(entry.resource["id"])
    assert got == ["a", "b"]


@respx.mock
def test_the_search_deadline_counts_the_time_the_consumer_takes():
    respx.get(f"{BASE}/Patient", params={"_count": "1"}).respond(json=bundle(["a"], f"{BASE}/opaque?page=2"))
    respx.get(f"{BASE}/opaque", params={"page": "2"}).respond(json=bundle(["b"]))
    got: list[str] = []
    with FhirClient(BASE, page_size=1, backoff_s=0, search_deadline_s=0.2) as client, \
            pytest.raises(FhirError, match="search deadline"):
        for entry in client.search("Patient"):
            got.append(entry.resource["id"])
            time.sleep(0.3)  # a slow consumer: the deadline passes while it holds the first page
    assert got == ["a"]


@respx.mock
def test_skips_include_and_outcome_entries():
    extra = [{"resource": {"resourceType": "Organization", "id": "o"}, "search": {"mode": "include"}},
             {"resource": {"resourceType": "OperationOutcome", "issue": []}, "search": {"mode": "outcome"}}]
    respx.get(f"{BASE}/Patient").respond(json=bundle(["a"], extra=extra))
    stats = SearchStats()
    with FhirClient(BASE) as client:
        ids = [e.resource["id"] for e in client.search("Patient", stats=stats)]
    assert ids == ["a"] and stats.skipped_entries == {"include": 1, "outcome": 1}


@respx.mock
def test_retries_429_and_503_honouring_retry_after():
    route = respx.get(f"{BASE}/Patient")
    route.side_effect = [httpx.Response(429, headers={"Retry-After": "0"}), httpx.Response(503),
                         httpx.Response(200, json=bundle(["a"]))]
    stats = SearchStats()
    with FhirClient(BASE, backoff_s=0) as client:
        ids = [e.resource["id"] for e in client.search("Patient", stats=stats)]
    assert ids == ["a"] and stats.retries == 2 and stats.requests == 3


@respx.mock
def test_other_client_errors_fail_fast_with_the_operation_outcome_text():
    respx.get(f"{BASE}/Patient").respond(403, json={"resourceType": "OperationOutcome",
                                                    "issue": [{"severity": "error", "code": "forbidden",
                                                               "diagnostics": "scope system/Patient.read missing"}]})
    with FhirClient(BASE) as client, pytest.raises(FhirError, match="403.*scope system/Patient.read missing"):
        list(client.search("Patient"))


@respx.mock
def test_bearer_token_comes_from_the_named_environment_variable(monkeypatch):
    monkeypatch.setenv("MY_FHIR_TOKEN", "s3cret")
    route = respx.get(f"{BASE}/Patient").respond(json=bundle([]))
    with FhirClient(BASE, bearer_token_env="MY_FHIR_TOKEN") as client:
        list(client.search("Patient"))
    assert route.calls.last.request.headers["Authorization"] == "Bearer s3cret"


@respx.mock
def test_gives_up_after_max_retries_without_leaking_headers(monkeypatch):
    monkeypatch.setenv("MY_FHIR_TOKEN", "s3cret")
    respx.get(f"{BASE}/Patient").mock(side_effect=httpx.ConnectError("reset"))
    with FhirClient(BASE, bearer_token_env="MY_FHIR_TOKEN", max_retries=2, backoff_s=0) as client:
        with pytest.raises(FhirError) as info:
            list(client.search("Patient"))
    assert "3 attempts" in str(info.value) and "s3cret" not in str(info.value)


def test_a_restart_moves_the_lower_lastupdated_bound_and_keeps_the_upper_one():
    from etl.fhir.client import _restarted

    query = {"_count": "10", "_sort": "_lastUpdated", "_lastUpdated": ["ge2024-01-01", "lt2024-02-01"]}
    assert _restarted(query, "2024-01-15T10:00:00Z")["_lastUpdated"] == ["ge2024-01-15T10:00:00Z", "lt2024-02-01"]
    assert _restarted({"_sort": "_lastUpdated"}, "2024-01-15")["_lastUpdated"] == ["ge2024-01-15"]
