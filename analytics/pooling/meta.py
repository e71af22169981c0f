"""Meta-analysis of the sites' own estimates (log hazard ratios and their robust SEs), as R's
``metafor::rma(yi, sei = se, method = "FE" | "DL" | "REML", test = "z" | "knha")`` (metafor 3.8) reports it:
estimate, SE, CI, p, Q, I^2, H^2, tau^2 and the prediction interval.

statsmodels' ``combine_effects`` gives what equals metafor: the inverse-variance (fixed effect) estimate and
its SE, Cochran's Q, the DerSimonian-Laird moment, and the Hartung-Knapp(-Sidik-Jonkman) variance (its
"WLS" scale). A random-effects model with a given tau^2 is the inverse-variance combination of the variances
v_i + tau^2, so ``combine_effects`` also gives the random-effects estimate once tau^2 is known. Written here,
because statsmodels lacks them or differs from metafor:
- REML: statsmodels has no REML estimator of tau^2. metafor's Fisher scoring is reproduced step for step
  (start at the Hedges estimate, stop when tau^2 changes by <= 1e-5, steps halved to stay >= 0, then its
  check that tau^2 = 0 is not likelier), so the numbers are metafor's and not only the same root to 1e-5;
- DL: statsmodels does not truncate a negative moment estimate at 0 (metafor does);
- I^2 and H^2 of a random-effects model: metafor's tau^2 / (tau^2 + typical within-site variance), which
  differs from statsmodels' 1 - (k - 1) / Q unless tau^2 is DL's, and is not truncated at 0 by statsmodels;
- the prediction interval: not in statsmodels.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats
from statsmodels.stats.meta_analysis import combine_effects

METHODS = ("FE", "DL", "REML")
TESTS = ("z", "knha")


@dataclass(frozen=True)
class MetaResult:
    method: str
    test: str
    k: int
    estimate: float
    se: float
    ci_lower: float
    ci_upper: float
    p_value: float
    q: float           # Cochran's Q (fixed-effect weights), on k - 1 degrees of freedom
    q_p: float
    i2: float          # percent, as metafor
    h2: float
    tau2: float
    pi_lower: float    # prediction interval for a new site's effect (NaN for the fixed-effect model)
    pi_upper: float

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def reml_tau2(yi: np.ndarray, vi: np.ndarray, *, threshold: float = 1e-5, max_iter: int = 100) -> float:
    """metafor's REML Fisher scoring for an intercept-only model (rma.uni, control defaults)."""
    k = len(yi)
    # Start: the Hedges (HE) estimator, (RSS - tr(PV)) / (k - 1) with the unweighted projection P.
    tau2 = max(0.0, (float(np.sum((yi - yi.mean()) ** 2)) - float(np.sum(vi) * (1 - 1 / k))) / (k - 1))
    for _ in range(max_iter):  # metafor gives up when the 101st step would be needed
        w = 1 / (vi + tau2)
        sw = w.sum()
        resid = yi - (w @ yi) / sw
        ypppy = float(np.sum(w ** 2 * resid ** 2))                            # Y'PPY, P = W - w w' / sum(w)
        tr_p = sw - float(np.sum(w ** 2)) / sw
        tr_pp = float(np.sum(w ** 2) - 2 * np.sum(w ** 3) / sw + np.sum(w ** 2) ** 2 / sw ** 2)
        adj = (ypppy - tr_p) / tr_pp
        while tau2 + adj < 0:
            adj /= 2
        old, tau2 = tau2, tau2 + adj
        if abs(old - tau2) <= threshold:
            break
    else:
        raise ValueError("REML Fisher scoring did not converge in 100 iterations")
    if tau2 > threshold and _reml_loglik(yi, vi, 0.0) - _reml_loglik(yi, vi, tau2) > np.finfo(float).eps ** 0.25:
        return 0.0  # metafor's ll0check: a local maximum below the likelihood at tau^2 = 0
    return max(0.0, tau2)


def _reml_loglik(yi: np.ndarray, vi: np.ndarray, tau2: float) -> float:
    w = 1 / (vi + tau2)
    mu = (w @ yi) / w.sum()
    return float(-0.5 * (len(yi) - 1) * math.log(2 * math.pi) - 0.5 * np.sum(np.log(vi + tau2))
                 - 0.5 * math.log(w.sum()) - 0.5 * np.sum(w * (yi - mu) ** 2))


def meta_analysis(yi, sei, *, method: str = "REML", test: str = "z", level: float = 0.95,
                  reml_threshold: float = 1e-5) -> MetaResult:
    """Pool k >= 2 site estimates ``yi`` with standard errors ``sei``."""
    if method not in METHODS or test not in TESTS:
        raise ValueError(f"method must be one of {METHODS} and test one of {TESTS}, not {method!r}/{test!r}")
    y, se = np.asarray(yi, dtype=float), np.asarray(sei, dtype=float)
    if y.shape != se.shape or y.ndim != 1 or len(y) < 2:
        raise ValueError(f"need k >= 2 estimates with one SE each (got {y.shape} and {se.shape})")
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(se)) and np.all(se > 0)):
        raise ValueError("every estimate must be finite with a finite positive SE")
    v, k = se ** 2, len(y)
    with np.errstate(invalid="ignore"):  # its random-effects part, unused here, takes sqrt of a negative DL moment
        fixed = combine_effects(y, v, method_re="dl")
    if method == "FE":
        tau2 = 0.0
    elif method == "DL":
        tau2 = max(0.0, float(fixed.tau2))
    else:
        tau2 = reml_tau2(y, v, threshold=reml_threshold)
    model = combine_effects(y, v + tau2)  # inverse-variance weights 1 / (v_i + tau^2)
    estimate = float(model.mean_effect_fe)
    se_est = float(np.sqrt(model.var_hksj_fe)) if test == "knha" else float(model.sd_eff_w_fe)
    dist = stats.t(k - 1) if test == "knha" else stats.norm()
    crit = float(dist.ppf(1 - (1 - level) / 2))
    q = float(fixed.q)
    w = 1 / v
    typical_v = (k - 1) / (w.sum() - np.sum(w ** 2) / w.sum())  # metafor's "typical" within-site variance
    if method == "FE":
        i2, h2 = max(0.0, 100 * (q - (k - 1)) / q), q / (k - 1)
    else:
        i2, h2 = 100 * tau2 / (typical_v + tau2), tau2 / typical_v + 1
    # metafor gives no prediction interval for a fixed-effect model (there is no between-site distribution).
    pi_half = math.nan if method == "FE" else crit * math.sqrt(se_est ** 2 + tau2)
    return MetaResult(method=method, test=test, k=k, estimate=estimate, se=se_est, ci_lower=estimate - crit * se_est,
                      ci_upper=estimate + crit * se_est, p_value=float(2 * dist.sf(abs(estimate / se_est))), q=q,
                      q_p=float(stats.chi2.sf(q, k - 1)), i2=float(i2), h2=float(h2), tau2=float(tau2),
                      pi_lower=estimate - pi_half, pi_upper=estimate + pi_half)
