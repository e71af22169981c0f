"""Checks on the raw FHIR tables: code sets and values the FHIR model does not enforce (Great Expectations),
and the server's count against the warehouse's.

A failed ``critical`` expectation makes the check fail with ERROR severity, which blocks the
assets downstream; ``warning`` expectations fail with WARN and do not block. The failing rows
(by key) are in the check's metadata.
"""
import dagster as dg

from analytics.pseudonym import patient_key
from etl.fhir.types import RESOURCE_TYPES, TYPES
from expectations import suites

from ..gx import run_check
from ..resources import StudyResource, WarehouseResource
from .ingest import raw_asset_key


def _raw_check(resource_type: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=raw_asset_key(resource_type), name=f"raw_{resource_type.lower()}_expectations", blocking=True,
                    description=f"Code sets and values of {resource_type} that the FHIR model does not enforce.")
    def _check(warehouse: WarehouseResource, study: StudyResource) -> dg.AssetCheckResult:
        frame = TYPES[resource_type].flatten(warehouse.get().raw_resources(resource_type))  # type: ignore[misc]
        # Dagster's event log is read by every engineer: failing rows are named by pseudonym, never by FHIR id
        # (patient_xref, a restricted table, maps a pseudonym back). GX quotes the checked column's values too,
        # so the id column itself is replaced; a missing subject stays missing.
        frame = frame.assign(patient_id=[patient_key(p, study.pseudonym_key) if isinstance(p, str) else None
                                         for p in frame["patient_id"]])
        return run_check(f"raw_{resource_type.lower()}", suites.RAW_SUITES[resource_type](frame, study.concepts()))

    return _check


def _count_check(resource_type: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=raw_asset_key(resource_type), name=f"raw_{resource_type.lower()}_count_matches_server",
                    blocking=True, description=(f"The server's count of {resource_type} equals the warehouse's current "
                                                 f"rows plus the ids whose latest version is in quarantine."))
    def _check(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        wh = warehouse.get()
        counts = wh.counts(resource_type)
        if counts is None:
            return dg.AssetCheckResult(passed=False, description="no count recorded: the type was never pulled")
        expected = counts["server_count"]
        # The warehouse side is counted now, not taken from the pull's record: rows lost after the
        # pull (a manual delete, a restore from an old backup) must fail the check too.
        current, quarantined = wh.current_count(resource_type), wh.quarantined_current(resource_type)
        held = current + quarantined
        meta = {"server_count": expected if expected is not None else "unknown", "warehouse_count": current,
                "quarantined_current": quarantined, "scope": counts["scope"],
                "server_counted_at": str(counts["checked_at"])}
        if expected is None:
            return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN, metadata=meta,
                                       description="the server gave no count for this scope; nothing to compare")
        return dg.AssetCheckResult(passed=expected == held, metadata={**meta, "difference": held - expected},
                                   description=None if expected == held else
                                   f"server holds {expected}, warehouse accounts for {held}: run the reconciliation job "
                                   f"(full_refresh or reconcile) and read the ingestion logs")

    return _check


raw_checks = [*[_raw_check(t) for t in suites.RAW_SUITES], *[_count_check(t) for t in RESOURCE_TYPES]]
