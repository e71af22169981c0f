"""PS-refit bootstrap of the IPTW Cox hazard ratio: resample patients, refit the propensity model and the
weighted Cox model, and keep the replicate's hazard ratios.

Built for 1,000 replicates of a cohort of tens of thousands (issue 16):
- a replicate is the full sample with multiplicities (how often each patient was drawn), so the design matrix and
  each outcome's time order are built once, and a replicate costs a few array passes, with no pandas;
- the propensity refit is a small Newton (IRLS) loop on the multiplicity-weighted rows, started from the full-sample
  coefficients, and each Cox refit starts from the full-sample log hazard ratio;
- replicate r draws from its own seed (``SeedSequence(seed, spawn_key=(r,))``), so the hazard ratios do not depend
  on how the replicates are spread over worker processes (``n_jobs``, default 1: in this process).
"""
from __future__ import annotations

import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from .cox import CoxConvergenceError, RiskSets, cox_coefficient, risk_sets
from .parallel import resolve_jobs, worker_context

_MAX_IRLS = 100  # statsmodels' default, as the full-sample fit


@dataclass(frozen=True)
class Outcome:
    rs: RiskSets
    treated_event: np.ndarray  # 1 for a treated patient with the event, in input order
    control_event: np.ndarray  # 1 for a control patient with the event
    log_hr: float              # full-sample coefficient: the warm start (nan: start at zero)


@dataclass(frozen=True)
class BootstrapProblem:
    """Everything a replicate needs, from the full sample (picklable, sent once to each worker)."""
    design: np.ndarray       # (n, k) the propensity design matrix, constant column first
    treated: np.ndarray      # bool
    ps_start: np.ndarray     # (k,) full-sample propensity coefficients
    outcomes: dict[str, Outcome]

    @classmethod
    def build(cls, design, treated, ps_start, outcomes: dict[str, tuple[object, object, float]]) -> BootstrapProblem:
        """``outcomes`` maps a name to (time, event, full-sample log hazard ratio); the Cox models' covariate is
        ``treated``."""
        treated = np.asarray(treated, dtype=bool)

        def outcome(time, event, log_hr: float) -> Outcome:
            e = np.asarray(event, dtype=int) == 1
            return Outcome(risk_sets(time, event, treated.astype(float)), (e & treated).astype(float),
                           (e & ~treated).astype(float), float(log_hr))

        return cls(design=np.asarray(design, dtype=float), treated=treated, ps_start=np.asarray(ps_start, dtype=float),
                   outcomes={name: outcome(*spec) for name, spec in outcomes.items()})

    @property
    def n(self) -> int:
        return len(self.treated)


def fit_logistic(X: np.ndarray, y: np.ndarray, freq: np.ndarray, start: np.ndarray, *, tol: float = 1e-8,
                 max_iter: int = _MAX_IRLS) -> np.ndarray:
    """Logistic regression with frequency weights by IRLS (Newton's method: the logit link is canonical).

    Written here, not statsmodels' GLM (which fits the full sample): the same iterations and stopping rule (the
    deviance changes by at most ``tol``), but statsmodels spends about ten times longer per fit on model set-up and
    a least-squares solve of the n-row system, and the bootstrap fits it a thousand times. The normal equations are
    solved by least squares, so collinear columns give statsmodels' fitted values (its pinv) instead of an error.
    """
    beta = start.astype(float).copy()

    def deviance(eta: np.ndarray) -> float:  # -2 log L = 2 sum f (log(1 + e^eta) - y eta), stable for large |eta|
        return float(2 * (freq @ np.logaddexp(0, eta) - fy @ eta))

    fy = freq * y
    eta = X @ beta
    dev = deviance(eta)
    for _ in range(max_iter):
        mu = 1 / (1 + np.exp(-eta))
        info = (X * (freq * mu * (1 - mu))[:, None]).T @ X
        beta = beta + np.linalg.lstsq(info, X.T @ (fy - freq * mu), rcond=None)[0]
        eta = X @ beta
        new_dev = deviance(eta)
        if not np.isfinite(new_dev):
            raise np.linalg.LinAlgError("the propensity refit overflowed")
        done, dev = abs(new_dev - dev) <= tol, new_dev
        if done:
            break
    return beta


def replicate(problem: BootstrapProblem, seed: int, r: int) -> dict[str, float]:
    """Hazard ratio per outcome in replicate r (an outcome is missing when a group has no event in the resample or
    the Cox fit does not converge; the whole replicate when the propensity model cannot be refitted)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(r,)))
    freq = np.bincount(rng.integers(0, problem.n, problem.n), minlength=problem.n).astype(float)
    drawn = freq > 0
    t = problem.treated
    if t[drawn].all() or not t[drawn].any():
        return {}
    # The refit's design, as design_matrix() gives on the resample: columns constant among the drawn patients dropped.
    X = problem.design[drawn]
    keep = np.ones(X.shape[1], dtype=bool)
    keep[1:] = np.ptp(X[:, 1:], axis=0) > 0
    if not keep.all():
        X = X[:, keep]
    try:
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            coef = fit_logistic(X, t[drawn].astype(float), freq[drawn], problem.ps_start[keep])
    except np.linalg.LinAlgError:
        return {}
    # IPTW weights of the drawn patients times their multiplicities (an infinite weight, from a separating refit,
    # makes the Cox fits fail and the outcomes skipped, as before).
    with np.errstate(over="ignore", divide="ignore"):
        ps = 1 / (1 + np.exp(-(X @ coef)))
        case_weight = np.zeros(problem.n)
        case_weight[drawn] = np.where(t[drawn], 1 / ps, 1 / (1 - ps)) * freq[drawn]
    ratios = {}
    for name, o in problem.outcomes.items():
        if freq @ o.treated_event == 0 or freq @ o.control_event == 0:
            continue
        try:
            beta = cox_coefficient(o.rs, case_weight, freq, init=None if math.isnan(o.log_hr) else np.array([o.log_hr]))
        except (CoxConvergenceError, np.linalg.LinAlgError):
            continue
        ratios[name] = float(np.exp(beta[0]))
    return ratios


_WORKER: BootstrapProblem | None = None


def _init_worker(problem: BootstrapProblem) -> None:
    global _WORKER
    _WORKER = problem
    threadpool_limits(limits=1, user_api="blas")  # for the worker's lifetime: see analytics/parallel.py


def _run_chunk(seed: int, rs: range) -> list[dict[str, float]]:
    assert _WORKER is not None  # noqa: S101 - set by the pool's initializer
    return [replicate(_WORKER, seed, r) for r in rs]


def run(problem: BootstrapProblem, replicates: int, seed: int, n_jobs: int = 1) -> dict[str, list[float]]:
    """Hazard ratios per outcome over ``replicates`` replicates, in replicate order whatever ``n_jobs``.

    The workers receive the problem once and the replicates in chunks. They are forked from a fork server (see
    ``worker_context``), never from this process, which may hold threads (a Dagster step does)."""
    jobs = min(resolve_jobs(n_jobs), max(replicates, 1))
    if jobs == 1:
        results = [replicate(problem, seed, r) for r in range(replicates)]
    else:
        size = max(1, math.ceil(replicates / (jobs * 4)))
        chunks = [range(a, min(a + size, replicates)) for a in range(0, replicates, size)]
        with ProcessPoolExecutor(jobs, mp_context=worker_context(), initializer=_init_worker,
                                 initargs=(problem,)) as pool:
            results = [hr for part in pool.map(_run_chunk, [seed] * len(chunks), chunks) for hr in part]
    return {name: [res[name] for res in results if name in res] for name in problem.outcomes}
