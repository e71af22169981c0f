"""Propensity scores and inverse probability of treatment weights, as in the paper.

ps = P(tacrolimus | age, sex, diagnosis subset, initial prednisolone-equivalent dose, plasma
exchange, IVIg) from a logistic regression (statsmodels GLM, binomial, logit link: the same fit
as R's ``glm(family = binomial)``). ATE weights are 1/ps for the treated and 1/(1-ps) for the
comparator; stabilized weights multiply by the marginal probability of the group received.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import statsmodels.api as sm
from statsmodels.tools.sm_exceptions import PerfectSeparationWarning

PS_COVARIATES = ("age", "sex", "diagnosis_subset", "initial_pred_mg_day", "plasma_exchange", "ivig")
REFERENCE_LEVELS = {"sex": "female", "diagnosis_subset": "DM"}


class PropensityModelError(ValueError):
    """The propensity model cannot be fitted (e.g. a group is empty or a covariate separates the groups)."""


@dataclass(frozen=True)
class PropensityFit:
    scores: pd.Series          # indexed like the input
    coefficients: pd.Series
    design_columns: list[str]
    design: pd.DataFrame       # the design matrix it was fitted on (balance and the bootstrap reuse it)


def design_matrix(frame: pd.DataFrame, covariates: tuple[str, ...] = PS_COVARIATES) -> pd.DataFrame:
    """Numeric covariates as they are; categorical ones as indicators against a fixed reference level.

    Indicator columns that are constant in this sample are dropped: they carry no information and
    would make the model singular (a small comparison may have no ASS patient, say).
    """
    parts = [pd.Series(1.0, index=frame.index, name="const")]
    for col in covariates:
        if col in REFERENCE_LEVELS:
            levels = sorted(set(frame[col].dropna()) - {REFERENCE_LEVELS[col]})
            parts += [(frame[col] == lvl).astype(float).rename(f"{col}[{lvl}]") for lvl in levels]
        else:
            parts.append(frame[col].astype(float).rename(col))
    X = pd.concat(parts, axis=1)
    keep = ["const"] + [c for c in X.columns[1:] if X[c].nunique() > 1]
    return X[keep]


def fit_propensity(frame: pd.DataFrame, treated: pd.Series, covariates: tuple[str, ...] = PS_COVARIATES) -> PropensityFit:
    y = treated.astype(float)
    if y.nunique() < 2:
        raise PropensityModelError(f"both groups need patients to fit a propensity model (got {int(y.sum())} treated of {len(y)})")
    X = design_matrix(frame, covariates)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PerfectSeparationWarning)
            result = sm.GLM(y, X, family=sm.families.Binomial()).fit()
    except (np.linalg.LinAlgError, ValueError) as exc:
        raise PropensityModelError(f"propensity model failed: {exc}") from exc
    scores = np.asarray(result.predict(X), dtype=float)
    # Separation (R's glm warns "fitted probabilities numerically 0 or 1 occurred") leaves the model
    # unidentified and the weights arbitrary or infinite: the comparison is not estimable, not a crash
    # of the blocking weight check downstream.
    if any(issubclass(w.category, PerfectSeparationWarning) for w in caught) or not np.all((scores > 0) & (scores < 1)):
        raise PropensityModelError("the covariates separate the groups (fitted propensity scores of 0 or 1): "
                                   "IPTW weights are not defined")
    return PropensityFit(scores=pd.Series(scores, index=frame.index, name="propensity_score"),
                         coefficients=result.params, design_columns=list(X.columns), design=X)


def c_statistic(treated: pd.Series, ps: pd.Series) -> float:
    """Area under the ROC curve of the propensity score (Mann-Whitney form, ties count one half)."""
    from scipy.stats import rankdata

    t = treated.to_numpy(dtype=bool)
    ranks = rankdata(ps.to_numpy())
    n1, n0 = t.sum(), (~t).sum()
    return float((ranks[t].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def overlap(treated: pd.Series, ps: pd.Series, bounds: tuple[float, float] = (0.025, 0.975)) -> dict[str, float]:
    """Propensity range per group and the share of patients outside ``bounds`` (poor overlap)."""
    t = treated.to_numpy(dtype=bool)
    p = ps.to_numpy()
    outside = (p < bounds[0]) | (p > bounds[1])
    return {"ps_min_treated": float(p[t].min()), "ps_max_treated": float(p[t].max()),
            "ps_min_control": float(p[~t].min()), "ps_max_control": float(p[~t].max()),
            "share_outside_0.025_0.975": float(outside.mean())}


def truncate(weights: pd.Series, lower_pct: float = 1, upper_pct: float = 99) -> pd.Series:
    """Weights clipped at their percentiles (a sensitivity analysis for extreme weights)."""
    lo, hi = np.percentile(weights.to_numpy(dtype=float), [lower_pct, upper_pct])
    return weights.clip(lower=lo, upper=hi)


def iptw_weights(treated: pd.Series, ps: pd.Series) -> pd.DataFrame:
    """ATE weights (the paper's) and stabilized weights, indexed like ``treated``."""
    t = treated.astype(bool)
    weight = np.where(t, 1.0 / ps, 1.0 / (1.0 - ps))
    p_treated = t.mean()
    stabilized = np.where(t, p_treated / ps, (1.0 - p_treated) / (1.0 - ps))
    return pd.DataFrame({"propensity_score": ps, "weight": weight, "stabilized_weight": stabilized}, index=treated.index)
