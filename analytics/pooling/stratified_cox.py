"""The stratified IPTW Cox model with one stratum per site, fitted without pooling any patient row.

R's ``coxph(Surv(t, e) ~ treat + strata(site), weights = w, robust = TRUE)`` needs from the data only
sums over strata: the Efron log partial likelihood, score and information at a given beta are the sums of
each stratum's, and the robust (sandwich) variance I^-1 (sum_i w_i^2 U_i U_i') I^-1 needs only each
stratum's sum of w_i^2 U_i U_i'. So each site computes its own stratum's terms (``site_terms``,
``site_meat``) and the coordinator runs R's Newton-Raphson loop on their totals (``NewtonState``), one
round per evaluation of the likelihood, which gives R's coefficients, robust SE, CI and p exactly.

The loop is coxfit6's (survival 3.5), step for step, so the iterates and the iteration count are R's:
start at beta = 0; after each evaluation stop if |1 - loglik_old / loglik_new| <= eps (1e-9) unless the step
was being halved; if the likelihood fell, go back half way to the last accepted beta; else take a Newton step.
Per-stratum Efron sums come from analytics/cox.py (one implementation of the ties, checked against R there).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from analytics.cox import CoxConvergenceError, CoxFit, stratum_terms, weighted_score_residuals

EPS = 1e-9       # coxph.control()$eps
MAX_ITER = 20    # coxph.control()$iter.max


@dataclass(frozen=True)
class StratumTerms:
    """A site's reply to a Newton round: its stratum's log partial likelihood, score and information at beta."""

    loglik: float
    score: np.ndarray          # (p,)
    information: np.ndarray    # (p, p)

    def to_dict(self) -> dict[str, Any]:
        return {"loglik": float(self.loglik), "score": [float(v) for v in self.score],
                "information": [[float(v) for v in row] for row in self.information]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StratumTerms:
        score = np.asarray(d["score"], dtype=float)
        info = np.asarray(d["information"], dtype=float)
        if score.ndim != 1 or info.shape != (len(score), len(score)) or not np.isfinite(d["loglik"]):
            raise ValueError(f"malformed stratum terms: score {score.shape}, information {info.shape}")
        return cls(float(d["loglik"]), score, info)


def total(parts: Sequence[StratumTerms]) -> StratumTerms:
    """The stratified model's terms: the sums of its strata's."""
    if not parts:
        raise ValueError("no strata to add up")
    return StratumTerms(float(sum(p.loglik for p in parts)), np.sum([p.score for p in parts], axis=0),
                        np.sum([p.information for p in parts], axis=0))


def _design(x) -> np.ndarray:
    X = np.asarray(x, dtype=float)
    return X[:, None] if X.ndim == 1 else X


def site_terms(time, event, x, weights, beta) -> StratumTerms:
    """Site side of a Newton round: the terms of this site's stratum at the coordinator's beta."""
    loglik, score, info = stratum_terms(time, event, _design(x), weights, np.atleast_1d(np.asarray(beta, dtype=float)))
    return StratumTerms(float(loglik), score, info)


def site_meat(time, event, x, weights, beta) -> np.ndarray:
    """Site side of the final round: sum over its patients of (w_i U_i)(w_i U_i)', U_i the score residual."""
    r = weighted_score_residuals(time, event, _design(x), weights, np.atleast_1d(np.asarray(beta, dtype=float)))
    return r.T @ r


