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

import numpy as np
import pandas as pd
from scipy import stats

from .timegrid import TimeGrid

CURVE_COLUMNS = ["time_days", "survival", "ci_lower", "ci_upper", "n_at_risk", "n_events", "std_err"]


@dataclass(frozen=True)
class KaplanMeier:
    """The weighted product-limit estimate at each distinct observed time, with what each patient's influence on
    log S needs: the one place the curve, its robust variance and the RMST come from.

    Patient i (weight w_i, time index tau_i) influences log S after step j by
    -([i died and tau_i <= j] c[tau_i] - b[min(j, tau_i)]), with c = 1 / (Y (1 - h)) at steps with deaths and
    h = dN / Y < 1 (0 elsewhere) and b = cumsum(h c): the recursion influence -= (dies - h at_risk) / Y / (1 - h),
    summed in closed form so that nothing is done per patient per step.
    """
    grid: TimeGrid
    n_at_risk: np.ndarray    # weighted
    n_events: np.ndarray     # weighted
    survival: np.ndarray     # S just after each time
    greenwood: np.ndarray    # sum of d / (Y (Y - d)) so far
    c: np.ndarray
    b: np.ndarray
    died: np.ndarray         # per patient
    weights: np.ndarray      # per patient

    def dead_term(self) -> np.ndarray:
        """Per patient: c at their own time if they died there, else 0."""
        return np.where(self.died, self.c[self.grid.index], 0.0)

    def robust_var_log(self) -> np.ndarray:
        """sum_i (w_i * influence_i(j))^2 at each step j: patients still at risk after j contribute w^2 b_j^2,
        the others a fixed (w (dead term - b at their time))^2."""
        w2 = self.weights ** 2
        still = np.append(self.grid.at_risk(w2)[1:], 0.0)  # time > this step
        gone = self.grid.at(w2 * (self.dead_term() - self.b[self.grid.index]) ** 2)
        return self.b ** 2 * still + np.cumsum(gone)


def kaplan_meier(time, event, weights=None) -> KaplanMeier:
    t = np.asarray(time, dtype=float)
    died = np.asarray(event, dtype=int) == 1
    w = np.ones(len(t)) if weights is None else np.asarray(weights, dtype=float)
    grid = TimeGrid(t)
    y, dn = grid.at_risk(w), grid.at(w * died)
    events = dn > 0
    h = np.where(events, dn / y, 0.0)
    with np.errstate(divide="ignore"):
        c = np.where(events & (h < 1), 1 / (y * (1 - h)), 0.0)
        greenwood = np.cumsum(np.where(events, np.where(y > dn, dn / (y * (y - dn)), np.inf), 0.0))
    return KaplanMeier(grid=grid, n_at_risk=y, n_events=dn, survival=np.cumprod(1 - h), greenwood=greenwood,
                       c=c, b=np.cumsum(h * c), died=died, weights=w)


def weighted_km(time, event, weights=None, alpha: float = 0.05, variance: str = "robust") -> pd.DataFrame:
    """One row per distinct observed time (events or censorings), as R's survfit reports them.

    ``n_at_risk`` and ``n_events`` are weighted counts; ``std_err`` is the standard error of S(t):
    robust (infinitesimal jackknife, for IPTW weights), or ``variance="greenwood"`` for unweighted
    data (R's default there).
    """
    return curve_table(kaplan_meier(time, event, weights), alpha, variance)


def curve_table(km: KaplanMeier, alpha: float = 0.05, variance: str = "robust") -> pd.DataFrame:
    """``weighted_km``'s table from a fitted curve (one fit serves the curve table and the RMST)."""
    if variance not in ("robust", "greenwood"):
        raise ValueError(f"variance must be 'robust' or 'greenwood', not {variance!r}")
    z = stats.norm.ppf(1 - alpha / 2)
    surv = km.survival
    with np.errstate(invalid="ignore", divide="ignore"):
        se_log = np.sqrt(km.robust_var_log()) if variance == "robust" else np.sqrt(km.greenwood)
        se = np.where(np.isfinite(se_log), surv * se_log, np.nan)  # Greenwood is infinite once everyone has died
        # log-log: CI for log(-log S) with se(log S) / |log S|; no interval before the first event or without survivors.
        ok = (surv > 0) & (surv < 1) & (se > 0)
        loglog, se_ll = np.log(-np.log(surv)), (se / surv) / np.abs(np.log(surv))
        lower = np.where(ok, np.exp(-np.exp(loglog + z * se_ll)), np.nan)
        upper = np.where(ok, np.exp(-np.exp(loglog - z * se_ll)), np.nan)
    return pd.DataFrame({"time_days": km.grid.times, "survival": surv, "ci_lower": lower, "ci_upper": upper,
                         "n_at_risk": km.n_at_risk, "n_events": km.n_events, "std_err": se}, columns=CURVE_COLUMNS)
