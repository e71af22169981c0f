"""`dagster dev`'s webserver shows the study assets and their lineage (read through its GraphQL
API, the same data the asset graph in the UI is drawn from)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from synthetic.sandbox import free_port

ROOT = Path(__file__).resolve().parent.parent
QUERY = "{ assetNodes { assetKey { path } dependencyKeys { path } description } }"


@pytest.fixture(scope="module")
def webserver(tmp_path_factory):
    port = free_port()
    home = tmp_path_factory.mktemp("dagster_home")
    env = {**os.environ, "DAGSTER_HOME": str(home), "FHIR_BASE_URL": "http://127.0.0.1:9/fhir",
           "PSEUDONYM_KEY": "not-used-by-this-test-0123"}
    proc = subprocess.Popen([str(Path(sys.executable).with_name("dagster-webserver")), "-w", "workspace.yaml",
                             "-h", "127.0.0.1", "-p", str(port), "--read-only"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/graphql"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                nodes = httpx.post(url, json={"query": QUERY}, timeout=10).json()["data"]["assetNodes"]
                if nodes:
                    break
            except (httpx.HTTPError, KeyError, TypeError, ValueError):
                pass
            time.sleep(0.5)
        else:
            pytest.fail("the Dagster webserver did not show the assets within 120 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_ui_shows_the_study_assets_and_their_lineage(webserver):
    nodes = httpx.post(webserver, json={"query": QUERY}, timeout=30).json()["data"]["assetNodes"]
    graph = {"/".join(n["assetKey"]["path"]): {"/".join(d["path"]) for d in n["dependencyKeys"]} for n in nodes}
    assert graph["effect_estimates"] == {"cohort", "prospective_cohort"}
    assert graph["survival_curves"] == {"cohort", "prospective_cohort"}
    assert {"raw_patient", "raw_condition", "raw_observation"} <= graph["cohort"]
    assert all(n["description"] for n in nodes)
