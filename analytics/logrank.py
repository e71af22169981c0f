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

from .cox import efron_terms
from .timegrid import TimeGrid


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
    # coxph.detail at beta = 0, at each death time: Efron's terms summed (hazard) and averaged (means).
    grid = TimeGrid(t)
    dead = (d == 1).astype(float)
    n_dead = grid.at(dead)
    has = n_dead > 0
    times = grid.times[has]
    s0, s1 = grid.at_risk(w)[has], grid.at_risk(w * x)[has]
    e0, e1 = grid.at(w * dead)[has], grid.at(w * x * dead)[has]
    nd = n_dead[has]
    term, frac = efron_terms(nd)
    dens = s0[term] - frac * e0[term]
    hazard = np.bincount(term, (e0 / nd)[term] / dens, len(times))
    means = np.bincount(term, (s1[term] - frac * e1[term]) / dens, len(times)) / nd
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
    grid = TimeGrid(time)
    d = np.asarray(event, dtype=int) == 1
    g = np.asarray(group, dtype=int) == 1
    deaths = grid.at(d) > 0
    n, n1 = grid.at_risk(np.ones(len(d)))[deaths], grid.at_risk(g)[deaths]
    k, k1 = grid.at(d)[deaths], grid.at(d & g)[deaths]
    score = float(np.sum(k1) - np.sum(k * n1 / n))
    safe = np.where(n > 1, n, 2.0)
    variance = float(np.sum(np.where(n > 1, k * (n - k) * n1 * (n - n1) / (safe ** 2 * (safe - 1)), 0.0)))
    se = float(np.sqrt(variance))
    z = score / se if se > 0 else float("nan")
    return LogrankResult(score=score, se=se, z=z, p_value=float(2 * stats.norm.sf(abs(z))) if se > 0 else float("nan"))


def xie_liu_logrank(time, event, group, weights) -> LogrankResult:
    """The adjusted log-rank test of Xie & Liu (Stat Med 2005;24:3089-3110) for IPTW weights.

    At each distinct time the weights within each group are rescaled so that the weighted risk set
    has the group's real size (n_k / sum of weights at risk); the statistic is the sum over times of
    the treated group's weighted events minus their expectation, and its variance uses the
    hypergeometric rate d(n - d) / (n(n - 1)) of the unweighted counts with the groups' sums of
    squared (rescaled) weights. As implemented in the R package IPWsurvival (``adjusted.LR``).
    """
    grid = TimeGrid(np.round(np.asarray(time, dtype=float), 4))
    d = np.asarray(event, dtype=int) == 1
    g = np.asarray(group, dtype=int)
    w = np.asarray(weights, dtype=float)
    k = grid.at(d)
    deaths = k > 0  # the times with deaths
    k = k[deaths]
    rescaled = {}
    for grp in (0, 1):
        in_grp = g == grp
        n_g = grid.at_risk(in_grp)[deaths]
        scale = n_g / np.maximum(grid.at_risk(w * in_grp)[deaths], 1e-4)
        rescaled[grp] = (n_g, grid.at(w * (d & in_grp))[deaths] * scale, grid.at_risk(w * w * in_grp)[deaths] * scale ** 2)
    (n0, dead0, sq0), (n1, dead1, sq1) = rescaled[0], rescaled[1]
    n = n0 + n1
    rate = np.where(n <= 1, 0.0, k * (n - k) / np.where(n <= 1, 2.0, n * (n - 1)))
    score = float(np.sum(dead1 - n1 * (dead0 + dead1) / n))
    variance = float(np.sum(rate * (n0 * n0 * sq1 + n1 * n1 * sq0) / (n * n)))
    se = float(np.sqrt(variance))
    z = score / se if se > 0 else float("nan")
    return LogrankResult(score=float(score), se=se, z=z, p_value=float(2 * stats.norm.sf(abs(z))) if se > 0 else float("nan"))
