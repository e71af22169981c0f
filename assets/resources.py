"""Dagster resources: the FHIR server, the warehouse and the study settings, configured from
environment variables (see the README's configuration table)."""
from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import dagster as dg

from analytics.cohort.concepts import ConceptMap, load_concept_map
from analytics.cohort.params import RuleParams
from etl.fhir.auth import Auth, AuthSettings, build_auth
from etl.fhir.client import FhirClient
from etl.warehouse import Warehouse

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = Path(os.environ.get("IIMILD_STATE_DIR", PROJECT_ROOT / ".state"))
DEFAULT_WAREHOUSE_URL = f"sqlite:///{STATE_DIR / 'warehouse.sqlite'}"


class FhirServerResource(dg.ConfigurableResource):
    """The hospital's FHIR R4 server and how to read it.

    Secrets (a bearer token, a SMART private key) are read from the environment variables named
    here when a request is made, so they never appear in run config, metadata or logs."""

    base_url: str = ""
    auth: str = "none"                      # none | bearer | smart
    bearer_token_env: str = "FHIR_BEARER_TOKEN"  # noqa: S105 - the *name* of the variable holding the token
    smart_client_id: str = ""
    smart_private_key_env: str = "FHIR_SMART_PRIVATE_KEY"  # PEM text or a path to a PEM file
    smart_kid: str = ""
    smart_algorithm: str = "RS384"          # RS384 | ES384
    smart_scope: str = "system/*.read"
    smart_token_url: str = ""               # empty = discovered from .well-known/smart-configuration
    sync_mode: str = "incremental"          # incremental | bulk | cohort-first | ndjson
    ndjson_dir: str = ""
    bulk_level: str = "system"              # system | patient | group
    bulk_group_id: str = ""
    bulk_type_filter: str = ""              # comma-separated _typeFilter queries
    max_concurrency: int = 4
    page_size: int = 500
    timeout_s: float = 60.0
    # Origins trusted with data and credentials besides FHIR_BASE_URL's (a Bulk file store, a token server).
    trusted_origins: str = ""               # comma-separated, e.g. https://files.hospital.org
    retry_after_cap_s: float = 300.0        # one Retry-After is honoured up to this
    max_wait_s: float = 900.0               # all retry waits of one request together
    request_deadline_s: float = 600.0       # one request, its whole body included

    def type_filters(self) -> tuple[str, ...]:
        return tuple(f for f in self.bulk_type_filter.split(",") if f)

    def trusted(self) -> tuple[str, ...]:
        return tuple(o.strip() for o in self.trusted_origins.split(",") if o.strip())

    def limits(self) -> dict[str, float]:
        """The waits the client allows, shown in the ingestion metadata (and the README)."""
        return {"retry_after_cap_s": self.retry_after_cap_s, "max_wait_per_request_s": self.max_wait_s,
                "request_deadline_s": self.request_deadline_s}

    def _auth(self) -> Auth:
        return build_auth(self.auth, AuthSettings(
            self.base_url, bearer_token_env=self.bearer_token_env, smart_client_id=self.smart_client_id,
            smart_private_key_env=self.smart_private_key_env, smart_kid=self.smart_kid, smart_algorithm=self.smart_algorithm,
            smart_scope=self.smart_scope, smart_token_url=self.smart_token_url, trusted_origins=self.trusted()))

    @contextmanager
    def client(self) -> Iterator[FhirClient]:
        if not self.base_url:
            raise ValueError(f"FHIR_SYNC_MODE={self.sync_mode} needs FHIR_BASE_URL")
        client = FhirClient(self.base_url, auth=self._auth(), page_size=self.page_size, timeout_s=self.timeout_s,
                            trusted_origins=self.trusted(), retry_after_cap_s=self.retry_after_cap_s,
                            max_wait_s=self.max_wait_s, request_deadline_s=self.request_deadline_s)
        try:
            yield client
        finally:
            client.close()


class WarehouseResource(dg.ConfigurableResource):
    """The SQL warehouse (an SQLAlchemy URL: SQLite by default, PostgreSQL in production)."""

    url: str

    def get(self) -> Warehouse:
        """The warehouse of this URL, built once per process: every check and asset of a step shares one engine
        (and its connection pool) instead of building its own."""
        return _warehouse(self.url)


@lru_cache(maxsize=8)
def _warehouse(url: str) -> Warehouse:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return Warehouse(url)


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


def env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def federation_configured() -> bool:
    """A site in a consortium: FEDERATION_EXCHANGE names where its packages travel."""
    return bool(os.environ.get("FEDERATION_EXCHANGE"))


def resources_from_env() -> dict[str, dg.ConfigurableResource]:
    return {
        "fhir": FhirServerResource(
            base_url=_env_or("FHIR_BASE_URL", ""),
            auth=env("FHIR_AUTH", "bearer" if os.environ.get("FHIR_BEARER_TOKEN_ENV") else "none"),
            bearer_token_env=env("FHIR_BEARER_TOKEN_ENV", "FHIR_BEARER_TOKEN"),
            smart_client_id=env("FHIR_SMART_CLIENT_ID", ""),
            smart_private_key_env=env("FHIR_SMART_PRIVATE_KEY_ENV", "FHIR_SMART_PRIVATE_KEY"),
            smart_kid=env("FHIR_SMART_KID", ""), smart_algorithm=env("FHIR_SMART_ALG", "RS384"),
            smart_scope=env("FHIR_SMART_SCOPE", "system/*.read"), smart_token_url=env("FHIR_SMART_TOKEN_URL", ""),
            sync_mode=env("FHIR_SYNC_MODE", "incremental"), ndjson_dir=env("FHIR_NDJSON_DIR", ""),
            bulk_level=env("FHIR_BULK_LEVEL", "system"), bulk_group_id=env("FHIR_BULK_GROUP_ID", ""),
            bulk_type_filter=env("FHIR_BULK_TYPE_FILTER", ""),
            max_concurrency=int(env("FHIR_CONCURRENCY", "4")), page_size=int(env("FHIR_PAGE_SIZE", "500")),
            trusted_origins=env("FHIR_TRUSTED_ORIGINS", ""),
            retry_after_cap_s=float(env("FHIR_RETRY_AFTER_CAP_S", "300")), max_wait_s=float(env("FHIR_MAX_WAIT_S", "900")),
            request_deadline_s=float(env("FHIR_REQUEST_DEADLINE_S", "600"))),
        "warehouse": WarehouseResource(url=_env_or("WAREHOUSE_URL", DEFAULT_WAREHOUSE_URL)),
        "study": StudyResource(pseudonym_key=dg.EnvVar("PSEUDONYM_KEY"),
                               data_cutoff=os.environ.get("DATA_CUTOFF", ""),
                               concept_map_path=os.environ.get("CONCEPT_MAP_PATH", ""),
                               figures_dir=os.environ.get("FIGURES_DIR", ""),
                               bootstrap_replicates=int(os.environ.get("BOOTSTRAP_REPLICATES", "1000"))),
    }
