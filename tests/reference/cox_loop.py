"""The per-time Python loop that analytics/cox.py used before it was vectorised (issue 16), kept only as a
reference: tests/analytics/test_cox_vectorised.py checks that the vectorised fit equals it on heavily tied, weighted data.
Verbatim from analytics/cox.py at e5f18fd, except that fit_cox returns (coef, naive_var, robust_var, loglik, iterations)
and raises this module's error type.
"""
from __future__ import annotations

import numpy as np


class CoxConvergenceError(RuntimeError):
    pass


def _sorted(time: np.ndarray, event: np.ndarray, x: np.ndarray, w: np.ndarray):
    # Descending time; at equal times deaths after censorings, so running sums include the whole risk set.
    order = np.lexsort((event, -time))
    return time[order], event[order], x[order], w[order], order


def _tie_groups(time_sorted: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index ranges of equal times in the descending-sorted arrays."""
    bounds = np.flatnonzero(np.diff(time_sorted)) + 1
    starts = np.concatenate(([0], bounds))
    ends = np.concatenate((bounds, [len(time_sorted)]))
    return list(zip(starts, ends, strict=True))


def _loglik_score_info(beta: np.ndarray, t: np.ndarray, d: np.ndarray, x: np.ndarray, w: np.ndarray,
                       groups: list[tuple[int, int]]) -> tuple[float, np.ndarray, np.ndarray]:
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # an overshooting step is halved by the caller
        return _loglik_score_info_unguarded(beta, t, d, x, w, groups)


def _loglik_score_info_unguarded(beta: np.ndarray, t: np.ndarray, d: np.ndarray, x: np.ndarray, w: np.ndarray,
                                 groups: list[tuple[int, int]]) -> tuple[float, np.ndarray, np.ndarray]:
    p = x.shape[1]
    eta = x @ beta
    r = w * np.exp(eta)
    s0, s1, s2 = 0.0, np.zeros(p), np.zeros((p, p))
    loglik, score, info = 0.0, np.zeros(p), np.zeros((p, p))
    for a, b in groups:  # from the latest time backwards: the risk set grows
        xs, rs = x[a:b], r[a:b]
        s0 += rs.sum()
        s1 += rs @ xs
        s2 += (xs * rs[:, None]).T @ xs
        dead = d[a:b] == 1
        ndead = int(dead.sum())
        if ndead == 0:
            continue
        xd, wd, rd = xs[dead], w[a:b][dead], rs[dead]
        meanwt = wd.sum() / ndead
        e0, e1, e2 = rd.sum(), rd @ xd, (xd * rd[:, None]).T @ xd
        loglik += float(wd @ eta[a:b][dead])
        score += wd @ xd
        for k in range(ndead):
            frac = k / ndead
            den = s0 - frac * e0
            xbar = (s1 - frac * e1) / den
            loglik -= meanwt * np.log(den)
            score -= meanwt * xbar
            info += meanwt * ((s2 - frac * e2) / den - np.outer(xbar, xbar))
    return loglik, score, info


def _score_residuals(beta: np.ndarray, t: np.ndarray, d: np.ndarray, x: np.ndarray, w: np.ndarray,
                     groups: list[tuple[int, int]]) -> np.ndarray:
    """Per-subject score residuals (unweighted), Efron's method, as R's residuals(type = "score").

    U_i = sum over death times s of [dN_i(s) (x_i - xbar) - Y_i(s) exp(eta_i) dLambda (x_i - xbar)], with the
    Efron split: at a time with d tied deaths, the k-th of d terms has risk set S0 - (k/d) S0_dead, each tied
    death counts 1/d per term and is at risk with weight (1 - k/d).
    """
    n, p = x.shape
    eta = x @ beta
    risk = np.exp(eta)
    r = w * risk
    resid = np.zeros((n, p))
    # Cumulative sums over times >= s of hazard h and h*xbar, for the subjects not dying at s.
    cum_h, cum_hx = 0.0, np.zeros(p)
    s0, s1 = 0.0, np.zeros(p)
    # First pass (latest to earliest): risk-set sums and, at each death time, the Efron terms.
    terms: list[tuple[int, int, float, np.ndarray, np.ndarray, np.ndarray]] = []
    for a, b in groups:
        s0 += r[a:b].sum()
        s1 += r[a:b] @ x[a:b]
        dead = d[a:b] == 1
        ndead = int(dead.sum())
        if ndead == 0:
            terms.append((a, b, 0.0, np.zeros(p), np.zeros(0), np.zeros((0, p))))
            continue
        e0, e1 = r[a:b][dead].sum(), r[a:b][dead] @ x[a:b][dead]
        meanwt = w[a:b][dead].sum() / ndead
        fracs = np.arange(ndead) / ndead
        dens = s0 - fracs * e0
        hs = meanwt / dens
        xbars = (s1[None, :] - fracs[:, None] * e1[None, :]) / dens[:, None]
        terms.append((a, b, float(hs.sum()), hs @ xbars, hs, xbars))
    # Second pass (earliest to latest): each subject is at risk at every death time <= its own time.
    # Subjects are in descending time order, so accumulate from the end.
    for a, b, h_total, hx_total, hs, xbars in reversed(terms):
        cum_h += h_total
        cum_hx = cum_hx + hx_total
        # Everyone with time t_i is at risk at all death times <= t_i (the cumulative sums include this time).
        resid[a:b] -= risk[a:b, None] * (x[a:b] * cum_h - cum_hx[None, :])
        if hs.size:
            dead = np.flatnonzero(d[a:b] == 1) + a
            fracs = np.arange(hs.size) / hs.size
            xd, rd = x[dead], risk[dead][:, None]
            # Undo the full-risk contribution at this time for the deaths, and apply Efron's (1 - k/d) share:
            # sum_k (1 - k/d) h_k (x_i - xbar_k) = x_i * sum_k (1-k/d) h_k - sum_k (1-k/d) h_k xbar_k.
            share = (1 - fracs) * hs
            resid[dead] += rd * (xd * h_total - hx_total[None, :])
            resid[dead] -= rd * (xd * share.sum() - (share @ xbars)[None, :])
            resid[dead] += xd - xbars.mean(axis=0)[None, :]
    return resid


def fit_cox(time, event, x, weights=None, *, max_iter: int = 50, tol: float = 1e-9, robust: bool = True) :
    """Newton-Raphson on the Efron partial likelihood with case weights (R's defaults: eps 1e-9, 20+ iterations)."""
    t = np.asarray(time, dtype=float)
    e = np.asarray(event, dtype=int)
    X = np.asarray(x, dtype=float)
    if X.ndim == 1:
        X = X[:, None]
    w = np.ones(len(t)) if weights is None else np.asarray(weights, dtype=float)
    ts, ds, xs, ws, order = _sorted(t, e, X, w)
    groups = _tie_groups(ts)
    beta = np.zeros(X.shape[1])
    loglik, score, info = _loglik_score_info(beta, ts, ds, xs, ws, groups)
    for iteration in range(1, max_iter + 1):  # noqa: B007 - reported after the loop
        step = np.linalg.solve(info, score)
        new_beta = beta + step
        new_loglik, new_score, new_info = _loglik_score_info(new_beta, ts, ds, xs, ws, groups)
        halvings = 0
        # Step halving, as R does when the likelihood gets worse or overflows.
        while not np.isfinite(new_loglik) or new_loglik < loglik - 1e-12:
            halvings += 1
            if halvings > 30:
                raise CoxConvergenceError("partial likelihood does not improve (a group without events?)")
            step /= 2
            new_beta = beta + step
            new_loglik, new_score, new_info = _loglik_score_info(new_beta, ts, ds, xs, ws, groups)
        converged = abs(1 - loglik / new_loglik) <= tol if new_loglik != 0 else abs(new_loglik - loglik) <= tol
        beta, loglik, score, info = new_beta, new_loglik, new_score, new_info
        if converged:
            break
    else:
        raise CoxConvergenceError(f"no convergence in {max_iter} iterations (coef {beta})")
    if np.any(np.abs(beta) > 30):
        raise CoxConvergenceError(f"coefficient diverges ({beta}): a group without events?")
    naive = np.linalg.inv(info)
    if robust:  # the score-residual pass is the costly part: skipped when only the coefficient is needed
        dfbeta = (_score_residuals(beta, ts, ds, xs, ws, groups) * ws[:, None]) @ naive
        robust_var = dfbeta.T @ dfbeta
    else:
        robust_var = np.full_like(naive, np.nan)
    return beta, naive, robust_var, float(loglik), iteration
