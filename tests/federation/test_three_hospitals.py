"""`make federation-demo` end to end: three synthetic FHIR hospitals of different sizes, case mixes and
propensity models, each ingested by the real pipeline (NDJSON mode) into its own warehouse with its own
Dagster instance, publish signed packages and answer the coordinator's rounds through a local folder. The
coordinator's pooled_effects equals R's coxph(Surv(t, e) ~ treat + strata(site), weights = w, robust = TRUE)
on the rows of exactly the sites each fit pooled, and its meta_analysis equals metafor::rma (tests/fixtures/pooling/demo_reference.json)."""
from __future__ import annotations

import json
import re
import shutil

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from analytics.comparisons import OUTCOMES, RETROSPECTIVE_COMPARISONS
from coordinator.assets import consortium_meta
from coordinator.resources import CoordinatorResource
from etl.warehouse import Warehouse
from federation.canonical import canonical_bytes, parse
from federation.contract import contract_terms
from federation.package import SiteTables, build_site_package, sign_package
from federation.schema import NOTES
from federation.signing import Signer, load_private_key
from synthetic.consortium import POOLED_COMPARISONS, Consortium, build_sites, fits_for, key_env
from tests.pooling_sites import DEMO_REFERENCE, DEMO_ROWS, ROW_COLUMNS, demo_analysis_rows

REF = json.loads(DEMO_REFERENCE.read_text())
TOL = 1e-6
REGENERATE = ("the three demo hospitals no longer give the rows the R references were computed on (the generator, "
              "the pipeline or a site's propensity model changed): if that is intended, run "
              "`python -m tests.fixtures.pooling.export_demo_sites` and `Rscript tests/fixtures/pooling/reference.R` "
              "and commit demo_rows.csv and demo_reference.json")


@pytest.fixture(scope="module")
def consortium(tmp_path_factory):
    demo = Consortium(tmp_path_factory.mktemp("consortium"))
    with pytest.MonkeyPatch.context() as env:
        for name, value in demo.make_keys().items():
            env.setenv(name, value)
        for site in demo.sites:
            demo.export_hospital(site)
        assert build_sites(demo) == {s.site_id: True for s in demo.sites}
        assert demo.meta_analyse().success
        demo.run_session(fits_for(POOLED_COMPARISONS))
        yield demo


def coordinator_table(demo: Consortium, name: str) -> pd.DataFrame:
    return Warehouse(demo.warehouse_url("coordinator")).read_table(name)


def test_each_site_pools_the_rows_the_r_references_were_computed_on(consortium):
    got = demo_analysis_rows({s.site_id: consortium.warehouse_url(s.site_id) for s in consortium.sites}, POOLED_COMPARISONS)
    fixture = pd.read_csv(DEMO_ROWS)[ROW_COLUMNS]
    labels = ["comparison", "outcome", "site"]
    same = (len(got) == len(fixture) and got[labels].equals(fixture[labels])
            and all(np.array_equal(got[c].to_numpy(float), fixture[c].to_numpy(float)) for c in ("t", "e", "treat"))
            and np.allclose(got["w"], fixture["w"], rtol=1e-12, atol=0))
    assert same, REGENERATE
    # Sizes and case mixes differ: the sites are not copies of one another.
    sizes = fixture[(fixture["comparison"] == "tacrolimus_vs_conventional") & (fixture["outcome"] == "death")]
    assert sizes.groupby("site").size().to_dict() == {"north": 79, "central": 109, "south": 149}
    assert sizes.groupby("site")["treat"].mean().round(2).to_dict() == {"central": 0.41, "north": 0.37, "south": 0.67}


def packages(demo: Consortium) -> dict[str, dict]:
    return {p.stem: parse(p.read_bytes())["payload"] for p in sorted((demo.exchange / "aggregates").glob("*.json"))}


