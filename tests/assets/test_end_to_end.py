"""End to end over real HTTP: sekmet-fhir -> Dagster assets -> SQLite warehouse, against the
generator's ground truth."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from assets.definitions import all_assets, all_check_keys
from assets.resources import FhirServerResource, StudyResource, WarehouseResource
from etl.warehouse import Warehouse
from tests.paths import ROOT

pytestmark = pytest.mark.integration

KEY = "test-pseudonym-key-0123456789"
CUTOFF = "2026-01-01"
COMPARED = ["group", "conventional_agent", "index_date", "age", "sex", "diagnosis_subset", "initial_pred_mg_day",
            "plasma_exchange", "ivig", "followup_days", "death_event", "death_days", "relapse_event", "relapse_days",
            "resp_relapse_event", "resp_relapse_days"]


def _materialize(base_url: str, warehouse_url: str) -> dg.ExecuteInProcessResult:
    return dg.materialize(all_assets, resources={
        "fhir": FhirServerResource(base_url=base_url, page_size=200),
        "warehouse": WarehouseResource(url=warehouse_url),
        "study": StudyResource(pseudonym_key=KEY, data_cutoff=CUTOFF, bootstrap_replicates=40),
    })


@pytest.fixture(scope="module")
def materialized(sandbox, tmp_path_factory) -> tuple[Warehouse, dg.ExecuteInProcessResult]:
    url = f"sqlite:///{tmp_path_factory.mktemp('warehouse') / 'w.sqlite'}"
    result = _materialize(sandbox.base_url, url)
    return Warehouse(url), result


def _normalise(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame["index_date"] = pd.to_datetime(frame["index_date"]).dt.date
    frame["conventional_agent"] = frame["conventional_agent"].where(frame["conventional_agent"].notna(), None)
    return frame


def test_every_asset_materializes(materialized):
    _, result = materialized
    assert result.success
    keys = {event.asset_key.to_user_string() for event in result.get_asset_materialization_events()}
    assert {"raw_patient", "raw_observation", "cohort", "cohort_attrition", "patient_xref", "iptw_weights",
            "effect_estimates"} <= keys


def test_every_expectation_gate_passes_on_the_synthetic_hospital(materialized):
    _, result = materialized
    evaluations = result.get_asset_check_evaluations()
    assert {e.asset_check_key for e in evaluations} == all_check_keys
    failed = {e.check_name: e.metadata["failures"].value for e in evaluations if not e.passed}
    assert failed == {}


def test_nothing_is_lost_between_server_and_warehouse(materialized, small_hospital):
    wh, _ = materialized
    for rtype, resources in small_hospital.by_type().items():
        assert {r["id"] for r in wh.raw_resources(rtype)} == {r["id"] for r in resources}, rtype
    assert wh.read_table("quarantine").empty


def test_cohort_size_and_groups_equal_the_generators_truth(materialized, small_hospital):
    wh, _ = materialized
    truth = pd.DataFrame(small_hospital.truth)
    expected = truth[truth["retro_reason"].isna()]
    cohort = wh.read_table("cohort")
    assert len(cohort) == len(expected)
    assert cohort["group"].value_counts().to_dict() == expected["group"].value_counts().to_dict()


def test_cohort_equals_the_truth_patient_by_patient_for_every_column(materialized, small_hospital):
    wh, _ = materialized
    xref = wh.read_table("patient_xref")
    cohort = _normalise(wh.read_table("cohort").merge(xref, on="patient_key"))
    truth = pd.DataFrame(small_hospital.truth)
    truth = _normalise(truth[truth["retro_reason"].isna()])
    got = cohort.set_index("fhir_patient_id").sort_index()[COMPARED]
    want = truth.set_index("fhir_patient_id").sort_index()[COMPARED]
    pd.testing.assert_frame_equal(got, want, check_dtype=False)


def test_attrition_equals_the_truth(materialized, small_hospital):
    wh, _ = materialized
    attrition = wh.read_table("cohort_attrition")
    retro = attrition[attrition["cohort"] == "retrospective"].set_index("reason")
    planned = pd.Series([t["retro_reason"] for t in small_hospital.truth]).value_counts()
    for reason, n in planned.items():
        assert retro.loc[reason, "n_excluded"] == n, reason
    assert retro["n_remaining"].iloc[-1] == len(wh.read_table("cohort"))
    prosp = attrition[attrition["cohort"] == "prospective"].set_index("reason")
    planned = pd.Series([t["prospective"] for t in small_hospital.truth if t["prospective"]]).value_counts()
    assert prosp.loc["all_patients", "n_remaining"] == planned.sum()
    for reason in ("enrolment_outside_window", "no_tacrolimus", "pirfenidone_other_dose", "withdrawn_before_12m",
                   "lost_to_follow_up_before_12m"):
        assert prosp.loc[reason, "n_excluded"] == planned.get(reason, 0), reason
    assert prosp["n_remaining"].iloc[-1] == len(wh.read_table("prospective_cohort"))


PROSPECTIVE_COMPARED = ["group", "index_date", "enrolment_date", "age", "sex", "diagnosis_subset",
                        "initial_pred_mg_day", "followup_days", "death_event", "death_days", "relapse_event",
                        "relapse_days", "resp_relapse_event", "resp_relapse_days"]


def test_prospective_cohort_equals_the_truth_patient_by_patient(materialized, small_hospital):
    wh, _ = materialized
    got = wh.read_table("prospective_cohort").merge(wh.read_table("patient_xref"), on="patient_key")
    truth = pd.DataFrame(small_hospital.truth)
    truth = truth[truth["prospective"].isin(["combination", "tacrolimus"])].assign(group=lambda t: t["prospective"])
    for frame in (got, truth):
        for col in ("index_date", "enrolment_date"):
            frame[col] = pd.to_datetime(frame[col]).dt.date
    pd.testing.assert_frame_equal(got.set_index("fhir_patient_id").sort_index()[PROSPECTIVE_COMPARED],
                                  truth.set_index("fhir_patient_id").sort_index()[PROSPECTIVE_COMPARED], check_dtype=False)
    visits = wh.read_table("prospective_visits")
    assert set(visits["patient_key"]) <= set(wh.read_table("prospective_cohort")["patient_key"])
    assert {"6mwt", "hrct_score", "hrct_reticular", "gc_pred_mg_day"} <= set(visits["measure"])
    assert not visits.duplicated(["patient_key", "measure", "visit_month"]).any()


def test_safety_events_lie_within_follow_up(materialized):
    wh, _ = materialized
    events = wh.read_table("safety_events")
    cohort = wh.read_table("cohort")[["patient_key", "followup_days"]]
    retro = events[events["cohort"] == "retrospective"].merge(cohort, on="patient_key")
    assert len(retro) > 0 and retro["day"].between(0, retro["followup_days"]).all()
    assert set(events["category"]) <= {"infection", "opportunistic-infection", "glucose-metabolism", "electrolyte",
                                       "gastrointestinal", "hepatic", "renal", "hematologic", "other"}


def test_analysis_tables_hold_pseudonyms_only(materialized, small_hospital):
    wh, _ = materialized
    fhir_ids = {t["fhir_patient_id"] for t in small_hospital.truth}
    for table in ("cohort", "iptw_weights", "relapse_detail", "prospective_cohort", "prospective_visits",
                  "safety_events", "drug_discontinuations"):
        frame = wh.read_table(table)
        assert "fhir_patient_id" not in frame.columns and "patient_id" not in frame.columns
        assert fhir_ids.isdisjoint(frame["patient_key"])
        assert not frame.astype(str).apply(lambda col: col.str.contains("pt-0", regex=False)).any().any(), table


def test_effect_estimates_are_finite_hazard_ratios_with_their_counts(materialized):
    wh, _ = materialized
    effects = wh.read_table("effect_estimates")
    effects = effects[(effects["analysis"] == "primary") & (effects["comparison"] == "tacrolimus_vs_conventional")]
    effects = effects.set_index("outcome")
    cohort = wh.read_table("cohort")
    for outcome in ("death", "relapse"):
        row = effects.loc[outcome]
        assert 0 < row["ci_lower"] < row["hazard_ratio"] < row["ci_upper"]
        assert 0 <= row["p_value"] <= 1 and 0 <= row["logrank_p"] <= 1
        tac = cohort["group"] == "tacrolimus"
        assert row["events_treated"] == cohort.loc[tac, f"{outcome}_event"].sum()
        assert row["n_treated"] + row["n_control"] == len(cohort)
    weights = wh.read_table("iptw_weights")
    primary = weights[weights["analysis"] == "tacrolimus_vs_conventional"]
    assert len(primary) == len(cohort) and (weights["weight"] >= 1).all()
    comparisons = set(wh.read_table("effect_estimates")["comparison"])
    assert comparisons == {"tacrolimus_vs_conventional", "tacrolimus_vs_CTX", "tacrolimus_vs_MTX", "tacrolimus_vs_AZA",
                           "combination_vs_tacrolimus"}
    curves = wh.read_table("survival_curves")
    assert curves["survival"].between(0, 1).all() and (curves["n_at_risk"] > 0).all()


def test_descriptive_tables_are_filled(materialized):
    wh, _ = materialized
    baseline = wh.read_table("baseline_characteristics")
    assert {"retrospective", "prospective"} == set(baseline["cohort"])
    n = baseline[(baseline["variable"] == "n") & (baseline["cohort"] == "retrospective")].set_index("group")["summary"]
    cohort = wh.read_table("cohort")
    assert int(n["tacrolimus"]) == (cohort["group"] == "tacrolimus").sum()
    scales = wh.read_table("scale_changes")
    assert set(scales["group"]) == {"all", "combination", "tacrolimus"} and scales["p_vs_baseline"].notna().any()
    safety = wh.read_table("safety_summary")
    any_retro = safety[(safety["cohort"] == "retrospective") & (safety["category"] == "any")].set_index("group")
    events = wh.read_table("safety_events")
    retro_events = events[events["cohort"] == "retrospective"]
    assert any_retro.loc["tacrolimus", "n_patients_with_event"] == retro_events[
        retro_events["group"] == "tacrolimus"]["patient_key"].nunique()
    assert len(wh.read_table("hrct_changes")) == 10


def test_a_second_run_writes_identical_tables(materialized, sandbox, tmp_path):
    wh, _ = materialized
    url = f"sqlite:///{tmp_path / 'again.sqlite'}"
    assert _materialize(sandbox.base_url, url).success
    again = Warehouse(url)
    for table in ("cohort", "cohort_attrition", "iptw_weights", "effect_estimates", "patient_xref"):
        pd.testing.assert_frame_equal(wh.read_table(table), again.read_table(table))


def test_the_operators_command_materializes_everything(sandbox, small_hospital, tmp_path):
    """`dagster asset materialize -w workspace.yaml --select '*'`, exactly as operators run it."""
    url = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {**os.environ, "FHIR_BASE_URL": sandbox.base_url, "WAREHOUSE_URL": url, "PSEUDONYM_KEY": KEY,
           "DATA_CUTOFF": CUTOFF, "DAGSTER_HOME": str(home), "BOOTSTRAP_REPLICATES": "40",
           "REPORTS_DIR": str(tmp_path / "reports")}
    dagster = Path(sys.executable).with_name("dagster")
    done = subprocess.run([str(dagster), "asset", "materialize", "-w", "workspace.yaml", "--select", "*"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    truth = [t for t in small_hospital.truth if t["retro_reason"] is None]
    assert len(Warehouse(url).read_table("cohort")) == len(truth)
    assert (tmp_path / "reports" / "study_report.html").stat().st_size > 0  # '*' includes the study report
    # No FHIR patient id or resource body reaches Dagster's storage (event log, run storage, compute logs) or the
    # console: every Patient id of the hospital is a canary, and so are two keys only a resource's JSON holds,
    # searched for in every file under DAGSTER_HOME (whose event log stores its events as plain JSON text).
    canaries = [t["fhir_patient_id"].encode() for t in small_hospital.truth] + [b'"resourceType"', b'"birthDate"']
    assert len(canaries) > 100 and min(map(len, canaries)) >= 8
    assert any(b'"user_message"' in path.read_bytes() for path in home.rglob("*.db"))
    leaks = {str(path.relative_to(home)): [c.decode() for c in canaries if c in path.read_bytes()][:3]
             for path in home.rglob("*") if path.is_file()}
    leaks = {path: ids for path, ids in leaks.items() if ids}
    console = [c.decode() for c in canaries if c in (done.stdout + done.stderr).encode()][:3]
    assert leaks == {} and console == [], (leaks, console)
