"""The one Definitions object of the service (loaded by workspace.yaml): the FHIR side, the study side and, at a
site in a consortium, the federation side, each contributing its own definitions, merged with the resources
configured from the environment."""
from __future__ import annotations

import os

import dagster as dg

from analytics.cohort.concepts import load_concept_map

from . import fhir, study
from .executor import forkserver_executor
from .report import report_definitions
from .resources import federation_configured, resources_from_env

# A malformed concept map stops the code location from loading, with the file and line in the error.
load_concept_map(os.environ.get("CONCEPT_MAP_PATH") or None)

study_job = dg.define_asset_job("study_job", selection=dg.AssetSelection.all(),
                                description="Pull every FHIR resource type and rebuild all study tables.")



def _tables() -> dg.Definitions:
    """The FHIR and study sides (a function: the code location may hold only one Definitions object)."""
    return dg.Definitions.merge(fhir.definitions(), study.definitions())


def _federation() -> dg.Definitions:
    """The federation group (site_aggregates, round answers), only at a site in a consortium (FEDERATION_EXCHANGE).
    Imported only there: its contract and meta-analysis import SciPy and statsmodels, which every other
    ``dagster`` command would load for nothing (the fork server preloads them for the steps)."""
    if not federation_configured():
        return dg.Definitions()
    from .federation import federation_definitions

    return federation_definitions()


# The study report renders the tables (assets/report.py).
defs = dg.Definitions.merge(_tables(), report_definitions(), _federation(),
                            dg.Definitions(jobs=[study_job], resources=resources_from_env(),
                                           executor=forkserver_executor))
# For tests and tools that materialize the tables outside the code location (dg.materialize): the FHIR and study
# assets, without the report (which needs a browser) and the federation group.
all_assets = list(_tables().assets or [])
all_check_keys = {key for a in all_assets for key in a.check_keys}  # every check runs in its asset's step
