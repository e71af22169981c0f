"""The Dagster wiring of multi-site pooling: three synthetic hospitals, each with its own warehouse, ledger and
keys, publish their packages and answer the coordinator's rounds through their sensors and jobs; the
coordinator's code location pools them through a folder. The pooled tables equal R's (to 1e-6)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from lxml import html as lxml_html

from assets.federation import FederationResource, answer_round_job, federation_definitions, round_requests, site_aggregates
from assets.resources import StudyResource, WarehouseResource
from coordinator.assets import REPORT_FILE, consortium_meta, pooled_effects, pooled_report
from coordinator.definitions import advance_round_job, pooling_rounds, site_packages_changed, start_pooling_session_job
from coordinator.resources import CoordinatorResource
from etl.warehouse import Warehouse
from federation.signing import public_pem
from report.pooled import POOLED_TABLES
from tests.paths import FIXTURES, ROOT
from tests.pooling_sites import SITES, pooled_reference, site_tables
from tests.report.test_study_report import check_number, locate

REF = json.loads((FIXTURES / "pooling" / "reference.json").read_text())
FITS = [f"{c}.{o}" for c in REF["comparisons"] for o in ("death", "relapse", "resp_relapse")]
TOL = 1e-6
KEYS = {p: Ed25519PrivateKey.generate() for p in (*SITES, "coordinator")}


def pem(key: Ed25519PrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


@pytest.fixture
def consortium(tmp_path, monkeypatch):
    for party, key in KEYS.items():
        monkeypatch.setenv(f"FEDERATION_KEY_{party.upper()}", pem(key))
    keys = tmp_path / "consortium.yaml"
    keys.write_text(yaml.safe_dump({"coordinator": public_pem(KEYS["coordinator"]),
                                    "sites": {s: public_pem(KEYS[s]) for s in SITES}}))
    exchange = tmp_path / "exchange"
    sites = {}
    for s in SITES:
        url = f"sqlite:///{tmp_path / s / 'warehouse.sqlite'}"
        (tmp_path / s).mkdir()
        wh, tables = Warehouse(url), site_tables(s)
        for name in ("cohort", "cohort_attrition", "iptw_weights", "covariate_balance"):
            wh.replace_table(name, getattr(tables, name))
        sites[s] = {"warehouse": WarehouseResource(url=url),
                    "study": StudyResource(pseudonym_key="k" * 32, data_cutoff="2026-01-01"),
                    "federation": FederationResource(site_id=s, exchange=str(exchange), consortium=str(keys),
                                                     signing_key_env=f"FEDERATION_KEY_{s.upper()}", auto_answer=True,
                                                     state_dir=str(tmp_path / s / "state"))}
    coordinator = {"coordinator": CoordinatorResource(exchange=str(exchange), consortium=str(keys),
                                                      signing_key_env="FEDERATION_KEY_COORDINATOR",
                                                      state_dir=str(tmp_path / "coordinator")),
                   "warehouse": WarehouseResource(url=f"sqlite:///{tmp_path / 'coordinator.sqlite'}")}
    return sites, coordinator


def launch(request: dg.RunRequest, resources: dict) -> bool:
    """What the daemon would do with a sensor's run request, in process."""
    if request.job_name == "pooled_effects_job":  # an asset job: materialize its assets
        return dg.materialize([pooled_effects, pooled_report], resources=resources).success
    return advance_round_job.execute_in_process(run_config=request.run_config, resources=resources).success


