"""The ingestion multi-asset in each sync mode, and the blocking count check, through Dagster."""
from __future__ import annotations

import dagster as dg
import pytest
import sqlalchemy as sa

from assets.checks import all_checks
from assets.raw import RESOURCE_TYPES, fhir_ingest, raw_asset_key
from assets.resources import FhirServerResource, StudyResource, WarehouseResource
from etl.warehouse import Warehouse
from synthetic.load import write_ndjson

KEY = "test-pseudonym-key-0123456789"
COUNT_CHECKS = [c for c in all_checks if any(k.name.endswith("_count_matches_server") for k in c.check_keys)]


def run(fhir: FhirServerResource, url: str, selection=None, config: dict | None = None) -> dg.ExecuteInProcessResult:
    return dg.materialize([fhir_ingest, *COUNT_CHECKS], selection=selection, raise_on_error=False,
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
    check = next(c for c in COUNT_CHECKS if any(k.name == "raw_condition_count_matches_server" for k in c.check_keys))
    result = dg.materialize([fhir_ingest, check], selection=dg.AssetSelection.checks(check), raise_on_error=False,
                            resources={"fhir": fhir, "warehouse": WarehouseResource(url=url),
                                       "study": StudyResource(pseudonym_key=KEY)})
    evaluation = result.get_asset_check_evaluations()[0]
    assert not evaluation.passed and evaluation.metadata["difference"].value == -1
