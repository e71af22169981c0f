"""From cohort tables to the contract's result tables (analytics.comparisons, analytics.figures)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analytics.balance import kish_ess, standardized_differences
from analytics.comparisons import RETROSPECTIVE_COMPARISONS, study_results
from analytics.figures import km_plot, love_plot, ps_overlap
from tests.paths import STATS_FIXTURES

HERE = STATS_FIXTURES
REF = json.loads((HERE / "reference.json").read_text())


@pytest.fixture(scope="module")
def results():
    cohort = pd.read_csv(HERE / "paper.csv").rename(columns={"id": "patient_key"})
    cohort["conventional_agent"] = cohort["conventional_agent"].where(cohort["conventional_agent"].notna(), None)
    return study_results(cohort)


def test_primary_estimates_equal_r_for_every_comparison_and_outcome(results):
    effects = results.effect_estimates.set_index(["analysis", "comparison", "outcome"])
    for comparison in RETROSPECTIVE_COMPARISONS:
        for outcome in ("death", "relapse", "resp_relapse"):
            ref = REF["paper"][comparison][outcome]
            row = effects.loc[("primary", comparison, outcome)]
            assert row["hazard_ratio"] == pytest.approx(ref["cox"]["hazard_ratio"], abs=1e-6, rel=1e-6)
            assert (row["ci_lower"], row["ci_upper"]) == pytest.approx((ref["cox"]["ci_lower"], ref["cox"]["ci_upper"]), abs=1e-6, rel=1e-6)
            assert row["logrank_p"] == pytest.approx(ref["xie_liu_p"], abs=1e-6)
            assert row["logrank_p_svy"] == pytest.approx(ref["logrank_p"], abs=1e-6)


def test_sensitivity_analyses_use_their_own_weights(results):
    effects = results.effect_estimates
    assert set(effects["analysis"]) == {"primary", "stabilized", "truncated_1_99"}
    hr = effects.set_index(["analysis", "comparison", "outcome"])["hazard_ratio"]
    assert hr["truncated_1_99", "tacrolimus_vs_conventional", "death"] != hr["primary", "tacrolimus_vs_conventional", "death"]


def test_weights_balance_and_curves_cover_every_comparison(results):
    assert set(results.iptw_weights["analysis"]) == set(RETROSPECTIVE_COMPARISONS)
    balance = results.covariate_balance[results.covariate_balance["analysis"] == "tacrolimus_vs_conventional"]
    assert (balance["smd_weighted"].abs() < 0.1).all()  # IPTW balances the paper's covariates
    assert (balance["smd_unweighted"].abs().max() > 0.1)  # which were imbalanced: the generator confounds them
    curves = results.survival_curves
    assert set(curves["group"]) == {"tacrolimus", "conventional", "CTX", "MTX", "AZA"}
    diag = results.diagnostics["tacrolimus_vs_conventional"]
    assert diag["c_statistic"] > 0.5
    assert 1 <= diag["weight_min_treated"] <= diag["weight_median_treated"] <= diag["weight_max_treated"]
    assert 0 < diag["ess_treated"] <= (results.iptw_weights["analysis"] == "tacrolimus_vs_conventional").sum()


def test_bootstrap_is_seeded_and_surrounds_the_estimate():
    cohort = pd.read_csv(HERE / "paper.csv").rename(columns={"id": "patient_key"})
    a = study_results(cohort, bootstrap_replicates=30, seed=1).effect_estimates
    b = study_results(cohort, bootstrap_replicates=30, seed=1).effect_estimates
    boot = a[a["analysis"] == "bootstrap"]
    pd.testing.assert_frame_equal(boot, b[b["analysis"] == "bootstrap"])
    assert set(boot["comparison"]) == {"tacrolimus_vs_conventional"}
    assert (boot["ci_lower"] < boot["hazard_ratio"]).all() and (boot["hazard_ratio"] < boot["ci_upper"]).all()


def test_extras_tables(results):
    rmst = results.rmst_differences.set_index(["comparison", "outcome"])
    assert rmst.loc[("tacrolimus_vs_conventional", "death"), "difference"] > 0  # tacrolimus patients live longer
    e = results.e_values
    assert (e.loc[e["hazard_ratio"].notna(), "e_value_point"] >= 1).all()
    cif = results.cumulative_incidence
    assert ((cif["cif_relapse"] + cif["cif_death_without_relapse"]) <= 1 + 1e-12).all()


def test_smd_uses_the_unweighted_pooled_sd_for_both_columns():
    design = pd.DataFrame({"const": 1.0, "age": [40.0, 50.0, 60.0, 70.0], "ivig": [1.0, 0.0, 1.0, 1.0]})
    treated = pd.Series([True, True, False, False])
    smd = standardized_differences(design, treated, pd.Series([1.0, 3.0, 1.0, 1.0])).set_index("covariate")
    sd_age = np.sqrt((np.var([40, 50], ddof=1) + np.var([60, 70], ddof=1)) / 2)
    assert smd.loc["age", "smd_unweighted"] == pytest.approx((45 - 65) / sd_age)
    assert smd.loc["age", "smd_weighted"] == pytest.approx((47.5 - 65) / sd_age)
    assert smd.loc["ivig", "smd_unweighted"] == pytest.approx((0.5 - 1.0) / np.sqrt((0.25 + 0) / 2))
    assert kish_ess(pd.Series([1.0, 1.0, 2.0])) == pytest.approx(16 / 6)


def test_figures_are_png_images(results):
    curves = results.survival_curves
    one = curves[(curves["comparison"] == "tacrolimus_vs_conventional") & (curves["outcome"] == "death")]
    balance = results.covariate_balance[results.covariate_balance["analysis"] == "tacrolimus_vs_conventional"]
    weights = results.iptw_weights[results.iptw_weights["analysis"] == "tacrolimus_vs_conventional"]
    for png in (km_plot(one, "death", logrank_p=0.01, hazard_ratio=(0.4, 0.2, 0.7)), love_plot(balance, "balance"),
                ps_overlap(weights["propensity_score"], weights["weight"] > 0, "overlap")):
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
