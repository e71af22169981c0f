"""Log-rank tests for IPTW-weighted and unweighted comparisons.

- ``xie_liu_logrank``: the IPTW-adjusted log-rank test of Xie & Liu (2005), the contract's ``logrank_p``.
- ``iptw_logrank``: the design-based score test of R's ``survey::svylogrank`` (``logrank_p_svy``): the
  weighted total of each patient's log-rank score residual under the null (weighted Cox at beta = 0,
  Efron ties) with its with-replacement design variance. Equal to ``svylogrank(Surv(t, e) ~ g,
  svydesign(ids = ~1, weights = ~w))`` with its default method.
- ``logrank``: the classical test (R's ``survdiff``), for the unweighted prospective comparison.

The two weighted tests are different statistics and can disagree markedly in small comparisons (see
the README). lifelines' weighted logrank_test (weights_A, weights_B) treats weights as frequencies and
is used for neither.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class LogrankResult:
    score: float
    se: float
    z: float
    p_value: float


def iptw_logrank(time, event, group, weights) -> LogrankResult:
    t = np.asarray(time, dtype=float)
    d = np.asarray(event, dtype=int)
    x = np.asarray(group, dtype=float)
    w = np.asarray(weights, dtype=float)
    times = np.unique(t[d == 1])
    hazard = np.empty(len(times))
    means = np.empty(len(times))
    for j, s in enumerate(times):  # coxph.detail at beta = 0: Efron terms summed (hazard) and averaged (means)
        risk, dead = t >= s, (t == s) & (d == 1)
        ndead = int(dead.sum())
        s0, s1, e0, e1 = w[risk].sum(), (w * x)[risk].sum(), w[dead].sum(), (w * x)[dead].sum()
        fracs = np.arange(ndead) / ndead
        dens = s0 - fracs * e0
        hazard[j] = np.sum((e0 / ndead) / dens)
        means[j] = np.mean((s1 - fracs * e1) / dens)
    index = np.searchsorted(times, t)
    resid = np.zeros(len(t))
    events = d == 1
    resid[events] = x[events] - means[index[events]]
    cum_h = np.cumsum(hazard)
    cum_hm = np.cumsum(hazard * means)
    upto = np.searchsorted(times, t, side="right") - 1  # last event time <= t_i
    has = upto >= 0
    resid[has] -= x[has] * cum_h[upto[has]] - cum_hm[upto[has]]
    contributions = w * resid
    total = float(contributions.sum())
    n = len(t)
    se = float(np.sqrt(n / (n - 1) * np.sum((contributions - total / n) ** 2)))
    z = total / se
    return LogrankResult(score=total, se=se, z=z, p_value=float(2 * stats.norm.sf(abs(z))))


def logrank(time, event, group) -> LogrankResult:
    """The classical (unweighted) log-rank test, as R's ``survdiff(Surv(t, e) ~ g)``: for the
    prospective cohort, which is not weighted."""
    t = np.asarray(time, dtype=float)
    d = np.asarray(event, dtype=int)
    g = np.asarray(group, dtype=int)
    observed = expected = variance = 0.0
    for s in np.unique(t[d == 1]):
        risk = t >= s
        n, n1 = risk.sum(), (risk & (g == 1)).sum()
        dead = (t == s) & (d == 1)
        k, k1 = dead.sum(), (dead & (g == 1)).sum()
        observed += k1
        expected += k * n1 / n
        if n > 1:
            variance += k * (n - k) * n1 * (n - n1) / (n ** 2 * (n - 1))
    score = observed - expected
    se = float(np.sqrt(variance))
    z = score / se if se > 0 else float("nan")
    return LogrankResult(score=float(score), se=se, z=z, p_value=float(2 * stats.norm.sf(abs(z))) if se > 0 else float("nan"))


def xie_liu_logrank(time, event, group, weights) -> LogrankResult:
    """The adjusted log-rank test of Xie & Liu (Stat Med 2005;24:3089-3110) for IPTW weights.

    At each distinct time the weights within each group are rescaled so that the weighted risk set
    has the group's real size (n_k / sum of weights at risk); the statistic is the sum over times of
    the treated group's weighted events minus their expectation, and its variance uses the
    hypergeometric rate d(n - d) / (n(n - 1)) of the unweighted counts with the groups' sums of
    squared (rescaled) weights. As implemented in the R package IPWsurvival (``adjusted.LR``).
    """
    t = np.round(np.asarray(time, dtype=float), 4)
    d = np.asarray(event, dtype=int)
    g = np.asarray(group, dtype=int)
    w = np.asarray(weights, dtype=float)
    score = variance = 0.0
    for s in np.unique(t):
        at_risk = t >= s
        n0, n1 = float(np.sum(at_risk & (g == 0))), float(np.sum(at_risk & (g == 1)))
        n = n0 + n1
        dead = (t == s) & (d == 1)
        k = float(dead.sum())
        if k == 0:
            continue
        rate = 0.0 if n <= 1 else k * (n - k) / (n * (n - 1))
        sums = {}
        for grp, n_g in ((0, n0), (1, n1)):
            risk = at_risk & (g == grp)
            w_risk = max(float(w[risk].sum()), 1e-4)
            scale = n_g / w_risk
            sums[grp] = (float(w[dead & (g == grp)].sum()) * scale, float(np.sum(w[risk] ** 2)) * scale ** 2)
        events_w = sums[0][0] + sums[1][0]
        score += sums[1][0] - n1 * events_w / n
        variance += rate * (n0 * n0 * sums[1][1] + n1 * n1 * sums[0][1]) / (n * n)
    se = float(np.sqrt(variance))
    z = score / se if se > 0 else float("nan")
    return LogrankResult(score=float(score), se=se, z=z, p_value=float(2 * stats.norm.sf(abs(z))) if se > 0 else float("nan"))
