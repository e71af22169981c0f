"""The per-time loops of analytics/km.py, logrank.py and extras.py before they were vectorised (issue 16), kept only
as a reference: tests/analytics/test_survival_vectorised.py checks that the vectorised estimators equal them. Verbatim from
e5f18fd."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pandas as pd
from scipy import stats

CURVE_COLUMNS = ["time_days", "survival", "ci_lower", "ci_upper", "n_at_risk", "n_events", "std_err"]


@dataclass(frozen=True)
class KmStep:
    time: float
    n_at_risk: float          # weighted
    n_events: float           # weighted
    survival: float           # S just after ``time``
    influence: np.ndarray     # d log S / d w_i just after ``time`` (a fresh array each step)
    greenwood: float          # sum of d / (Y (Y - d)) so far


def km_steps(time, event, weights=None) -> Iterator[KmStep]:
    """The weighted product-limit recursion, one step per distinct observed time, with each patient's
    influence on log S: the one place the curve, its robust variance and the RMST come from."""
    t = np.asarray(time, dtype=float)
    d = np.asarray(event, dtype=int)
    w = np.ones(len(t)) if weights is None else np.asarray(weights, dtype=float)
    influence = np.zeros(len(t))
    greenwood, surv = 0.0, 1.0
    for s in np.unique(t):
        at_risk = t >= s
        dies = (t == s) & (d == 1)
        y, dn = float(w[at_risk].sum()), float(w[dies].sum())
        if dn > 0:
            h = dn / y
            if h < 1:
                influence = influence - (dies.astype(float) - h * at_risk) / y / (1 - h)
            greenwood += dn / (y * (y - dn)) if y > dn else np.inf
            surv *= 1 - h
        yield KmStep(float(s), y, dn, surv, influence, greenwood)


def weighted_km(time, event, weights=None, alpha: float = 0.05, variance: str = "robust") -> pd.DataFrame:
    """One row per distinct observed time (events or censorings), as R's survfit reports them.

    ``n_at_risk`` and ``n_events`` are weighted counts; ``std_err`` is the standard error of S(t):
    robust (infinitesimal jackknife, for IPTW weights), or ``variance="greenwood"`` for unweighted
    data (R's default there).
    """
    if variance not in ("robust", "greenwood"):
        raise ValueError(f"variance must be 'robust' or 'greenwood', not {variance!r}")
    w = np.ones(len(np.asarray(time))) if weights is None else np.asarray(weights, dtype=float)
    z = stats.norm.ppf(1 - alpha / 2)
    rows = []
    for step in km_steps(time, event, w):
        surv = step.survival
        se_log = (float(np.sqrt(np.sum((w * step.influence) ** 2))) if variance == "robust"
                  else float(np.sqrt(step.greenwood)))
        se = surv * se_log if np.isfinite(se_log) else np.nan  # Greenwood is infinite once everyone has died
        if 0 < surv < 1 and se > 0:
            # log-log: CI for log(-log S) with se(log S) / |log S|.
            loglog, se_ll = np.log(-np.log(surv)), (se / surv) / abs(np.log(surv))
            lower, upper = np.exp(-np.exp(loglog + z * se_ll)), np.exp(-np.exp(loglog - z * se_ll))
        else:  # no event yet, or no survivors: R reports no interval
            lower, upper = np.nan, np.nan
        rows.append({"time_days": step.time, "survival": surv, "ci_lower": lower, "ci_upper": upper,
                     "n_at_risk": step.n_at_risk, "n_events": step.n_events, "std_err": se})
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


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


@dataclass(frozen=True)
class Rmst:
    rmst: float
    se: float


def rmst(time, event, weights=None, tau: float = 365.0) -> Rmst:
    w = np.ones(len(np.asarray(time))) if weights is None else np.asarray(weights, dtype=float)
    surv, last, area = 1.0, 0.0, 0.0
    influence_log = np.zeros(len(w))   # d log S / d w_i on the current step of the curve
    influence_area = np.zeros(len(w))  # d RMST / d w_i accumulated: S(t) d log S / d w_i, integrated
    for step in km_steps(time, event, w):
        if step.time > tau:
            break
        area += surv * (step.time - last)
        influence_area += surv * influence_log * (step.time - last)
        last, surv, influence_log = step.time, step.survival, step.influence
    area += surv * (tau - last)
    influence_area += surv * influence_log * (tau - last)
    return Rmst(rmst=float(area), se=float(np.sqrt(np.sum((w * influence_area) ** 2))))


def aalen_johansen(time, cause, weights=None) -> pd.DataFrame:
    """Cumulative incidence of causes 1 and 2 (0 = censored) at each distinct time."""
    t = np.asarray(time, dtype=float)
    c = np.asarray(cause, dtype=int)
    w = np.ones(len(t)) if weights is None else np.asarray(weights, dtype=float)
    surv, cif1, cif2 = 1.0, 0.0, 0.0
    rows = []
    for s in np.unique(t):
        y = w[t >= s].sum()
        d1, d2 = w[(t == s) & (c == 1)].sum(), w[(t == s) & (c == 2)].sum()
        cif1 += surv * d1 / y
        cif2 += surv * d2 / y
        surv *= 1 - (d1 + d2) / y
        rows.append({"time_days": s, "cif_cause1": cif1, "cif_cause2": cif2, "event_free": surv, "n_at_risk": y})
    return pd.DataFrame(rows)
