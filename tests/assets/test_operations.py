"""Schedules, jobs and declarative automation (assets/automation.py), evaluated with Dagster's
own test contexts against a real instance and the sandbox server."""
from __future__ import annotations

import dagster as dg
import sqlalchemy as sa

from assets.definitions import all_assets
from assets.fhir.ingest import fhir_ingest
from assets.fhir.schedules import nightly_pull, weekly_reconciliation
from assets.resources import FhirServerResource, StudyResource, WarehouseResource

KEY = "test-pseudonym-key-0123456789"


def test_nightly_pull_requests_the_incremental_job_and_weekly_the_reconciliation():
    with dg.instance_for_test() as instance:
        nightly = nightly_pull.evaluate_tick(dg.build_schedule_context(instance=instance))
        weekly = weekly_reconciliation.evaluate_tick(dg.build_schedule_context(instance=instance))
    assert [r.job_name for r in nightly.run_requests or []] in ([None], ["fhir_incremental_job"])
    assert nightly_pull.job_name == "fhir_incremental_job" and nightly_pull.cron_schedule == "0 2 * * *"
    assert weekly_reconciliation.job_name == "fhir_reconciliation_job"
    assert len(weekly.run_requests or []) == 1
    assert weekly_reconciliation.job.config["ops"]["fhir_ingest"]["config"]["reconcile"] is True


def _resources(base_url: str, url: str) -> dict:
    return {"fhir": FhirServerResource(base_url=base_url, page_size=200), "warehouse": WarehouseResource(url=url),
            "study": StudyResource(pseudonym_key=KEY, bootstrap_replicates=0)}


class Automation:
    """Successive ticks of the automation sensor, each with the previous tick's cursor."""

    def __init__(self, instance, resources) -> None:
        self.instance, self.cursor = instance, None
        self.defs = dg.Definitions(assets=all_assets, resources=resources)

    def tick(self) -> set[str]:
        result = dg.evaluate_automation_conditions(defs=self.defs, instance=self.instance, cursor=self.cursor)
        self.cursor = result.cursor
        return {spec.key.to_user_string() for a in all_assets for spec in a.specs if result.get_num_requested(spec.key)}


def test_a_new_pull_flows_to_the_study_tables_only_when_its_blocking_checks_passed(sandbox, tmp_path):
    url = f"sqlite:///{tmp_path / 'w.sqlite'}"
    resources = _resources(sandbox.base_url, url)
    with dg.instance_for_test() as instance:
        automation = Automation(instance, resources)
        assert "cohort" not in automation.tick()  # nothing pulled yet: nothing to follow
        assert dg.materialize([fhir_ingest], instance=instance, resources=resources).success
        assert "cohort" in automation.tick()

    with dg.instance_for_test() as instance:
        automation = Automation(instance, resources)
        automation.tick()
        engine = sa.create_engine(url)
        with engine.begin() as conn:  # make the next pull's count check fail
            conn.execute(sa.text("DELETE FROM raw_condition WHERE id IN (SELECT id FROM raw_condition LIMIT 1)"))
        result = dg.materialize([fhir_ingest], instance=instance, resources=resources, raise_on_error=False)
        failed = {e.check_name for e in result.get_asset_check_evaluations() if not e.passed}
        assert failed == {"raw_condition_count_matches_server"}
        assert "cohort" not in automation.tick()


def test_backfill_partitions_pull_one_type_and_month_each(sandbox, small_hospital, tmp_path):
    from datetime import datetime, timezone

    from assets.fhir.backfill import BACKFILL_PARTITIONS, MONTHS, fhir_backfill_job
    from etl.warehouse import Warehouse

    url = f"sqlite:///{tmp_path / 'w.sqlite'}"
    resources = _resources(sandbox.base_url, url)
    now = datetime.now(timezone.utc)
    this_month = now.strftime("%Y-%m-01")  # the sandbox was loaded today
    assert this_month in MONTHS.get_partition_keys()
    assert {"Observation", "Patient"} <= {k.keys_by_dimension["resource_type"] for k in BACKFILL_PARTITIONS.get_partition_keys()}
    with dg.instance_for_test() as instance:
        run = fhir_backfill_job.execute_in_process(
            partition_key=dg.MultiPartitionKey({"resource_type": "Observation", "last_updated": this_month}),
            resources=resources, instance=instance)
        assert run.success
        materialized = [e.asset_key.to_user_string() for e in run.get_asset_materialization_events()]
        old = fhir_backfill_job.execute_in_process(
            partition_key=dg.MultiPartitionKey({"resource_type": "Observation", "last_updated": "2015-03-01"}),
            resources=resources, instance=instance)
    wh = Warehouse(url)
    assert materialized == ["raw_observation"]
    assert wh.current_ids("Observation") == {r["id"] for r in small_hospital.by_type()["Observation"]}
    assert wh.current_ids("Patient") == set()  # only the partition's type
    assert old.success and old.get_asset_materialization_events()[0].materialization.metadata["received"].value == 0
