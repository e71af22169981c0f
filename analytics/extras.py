"""Beyond the paper: restricted mean survival time, E-values, and IPTW cumulative incidence with a
competing risk.

- RMST up to tau is the area under the (weighted) Kaplan-Meier curve, as R's
  ``summary(survfit(...), rmean = tau)``. Its standard error is the infinitesimal-jackknife one,
  from the same per-patient influences that give the curve's robust SE; R's ``se(rmean)`` treats
  weights as frequencies (it is the same with and without ``robust = TRUE``), so it is not used.
- E-value (VanderWeele & Ding, Ann Intern Med 2017): the minimum strength of association an
  unmeasured confounder would need with both treatment and outcome to explain the hazard ratio
  away. For a common outcome (> 15 % by the end of follow-up) the HR is first converted to an
  approximate risk ratio, (1 - 0.5^sqrt(HR)) / (1 - 0.5^sqrt(1/HR)).
- Aalen-Johansen: the cumulative incidence of each cause with IPTW case weights, as the state
  probabilities of R's multi-state ``survfit(Surv(time, factor(cause)) ~ 1, weights = w)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from .km import KaplanMeier, kaplan_meier
from .timegrid import TimeGrid


@dataclass(frozen=True)
class Rmst:
    rmst: float
    se: float


def rmst(time, event, weights=None, tau: float = 365.0) -> Rmst:
    """Area under the curve up to tau, and its SE from each patient's influence on that area: the integral of
    S(t) times their influence on log S(t), in closed form over the steps (see KaplanMeier)."""
    return rmst_of(kaplan_meier(time, event, weights), tau)


def rmst_of(km: KaplanMeier, tau: float = 365.0) -> Rmst:
    """``rmst`` from a fitted curve (one fit serves the curve table and the RMST)."""
    times = km.grid.times
    k = int(np.searchsorted(times, tau, side="right"))  # steps at or before tau
    if k == 0:
        return Rmst(rmst=float(tau), se=0.0)
    # a_j: the area of the curve's flat piece after step j (up to the next step or tau).
    a = np.zeros(len(times))
    a[:k] = km.survival[:k] * np.diff(np.append(times[:k], tau))
    area = times[0] + float(np.sum(a))
    after = np.cumsum(a[::-1])[::-1]                              # sum of a over steps >= j
    before_b = np.concatenate(([0.0], np.cumsum(a * km.b)[:-1]))  # sum of a b over steps < j
    j = km.grid.index
    influence = -km.dead_term() * after[j] + before_b[j] + km.b[j] * after[j]
    return Rmst(rmst=float(area), se=float(np.sqrt(np.sum((km.weights * influence) ** 2))))


def rmst_difference(time, event, treated, weights=None, tau: float = 365.0) -> dict[str, float]:
    t = np.asarray(treated, dtype=bool)
    w = np.ones(len(t)) if weights is None else np.asarray(weights, dtype=float)
    time, event = np.asarray(time, dtype=float), np.asarray(event, dtype=int)
    return rmst_difference_of(kaplan_meier(time[t], event[t], w[t]), kaplan_meier(time[~t], event[~t], w[~t]), tau)


def rmst_difference_of(treated: KaplanMeier, control: KaplanMeier, tau: float = 365.0) -> dict[str, float]:
    a, b = rmst_of(treated, tau), rmst_of(control, tau)
    diff, se = a.rmst - b.rmst, math.hypot(a.se, b.se)
    z = stats.norm.ppf(0.975)
    return {"rmst_treated": a.rmst, "rmst_control": b.rmst, "difference": diff, "ci_lower": diff - z * se,
            "ci_upper": diff + z * se, "p_value": float(2 * stats.norm.sf(abs(diff / se))) if se > 0 else float("nan")}


def _rr_e_value(rr: float) -> float:
    rr = 1 / rr if rr < 1 else rr
    return rr + math.sqrt(rr * (rr - 1))


def e_value(hazard_ratio: float, ci_lower: float, ci_upper: float, common_outcome: bool) -> tuple[float, float]:
    """E-values for the point estimate and for the confidence limit closest to 1 (1 if the CI crosses 1)."""
    if any(map(math.isnan, (hazard_ratio, ci_lower, ci_upper))):
        return float("nan"), float("nan")

    def to_rr(hr: float) -> float:
        return (1 - 0.5 ** math.sqrt(hr)) / (1 - 0.5 ** math.sqrt(1 / hr)) if common_outcome else hr

    point = _rr_e_value(to_rr(hazard_ratio))
    if ci_lower <= 1 <= ci_upper:
        return point, 1.0
    limit = ci_upper if hazard_ratio < 1 else ci_lower
    return point, _rr_e_value(to_rr(limit))


def aalen_johansen(time, cause, weights=None) -> pd.DataFrame:
    """Cumulative incidence of causes 1 and 2 (0 = censored) at each distinct time."""
    c = np.asarray(cause, dtype=int)
    w = np.ones(len(c)) if weights is None else np.asarray(weights, dtype=float)
    grid = TimeGrid(time)
    y = grid.at_risk(w)
    d1, d2 = grid.at(w * (c == 1)), grid.at(w * (c == 2))
    surv = np.cumprod(1 - (d1 + d2) / y)
    before = np.concatenate(([1.0], surv[:-1]))
    return pd.DataFrame({"time_days": grid.times, "cif_cause1": np.cumsum(before * d1 / y),
                         "cif_cause2": np.cumsum(before * d2 / y), "event_free": surv, "n_at_risk": y})
