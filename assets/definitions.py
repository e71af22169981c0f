"""The one Definitions object of the service (loaded by workspace.yaml): the FHIR side and the study side,
each contributing its own definitions, merged with the resources configured from the environment."""
from __future__ import annotations

import os

import dagster as dg

from analytics.cohort.concepts import load_concept_map

from . import fhir, study
from .resources import resources_from_env

# A malformed concept map stops the code location from loading, with the file and line in the error.
load_concept_map(os.environ.get("CONCEPT_MAP_PATH") or None)

study_job = dg.define_asset_job("study_job", selection=dg.AssetSelection.all(),
                                description="Pull every FHIR resource type and rebuild all study tables.")

defs = dg.Definitions.merge(fhir.definitions(), study.definitions(),
                            dg.Definitions(jobs=[study_job], resources=resources_from_env()))
# For tests and tools that materialize outside the code location (dg.materialize).
all_assets = list(defs.assets or [])
all_checks = list(defs.asset_checks or [])
