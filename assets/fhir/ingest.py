"""Ingestion: one asset per FHIR resource type, materialized together by one multi-asset so that a
Bulk export or a cohort-first pull can serve every selected type in one pass.

How the server is read is a deployment setting (``FHIR_SYNC_MODE``): incremental REST search,
Bulk $export, cohort-first, or an NDJSON directory. Selecting a subset of the raw assets pulls
only those types (that is how a single type is backfilled).
"""

import random
from typing import NoReturn

import dagster as dg

from analytics.cohort.scope import candidate_searches
from etl.fhir.auth import check_auth_method
from etl.fhir.responses import FhirError
from etl.fhir.types import RESOURCE_TYPES
from etl.ingest.modes import SyncRequest, run_sync, sync_mode
from etl.ingest.report import TypeReport
from etl.ingest.scoped import Seed
from etl.warehouse import WarehouseBusy, WarehouseWriteError, raw_table_name

from ..resources import FhirServerResource, StudyResource, WarehouseResource
from .checks import check_pool, raw_check_results, raw_check_specs

RAW_GROUP = "fhir_raw"

NETWORK_RETRY = dg.RetryPolicy(max_retries=3, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


def raw_asset_key(resource_type: str) -> dg.AssetKey:
    return dg.AssetKey(raw_table_name(resource_type))


class IngestConfig(dg.Config):
    full_refresh: bool = False  # ignore the watermarks and pull everything again
    reconcile: bool = False     # compare every id with the server (deletes on servers without _history)
    lock_wait_s: float = 600.0  # how long a second ingestion waits for the warehouse lock before it fails


RAW_SCHEMA = dg.TableSchema(columns=[
    dg.TableColumn("id", "text", description="FHIR resource id (primary key)"),
    dg.TableColumn("version_id", "text", description="meta.versionId"),
    dg.TableColumn("last_updated", "text", description="meta.lastUpdated (the server's clock)"),
    dg.TableColumn("content_hash", "text", description="SHA-256 of the canonical JSON: unchanged re-reads are not written"),
    dg.TableColumn("resource", "text", description="The resource's JSON as received"),
    dg.TableColumn("source", "text", description="Page URL or file:line it came from"),
    dg.TableColumn("loaded_at", "timestamp", description="When this version was written"),
])


def _spec(resource_type: str) -> dg.AssetSpec:
    return dg.AssetSpec(
        raw_asset_key(resource_type), group_name=RAW_GROUP, kinds={"fhir", "sql"}, skippable=True,
        metadata={"dagster/column_schema": RAW_SCHEMA},
        description=(f"The current version of every {resource_type} on the FHIR server, validated against the R4 "
                     f"model and plausibility rules, as raw JSON with id, versionId and lastUpdated. Every version "
                     f"is kept in `raw_history`; invalid resources are in `quarantine` with their errors."))


def _retry_later(context: dg.AssetExecutionContext, exc: Exception) -> NoReturn:
    """Network or database trouble: the step runs again later, up to three times, waiting longer each time.
    Asked for explicitly rather than through a retry policy, which would also rerun the whole pull when one
    of the step's blocking checks fails, and a failed check is an answer, not an accident."""
    wait = NETWORK_RETRY.delay * 2 ** context.retry_number * random.uniform(0.5, 1.5)  # noqa: S311 - jitter, not a secret
    raise dg.RetryRequested(max_retries=NETWORK_RETRY.max_retries, seconds_to_wait=wait) from exc


def _run_sync(context: dg.AssetExecutionContext, config: IngestConfig, fhir: FhirServerResource,
              warehouse: WarehouseResource, study: StudyResource, types: list[str]) -> dict[str, TypeReport]:
    # The seeds are the study's (the concept map's codes); the sync modes know nothing of the study.
    seeds = [Seed(t, p) for t, p in candidate_searches(study.concepts())] if fhir.sync_mode == "cohort-first" else []
    request = SyncRequest(warehouse.get(), types, full=config.full_refresh, reconcile=config.reconcile,
                          progress=context.log.info, ndjson_dir=fhir.ndjson_dir, bulk_level=fhir.bulk_level,
                          bulk_group_id=fhir.bulk_group_id or None, type_filters=fhir.type_filters(), seeds=seeds,
                          concurrency=fhir.max_concurrency)
    return run_sync(fhir.sync_mode, request, fhir.client)


@dg.multi_asset(specs=[_spec(t) for t in RESOURCE_TYPES], name="fhir_ingest", can_subset=True,
                check_specs=raw_check_specs())
def fhir_ingest(context: dg.AssetExecutionContext, config: IngestConfig, fhir: FhirServerResource,
                warehouse: WarehouseResource, study: StudyResource):
    types = [t for t in RESOURCE_TYPES if raw_asset_key(t) in context.selected_asset_keys]
    pool = check_pool(context)  # forked first, before the sync starts any thread
    try:
        if types:
            yield from _ingest(context, config, fhir, warehouse, study, types)
        yield from raw_check_results(context, warehouse.get(), study, pool)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _ingest(context: dg.AssetExecutionContext, config: IngestConfig, fhir: FhirServerResource,
            warehouse: WarehouseResource, study: StudyResource, types: list[str]):
    try:  # a configuration mistake fails at once: retrying cannot fix it
        if sync_mode(fhir.sync_mode).needs_server:
            check_auth_method(fhir.auth)
    except ValueError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    try:
        with warehouse.get().exclusive("ingest", wait_s=config.lock_wait_s):
            reports = _run_sync(context, config, fhir, warehouse, study, types)
    except WarehouseBusy as exc:
        raise dg.Failure(description=f"{exc}: a second ingestion waits for the first, then stops here rather "
                                     "than write the same rows twice", allow_retries=False) from None
    except FhirError as exc:
        if exc.permanent:
            raise dg.Failure(description=f"the FHIR server's answer was refused: {exc}", allow_retries=False) from None
        _retry_later(context, exc)
    except (WarehouseWriteError, OSError) as exc:  # a database or disk hiccup: the next attempt may pass
        _retry_later(context, exc)
    for resource_type in types:
        report = reports[resource_type]
        load = report.load
        context.log.info(f"{resource_type} ({report.mode}): {load.received} received, {load.applied.inserted} new, "
                         f"{load.applied.updated} updated, {load.applied.deleted} deleted, {load.quarantined_seen} "
                         f"quarantined, {report.search.requests} requests")
        # No preview: raw tables hold real FHIR ids.
        yield dg.MaterializeResult(asset_key=raw_asset_key(resource_type),
                                   metadata={"dagster/row_count": report.warehouse_count or 0,
                                             "dagster/column_schema": RAW_SCHEMA, **report.as_metadata(),
                                             **({} if fhir.sync_mode == "ndjson" else fhir.limits())})

