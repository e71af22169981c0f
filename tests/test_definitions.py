"""The Definitions load, validate from workspace.yaml, and show the lineage users expect."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg

from assets.definitions import defs

ROOT = Path(__file__).resolve().parent.parent


def test_definitions_validate_from_the_workspace_file():
    dagster = Path(sys.executable).with_name("dagster")
    done = subprocess.run([str(dagster), "definitions", "validate", "-w", "workspace.yaml"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_lineage_runs_from_raw_tables_to_effect_estimates():
    graph = defs.resolve_asset_graph()
    key = dg.AssetKey
    assert key("raw_condition") in graph.get(key("cohort")).parent_keys
    assert graph.get(key("effect_estimates")).parent_keys == {key("cohort"), key("iptw_weights")}
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} >= {
        "raw_patient", "raw_condition", "raw_medicationstatement", "raw_procedure", "raw_observation",
        "raw_adverseevent", "raw_researchstudy", "raw_researchsubject", "cohort", "cohort_attrition",
        "cohort_data_quality", "relapse_detail", "patient_xref", "iptw_weights", "effect_estimates"}


def test_every_asset_has_a_description():
    for spec in defs.resolve_all_asset_specs():
        assert spec.description, spec.key