def test_the_pooled_hazard_ratios_equal_r_coxph_with_site_strata_on_exactly_the_sites_pooled(consortium):
    """A site whose package withholds its own estimate of a fit (a small arm, a withheld event count) is left out
    of that fit: R on the rows of the sites that remain."""
    pooled = coordinator_table(consortium, "pooled_effects").set_index(["comparison", "outcome"])
    assert len(pooled) == len(REF["fits"]) == 6
    published = packages(consortium)
    withholding = (NOTES["small_arm"], NOTES["events_withheld"])
    checked = set()
    for fit in REF["fits"].values():
        where = (fit["comparison"], fit["outcome"])
        got = pooled.loc[where]
        sites = sorted(s for s, p in published.items()
                       if p["comparisons"][fit["comparison"]]["outcomes"][fit["outcome"]]["note"] not in withholding)
        if len(sites) < 2:
            assert got["status"] == "not pooled" and got["reason"].startswith("fewer than 2 sites to pool"), where
            continue
        expected = fit["pooled"] if len(sites) == 3 else fit["pooled_of_pairs"][",".join(sites)]
        assert got["status"] == "pooled" and got["sites"] == ",".join(sites) and got["n_sites"] == len(sites), where
        for key in ("coef", "robust_se", "se", "hazard_ratio", "ci_lower", "ci_upper", "p_value"):
            assert got[key] == pytest.approx(expected[key], abs=TOL, rel=TOL), (*where, key)
        checked.add(len(sites))
    assert 3 in checked   # at least one fit pools all three hospitals


def test_the_meta_analysis_equals_metafor(consortium):
    meta = coordinator_table(consortium, "meta_analysis").set_index(["comparison", "outcome", "method", "test"])
    assert len(meta) == len(RETROSPECTIVE_COMPARISONS) * len(OUTCOMES) * 6   # every comparison × outcome × method × test
    published = packages(consortium)
    pooled = 0
    for fit in REF["fits"].values():
        # Exactly the sites whose package publishes an estimate (one without events in an arm has none, as in R;
        # one that withholds it for a suppressed count neither): R's reference for those sites.
        sites = [s for s, p in published.items()
                 if p["comparisons"][fit["comparison"]]["outcomes"][fit["outcome"]]["estimate"] is not None]
        assert set(sites) <= set(fit["sites"]), (fit["comparison"], fit["outcome"])
        for name in fit["meta"]:
            method, test = name.split("_")
            got = meta.loc[(fit["comparison"], fit["outcome"], method, test)]
            got_sites = "" if pd.isna(got["sites"]) else got["sites"]
            assert got["k"] == len(sites) and got_sites == ",".join(sorted(sites)), (fit["comparison"], name)
            if got["k"] < 2:
                assert got["note"] == "fewer than two sites with an estimate"
                continue
            pooled += 1
            expected = (fit["meta"] if got["sites"] == ",".join(fit["sites"]) else fit["meta_of_subsets"][got["sites"]])[name]
            for key in ("estimate", "se", "ci_lower", "ci_upper", "p_value", "q", "q_p", "i2", "tau2", "pi_lower", "pi_upper"):
                where = (fit["comparison"], fit["outcome"], name, key)
                if expected[key] == {}:  # R's NULL: metafor's predict() has no prediction interval for a fixed-effect model
                    assert method == "FE" and np.isnan(got[key]), where
                else:
                    assert got[key] == pytest.approx(expected[key], abs=TOL, rel=TOL), where
    assert pooled  # at least one fit is meta-analysed


def test_no_patient_key_or_fhir_id_reaches_the_exchange(consortium):
    documents = b"".join(p.read_bytes() for p in consortium.exchange.rglob("*.json"))
    assert documents.count(b'"kind":"round_reply"') >= 3 * 5  # every site answered every round
    for site in consortium.sites:
        wh = Warehouse(consortium.warehouse_url(site.site_id))
        keys = wh.read_table("cohort")["patient_key"]
        assert not any(k.encode() in documents for k in keys)
        assert b"pt-0" not in documents and b"nz-0" not in documents   # the generator's FHIR patient ids


