"""The one Definitions object of the service (loaded by workspace.yaml)."""
from __future__ import annotations

import dagster as dg

from .raw import raw_assets
from .resources import resources_from_env
from .study import cohort, effect_estimates, iptw_weights_asset

all_assets = [*raw_assets, cohort, iptw_weights_asset, effect_estimates]

study_job = dg.define_asset_job("study_job", selection=dg.AssetSelection.all(),
                                description="Pull every FHIR resource type and rebuild all study tables.")

defs = dg.Definitions(assets=all_assets, jobs=[study_job], resources=resources_from_env())
