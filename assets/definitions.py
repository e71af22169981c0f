"""The one Definitions object of the service (loaded by workspace.yaml)."""
from __future__ import annotations

import os

import dagster as dg

from analytics.cohort.concepts import load_concept_map

from .automation import jobs as scheduled_jobs
from .automation import schedules
from .backfill import fhir_backfill_job
from .checks import all_checks
from .effects import comparative_effects
from .raw import raw_assets
from .report import report_definitions
from .resources import resources_from_env
from .study import cohort
from .summaries import descriptive_tables

all_assets = [*raw_assets, cohort, comparative_effects, descriptive_tables]

study_job = dg.define_asset_job("study_job", selection=dg.AssetSelection.all(),
                                description="Pull every FHIR resource type and rebuild all study tables.")

# A malformed concept map stops the code location from loading, with the file and line in the error.
load_concept_map(os.environ.get("CONCEPT_MAP_PATH") or None)

defs = dg.Definitions(assets=all_assets, asset_checks=all_checks, jobs=[study_job, *scheduled_jobs, fhir_backfill_job], schedules=schedules,
                      resources=resources_from_env())
defs = dg.Definitions.merge(defs, report_definitions())  # the study report (assets/report.py)
