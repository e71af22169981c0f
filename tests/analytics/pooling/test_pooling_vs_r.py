"""Pooling across sites equals R on three committed synthetic sites: the round-based stratified IPTW Cox
model equals coxph(Surv(t, e) ~ treated + strata(site), weights = w, robust = TRUE) on the pooled rows, and
the meta-analysis of the sites' own estimates equals metafor::rma.

Reference numbers come from tests/fixtures/pooling/reference.R, run once; the suite needs no R.
"""
from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
import pandas as pd
import pytest

from analytics.cox import CoxConvergenceError, fit_cox
from analytics.pooling.meta import meta_analysis
from analytics.pooling.stratified_cox import (
    NewtonState,
    StratumTerms,
    fit_rounds,
    newton_start,
    newton_update,
    site_meat,
    site_terms,
    stratified_cox,
)
from analytics.propensity import fit_propensity, iptw_weights
from tests.paths import FIXTURES

HERE = FIXTURES / "pooling"
REF = json.loads((HERE / "reference.json").read_text())
SITES = ("north", "central", "south")
AGENTS = {"tacrolimus_vs_conventional": None, "tacrolimus_vs_CTX": "CTX"}
OUTCOMES = ("death", "relapse", "resp_relapse")
CASES = [(c, o) for c in AGENTS for o in OUTCOMES]
TOL = 1e-6


@lru_cache(maxsize=None)
def site_rows(site: str, comparison: str) -> pd.DataFrame:
    """A site's rows of one comparison with the weights of its own propensity model."""
    d = pd.read_csv(HERE / f"site_{site}.csv", keep_default_na=False)
    agent = AGENTS[comparison]
    if agent is not None:
        d = d[(d["group"] == "tacrolimus") | (d["conventional_agent"] == agent)].reset_index(drop=True)
    treated = d["group"].eq("tacrolimus")
    return d.assign(treated=treated.astype(int), w=iptw_weights(treated, fit_propensity(d, treated).scores)["weight"])


def arrays(d: pd.DataFrame, outcome: str):
    return d[f"{outcome}_days"].to_numpy(), d[f"{outcome}_event"].to_numpy(), d["treated"].to_numpy(), d["w"].to_numpy()


def assert_summary(fit, ref):
    got = fit.summary()[0]
    for key in ("coef", "robust_se", "hazard_ratio", "ci_lower", "ci_upper", "p_value"):
        assert got[key] == pytest.approx(ref[key], abs=TOL, rel=TOL), key


def test_sites_propensity_scores_equal_glm():
    for comparison in AGENTS:
        for site in SITES:
            d = site_rows(site, comparison)
            ps = np.where(d["treated"] == 1, 1 / d["w"], 1 - 1 / d["w"])
            np.testing.assert_allclose(ps, REF["comparisons"][comparison]["propensity_score"][site], atol=1e-9)


@pytest.mark.parametrize(("comparison", "outcome"), CASES)
def test_round_based_stratified_cox_equals_coxph_strata(comparison, outcome):
    ref = REF["comparisons"][comparison]["outcomes"][outcome]["pooled"]
    sites = {s: arrays(site_rows(s, comparison), outcome) for s in SITES}
    fit, state = fit_rounds(lambda beta: [site_terms(*rows, beta) for rows in sites.values()],
                            lambda beta: [site_meat(*rows, beta) for rows in sites.values()])
    assert_summary(fit, ref)
    assert float(np.sqrt(fit.naive_var[0, 0])) == pytest.approx(ref["se"], abs=TOL, rel=TOL)
    assert (state.loglik, state.loglik_null) == pytest.approx((ref["loglik"], ref["loglik_null"]), abs=TOL, rel=TOL)
    assert state.iteration == ref["iterations"]  # coxfit6's loop, step for step


@pytest.mark.parametrize(("comparison", "outcome"), CASES)
def test_sites_own_estimates_equal_coxph(comparison, outcome):
    for site in SITES:
        time, event, treated, w = arrays(site_rows(site, comparison), outcome)
        assert_summary(fit_cox(time, event, treated, w), REF["comparisons"][comparison]["outcomes"][outcome]["sites"][site])


@lru_cache(maxsize=None)
def own_estimates(comparison: str, outcome: str) -> tuple[list[float], list[float]]:
    fits = [fit_cox(*arrays(site_rows(s, comparison), outcome)) for s in SITES]
    return [float(f.coef[0]) for f in fits], [float(f.robust_se[0]) for f in fits]


@pytest.mark.parametrize(("comparison", "outcome"), CASES)
@pytest.mark.parametrize("method", ["FE", "DL", "REML"])
@pytest.mark.parametrize("test", ["z", "knha"])
def test_meta_analysis_equals_metafor(comparison, outcome, method, test):
    yi, sei = own_estimates(comparison, outcome)
    got = meta_analysis(yi, sei, method=method, test=test).to_dict()
    ref = REF["comparisons"][comparison]["outcomes"][outcome]["meta"][f"{method}_{test}"]
    if method == "FE":  # metafor's predict() has no prediction interval for a fixed-effect model
        assert ref["pi_lower"] == ref["pi_upper"] == {} and np.isnan([got["pi_lower"], got["pi_upper"]]).all()
        ref = {k: v for k, v in ref.items() if not k.startswith("pi_")}
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, abs=TOL, rel=TOL), key


