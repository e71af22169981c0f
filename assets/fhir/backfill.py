"""Backfills partitioned by resource type and ``_lastUpdated`` month.

The regular sync follows watermarks; a backfill re-reads a slice of the server's history, e.g.
after a hospital restored a month of data or changed a code system. Each partition
(resource type x month of ``lastUpdated``) is an independent upsert of its slice, so a backfill
of many partitions runs as many parallel runs as the instance's run queue allows. The partitions
report materializations of the ``raw_<type>`` assets they write, so the study tables follow
through automation as after a nightly pull.
"""

import os

import dagster as dg

from etl.fhir.types import RESOURCE_TYPES
from etl.ingest.rest import pull_window

from ..resources import FhirServerResource, WarehouseResource
from .ingest import NETWORK_RETRY, raw_asset_key

MONTHS = dg.MonthlyPartitionsDefinition(start_date=os.environ.get("FHIR_BACKFILL_START", "2010-01-01"), end_offset=1)
BACKFILL_PARTITIONS = dg.MultiPartitionsDefinition(
    {"resource_type": dg.StaticPartitionsDefinition(list(RESOURCE_TYPES)), "last_updated": MONTHS})


@dg.op(retry_policy=NETWORK_RETRY, description="Pull one resource type's resources last updated in one month.")
def pull_month(context: dg.OpExecutionContext, fhir: FhirServerResource, warehouse: WarehouseResource) -> None:
    key = context.partition_key.keys_by_dimension  # type: ignore[attr-defined]
    resource_type = key["resource_type"]
    window = MONTHS.time_window_for_partition_key(key["last_updated"])
    wh = warehouse.get()
    # Slices write the same raw tables as the regular sync: one writer at a time (the sync's lock), so a slice
    # and a sync cannot both insert one id. Slices then run one after another, each still small.
    with wh.exclusive("ingest"), fhir.client() as client:
        report = pull_window(client, wh, resource_type, window.start.isoformat(), window.end.isoformat())
    context.log.info(f"{resource_type} {key['last_updated']}: {report.load.received} received, "
                     f"{report.load.applied.inserted} new, {report.load.applied.updated} updated")
    context.log_event(dg.AssetMaterialization(asset_key=raw_asset_key(resource_type), metadata=report.as_metadata()))


@dg.job(partitions_def=BACKFILL_PARTITIONS, description=__doc__.split("\n\n")[1].replace("\n", " "),
        tags={"kind": "backfill"})
def fhir_backfill_job():
    pull_month()