def test_three_hospitals_pooled_by_their_dagster_sensors_and_jobs_equal_r(consortium):
    sites, coord = consortium
    for resources in sites.values():
        assert dg.materialize([site_aggregates], resources=resources).success
    # The coordinator's sensor notices the packages, and the meta-analysis equals metafor.
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources=coord)
        assert isinstance(site_packages_changed(context), dg.RunRequest)
        assert isinstance(site_packages_changed(context), dg.SkipReason)  # same packages: nothing to redo
    assert dg.materialize([consortium_meta], resources=coord).success
    meta = Warehouse(coord["warehouse"].url).read_table("meta_analysis").set_index(["comparison", "outcome", "method", "test"])
    row = meta.loc[("tacrolimus_vs_CTX", "resp_relapse", "REML", "knha")]
    fit = REF["comparisons"]["tacrolimus_vs_CTX"]["outcomes"]["resp_relapse"]
    # central withholds its estimate here (an event count under the threshold): R's meta-analysis of the other two
    assert row["sites"] == "north,south"
    ref = fit["meta_of_pairs"][row["sites"]]["REML_knha"]
    assert (row["estimate"], row["se"], row["tau2"], row["pi_upper"]) == pytest.approx(
        (ref["estimate"], ref["se"], ref["tau2"], ref["pi_upper"]), abs=TOL)
    packages = Warehouse(coord["warehouse"].url).read_table("site_packages")
    assert set(packages["status"]) == {"accepted"} and len(packages) == 3

    # A session, driven by the sensors at both ends: each request and each round is a run.
    assert start_pooling_session_job.execute_in_process(
        run_config={"ops": {"start_session": {"config": {"session_id": "s2026", "fits": FITS}}}}, resources=coord).success
    runs = {"site": 0, "coordinator": 0}
    for _ in range(30):
        for resources in sites.values():
            requests = round_requests(dg.build_sensor_context(resources={"federation": resources["federation"]}))
            for request in [] if isinstance(requests, dg.SkipReason) else requests:
                assert answer_round_job.execute_in_process(run_config=request.run_config, resources=resources).success
                runs["site"] += 1
        requests = pooling_rounds(dg.build_sensor_context(resources=coord))
        if isinstance(requests, dg.SkipReason):
            continue
        for request in requests:
            assert launch(request, coord)
            runs["coordinator"] += 1
        if any(r.job_name == "pooled_effects_job" for r in requests):
            break
    pooled = Warehouse(coord["warehouse"].url).read_table("pooled_effects").set_index(["comparison", "outcome"])
    assert len(pooled) == len(FITS) and set(pooled["status"]) == {"pooled"}
    for fit in FITS:
        comparison, outcome = fit.split(".")
        pooled_sites, expected = pooled_reference(REF, comparison, outcome)
        got = pooled.loc[(comparison, outcome)]
        assert got["sites"] == ",".join(pooled_sites) and got["n_sites"] == len(pooled_sites), fit
        for key in ("hazard_ratio", "ci_lower", "ci_upper", "p_value", "coef", "robust_se"):
            assert got[key] == pytest.approx(expected[key], abs=TOL, rel=TOL), (fit, key)
    rounds = int(pooled["rounds"].iloc[0])
    assert runs == {"site": 3 * rounds, "coordinator": rounds + 1}  # every request and round is a run


def test_without_auto_answer_the_sensor_waits_for_the_data_engineer_who_may_refuse(consortium):
    sites, coord = consortium
    for resources in sites.values():  # a session asks only the sites whose package it accepts
        assert dg.materialize([site_aggregates], resources=resources).success
    north = sites["north"]["federation"]
    manual = {**sites["north"], "federation": FederationResource(
        site_id="north", exchange=north.exchange, consortium=north.consortium, signing_key_env=north.signing_key_env,
        state_dir=north.state_dir)}  # auto_answer off, the default
    for session, fits in (("s1", FITS[:1]), ("s2", FITS[1:3])):
        start_pooling_session_job.execute_in_process(
            run_config={"ops": {"start_session": {"config": {"session_id": session, "fits": fits}}}}, resources=coord)
    skip = round_requests(dg.build_sensor_context(resources={"federation": manual["federation"]}))
    assert isinstance(skip, dg.SkipReason)
    for session in ("s1", "s2"):   # every waiting request, with what it would reveal
        name = f"sessions/{session}/round-001/request.json"
        request = json.loads(Path(north.exchange, name).read_text())["payload"]
        assert f"- {name}: {request['reveals']}" in skip.skip_message.splitlines()
    result = answer_round_job.execute_in_process(resources=manual, run_config={"ops": {"answer_round": {"config": {
        "request": "sessions/s1/round-001/request.json", "decision": "refuse", "reason": "not before the ethics board meets"}}}})
    assert result.output_for_node("answer_round") == {"outcome": "refused", "reason": "not before the ethics board meets"}


