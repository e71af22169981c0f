"""The same definitions on a distributed executor: Celery workers fed through a Redis broker
(Debian's redis-server), all on this machine. The steps must run in the worker process, not here."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import redis
import yaml

from etl.warehouse import Warehouse
from synthetic.sandbox import free_port
from tests.paths import ROOT

REDIS = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(REDIS is None, reason="Debian's redis-server is not installed (.ci/run installs it)")


@pytest.fixture
def broker(tmp_path):
    port = free_port()
    proc = subprocess.Popen([REDIS, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            if client.ping():
                break
        except redis.ConnectionError:
            time.sleep(0.1)
    yield f"redis://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


def test_the_study_job_runs_its_steps_on_celery_workers(sandbox, broker, tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    warehouse_url = f"sqlite:///{tmp_path / 'w.sqlite'}"
    env = {"DAGSTER_HOME": str(home), "FHIR_BASE_URL": sandbox.base_url, "WAREHOUSE_URL": warehouse_url,
           "PSEUDONYM_KEY": "test-pseudonym-key-0123456789", "BOOTSTRAP_REPLICATES": "0", "FHIR_PAGE_SIZE": "200",
           "DAGSTER_CELERY_BROKER": f"{broker}/0", "DAGSTER_CELERY_BACKEND": f"{broker}/1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    config = tmp_path / "celery.yaml"
    config.write_text(yaml.safe_dump({"execution": {"config": {"broker": f"{broker}/0", "backend": f"{broker}/1"}}}))
    log = tmp_path / "worker.log"
    worker = subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster-celery")), "worker", "start", "-A", "dagster_celery.app", "-y", str(config),
         "-n", "w1@%h",
         "-l", "info"], cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        # dagster-celery starts `celery` from PATH: the venv's own
        env={**os.environ, **env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"},
        start_new_session=True)  # its own process group: `celery` and its pool are the wrapper's children
    try:
        deadline = time.monotonic() + 90
        while "ready" not in log.read_text(errors="replace"):
            assert worker.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.5)
        from assets.distributed import celery_study_job
        from assets.study.cohort import cohort

        selection = [*(dg.AssetKey(k) for k in ("raw_patient", "raw_condition", "raw_medicationstatement",
                                                "raw_procedure", "raw_observation", "raw_adverseevent",
                                                "raw_researchstudy", "raw_researchsubject")), *cohort.keys]
        with dg.DagsterInstance.get() as instance:
            result = dg.execute_job(dg.reconstructable(celery_study_job), instance=instance, asset_selection=selection)
            assert result.success
            records = instance.all_logs(result.run_id)
        steps = [r.dagster_event for r in records if r.dagster_event and r.dagster_event.event_type_value == "STEP_SUCCESS"]
        assert {e.step_key for e in steps} >= {"fhir_ingest", "cohort"}
        assert os.getpid() not in {e.pid for e in steps}  # every step ran in a worker process
        assert any("in celery worker" in (r.dagster_event.message or "") for r in records if r.dagster_event)
        assert len(Warehouse(warehouse_url).read_table("cohort")) > 0
    finally:
        # The whole group: terminating the dagster-celery wrapper alone left `celery` and its pool running after
        # the suite (about 800 MB per run of `make test`).
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGKILL)
