"""Dagster resources: the FHIR server, the warehouse and the study settings, configured from
environment variables (see the README's configuration table)."""
from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Iterator

import dagster as dg

from analytics.cohort.concepts import ConceptMap, load_concept_map
from analytics.cohort.params import RuleParams
from etl.fhir_client import FhirClient
from etl.warehouse import Warehouse

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = Path(os.environ.get("IIMILD_STATE_DIR", PROJECT_ROOT / ".state"))
DEFAULT_WAREHOUSE_URL = f"sqlite:///{STATE_DIR / 'warehouse.sqlite'}"


class FhirServerResource(dg.ConfigurableResource):
    """The hospital's FHIR R4 server. The bearer token is read from the variable named in
    ``bearer_token_env`` at request time, so it never appears in run config or metadata."""

    base_url: str
    bearer_token_env: str = "FHIR_BEARER_TOKEN"
    page_size: int = 500
    timeout_s: float = 60.0

    @contextmanager
    def client(self) -> Iterator[FhirClient]:
        client = FhirClient(self.base_url, bearer_token_env=self.bearer_token_env, page_size=self.page_size,
                            timeout_s=self.timeout_s)
        try:
            yield client
        finally:
            client.close()


class WarehouseResource(dg.ConfigurableResource):
    """The SQL warehouse (an SQLAlchemy URL: SQLite by default, PostgreSQL in production)."""

    url: str

    def get(self) -> Warehouse:
        if self.url.startswith("sqlite:///"):
            Path(self.url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return Warehouse(self.url)


class StudyResource(dg.ConfigurableResource):
    """Study settings: the pseudonym secret, the data cut-off and the concept map."""

    pseudonym_key: str
    data_cutoff: str = ""        # ISO date; empty = the extraction time of the raw data
    concept_map_path: str = ""   # empty = the contract's default map
    window_start: str = "2014-01-01"
    window_end: str = "2020-09-30"
    figures_dir: str = ""        # empty = <state dir>/figures
    bootstrap_replicates: int = 1000  # PS-refit bootstrap of the primary comparison; 0 = off
    seed: int = 20210214

    def figures_directory(self) -> str:
        return self.figures_dir or str(STATE_DIR / "figures")

    def concepts(self) -> ConceptMap:
        return load_concept_map(self.concept_map_path or None)

    def retrospective_params(self, extraction_date: date) -> RuleParams:
        cutoff = date.fromisoformat(self.data_cutoff) if self.data_cutoff else extraction_date
        return RuleParams(window_start=date.fromisoformat(self.window_start),
                                   window_end=date.fromisoformat(self.window_end), data_cutoff=cutoff)


def _env_or(name: str, default: str) -> str | dg.EnvVar:
    """An EnvVar when the variable is set (its value then stays out of the UI), else a default."""
    return dg.EnvVar(name) if os.environ.get(name) else default


def resources_from_env() -> dict[str, dg.ConfigurableResource]:
    return {
        "fhir": FhirServerResource(base_url=dg.EnvVar("FHIR_BASE_URL"),
                                   bearer_token_env=os.environ.get("FHIR_BEARER_TOKEN_ENV", "FHIR_BEARER_TOKEN"),
                                   page_size=int(os.environ.get("FHIR_PAGE_SIZE", "500"))),
        "warehouse": WarehouseResource(url=_env_or("WAREHOUSE_URL", DEFAULT_WAREHOUSE_URL)),
        "study": StudyResource(pseudonym_key=dg.EnvVar("PSEUDONYM_KEY"),
                               data_cutoff=os.environ.get("DATA_CUTOFF", ""),
                               concept_map_path=os.environ.get("CONCEPT_MAP_PATH", ""),
                               figures_dir=os.environ.get("FIGURES_DIR", ""),
                               bootstrap_replicates=int(os.environ.get("BOOTSTRAP_REPLICATES", "1000"))),
    }
