"""IPTW-weighted Cox proportional hazards model with a robust (sandwich) variance.

The model has the treatment indicator as its only covariate and the IPTW as case weights, like
R's ``coxph(Surv(time, event) ~ treated, weights = w, robust = TRUE)`` with Efron ties.
lifelines fits the same coefficient; its robust standard error equals R's when event times are
untied and drifts a little with heavy ties (issue 5 replaces this with a fit checked against R).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import pandas as pd
from scipy import stats


@dataclass(frozen=True)
class CoxEstimate:
    hazard_ratio: float
    ci_lower: float
    ci_upper: float
    p_value: float
    n_treated: int
    n_control: int
    events_treated: int
    events_control: int


def weighted_cox(durations: pd.Series, events: pd.Series, treated: pd.Series, weights: pd.Series,
                 alpha: float = 0.05) -> CoxEstimate:
    """Hazard ratio treated vs control with a robust CI and Wald p; NaN when there is nothing to estimate."""
    from lifelines import CoxPHFitter  # imported here: lifelines is slow to import and only needed for fitting

    t = treated.astype(int)
    e = events.astype(int)
    counts = dict(n_treated=int(t.sum()), n_control=int((1 - t).sum()),
                  events_treated=int(e[t == 1].sum()), events_control=int(e[t == 0].sum()))
    if counts["n_treated"] == 0 or counts["n_control"] == 0 or e.sum() == 0 or \
            counts["events_treated"] == 0 or counts["events_control"] == 0:
        # A group with no events has an infinite or zero hazard ratio: report it as not estimable.
        return CoxEstimate(math.nan, math.nan, math.nan, math.nan, **counts)
    df = pd.DataFrame({"time": durations.astype(float).clip(lower=0), "event": e, "treated": t,
                       "w": weights.astype(float)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lifelines warns that non-integer weights need robust=True, which we use
        fit = CoxPHFitter().fit(df, duration_col="time", event_col="event", weights_col="w", robust=True)
    coef = float(fit.params_["treated"])
    se = float(fit.standard_errors_["treated"])
    z = stats.norm.ppf(1 - alpha / 2)
    return CoxEstimate(hazard_ratio=math.exp(coef), ci_lower=math.exp(coef - z * se), ci_upper=math.exp(coef + z * se),
                       p_value=float(2 * stats.norm.sf(abs(coef / se))), **counts)
