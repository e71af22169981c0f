"""Incremental REST sync against the real sandbox server: watermarks, updates, deletes, counts,
expired page links, faults, crash and re-run (etl.ingest.rest, etl.warehouse)."""
from __future__ import annotations

from typing import Iterator

import httpx
import pytest
import sqlalchemy as sa

from etl.fhir.client import FhirClient
from etl.ingest.rest import sync_rest
from synthetic.fault_proxy import FaultProxy
from synthetic.load import load_server
from synthetic.sandbox import SandboxFhirServer
from tests.sync_helpers import TYPES, assert_same, snapshot, warehouse


@pytest.fixture(scope="module")
def server(tmp_path_factory, small_hospital) -> Iterator[SandboxFhirServer]:
    """A server of this module's own: these tests change its data."""
    with SandboxFhirServer(tmp_path_factory.mktemp("sync-server")) as s:
        load_server(s.base_url, small_hospital.resources)
        yield s


def client_for(base_url: str, **kw) -> FhirClient:
    return FhirClient(base_url, page_size=kw.pop("page_size", 200), backoff_s=0.01, **kw)


def test_first_pull_then_unchanged_rerun_costs_one_history_request_and_writes_nothing(server, small_hospital, any_warehouse):
    wh = any_warehouse
    with client_for(server.base_url) as client:
        first = sync_rest(client, wh, TYPES)
        before = snapshot(wh)
        with wh.engine.connect() as conn:
            history_rows = conn.execute(sa.text("SELECT count(*) FROM raw_history")).scalar()
        again = sync_rest(client, wh, TYPES)
    by_type = small_hospital.by_type()
    for t in TYPES:
        assert first[t].load.applied.inserted == len(by_type[t]) == first[t].server_count == first[t].warehouse_count
    assert sum(r.search.requests for r in again.values()) == 1  # one _history request says nothing changed
    assert all(r.load.applied.writes == 0 and r.load.received == 0 for r in again.values())
    assert_same(before, snapshot(wh))
    with wh.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM raw_history")).scalar() == history_rows


def test_updates_and_deletes_reach_the_warehouse_and_history_keeps_the_old_versions(server, tmp_path):
    wh = warehouse(tmp_path)
    with client_for(server.base_url) as client:
        sync_rest(client, wh, TYPES)
        condition = client_get(server, "Condition")
        observation = client_get(server, "Observation")
        condition["note"] = [{"text": "reviewed"}]
        assert httpx.put(f"{server.base_url}/Condition/{condition['id']}", json=condition).status_code == 200
        assert httpx.delete(f"{server.base_url}/Observation/{observation['id']}").status_code in (200, 204)
        reports = sync_rest(client, wh, TYPES)
    assert reports["Condition"].load.applied.updated == 1
    assert reports["Observation"].load.applied.deleted == 1
    assert observation["id"] not in wh.current_ids("Observation")
    stored = next(r for r in wh.raw_resources("Condition") if r["id"] == condition["id"])
    assert stored["note"] == [{"text": "reviewed"}] and stored["meta"]["versionId"] == "2"
    with wh.engine.connect() as conn:
        versions = conn.execute(sa.text("SELECT version_id, deleted FROM raw_history WHERE id = :i ORDER BY loaded_at"),
                                {"i": condition["id"]}).all()
        tomb = conn.execute(sa.text("SELECT deleted FROM raw_history WHERE id = :i AND deleted"),
                            {"i": observation["id"]}).all()
    assert [v for v, _ in versions] == ["1", "2"] and len(tomb) == 1
    assert reports["Observation"].server_count == reports["Observation"].warehouse_count


def test_only_types_the_history_shows_changed_are_searched_and_the_others_watermarks_move_up(server, tmp_path):
    wh = warehouse(tmp_path)
    with client_for(server.base_url) as client:
        sync_rest(client, wh, TYPES)
        before = {t: wh.sync_state(t)["watermark"] for t in TYPES}
        condition = client_get(server, "Condition")
        condition["note"] = [{"text": "second look"}]
        stored = httpx.put(f"{server.base_url}/Condition/{condition['id']}", json=condition).json()
        reports = sync_rest(client, wh, TYPES)
    searched = {t for t, r in reports.items() if r.search.pages and t != TYPES[0]}
    assert searched == {"Condition"}
    assert reports[TYPES[0]].search.requests == 1  # the history request, charged to the first type
    assert reports["Condition"].load.applied.updated == 1
    for t in set(TYPES) - {"Condition"}:
        assert reports[t].mode == "incremental" and reports[t].load.received == 0
        assert wh.sync_state(t)["watermark"] == stored["meta"]["lastUpdated"] > before[t]


def test_history_entries_compare_as_instants_not_strings():
    from etl.ingest.rest import _at_or_after, _strictly_after

    assert not _at_or_after("2026-01-01T10:30:00+01:00", "2026-01-01T09:45:00Z")  # 09:30Z is before 09:45Z
    assert _at_or_after("2026-01-01T09:45:00Z", "2026-01-01T10:45:00+01:00")  # the same instant
    assert _at_or_after(None, "2026-01-01T09:45:00Z") and _at_or_after("yesterday", "2026-01-01T09:45:00Z")
    assert _strictly_after("2026-01-01T09:46:00Z", "2026-01-01T10:45:00+01:00")
    assert not _strictly_after("not a time", "2026-01-01T09:45:00Z")


