"""When the FHIR server is read: a nightly incremental pull and a weekly full reconciliation."""
from __future__ import annotations

import os

import dagster as dg

from .ingest import RAW_GROUP

TIMEZONE = os.environ.get("IIMILD_TIMEZONE", "UTC")

ingest_job = dg.define_asset_job(
    "fhir_incremental_job", selection=dg.AssetSelection.groups(RAW_GROUP),
    description="Pull what changed on the FHIR server since each type's watermark (and _history deletes).")

reconciliation_job = dg.define_asset_job(
    "fhir_reconciliation_job", selection=dg.AssetSelection.groups(RAW_GROUP),
    config={"ops": {"fhir_ingest": {"config": {"reconcile": True}}}},
    description="Weekly: compare every id with the server (deletes a server without _history never announced) "
                "and refresh every count.")

nightly_pull = dg.ScheduleDefinition(
    name="nightly_fhir_pull", job=ingest_job, cron_schedule="0 2 * * *", execution_timezone=TIMEZONE,
    description="The incremental pull, every night at 02:00; the study tables follow through automation.")

weekly_reconciliation = dg.ScheduleDefinition(
    name="weekly_fhir_reconciliation", job=reconciliation_job, cron_schedule="0 3 * * 0", execution_timezone=TIMEZONE,
    description="Full id reconciliation and counts, Sundays at 03:00.")

jobs = [ingest_job, reconciliation_job]
schedules = [nightly_pull, weekly_reconciliation]
