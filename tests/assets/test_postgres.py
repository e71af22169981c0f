"""The production warehouse path: the whole materialization into a real PostgreSQL.

`.ci/run` installs Debian's PostgreSQL, starts a throwaway cluster on 127.0.0.1 and sets
TEST_POSTGRES_URL; without it (a laptop without PostgreSQL) these tests are skipped and say so."""
from __future__ import annotations

import os

import dagster as dg
import pytest
import sqlalchemy as sa

from assets.definitions import all_assets
from assets.resources import FhirServerResource, StudyResource, WarehouseResource
from etl.warehouse import Warehouse
from synthetic.scratch_postgres import scratch_database
from tests.paths import ROOT

URL = os.environ.get("TEST_POSTGRES_URL")
pytestmark = pytest.mark.skipif(not URL, reason="TEST_POSTGRES_URL not set (.ci/run starts PostgreSQL and sets it)")
KEY = "test-pseudonym-key-0123456789"
GRANTS = ROOT / "warehouse_sql" / "analyst_grants.sql"


@pytest.fixture(scope="module")
def database() -> str:
    """A fresh database per test run, dropped afterwards."""
    with scratch_database(URL, "iimild") as url:
        yield url


def materialize(base_url: str, url: str) -> dg.ExecuteInProcessResult:
    return dg.materialize(all_assets, resources={
        "fhir": FhirServerResource(base_url=base_url, page_size=200), "warehouse": WarehouseResource(url=url),
        "study": StudyResource(pseudonym_key=KEY, data_cutoff="2026-01-01", bootstrap_replicates=20)})


def test_the_study_materializes_into_postgres_with_schemas_keys_views_and_grants(sandbox, small_hospital, database):
    first = materialize(sandbox.base_url, database)
    assert first.success
    assert all(e.passed for e in first.get_asset_check_evaluations())
    engine = sa.create_engine(database)
    inspector = sa.inspect(engine)
    assert inspector.has_table("patient_xref", schema="restricted") and not inspector.has_table("patient_xref")
    assert inspector.has_table("quarantine", schema="restricted")
    assert inspector.has_table("raw_observation", schema="fhir") and inspector.has_table("raw_history", schema="fhir")
    assert inspector.get_pk_constraint("cohort")["constrained_columns"] == ["patient_key"]
    assert inspector.get_pk_constraint("raw_history", schema="fhir")["constrained_columns"] == ["resource_type", "id", "version_key"]
    assert {"v_primary_effects", "v_cohort_groups", "current_provenance"} <= set(inspector.get_view_names())
    columns = {c["name"]: str(c["type"]) for c in inspector.get_columns("cohort")}
    assert columns["age"] in ("BIGINT", "INTEGER") and columns["followup_days"] in ("BIGINT", "INTEGER")
    alice = "analyst_" + sa.engine.make_url(database).database.removeprefix("iimild_")
    wh = Warehouse(database)
    by_type = small_hospital.by_type()
    assert wh.current_ids("Observation") == {r["id"] for r in by_type["Observation"]}

    with engine.begin() as conn:
        conn.execute(sa.text(GRANTS.read_text()))
        conn.execute(sa.text(f"CREATE ROLE {alice} LOGIN IN ROLE iimild_analyst"))
    # A second run refills the tables in place: views and grants survive.
    assert materialize(sandbox.base_url, database).success
    with engine.begin() as conn:
        conn.execute(sa.text(f"SET ROLE {alice}"))
        assert conn.execute(sa.text("SELECT count(*) FROM v_primary_effects")).scalar() > 0
        assert conn.execute(sa.text("SELECT count(DISTINCT run_id) FROM provenance")).scalar() == 2
        with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
            conn.execute(sa.text("SELECT * FROM restricted.patient_xref"))
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP OWNED BY {alice}; DROP ROLE {alice}"))


DAGSTER_YAML = ROOT / "deploy" / "dagster.yaml"


def test_the_production_instance_stores_runs_in_postgres(database, tmp_path, monkeypatch):
    """deploy/dagster.yaml as shipped: run and event storage in PostgreSQL, run retries on."""
    url = sa.engine.make_url(database)
    monkeypatch.setenv("DAGSTER_PG_HOST", url.host)
    monkeypatch.setenv("DAGSTER_PG_USER", url.username)
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", url.password or "")
    monkeypatch.setenv("DAGSTER_PG_DB", url.database)
    text = DAGSTER_YAML.read_text().replace("port: 5432", f"port: {url.port}")  # the CI cluster's port
    (tmp_path / "dagster.yaml").write_text(text)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))

    @dg.asset
    def probe() -> int:
        return 1

    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        result = dg.materialize([probe], instance=instance)
        assert instance.get_run_by_id(result.run_id).is_success
    with sa.create_engine(database).connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM runs")).scalar() == 1
