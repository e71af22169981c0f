"""Shared fixtures: a real sandbox FHIR server (sekmet-fhir) loaded with a small synthetic hospital."""
from __future__ import annotations

import os
from typing import Iterator

import pytest

from etl.warehouse import Warehouse
from etl.warehouse.schema import INGEST_SCHEMA, RESTRICTED_SCHEMA
from synthetic.hospital import Hospital, HospitalParams, generate_hospital
from synthetic.load import load_server
from synthetic.sandbox import SandboxFhirServer
from synthetic.scratch_postgres import scratch_database

SMALL_HOSPITAL = HospitalParams(seed=7, n_retrospective=80, n_prospective_enrolled=12, n_noise=25, attrition_per_reason=1)


@pytest.fixture(scope="session")
def small_hospital() -> Hospital:
    return generate_hospital(SMALL_HOSPITAL)


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory, small_hospital: Hospital) -> Iterator[SandboxFhirServer]:
    with SandboxFhirServer(tmp_path_factory.mktemp("fhir-server")) as server:
        load_server(server.base_url, small_hospital.resources)
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def any_warehouse(request: pytest.FixtureRequest, tmp_path) -> Iterator[Warehouse]:
    """The same warehouse test on a SQLite file and on PostgreSQL, whose loads take another code path
    (COPY). The PostgreSQL case needs TEST_POSTGRES_URL (`.ci/run` sets it) and gets its own database,
    whose search_path lets the test's SQL name the tables without their schema."""
    if request.param == "sqlite":
        yield Warehouse(f"sqlite:///{tmp_path / 'w.sqlite'}")
        return
    url = os.environ.get("TEST_POSTGRES_URL")
    if not url:
        pytest.skip("TEST_POSTGRES_URL not set (.ci/run starts PostgreSQL and sets it)")
    with scratch_database(url, "wh", search_path=f"public, {INGEST_SCHEMA}, {RESTRICTED_SCHEMA}") as database:
        wh = Warehouse(database)
        yield wh
        wh.engine.dispose()
