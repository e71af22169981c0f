"""The FHIR side of the service: the raw assets (one multi-asset, ``fhir_ingest``, whose checks run in its step), the
backfill job and the schedules that pull the server."""
import dagster as dg

from .backfill import fhir_backfill_job
from .ingest import fhir_ingest
from .schedules import jobs, schedules


def definitions() -> dg.Definitions:
    return dg.Definitions(assets=[fhir_ingest], jobs=[*jobs, fhir_backfill_job], schedules=schedules)
