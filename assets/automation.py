"""When things run: a nightly incremental pull, a weekly full reconciliation, and study tables
that follow their inputs declaratively once the inputs' blocking checks have passed."""
from __future__ import annotations

import os
from datetime import timedelta

import dagster as dg

from .raw import RAW_GROUP

TIMEZONE = os.environ.get("IIMILD_TIMEZONE", "UTC")

# A study table is requested as soon as any input is newer and every blocking check on its
# inputs passed: a new pull flows through to the published tables, a failed gate stops it.
STUDY_AUTOMATION = dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()

# Nightly data: a study table older than a day and a half means a night was missed.
STUDY_FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=36), warn_window=timedelta(hours=26))

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
