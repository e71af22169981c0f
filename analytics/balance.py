"""Covariate balance: standardized mean differences before and after weighting.

The denominator is the pooled *unweighted* standard deviation, sqrt((s_t^2 + s_c^2) / 2), the
same before and after weighting (cobalt's convention), so a change in SMD reflects a change in
the means only. Binary covariates use p(1 - p) as their variance. |SMD| < 0.1 is the usual
threshold for balance.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

BALANCE_THRESHOLD = 0.1


def _weighted_mean(x: np.ndarray, w: np.ndarray) -> float:
    return float(np.sum(w * x) / np.sum(w))


def standardized_differences(design: pd.DataFrame, treated: pd.Series, weights: pd.Series) -> pd.DataFrame:
    """One row per design column (the propensity model's covariates, indicators for categories)."""
    t = treated.to_numpy(dtype=bool)
    w = weights.to_numpy(dtype=float)
    rows = []
    for col in design.columns:
        if col == "const":
            continue
        x = design[col].to_numpy(dtype=float)
        binary = set(np.unique(x)) <= {0.0, 1.0}
        if binary:
            var_t, var_c = x[t].mean() * (1 - x[t].mean()), x[~t].mean() * (1 - x[~t].mean())
        else:
            var_t, var_c = x[t].var(ddof=1), x[~t].var(ddof=1)
        sd = np.sqrt((var_t + var_c) / 2)
        raw = x[t].mean() - x[~t].mean()
        weighted = _weighted_mean(x[t], w[t]) - _weighted_mean(x[~t], w[~t])
        rows.append({"covariate": col, "smd_unweighted": raw / sd if sd > 0 else 0.0,
                     "smd_weighted": weighted / sd if sd > 0 else 0.0})
    return pd.DataFrame(rows, columns=["covariate", "smd_unweighted", "smd_weighted"])


def kish_ess(weights: pd.Series) -> float:
    """Kish's effective sample size, (sum w)^2 / sum w^2."""
    w = weights.to_numpy(dtype=float)
    return float(w.sum() ** 2 / np.sum(w ** 2))
