"""The Definitions load, validate from workspace.yaml, and show the lineage users expect."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from assets.definitions import defs
from tests.paths import ROOT


def test_definitions_validate_from_the_workspace_file():
    dagster = Path(sys.executable).with_name("dagster")
    done = subprocess.run([str(dagster), "definitions", "validate", "-w", "workspace.yaml"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_lineage_runs_from_raw_tables_to_effect_estimates():
    graph = defs.resolve_asset_graph()
    key = dg.AssetKey
    assert key("raw_condition") in graph.get(key("cohort")).parent_keys
    assert graph.get(key("effect_estimates")).parent_keys == {key("cohort"), key("prospective_cohort")}
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} >= {
        "raw_patient", "raw_condition", "raw_medicationstatement", "raw_procedure", "raw_observation",
        "raw_adverseevent", "raw_researchstudy", "raw_researchsubject", "cohort", "cohort_attrition",
        "cohort_data_quality", "relapse_detail", "patient_xref", "iptw_weights", "effect_estimates",
        "covariate_balance", "survival_curves", "baseline_characteristics", "scale_changes", "hrct_changes",
        "safety_summary"}


def test_every_asset_has_a_description():
    for spec in defs.resolve_all_asset_specs():
        assert spec.description, spec.key


def test_a_malformed_concept_map_stops_start_up_naming_its_line(tmp_path):
    bad = tmp_path / "hospital_map.yaml"
    bad.write_text("conditions:\n  ild:\n    - {system: ICD10, code: J84.10, prefix: J84}\n")
    dagster = Path(sys.executable).with_name("dagster")
    env = {**os.environ, "CONCEPT_MAP_PATH": str(bad)}
    done = subprocess.run([str(dagster), "definitions", "validate", "-w", "workspace.yaml"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert f"{bad}:3: conditions.ild[0] needs a system and exactly one of code or prefix" in done.stdout + done.stderr
