"""Two-sample and paired tests that return what R returns.

scipy has every test the paper uses, but its defaults differ from R's in when an exact p-value is
used and how ties are corrected, and researchers compare our numbers with R's. Each function
states the R call it equals; the choice of exact vs normal approximation follows R's rule.
"""
from __future__ import annotations

import numpy as np
from scipy import stats


def _nan_free(x) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    return a[~np.isnan(a)]


def wilcoxon_paired(before, after) -> float:
    """``wilcox.test(after, before, paired = TRUE)``: exact when n < 50 with no ties and no zero
    differences, else the normal approximation with continuity and tie correction (zeros dropped)."""
    d = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    d = d[~np.isnan(d)]
    zeros = bool(np.any(d == 0))
    d = d[d != 0]
    n = len(d)
    if n == 0:
        return float("nan")
    ties = len(np.unique(np.abs(d))) < n
    if n < 50 and not ties and not zeros:
        return float(stats.wilcoxon(d, method="exact").pvalue)
    return float(stats.wilcoxon(d, zero_method="wilcox", correction=True, method="approx").pvalue)


def mann_whitney(x, y) -> float:
    """``wilcox.test(x, y)``: exact when both groups have < 50 values and there are no ties, else the
    normal approximation with continuity and tie correction."""
    a, b = _nan_free(x), _nan_free(y)
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    ties = len(np.unique(np.concatenate([a, b]))) < len(a) + len(b)
    if len(a) < 50 and len(b) < 50 and not ties:
        return float(stats.mannwhitneyu(a, b, alternative="two-sided", method="exact").pvalue)
    return float(stats.mannwhitneyu(a, b, alternative="two-sided", method="asymptotic", use_continuity=True).pvalue)


def welch_t(x, y) -> float:
    """``t.test(x, y)`` (Welch's unequal-variance t-test, R's default)."""
    a, b = _nan_free(x), _nan_free(y)
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def fisher(table: np.ndarray) -> tuple[float, float]:
    """``fisher.test(table)`` for a 2x2 table: two-sided p and the conditional MLE odds ratio."""
    t = np.asarray(table, dtype=int)
    p = float(stats.fisher_exact(t, alternative="two-sided").pvalue)
    odds = float(stats.contingency.odds_ratio(t, kind="conditional").statistic)
    return p, odds


def chi_square(table: np.ndarray) -> float:
    """``chisq.test(table)``: Yates' continuity correction for 2x2 tables, as R does by default."""
    t = np.asarray(table, dtype=float)
    t = t[t.sum(axis=1) > 0][:, t.sum(axis=0) > 0]
    if t.shape[0] < 2 or t.shape[1] < 2:
        return float("nan")
    return float(stats.chi2_contingency(t, correction=t.shape == (2, 2)).pvalue)


def expected_counts(table: np.ndarray) -> np.ndarray:
    t = np.asarray(table, dtype=float)
    return np.outer(t.sum(axis=1), t.sum(axis=0)) / t.sum()


def quantiles(x) -> tuple[float, float, float]:
    """Median and quartiles as R's ``quantile(x, c(.25, .5, .75))`` (type 7)."""
    a = _nan_free(x)
    if len(a) == 0:
        return float("nan"), float("nan"), float("nan")
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return float(med), float(q1), float(q3)