def drive(sites: dict, coord: dict, turns: int = 30) -> None:
    """Tick both ends' sensors, launching what they request, until the coordinator refreshes pooled_effects."""
    for _ in range(turns):
        for resources in sites.values():
            requests = round_requests(dg.build_sensor_context(resources={"federation": resources["federation"]}))
            for request in [] if isinstance(requests, dg.SkipReason) else requests:
                assert answer_round_job.execute_in_process(run_config=request.run_config, resources=resources).success
        requests = pooling_rounds(dg.build_sensor_context(resources=coord))
        for request in [] if isinstance(requests, dg.SkipReason) else requests:
            assert launch(request, coord)
        if not isinstance(requests, dg.SkipReason) and any(r.job_name == "pooled_effects_job" for r in requests):
            return
    raise AssertionError("the session did not end")


def test_a_site_without_a_package_is_left_out_and_pooled_effects_and_the_report_say_so(consortium):
    sites, coord = consortium
    for s in ("north", "central"):
        assert dg.materialize([site_aggregates], resources=sites[s]).success
    assert dg.materialize([consortium_meta], resources=coord).success
    assert start_pooling_session_job.execute_in_process(
        run_config={"ops": {"start_session": {"config": {"session_id": "s2026", "fits": FITS[:2]}}}}, resources=coord).success
    drive(sites, coord)
    pooled = Warehouse(coord["warehouse"].url).read_table("pooled_effects").set_index(["comparison", "outcome"])
    assert list(pooled.columns[-2:]) == ["reason", "left_out"]
    assert set(pooled["status"]) == {"pooled"} and set(pooled["sites"]) == {"central,north"} and set(pooled["n_sites"]) == {2}
    assert set(pooled["left_out"]) == {"south: no package in the exchange (aggregates/south.json)"}
    for fit in FITS[:2]:
        comparison, outcome = fit.split(".")
        ref = REF["comparisons"][comparison]["outcomes"][outcome]["pooled_of_pairs"]["central,north"]
        for key in ("hazard_ratio", "ci_lower", "ci_upper", "p_value", "coef", "robust_se"):
            assert pooled.loc[(comparison, outcome)][key] == pytest.approx(ref[key], abs=TOL, rel=TOL), (fit, key)
    # The coordinator's own report page: every number it prints is the coordinator table value it names.
    page = Path(coord["coordinator"].reports()) / REPORT_FILE
    doc = lxml_html.fromstring(page.read_text())
    tables = {name: Warehouse(coord["warehouse"].url).read_table(name) for name in POOLED_TABLES}
    numbers = doc.xpath("//*[@data-src][@data-kind='number' or @data-kind='p']")
    assert len(numbers) > 20
    for el in numbers:
        check_number(el.text_content(), locate(tables, json.loads(el.get("data-src"))), el.get("data-src"))
    ref = REF["comparisons"]["tacrolimus_vs_conventional"]["outcomes"]["death"]["pooled_of_pairs"]["central,north"]
    hr = doc.xpath("//span[contains(@data-src, '\"pooled_effects\"') and contains(@data-src, '\"hazard_ratio\"')"
                   " and contains(@data-src, '\"death\"')]")
    assert [float(h.text) for h in hr] == [round(ref["hazard_ratio"], 2)]
    assert doc.xpath("//title")[0].text.startswith("IIM-ILD consortium report")
    left_out = doc.xpath("//p[contains(., 'left out of this session')]/span[@data-src]")
    assert [e.text for e in left_out] == ["south: no package in the exchange (aggregates/south.json)"]


