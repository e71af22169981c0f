"""The PS-refit bootstrap (analytics.bootstrap): a replicate is the resampled cohort refitted from scratch, and the
result does not depend on how many processes share the replicates."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from analytics import bootstrap
from analytics.cox import fit_cox
from analytics.propensity import fit_propensity, iptw_weights
from tests.paths import STATS_FIXTURES

HERE = STATS_FIXTURES
OUTCOMES = ("death", "relapse", "resp_relapse")
SEED = 20210214


@pytest.fixture(scope="module")
def paper():
    frame = pd.read_csv(HERE / "paper.csv")
    treated = frame["group"].eq("tacrolimus")
    fit = fit_propensity(frame, treated)
    w = iptw_weights(treated, fit.scores)["weight"]
    starts = {o: fit_cox(frame[f"{o}_days"], frame[f"{o}_event"], treated.astype(int), w, robust=False).coef[0]
              for o in OUTCOMES}
    problem = bootstrap.BootstrapProblem.build(fit.design, treated, fit.coefficients[fit.design.columns],
                                               {o: (frame[f"{o}_days"], frame[f"{o}_event"], starts[o]) for o in OUTCOMES})
    return frame, treated, problem


@pytest.mark.parametrize("r", [0, 1, 7, 123])
def test_a_replicate_is_the_resampled_cohort_refitted_from_scratch(paper, r):
    """The replicate's draws, propensity refit (statsmodels, from zero) and Cox refits (from zero) on the resampled
    rows themselves give the hazard ratios that the multiplicity form with warm starts gives."""
    frame, treated, problem = paper
    rng = np.random.default_rng(np.random.SeedSequence(SEED, spawn_key=(r,)))
    idx = rng.integers(0, len(frame), len(frame))
    f, t = frame.iloc[idx].reset_index(drop=True), treated.iloc[idx].reset_index(drop=True)
    w = iptw_weights(t, fit_propensity(f, t).scores)["weight"]
    got = bootstrap.replicate(problem, SEED, r)
    assert set(got) == set(OUTCOMES)
    for o in OUTCOMES:
        expected = math.exp(fit_cox(f[f"{o}_days"], f[f"{o}_event"], t.astype(int), w, robust=False).coef[0])
        assert got[o] == pytest.approx(expected, rel=1e-7), o


def test_results_do_not_depend_on_the_number_of_workers(paper):
    _, _, problem = paper
    serial = bootstrap.run(problem, 24, SEED, n_jobs=1)
    pooled = bootstrap.run(problem, 24, SEED, n_jobs=2)
    assert serial == pooled
    assert all(len(v) == 24 for v in serial.values())


def test_a_replicate_without_both_groups_is_skipped_and_so_is_an_outcome_without_events_in_a_group():
    design = pd.DataFrame({"const": 1.0, "age": [40.0, 50.0, 60.0, 70.0, 45.0, 55.0]})
    treated = pd.Series([True, False, True, False, True, False])
    time, event = [5, 6, 7, 8, 9, 10], [1, 1, 0, 0, 0, 0]
    problem = bootstrap.BootstrapProblem.build(design, treated, [0.0, 0.0], {"death": (time, event, 0.0)})
    outcomes = [bootstrap.replicate(problem, 3, r) for r in range(200)]
    assert {} in outcomes  # some resamples lack a group (both deaths drawn in one arm, or one arm only)
    assert all(set(o) <= {"death"} for o in outcomes)


@pytest.mark.filterwarnings("ignore:The design matrix is rank-deficient")
def test_the_logistic_refit_equals_statsmodels_with_frequency_weights_and_collinear_columns():
    rng = np.random.default_rng(3)
    n = 400
    age = rng.normal(50, 10, n)
    male = (rng.random(n) < 0.4).astype(float)
    X = np.column_stack([np.ones(n), age, male, male])  # the last two are the same column
    y = (rng.random(n) < 1 / (1 + np.exp(-(-2 + 0.04 * age + 0.5 * male)))).astype(float)
    freq = rng.integers(0, 4, n).astype(float)
    coef = bootstrap.fit_logistic(X, y, freq, np.zeros(4))
    ref = sm.GLM(y, X, family=sm.families.Binomial(), freq_weights=freq).fit()
    np.testing.assert_allclose(X @ coef, X @ ref.params, rtol=1e-8, atol=1e-8)


def test_n_jobs_must_be_a_number_of_processes():
    with pytest.raises(ValueError, match="n_jobs"):
        bootstrap.run(bootstrap.BootstrapProblem.build(np.ones((2, 1)), [True, False], [0.0], {}), 5, 1, n_jobs=0)
