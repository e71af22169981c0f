"""IPTW-weighted Kaplan-Meier curves with a variance that is valid for non-integer weights.

lifelines' ``KaplanMeierFitter(weights=...)`` treats weights as frequencies (its Greenwood
variance counts a weight of 3.2 as 3.2 patients), which understates the uncertainty of IPTW
curves. Here the variance is the infinitesimal-jackknife (robust) one, the influence of each
patient on S(t) weighted by the patient's weight, exactly as R's
``survfit(Surv(time, event) ~ 1, weights = w)`` computes it for non-integer weights; the
confidence interval is R's ``conf.type = "log-log"`` on that standard error.
"""
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
