"""The vectorised Cox fit (analytics/cox.py) equals the per-time loop it replaced (tests/reference/cox_loop.py)
on heavily tied, weighted data, including the degenerate cases the loop guarded."""
from __future__ import annotations

import numpy as np
import pytest

from analytics import cox
from tests.reference import cox_loop


def tied_weighted(seed: int, n: int, p: int = 1, days: int = 6, event_rate: float = 0.6):
    """n patients on a few distinct days (many tied deaths), a binary first covariate, unequal weights."""
    rng = np.random.default_rng(seed)
    time = rng.integers(1, days + 1, n).astype(float)
    event = (rng.random(n) < event_rate).astype(int)
    x = np.column_stack([rng.integers(0, 2, n)] + [rng.normal(size=n) for _ in range(p - 1)]).astype(float)
    return time, event, x, rng.uniform(0.3, 5.0, n)


def outcome(call):
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 - the type is the behaviour under test
        return type(exc).__name__


@pytest.mark.parametrize("seed, n, p", [(1, 40, 1), (2, 300, 1), (3, 120, 2), (4, 25, 2), (5, 2000, 1)])
def test_likelihood_score_information_and_residuals_equal_the_loop(seed, n, p):
    time, event, x, w = tied_weighted(seed, n, p)
    ts, ds, xs, ws, order = cox_loop._sorted(time, event, x, w)
    groups = cox_loop._tie_groups(ts)
    rs = cox.risk_sets(time, event, x)
    dd = cox._deaths(rs, rs.sums(w), rs.sums(np.ones(n)))
    assert rs.n_cells < n or p > 1  # a binary covariate on six days: subjects share cells
    for beta in (np.zeros(p), np.full(p, 0.7), np.linspace(-1.2, 0.4, p)):
        loglik, score, info = cox_loop._loglik_score_info(beta, ts, ds, xs, ws, groups)
        terms = cox._efron(beta, rs, dd)
        assert terms.loglik == pytest.approx(loglik, rel=1e-12)
        np.testing.assert_allclose(terms.score, score, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(terms.info, info, rtol=1e-10)
        per_subject = np.empty((n, p))
        per_subject[order] = cox_loop._score_residuals(beta, ts, ds, xs, ws, groups)
        np.testing.assert_allclose(cox._score_residuals(beta, rs, dd, terms)[rs.cell], per_subject, rtol=1e-9, atol=1e-12)


def test_fits_equal_the_loop_on_two_hundred_tied_weighted_samples():
    """Same coefficient, variances and number of Newton steps. The step-halving test (log likelihood worse by more
    than 1e-12) sees a different rounding of the sum at convergence now and then, so the coefficients may differ in
    the last Newton refinement: far below R's own tolerance (1e-9 relative on the log likelihood) and the R tests'."""
    for seed in range(200):
        rng = np.random.default_rng(seed)
        time, event, x, w = tied_weighted(seed, int(rng.integers(10, 250)), int(rng.integers(1, 3)),
                                          days=int(rng.integers(2, 12)), event_rate=rng.uniform(0.2, 0.9))
        treated = x[:, 0] == 1
        if min(event[treated].sum(), event[~treated].sum()) == 0:
            continue  # degenerate: see the next test
        beta, naive, robust, loglik, iterations = cox_loop.fit_cox(time, event, x, w)
        fit = cox.fit_cox(time, event, x, w)
        np.testing.assert_allclose(fit.coef, beta, rtol=1e-7, atol=1e-9, err_msg=f"seed {seed}")
        np.testing.assert_allclose(fit.naive_var, naive, rtol=1e-6, err_msg=f"seed {seed}")
        np.testing.assert_allclose(fit.robust_var, robust, rtol=1e-6, atol=1e-12, err_msg=f"seed {seed}")
        assert fit.loglik == pytest.approx(loglik, rel=1e-12)
        assert fit.iterations == iterations


@pytest.mark.parametrize("case", ["no events among the treated", "no events among the controls", "no events at all",
                                  "one group only", "single death"])
def test_degenerate_cases_behave_as_the_loop_did(case):
    time, event, x, w = tied_weighted(11, 60)
    treated = x[:, 0] == 1
    if case == "no events among the treated":
        event = np.where(treated, 0, event)
    elif case == "no events among the controls":
        event = np.where(treated, event, 0)
    elif case == "no events at all":
        event = np.zeros_like(event)
    elif case == "one group only":
        x = np.ones_like(x)
    else:
        event = (np.arange(len(event)) == 3).astype(int)
    old = outcome(lambda: cox_loop.fit_cox(time, event, x, w))
    new = outcome(lambda: cox.fit_cox(time, event, x, w))
    if isinstance(old, str):
        assert new == old
    else:  # the loop returned an (infinite-in-truth) estimate: so does the vectorised fit, with the same sign
        assert not isinstance(new, str), new
        assert np.sign(new.coef[0]) == np.sign(old[0][0]) and abs(new.coef[0]) > 10 and new.iterations == old[4]


def test_the_degenerate_cases_include_each_outcome_of_the_loop():
    """The parametrised cases above are not vacuous: the loop raised for some and returned for others."""
    time, event, x, w = tied_weighted(11, 60)
    none = outcome(lambda: cox_loop.fit_cox(time, np.zeros_like(event), x, w))
    one_group = outcome(lambda: cox_loop.fit_cox(time, event, np.ones_like(x), w))
    no_treated_events = outcome(lambda: cox_loop.fit_cox(time, np.where(x[:, 0] == 1, 0, event), x, w))
    assert none == "LinAlgError" and one_group == "LinAlgError" and not isinstance(no_treated_events, str)


def test_a_warm_start_reaches_the_same_coefficient_in_fewer_steps():
    time, event, x, w = tied_weighted(21, 500)
    cold = cox.fit_cox(time, event, x, w)
    warm = cox.fit_cox(time, event, x, w, init=cold.coef + 0.05)
    assert warm.coef[0] == pytest.approx(cold.coef[0], rel=1e-8)
    assert warm.iterations < cold.iterations
    np.testing.assert_allclose(warm.robust_var, cold.robust_var, rtol=1e-7)


def test_frequencies_equal_duplicated_rows():
    """A bootstrap replicate is the sample with multiplicities: the same fit as the resampled rows themselves,
    Efron's tie count included (three copies of one death are three tied deaths)."""
    time, event, x, w = tied_weighted(31, 80)
    rng = np.random.default_rng(5)
    idx = rng.integers(0, len(time), len(time))
    resampled = cox.fit_cox(time[idx], event[idx], x[idx], w[idx], robust=False).coef
    freq = np.bincount(idx, minlength=len(time)).astype(float)
    coef = cox.cox_coefficient(cox.risk_sets(time, event, x), w * freq, freq)
    assert coef[0] == pytest.approx(resampled[0], rel=1e-9)
    assert freq.max() >= 3 and (freq == 0).any()  # the resample has both repeated and left-out patients
