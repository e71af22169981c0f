"""`dagster dev`'s webserver shows the study assets and their lineage (read through its GraphQL
API, the same data the asset graph in the UI is drawn from)."""
from __future__ import annotations

import httpx
import pytest

from tests.dagster_webserver import running_webserver

QUERY = "{ assetNodes { assetKey { path } dependencyKeys { path } description } }"


@pytest.fixture(scope="module")
def webserver(tmp_path_factory):
    def ready(base: str) -> bool:
        return bool(httpx.post(f"{base}/graphql", json={"query": QUERY}, timeout=10).json()["data"]["assetNodes"])

    with running_webserver(tmp_path_factory.mktemp("dagster_home"), ready, "--read-only") as base:
        yield f"{base}/graphql"


def test_the_ui_shows_the_study_assets_and_their_lineage(webserver):
    nodes = httpx.post(webserver, json={"query": QUERY}, timeout=30).json()["data"]["assetNodes"]
    graph = {"/".join(n["assetKey"]["path"]): {"/".join(d["path"]) for d in n["dependencyKeys"]} for n in nodes}
    assert graph["effect_estimates"] == {"cohort", "prospective_cohort"}
    assert graph["survival_curves"] == {"cohort", "prospective_cohort"}
    assert {"raw_patient", "raw_condition", "raw_observation"} <= graph["cohort"]
    assert all(n["description"] for n in nodes)
