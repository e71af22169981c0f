"""One asset per FHIR resource type: a full, validated pull into the warehouse's raw tables."""

import dagster as dg

from etl.ingest import ingest_resource_type
from etl.warehouse import raw_table_name

from .resources import FhirServerResource, WarehouseResource

RESOURCE_TYPES = ("Patient", "Condition", "MedicationStatement", "Procedure", "Observation", "AdverseEvent",
                  "ResearchStudy", "ResearchSubject")
RAW_GROUP = "fhir_raw"

NETWORK_RETRY = dg.RetryPolicy(max_retries=3, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.FULL)


def raw_asset_key(resource_type: str) -> dg.AssetKey:
    return dg.AssetKey(raw_table_name(resource_type))


def _raw_asset(resource_type: str) -> dg.AssetsDefinition:
    @dg.asset(
        key=raw_asset_key(resource_type), group_name=RAW_GROUP, kinds={"fhir", "sql"}, retry_policy=NETWORK_RETRY,
        description=(f"Every {resource_type} on the FHIR server, validated against the R4 model, as raw JSON with "
                     f"id, versionId and lastUpdated. Invalid resources go to the `quarantine` table with their errors."),
    )
    def _pull(context: dg.AssetExecutionContext, fhir: FhirServerResource, warehouse: WarehouseResource) -> dg.MaterializeResult:
        with fhir.client() as client:
            report = ingest_resource_type(client, warehouse.get(), resource_type)
        context.log.info(f"{resource_type}: {report.received} received, {report.loaded} loaded, "
                         f"{report.quarantined} quarantined in {report.search.requests} requests")
        return dg.MaterializeResult(metadata={"dagster/row_count": report.loaded, **report.as_metadata()})

    return _pull


raw_assets = [_raw_asset(t) for t in RESOURCE_TYPES]