def test_a_round_past_its_deadline_ends_the_session_naming_the_silent_sites(consortium):
    sites, coord = consortium
    for resources in sites.values():
        assert dg.materialize([site_aggregates], resources=resources).success
    assert start_pooling_session_job.execute_in_process(resources=coord, run_config={"ops": {"start_session": {"config": {
        "session_id": "brief", "fits": FITS[:1], "round_deadline_hours": 1e-6}}}}).success   # 3.6 ms
    time.sleep(0.01)
    requests = pooling_rounds(dg.build_sensor_context(resources=coord))
    assert [r.run_key for r in requests] == ["brief/round-001/deadline"]
    assert launch(requests[0], coord)
    state = coord["coordinator"].coordinator().state("brief")
    assert state["status"] == "failed" and state["reason"] == (
        "no reply to round 1 within 1e-06 h from central, north, south: not pooled")
    requests = pooling_rounds(dg.build_sensor_context(resources=coord))
    assert [r.job_name for r in requests] == ["pooled_effects_job"] and launch(requests[0], coord)
    pooled = Warehouse(coord["warehouse"].url).read_table("pooled_effects")
    assert pooled[["status", "reason"]].values.tolist() == [["not pooled", state["reason"]]]


def test_the_caps_and_the_deadline_are_read_from_the_environment(monkeypatch, tmp_path):
    from assets.federation import federation_resource_from_env
    from coordinator.resources import coordinator_resources_from_env

    for name, value in {"FEDERATION_MAX_EVALUATIONS": "40", "FEDERATION_MAX_SESSIONS": "2", "FEDERATION_SESSION_WINDOW_DAYS": "7",
                        "FEDERATION_ROUND_DEADLINE_HOURS": "12", "COORDINATOR_REPORTS_DIR": str(tmp_path / "r")}.items():
        monkeypatch.setenv(name, value)
    site = federation_resource_from_env()
    assert (site.max_evaluations, site.max_sessions, site.session_window_days) == (40, 2, 7.0)
    coordinator = coordinator_resources_from_env()["coordinator"]
    assert coordinator.round_deadline_hours == 12.0 and coordinator.reports() == tmp_path / "r"


def test_federation_is_absent_unless_configured(monkeypatch):
    monkeypatch.delenv("FEDERATION_EXCHANGE", raising=False)
    assert not list(federation_definitions().assets or [])
    monkeypatch.setenv("FEDERATION_EXCHANGE", "/tmp/exchange")  # noqa: S108 - only a name here, nothing is written
    defs = federation_definitions()
    assert [a.key.to_user_string() for a in defs.assets] == ["site_aggregates"]


def test_coordinator_location_loads_with_its_assets_and_descriptions():
    from coordinator.definitions import defs

    specs = {s.key.to_user_string(): s for s in defs.resolve_all_asset_specs()}
    assert set(specs) == {"site_packages", "meta_analysis", "site_heterogeneity", "pooled_effects", "pooled_report"}
    assert all(s.description for s in specs.values())
    assert pd.Series([j.name for j in defs.jobs]).is_unique


def test_site_definitions_merge_with_the_federation_group(monkeypatch, tmp_path):
    from assets.definitions import defs as site_defs

    monkeypatch.setenv("FEDERATION_EXCHANGE", str(tmp_path / "exchange"))
    merged = dg.Definitions.merge(site_defs, federation_definitions())
    graph = merged.resolve_asset_graph()
    parents = {k.to_user_string() for k in graph.get(dg.AssetKey("site_aggregates")).parent_keys}
    assert parents == {"cohort", "cohort_attrition", "iptw_weights", "covariate_balance"}
    assert merged.resolve_job_def("answer_round_job") and merged.resolve_sensor_def("round_requests")


def test_coordinator_workspaces_validate():
    """workspace.consortium.yaml loads the site's and the coordinator's locations; the coordinator-only file is
    that same coordinator entry."""
    import subprocess
    import sys

    root = ROOT
    alone = yaml.safe_load((root / "workspace.coordinator.yaml").read_text())["load_from"]
    both = yaml.safe_load((root / "workspace.consortium.yaml").read_text())["load_from"]
    assert alone == [both[1]] and both[0] == yaml.safe_load((root / "workspace.yaml").read_text())["load_from"][0]
    dagster = Path(sys.executable).with_name("dagster")
    done = subprocess.run([str(dagster), "definitions", "validate", "-w", "workspace.consortium.yaml"], cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
