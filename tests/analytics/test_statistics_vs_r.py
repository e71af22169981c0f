"""The study statistics equal R's (survival 3.5, survey 4.1) on committed fixtures.

Reference numbers come from tests/fixtures/stats/reference.R, run once; the suite needs no R.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analytics.cox import fit_cox
from analytics.km import weighted_km
from analytics.logrank import iptw_logrank, logrank, xie_liu_logrank
from analytics.propensity import fit_propensity, iptw_weights
from tests.paths import STATS_FIXTURES

HERE = STATS_FIXTURES
REF = json.loads((HERE / "reference.json").read_text())
TOL = 1e-6


def assert_cox(time, event, treated, w, ref):
    got = fit_cox(time, event, treated, w).summary()[0]
    for key in ("coef", "robust_se", "hazard_ratio", "ci_lower", "ci_upper", "p_value"):
        assert got[key] == pytest.approx(ref[key], abs=TOL, rel=TOL), key


def assert_km(time, event, w, ref, variance="robust"):
    got = weighted_km(time, event, w, variance=variance)
    assert list(got["time_days"]) == pytest.approx(ref["time"])
    for col, key in (("survival", "surv"), ("ci_lower", "lower"), ("ci_upper", "upper"), ("n_at_risk", "n_risk"),
                     ("n_events", "n_event"), ("std_err", "std_err")):
        expected = np.array([np.nan if v in (None, "NA") else v for v in ref[key]], dtype=float)
        np.testing.assert_allclose(got[col].to_numpy(dtype=float), expected, atol=TOL, rtol=TOL, err_msg=col)


def test_small_dataset_with_heavy_ties():
    d = pd.read_csv(HERE / "small.csv")
    ref = REF["small"]
    assert_cox(d.time, d.event, d.treated, d.w, ref["cox"])
    assert iptw_logrank(d.time, d.event, d.treated, d.w).p_value == pytest.approx(ref["logrank_p"], abs=TOL)
    assert xie_liu_logrank(d.time, d.event, d.treated, d.w).p_value == pytest.approx(ref["xie_liu_p"], abs=TOL)
    for arm, flag in (("treated", 1), ("control", 0)):
        g = d[d.treated == flag]
        assert_km(g.time, g.event, g.w, ref["km"][arm])


def test_unweighted_cox_and_classical_logrank():
    d = pd.read_csv(HERE / "small.csv")
    ref = REF["small_unweighted"]
    got = fit_cox(d.time, d.event, d.treated).summary(robust=False)[0]
    assert (got["coef"], got["se"], got["p_value"]) == pytest.approx((ref["coef"], ref["se"], ref["p_value"]), abs=TOL)
    assert logrank(d.time, d.event, d.treated).p_value == pytest.approx(ref["logrank_p"], abs=TOL)
    # With unit weights Xie & Liu's test is the classical log-rank test.
    ones = pd.Series(1.0, index=d.index)
    assert xie_liu_logrank(d.time, d.event, d.treated, ones).p_value == pytest.approx(ref["logrank_p"], abs=TOL)
    g = d[d.treated == 1]
    assert_km(g.time, g.event, None, ref["km_treated"], variance="greenwood")


@pytest.mark.parametrize("comparison", ["tacrolimus_vs_conventional", "tacrolimus_vs_CTX", "tacrolimus_vs_MTX",
                                        "tacrolimus_vs_AZA"])
def test_paper_size_cohort(comparison):
    paper = pd.read_csv(HERE / "paper.csv")
    ref = REF["paper"][comparison]
    agent = comparison.split("_vs_")[1]
    d = paper if agent == "conventional" else paper[(paper.group == "tacrolimus") | (paper.conventional_agent == agent)]
    d = d.set_index("id").loc[ref["ids"]]
    treated = d.group.eq("tacrolimus")
    ps = fit_propensity(d, treated).scores
    np.testing.assert_allclose(ps.to_numpy(), ref["propensity_score"], atol=TOL, rtol=TOL)
    w = iptw_weights(treated, ps)["weight"]
    for outcome in ("death", "relapse", "resp_relapse"):
        r = ref[outcome]
        time, event = d[f"{outcome}_days"], d[f"{outcome}_event"]
        assert_cox(time, event, treated.astype(int), w, r["cox"])
        assert iptw_logrank(time, event, treated.astype(int), w).p_value == pytest.approx(r["logrank_p"], abs=TOL)
        assert xie_liu_logrank(time, event, treated.astype(int), w).p_value == pytest.approx(r["xie_liu_p"], abs=TOL)
        for arm, flag in (("treated", True), ("control", False)):
            m = treated == flag
            assert_km(time[m], event[m], w[m], r["km"][arm])


def test_lifelines_gives_the_same_coefficient_but_not_the_same_robust_se_with_ties():
    """Why analytics/cox.py exists: lifelines' weighted coefficient equals R's, its robust SE does not with ties."""
    import warnings

    from lifelines import CoxPHFitter

    d = pd.read_csv(HERE / "small.csv")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = CoxPHFitter().fit(d[["time", "event", "treated", "w"]], "time", "event", weights_col="w", robust=True)
    ref = REF["small"]["cox"]
    assert fit.params_["treated"] == pytest.approx(ref["coef"], abs=1e-5)
    assert abs(fit.standard_errors_["treated"] - ref["robust_se"]) > 0.01


def test_the_r_datasets_are_what_the_pipeline_derives_from_the_messy_synthetic_hospital():
    """The R references hold for the *right* cohort: the committed datasets are re-derived here from the
    synthetic hospital, which writes a seeded share of its FHIR in other legal shapes (synthetic/variants.py),
    and its respiratory relapses equal the generator's truth (issue 12: they were lost by a position-based read)."""
    import io

    from synthetic.hospital import generate_hospital
    from tests.fixtures.stats.make_datasets import synthetic_tables

    for name, frame in synthetic_tables().items():
        buffer = io.StringIO()
        frame.to_csv(buffer, index=False)
        derived = pd.read_csv(io.StringIO(buffer.getvalue()))
        committed = pd.read_csv(HERE / f"{name}.csv")
        pd.testing.assert_frame_equal(derived, committed, obj=name)
    truth = [t for t in generate_hospital().truth if t["retro_reason"] is None]
    paper = pd.read_csv(HERE / "paper.csv")
    for outcome in ("death_event", "relapse_event", "resp_relapse_event"):
        assert paper[outcome].sum() == sum(t[outcome] for t in truth), outcome