# Where a date may stand in an exchange document: the package's own time stamp, the agreed data cut-off, and the
# contract's study window (the consortium's protocol, the same at every site). Nowhere else: no patient's date.
DATED = re.compile(r"\d{4}-\d{2}-\d{2}")
DATE_PATHS = re.compile(r"^(created_at|contract\.data_cutoff|contract\.terms\.[a-z_.]+)$")


def strings(node, path: str = ""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from strings(v, f"{path}.{k}" if path else k)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from strings(v, f"{path}.{i}")
    elif isinstance(node, str):
        yield path, node


def test_no_date_reaches_the_exchange_but_where_the_schema_puts_it(consortium):
    documents = sorted(consortium.exchange.rglob("*.json"))
    kinds = set()
    for document in documents:
        envelope = parse(document.read_bytes())
        kinds.add(envelope["payload"]["kind"])
        dated = [(path, text) for path, text in strings(envelope["payload"]) if DATED.search(text)]
        assert all(DATE_PATHS.match(path) for path, _ in dated), (document.name, dated)
        assert len(DATED.findall(document.read_text())) == len(dated), document.name   # none outside the payload
    assert kinds == {"site_aggregates", "round_request", "round_reply", "pooled_result"}


def test_a_tampered_package_and_one_under_another_contract_are_reported_not_pooled(consortium, tmp_path):
    exchange = tmp_path / "exchange"
    shutil.copytree(consortium.exchange / "aggregates", exchange / "aggregates")
    north = exchange / "aggregates" / "north.json"
    envelope = parse(north.read_bytes())
    envelope["payload"]["cohort"]["n"] += 1
    north.write_bytes(canonical_bytes(envelope))
    # central publishes a package built under a study window other than the consortium's.
    central = consortium.sites[1]
    wh = Warehouse(consortium.warehouse_url("central"))
    tables = [wh.read_table(n) for n in ("cohort", "cohort_attrition", "iptw_weights", "covariate_balance")]
    study = consortium.site_resources(central)["study"]
    params = study.retrospective_params(pd.Timestamp("2026-01-01").date())
    other = contract_terms(type(params)(window_start=params.window_start, window_end=pd.Timestamp("2021-12-31").date()))
    payload = build_site_package("central", SiteTables(*tables), terms=other, concepts=study.concepts(),
                                 data_cutoff=params.data_cutoff)
    key = load_private_key(  # the site's own key: the package is signed, only its contract differs
        str(consortium.root / "central" / "signing_key.pem"))
    (exchange / "aggregates" / "central.json").write_bytes(canonical_bytes(sign_package(payload, Signer("central", key))))

    coordinator = consortium.coordinator_resources()
    resources = {"coordinator": CoordinatorResource(exchange=str(exchange), consortium=coordinator["coordinator"].consortium,
                                                    signing_key_env=key_env("coordinator"), state_dir=str(tmp_path / "c")),
                 "warehouse": type(coordinator["warehouse"])(url=f"sqlite:///{tmp_path / 'c.sqlite'}")}
    with pytest.MonkeyPatch.context() as env:
        env.setenv(key_env("coordinator"), str(consortium.root / "coordinator" / "signing_key.pem"))
        assert dg.materialize([consortium_meta], resources=resources).success
    packages = Warehouse(f"sqlite:///{tmp_path / 'c.sqlite'}").read_table("site_packages").set_index("site_id")
    assert packages.loc["south", "status"] == "accepted"
    assert packages.loc["north", ["status", "code"]].tolist() == ["rejected", "bad_signature"]
    assert "the content was changed after signing" in packages.loc["north", "reason"]
    assert packages.loc["central", ["status", "code"]].tolist() == ["rejected", "contract_digest"]
    assert "different rule parameters" in packages.loc["central", "reason"]
    meta = Warehouse(f"sqlite:///{tmp_path / 'c.sqlite'}").read_table("meta_analysis")
    assert meta["k"].max() == 1 and set(meta["note"]) == {"fewer than two sites with an estimate"}  # south alone