@pytest.mark.parametrize(("comparison", "outcome"), CASES)
def test_reml_to_the_root_equals_metafor_with_a_tight_threshold(comparison, outcome):
    yi, sei = own_estimates(comparison, outcome)
    got = meta_analysis(yi, sei, method="REML", reml_threshold=1e-12).to_dict()
    ref = REF["comparisons"][comparison]["outcomes"][outcome]["meta"]["REML_exact_z"]
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, abs=TOL, rel=TOL), key


def test_metafor_default_stopping_rule_is_reproduced_not_only_the_root():
    """Where metafor's default (stop at a tau^2 change <= 1e-5) is not the root, the default result is metafor's."""
    yi, sei = own_estimates("tacrolimus_vs_CTX", "death")
    ref = REF["comparisons"]["tacrolimus_vs_CTX"]["outcomes"]["death"]["meta"]
    assert ref["REML_z"]["tau2"] > 1e-6 > ref["REML_exact_z"]["tau2"]
    assert meta_analysis(yi, sei, method="REML").tau2 == pytest.approx(ref["REML_z"]["tau2"], abs=1e-9)


def test_stratified_cox_on_rows_in_one_place_equals_the_rounds():
    comparison, outcome = "tacrolimus_vs_conventional", "relapse"
    parts = [site_rows(s, comparison).assign(site=s) for s in SITES]
    pooled = pd.concat(parts, ignore_index=True)
    fit = stratified_cox(pooled[f"{outcome}_days"], pooled[f"{outcome}_event"], pooled["treated"], pooled["w"], pooled["site"])
    assert_summary(fit, REF["comparisons"][comparison]["outcomes"][outcome]["pooled"])


def test_one_stratum_is_the_unstratified_model():
    d = site_rows("central", "tacrolimus_vs_conventional")
    time, event, treated, w = arrays(d, "death")
    one = stratified_cox(time, event, treated, w, np.zeros(len(d)))
    ref = fit_cox(time, event, treated, w)
    np.testing.assert_allclose([one.coef[0], one.robust_se[0]], [ref.coef[0], ref.robust_se[0]], rtol=1e-9)


def test_newton_state_survives_a_json_round_trip_between_rounds():
    sites = {s: arrays(site_rows(s, "tacrolimus_vs_CTX"), "death") for s in SITES}
    state = newton_start()
    while not state.done:
        replies = [StratumTerms.from_dict(json.loads(json.dumps(site_terms(*r, state.proposal).to_dict())))
                   for r in sites.values()]
        state = NewtonState.from_dict(json.loads(json.dumps(newton_update(state, replies).to_dict())))
    ref = REF["comparisons"]["tacrolimus_vs_CTX"]["outcomes"]["death"]["pooled"]
    assert state.beta[0] == pytest.approx(ref["coef"], abs=TOL)


def test_likelihood_that_falls_is_halved_back_as_coxph_does():
    """Started far out (beta = 8), the first Newton step overshoots; the loop halves back (slowly: more rounds
    than coxph's default 20) and still lands on R's estimate."""
    sites = {s: arrays(site_rows(s, "tacrolimus_vs_conventional"), "death") for s in SITES}
    state = newton_start(init=[8.0])
    halvings = 0
    while not state.done:
        state = newton_update(state, [site_terms(*r, state.proposal) for r in sites.values()], max_iter=60)
        halvings += state.halving
    assert halvings > 0
    assert state.beta[0] == pytest.approx(REF["comparisons"]["tacrolimus_vs_conventional"]["outcomes"]["death"]["pooled"]["coef"],
                                          abs=TOL)


def test_no_events_anywhere_is_a_clear_error():
    rows = (np.array([5, 9, 12]), np.zeros(3, dtype=int), np.array([0, 1, 1]), np.ones(3))
    with pytest.raises(CoxConvergenceError, match="singular"):
        newton_update(newton_start(), [site_terms(*rows, np.zeros(1))])


def test_meta_analysis_rejects_what_it_cannot_pool():
    with pytest.raises(ValueError, match="k >= 2"):
        meta_analysis([0.1], [0.2])
    with pytest.raises(ValueError, match="finite positive"):
        meta_analysis([0.1, float("inf")], [0.2, 0.3])
    with pytest.raises(ValueError, match="method"):
        meta_analysis([0.1, 0.2], [0.2, 0.3], method="PM")


def test_forest_plot_draws_sites_pools_and_the_stratified_estimate():
    from analytics.pooling.forest import forest_plot

    yi, sei = own_estimates("tacrolimus_vs_conventional", "death")
    ref = REF["comparisons"]["tacrolimus_vs_conventional"]["outcomes"]["death"]["pooled"]
    png = forest_plot(list(SITES), yi, sei, "tacrolimus vs conventional: death",
                      stratified=(ref["hazard_ratio"], ref["ci_lower"], ref["ci_upper"]))
    one_site = forest_plot(["north"], yi[:1], sei[:1], "one site: no pooled rows")
    assert png.startswith(b"\x89PNG") and one_site.startswith(b"\x89PNG") and len(png) > len(one_site)