def client_get(server: SandboxFhirServer, rtype: str) -> dict:
    return httpx.get(f"{server.base_url}/{rtype}", params={"_count": "1", "_sort": "-_lastUpdated"}).json()["entry"][0]["resource"]


class NoHistory(httpx.HTTPTransport):
    """A server without _history (many hospital servers): deletes must come from reconciliation."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if "_history" in request.url.path:
            return httpx.Response(404, json={"resourceType": "OperationOutcome",
                                             "issue": [{"severity": "error", "code": "not-supported"}]})
        return super().handle_request(request)


def test_without_history_deletes_wait_for_reconciliation_and_the_count_check_sees_them(server, tmp_path):
    wh = warehouse(tmp_path)
    with client_for(server.base_url, transport=NoHistory()) as client:
        sync_rest(client, wh, TYPES)
        victim = client_get(server, "Procedure")
        httpx.delete(f"{server.base_url}/Procedure/{victim['id']}")
        incremental = sync_rest(client, wh, ["Procedure"])
        assert victim["id"] in wh.current_ids("Procedure")
        assert any("reconciliation" in n for n in incremental["Procedure"].notes)
        reconciled = sync_rest(client, wh, ["Procedure"], reconcile=True)
    assert reconciled["Procedure"].load.applied.deleted == 1
    assert victim["id"] not in wh.current_ids("Procedure")
    counts = wh.counts("Procedure")
    assert counts["server_count"] == counts["warehouse_count"] + counts["quarantined_current"]


def test_expired_page_links_restart_their_window_not_the_pull(server, tmp_path):
    clean, faulty = warehouse(tmp_path, "clean"), warehouse(tmp_path, "faulty")
    with client_for(server.base_url) as client:
        sync_rest(client, clean, TYPES)
    with FaultProxy(f"http://127.0.0.1:{server.port}", fault_rate=0.3, faults=("gone_410",), seed=3) as proxy:
        with client_for(f"{proxy.origin}/fhir", page_size=100) as client:
            reports = sync_rest(client, faulty, TYPES)
    assert proxy.injected["gone_410"] > 0
    assert sum(r.search.restarts for r in reports.values()) == proxy.injected["gone_410"]
    assert_same(snapshot(clean), snapshot(faulty))


def test_ten_percent_faults_leave_the_warehouse_identical_to_a_clean_run(server, tmp_path):
    clean, faulty = warehouse(tmp_path, "clean"), warehouse(tmp_path, "faulty")
    with client_for(server.base_url) as client:
        sync_rest(client, clean, TYPES)
    with FaultProxy(f"http://127.0.0.1:{server.port}", fault_rate=0.1, seed=11, retry_after="0") as proxy:
        with client_for(f"{proxy.origin}/fhir", page_size=100, timeout_s=5) as client:
            reports = sync_rest(client, faulty, TYPES)
            again = sync_rest(client, faulty, TYPES)  # and the incremental path under faults
    assert len(proxy.injected) >= 5, proxy.injected  # most fault kinds were exercised
    assert_same(snapshot(clean), snapshot(faulty))
    for t in TYPES:
        assert reports[t].server_count == reports[t].warehouse_count  # 0 lost
        assert again[t].load.applied.writes == 0                      # 0 duplicated
    with faulty.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM quarantine")).scalar() == 0


def test_a_crash_mid_load_and_a_rerun_leave_the_same_tables_as_an_uninterrupted_run(server, tmp_path, monkeypatch):
    clean, crashed = warehouse(tmp_path, "clean"), warehouse(tmp_path, "crashed")
    with client_for(server.base_url) as client:
        sync_rest(client, clean, TYPES)
        real_apply, calls = crashed.apply, {"n": 0}

        def dying_apply(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 4:
                raise RuntimeError("power cut")
            return real_apply(*args, **kwargs)

        monkeypatch.setattr(crashed, "apply", dying_apply)
        with pytest.raises(RuntimeError, match="power cut"):
            sync_rest(client, crashed, TYPES, batch_size=300)
        monkeypatch.setattr(crashed, "apply", real_apply)
        sync_rest(client, crashed, TYPES, batch_size=300)
    assert_same(snapshot(clean), snapshot(crashed))


def test_an_id_reconciliation_keeps_quarantined_resources_that_are_still_on_the_server(tmp_path):
    bad = {"resourceType": "Patient", "id": "bad", "birthDate": "2999-01-01"}
    good = {"resourceType": "Patient", "id": "good", "birthDate": "1970-01-01"}
    with SandboxFhirServer(tmp_path / "server") as server:
        load_server(server.base_url, [bad, good])
        wh = warehouse(tmp_path)
        with client_for(server.base_url) as client:
            sync_rest(client, wh, ["Patient"])
            reconciled = sync_rest(client, wh, ["Patient"], reconcile=True)
            assert wh.quarantined_current("Patient") == 1
            assert reconciled["Patient"].server_count == reconciled["Patient"].warehouse_count + 1
            httpx.delete(f"{server.base_url}/Patient/bad")
            sync_rest(client, wh, ["Patient"])  # the _history tombstone ends the quarantined version
    assert wh.quarantined_current("Patient") == 0 and wh.current_ids("Patient") == {"good"}
