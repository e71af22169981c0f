"""The ingestion multi-asset in each sync mode, and the blocking count check, through Dagster."""
from __future__ import annotations

import dagster as dg
import pytest
import sqlalchemy as sa

from assets.fhir.ingest import fhir_ingest, raw_asset_key
from assets.resources import FhirServerResource, StudyResource, WarehouseResource
from etl.fhir.types import RESOURCE_TYPES
from etl.warehouse import Warehouse
from synthetic.load import write_ndjson

KEY = "test-pseudonym-key-0123456789"


def run(fhir: FhirServerResource, url: str, selection=None, config: dict | None = None) -> dg.ExecuteInProcessResult:
    return dg.materialize([fhir_ingest], selection=selection, raise_on_error=False,
                          resources={"fhir": fhir, "warehouse": WarehouseResource(url=url),
                                     "study": StudyResource(pseudonym_key=KEY)},
                          run_config={"ops": {"fhir_ingest": {"config": config or {}}}})


@pytest.mark.parametrize("mode", ["incremental", "bulk", "cohort-first", "ndjson"])
def test_each_sync_mode_materializes_every_raw_asset_with_its_accounting(sandbox, small_hospital, tmp_path, mode):
    directory = tmp_path / "ndjson"
    write_ndjson(small_hospital, directory)
    url = f"sqlite:///{tmp_path / 'w.sqlite'}"
    fhir = FhirServerResource(base_url=sandbox.base_url, sync_mode=mode, ndjson_dir=str(directory), page_size=200)
    result = run(fhir, url)
    assert result.success
    events = {e.asset_key: e for e in result.get_asset_materialization_events()}
    assert set(events) == {raw_asset_key(t) for t in RESOURCE_TYPES}
    patient = events[raw_asset_key("Patient")].materialization.metadata
    first_run_mode = {"incremental": "full"}.get(mode, mode)  # an incremental sync starts with a full pull
    assert patient["mode"].value == first_run_mode and patient["received"].value > 0
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    failed = {n for n, e in evaluations.items() if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR}
    assert failed == set()


def test_a_subset_pulls_only_the_selected_type_and_full_refresh_is_a_run_option(sandbox, tmp_path):
    url = f"sqlite:///{tmp_path / 'w.sqlite'}"
    fhir = FhirServerResource(base_url=sandbox.base_url, page_size=200)
    result = run(fhir, url, selection=[raw_asset_key("Procedure")], config={"full_refresh": True})
    assert result.success
    assert [e.asset_key for e in result.get_asset_materialization_events()] == [raw_asset_key("Procedure")]
    assert Warehouse(url).current_ids("Patient") == set()


def test_a_count_mismatch_fails_the_blocking_check(sandbox, tmp_path):
    url = f"sqlite:///{tmp_path / 'w.sqlite'}"
    fhir = FhirServerResource(base_url=sandbox.base_url, page_size=200)
    assert run(fhir, url, selection=[raw_asset_key("Condition")]).success
    wh = Warehouse(url)
    with wh.engine.begin() as conn:  # a row lost behind the pipeline's back
        conn.execute(sa.text("DELETE FROM raw_condition WHERE id IN (SELECT id FROM raw_condition LIMIT 1)"))
        conn.execute(sa.text("UPDATE ingest_counts SET warehouse_count = warehouse_count - 1 "
                             "WHERE resource_type = 'Condition'"))
    check = dg.AssetCheckKey(raw_asset_key("Condition"), "raw_condition_count_matches_server")
    result = dg.materialize([fhir_ingest], selection=dg.AssetSelection.checks(check), raise_on_error=False,
                            resources={"fhir": fhir, "warehouse": WarehouseResource(url=url),
                                       "study": StudyResource(pseudonym_key=KEY)})
    evaluation = result.get_asset_check_evaluations()[0]
    assert not evaluation.passed and evaluation.metadata["difference"].value == -1


@pytest.mark.parametrize(("settings", "message"), [
    ({"sync_mode": "bluk"}, "FHIR_SYNC_MODE must be one of incremental, bulk, cohort-first, ndjson, not 'bluk'"),
    ({"sync_mode": "incremental", "auth": "basic"}, "FHIR_AUTH must be one of none, bearer, smart, not 'basic'"),
])
def test_a_configuration_mistake_fails_the_step_at_once_with_its_reason(tmp_path, settings, message):
    fhir = FhirServerResource(base_url="https://fhir.example.org/r4", **settings)
    result = run(fhir, f"sqlite:///{tmp_path / 'w.sqlite'}")
    assert not result.success
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert len(failures) == 1 and message in failures[0].step_failure_data.user_failure_data.description
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