@dataclass(frozen=True)
class NewtonState:
    """Where the coordinator's Newton-Raphson loop stands between rounds (JSON-serialisable, so it can be
    kept between the runs of a round-based protocol).

    ``proposal`` is the beta the sites are asked about next (coxfit6's ``newbeta``); ``beta`` and ``loglik``
    the last accepted point (its ``beta`` and ``loglik[1]``); ``iteration`` counts evaluations after the
    first (its ``iter``). When ``status`` is ``converged``, ``beta`` is the estimate and ``information`` the
    total information there."""

    proposal: np.ndarray
    beta: np.ndarray
    loglik: float = float("nan")
    loglik_null: float = float("nan")
    iteration: int = -1                 # -1: the first evaluation (at the initial beta) has not been made
    halving: bool = False
    status: str = "running"             # running | converged | max_iter (out of rounds: reported, like R, with a warning)
    information: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    score: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def done(self) -> bool:
        return self.status in ("converged", "max_iter")

    def to_dict(self) -> dict[str, Any]:
        return {"proposal": self.proposal.tolist(), "beta": self.beta.tolist(), "loglik": self.loglik,
                "loglik_null": self.loglik_null, "iteration": self.iteration, "halving": self.halving,
                "status": self.status, "information": self.information.tolist(), "score": self.score.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NewtonState:
        p = len(d["beta"])
        return cls(np.asarray(d["proposal"], dtype=float), np.asarray(d["beta"], dtype=float), float(d["loglik"]),
                   float(d["loglik_null"]), int(d["iteration"]), bool(d["halving"]), str(d["status"]),
                   np.asarray(d["information"], dtype=float).reshape(-1, p), np.asarray(d["score"], dtype=float))


def newton_start(p: int = 1, init: Sequence[float] | None = None) -> NewtonState:
    """The first round asks every site about the initial beta (zero, as coxph)."""
    beta = np.zeros(p) if init is None else np.asarray(init, dtype=float)
    return NewtonState(proposal=beta.copy(), beta=beta.copy())


def _solve(info: np.ndarray, score: np.ndarray) -> np.ndarray:
    try:
        step = np.linalg.solve(info, score)
    except np.linalg.LinAlgError:
        step = np.full_like(score, np.nan)
    if not np.all(np.isfinite(step)):
        raise CoxConvergenceError("the information matrix is singular (no events, or a covariate constant in every stratum)")
    return step


def newton_update(state: NewtonState, replies: Sequence[StratumTerms], *, eps: float = EPS,
                  max_iter: int = MAX_ITER) -> NewtonState:
    """One turn of coxfit6's loop, given every site's terms at ``state.proposal``; returns the next state."""
    if state.done:
        raise ValueError("the fit has converged: no further Newton round")
    t = total(replies)
    if t.score.shape != state.proposal.shape:
        raise ValueError(f"replies have {t.score.shape[0]} coefficients, the model {state.proposal.shape[0]}")
    if state.iteration < 0:  # the initial evaluation: never stop here (R: "never complain on the first step")
        step = _solve(t.information, t.score)
        return NewtonState(proposal=state.proposal + step, beta=state.proposal.copy(), loglik=t.loglik,
                           loglik_null=t.loglik, iteration=0, information=t.information, score=t.score)
    iteration = state.iteration + 1
    newlk = t.loglik
    if np.isfinite(newlk) and abs(1 - state.loglik / newlk) <= eps and not state.halving:
        return NewtonState(proposal=state.proposal, beta=state.proposal.copy(), loglik=newlk, loglik_null=state.loglik_null,
                           iteration=iteration, status="converged", information=t.information, score=t.score)
    if iteration >= max_iter:
        # coxfit6 out of iterations: the last evaluated beta, its likelihood and information, flag 1000; coxph
        # warns "Ran out of iterations and did not converge" and reports the fit, its iter = iter.max + 1 (the
        # loop counter after the loop; coxph(control = coxph.control(iter.max = 1))$iter is 2).
        return NewtonState(proposal=state.proposal, beta=state.proposal.copy(), loglik=newlk, loglik_null=state.loglik_null,
                           iteration=iteration + 1, status="max_iter", information=t.information, score=t.score)
    # A non-finite likelihood (exp overflow far from the optimum) counts as worse: R's C code would accept NaN.
    if not np.isfinite(newlk) or newlk < state.loglik:
        return NewtonState(proposal=(state.proposal + state.beta) / 2, beta=state.beta, loglik=state.loglik,
                           loglik_null=state.loglik_null, iteration=iteration, halving=True,
                           information=state.information, score=state.score)
    step = _solve(t.information, t.score)
    return NewtonState(proposal=state.proposal + step, beta=state.proposal.copy(), loglik=newlk,
                       loglik_null=state.loglik_null, iteration=iteration, information=t.information, score=t.score)


def possibly_infinite(state: NewtonState, eps: float = EPS) -> list[int]:
    """Coefficients R would warn about ("Loglik converged before variable ...; coefficient may be infinite"):
    the next Newton step would still move them by more than sqrt(eps) of their size."""
    step = np.abs(state.score @ np.linalg.inv(state.information))
    return [int(i) for i in np.flatnonzero((step > eps) & (step > np.sqrt(eps) * np.abs(state.beta)))]


def pooled_fit(state: NewtonState, meats: Sequence[np.ndarray]) -> CoxFit:
    """The pooled estimate from the converged state and every site's meat at the estimate: R's robust
    variance I^-1 (sum of the sites' meats) I^-1 and its model-based variance I^-1."""
    if not state.done:
        raise ValueError("the Newton loop has not converged")
    if not meats:
        raise ValueError("no site sent its score-residual cross-product")
    naive = np.linalg.inv(state.information)
    meat = np.sum([np.asarray(m, dtype=float) for m in meats], axis=0)
    if meat.shape != naive.shape:
        raise ValueError(f"meat of shape {meat.shape}, expected {naive.shape}")
    return CoxFit(coef=state.beta, naive_var=naive, robust_var=naive @ meat @ naive, loglik=state.loglik,
                  iterations=state.iteration)


def fit_rounds(evaluate: Callable[[np.ndarray], Sequence[StratumTerms]], meat: Callable[[np.ndarray], Sequence[np.ndarray]],
               p: int = 1, *, eps: float = EPS, max_iter: int = MAX_ITER) -> tuple[CoxFit, NewtonState]:
    """The whole protocol in one process: ``evaluate(beta)`` returns every site's terms, ``meat(beta)`` every
    site's score-residual cross-product. The round-based protocol (federation/) calls the same two steps
    with packages in between."""
    state = newton_start(p)
    while not state.done:
        state = newton_update(state, evaluate(state.proposal), eps=eps, max_iter=max_iter)
    return pooled_fit(state, meat(state.beta)), state


def stratified_cox(time, event, x, weights, strata) -> CoxFit:
    """The stratified weighted Cox model on rows held in one place (a reference for the round-based fit)."""
    t, e, X = np.asarray(time, dtype=float), np.asarray(event, dtype=int), _design(x)
    w = np.ones(len(t)) if weights is None else np.asarray(weights, dtype=float)
    s = np.asarray(strata)
    groups = [np.flatnonzero(s == level) for level in dict.fromkeys(s.tolist())]
    fit, _ = fit_rounds(lambda b: [site_terms(t[g], e[g], X[g], w[g], b) for g in groups],
                        lambda b: [site_meat(t[g], e[g], X[g], w[g], b) for g in groups], X.shape[1])
    return fit
