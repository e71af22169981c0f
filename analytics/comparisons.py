"""The study's comparisons, from cohort tables to the contract's result tables.

Retrospective: tacrolimus vs conventional and vs CTX, MTX and AZA, each with its own propensity
model (refit within the pair), IPTW-weighted Cox with robust CI (analyses ``primary`` = the
paper's ATE weights, ``stabilized``, ``truncated_1_99``), the design-based IPTW log-rank, and
IPTW Kaplan-Meier curves. Prospective: combination vs tacrolimus, unweighted (Cox with its
model-based SE, the classical log-rank, Kaplan-Meier with Greenwood's variance).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .balance import kish_ess, standardized_differences
from .bootstrap import BootstrapProblem
from .bootstrap import run as run_bootstrap
from .catalog import columns_of
from .cox import CoxConvergenceError, fit_cox
from .extras import aalen_johansen, e_value, rmst_difference_of
from .km import KaplanMeier, curve_table, kaplan_meier
from .logrank import iptw_logrank, logrank, xie_liu_logrank
from .parallel import single_threaded_blas
from .propensity import PropensityFit, PropensityModelError, c_statistic, fit_propensity, iptw_weights, overlap, truncate

OUTCOMES = ("death", "relapse", "resp_relapse")
RETROSPECTIVE_COMPARISONS: dict[str, str | None] = {
    "tacrolimus_vs_conventional": None, "tacrolimus_vs_CTX": "CTX", "tacrolimus_vs_MTX": "MTX",
    "tacrolimus_vs_AZA": "AZA"}
PROSPECTIVE_COMPARISON = "combination_vs_tacrolimus"
# Column orders are the catalog's (analytics.catalog): one place documents and orders every published column.
EFFECT_COLUMNS = columns_of("effect_estimates")
CURVE_COLUMNS = columns_of("survival_curves")
WEIGHT_COLUMNS = columns_of("iptw_weights")
BALANCE_COLUMNS = columns_of("covariate_balance")
RMST_COLUMNS = columns_of("rmst_differences")
E_VALUE_COLUMNS = columns_of("e_values")
CIF_COLUMNS = columns_of("cumulative_incidence")
COMMON_OUTCOME = 0.15  # VanderWeele & Ding: above this cumulative incidence the HR is converted to a risk ratio


@dataclass
class StudyResults:
    iptw_weights: pd.DataFrame
    covariate_balance: pd.DataFrame
    effect_estimates: pd.DataFrame
    survival_curves: pd.DataFrame
    diagnostics: dict[str, dict[str, Any]] = field(default_factory=dict)
    rmst_differences: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=RMST_COLUMNS))
    e_values: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=E_VALUE_COLUMNS))
    cumulative_incidence: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=CIF_COLUMNS))


def _not_estimable(analysis: str, comparison: str, outcome: str, frame: pd.DataFrame, treated: pd.Series) -> dict[str, Any]:
    event = frame[f"{outcome}_event"]
    return {"analysis": analysis, "comparison": comparison, "outcome": outcome,
            "n_treated": int(treated.sum()), "n_control": int((~treated).sum()),
            "events_treated": int(event[treated].sum()), "events_control": int(event[~treated].sum()),
            "hazard_ratio": math.nan, "ci_lower": math.nan, "ci_upper": math.nan, "p_value": math.nan,
            "logrank_p": math.nan, "logrank_p_svy": math.nan}


def _effect_row(analysis: str, comparison: str, outcome: str, frame: pd.DataFrame, treated: pd.Series,
                weights: pd.Series | None) -> dict[str, Any]:
    time, event = frame[f"{outcome}_days"], frame[f"{outcome}_event"]
    row = _not_estimable(analysis, comparison, outcome, frame, treated)
    if min(row["events_treated"], row["events_control"]) == 0:
        return row  # a group without events has an infinite or zero hazard ratio: not estimable
    try:
        fit = fit_cox(time, event, treated.astype(int), weights).summary(robust=weights is not None)[0]
    except (CoxConvergenceError, ValueError):
        return row
    row.update({k: fit[k] for k in ("hazard_ratio", "ci_lower", "ci_upper", "p_value")})
    group = treated.astype(int)
    if weights is None:  # the prospective cohort: the classical log-rank (= Xie & Liu with unit weights)
        row["logrank_p"] = logrank(time, event, group).p_value
    else:
        row["logrank_p"] = xie_liu_logrank(time, event, group, weights).p_value
        row["logrank_p_svy"] = iptw_logrank(time, event, group, weights).p_value
    return row


def _kaplan_meiers(frame: pd.DataFrame, treated: pd.Series, weights: pd.Series | None
                   ) -> dict[str, tuple[KaplanMeier, KaplanMeier]]:
    """Per outcome, the (treated, control) curves, fitted once: the survival_curves table and the RMST come from them."""
    out = {}
    for outcome in OUTCOMES:
        arms = []
        for m in (treated, ~treated):
            arms.append(kaplan_meier(frame.loc[m, f"{outcome}_days"], frame.loc[m, f"{outcome}_event"],
                                     None if weights is None else weights[m]))
        out[outcome] = (arms[0], arms[1])
    return out


def _curves(analysis: str, comparison: str, outcome: str, curves: tuple[KaplanMeier, KaplanMeier],
            labels: tuple[str, str], weighted: bool) -> pd.DataFrame:
    parts = []
    for km, label in zip(curves, labels, strict=True):
        if not len(km.weights):
            continue
        parts.append(curve_table(km, variance="robust" if weighted else "greenwood")
                     .assign(analysis=analysis, comparison=comparison, outcome=outcome, group=label))
    return pd.concat(parts, ignore_index=True)[CURVE_COLUMNS] if parts else pd.DataFrame(columns=CURVE_COLUMNS)


def bootstrap_rows(comparison: str, frame: pd.DataFrame, treated: pd.Series, primary: pd.DataFrame,
                   replicates: int, seed: int, ps_fit: PropensityFit, n_jobs: int = 1) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """PS-refit bootstrap: resample patients, refit the propensity model and the weighted Cox, and take the
    2.5th and 97.5th percentiles of the hazard ratios (analysis ``bootstrap``; the point estimate is the
    primary one, and there is no p-value). The refits start from the full-sample fits (``ps_fit``, ``primary``)."""
    primary = primary.set_index("outcome")
    problem = BootstrapProblem.build(
        ps_fit.design, treated, ps_fit.coefficients[ps_fit.design.columns],
        {o: (frame[f"{o}_days"], frame[f"{o}_event"], math.log(primary.loc[o, "hazard_ratio"])
             if primary.loc[o, "hazard_ratio"] > 0 else math.nan) for o in OUTCOMES})
    ratios = run_bootstrap(problem, replicates, seed, n_jobs)
    rows = []
    for outcome in OUTCOMES:
        row = {**primary.loc[outcome].to_dict(), "outcome": outcome, "analysis": "bootstrap",
               "p_value": math.nan, "logrank_p": math.nan, "logrank_p_svy": math.nan}
        row["ci_lower"], row["ci_upper"] = (np.percentile(ratios[outcome], [2.5, 97.5]) if len(ratios[outcome]) >= 20
                                            else (math.nan, math.nan))
        rows.append(row)
    return rows, {f"bootstrap_replicates_{o}": len(v) for o, v in ratios.items()}


def _competing_cause(frame: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Time and cause for relapse with death as a competing risk: 1 relapse, 2 death before relapse, 0 censored."""
    death_first = (frame["relapse_event"] == 0) & (frame["death_event"] == 1) & (frame["death_days"] == frame["relapse_days"])
    cause = np.where(frame["relapse_event"] == 1, 1, np.where(death_first, 2, 0))
    return frame["relapse_days"], pd.Series(cause, index=frame.index)


def _extras(comparison: str, frame: pd.DataFrame, treated: pd.Series, effects: pd.DataFrame, labels: tuple[str, str],
            weights: pd.Series | None, curves: dict[str, tuple[KaplanMeier, KaplanMeier]]
            ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    rmst_rows, e_rows, cif_parts = [], [], []
    for outcome in OUTCOMES:
        rmst_rows.append({"comparison": comparison, "outcome": outcome, "tau_days": 365,
                          **rmst_difference_of(*curves[outcome], tau=365)})
    common = {o: frame[f"{o}_event"].mean() > COMMON_OUTCOME for o in OUTCOMES}
    for row in effects.itertuples(index=False):
        point, ci = e_value(row.hazard_ratio, row.ci_lower, row.ci_upper, common[row.outcome])
        e_rows.append({"analysis": row.analysis, "comparison": comparison, "outcome": row.outcome,
                       "hazard_ratio": row.hazard_ratio, "e_value_point": point, "e_value_ci": ci,
                       "common_outcome": int(common[row.outcome])})
    time, cause = _competing_cause(frame)
    for flag, label in ((True, labels[0]), (False, labels[1])):
        m = treated == flag
        aj = aalen_johansen(time[m], cause[m], None if weights is None else weights[m])
        cif_parts.append(aj.rename(columns={"cif_cause1": "cif_relapse", "cif_cause2": "cif_death_without_relapse"})
                         .assign(comparison=comparison, group=label))
    return (pd.DataFrame(rmst_rows, columns=RMST_COLUMNS), pd.DataFrame(e_rows, columns=E_VALUE_COLUMNS),
            pd.concat(cif_parts, ignore_index=True)[CIF_COLUMNS])


def retrospective_comparison(cohort: pd.DataFrame, comparison: str, agent: str | None, bootstrap_replicates: int = 0,
                             seed: int = 20210214, n_jobs: int = 1) -> StudyResults:
    frame = cohort if agent is None else cohort[(cohort["group"] == "tacrolimus") | (cohort["conventional_agent"] == agent)]
    frame = frame.reset_index(drop=True)
    treated = frame["group"].eq("tacrolimus")
    control_label = agent or "conventional"
    empty = StudyResults(pd.DataFrame(columns=WEIGHT_COLUMNS), pd.DataFrame(columns=BALANCE_COLUMNS),
                         pd.DataFrame(columns=EFFECT_COLUMNS), pd.DataFrame(columns=CURVE_COLUMNS))
    try:
        fit = fit_propensity(frame, treated)
    except PropensityModelError as exc:
        empty.effect_estimates = pd.DataFrame([_not_estimable("primary", comparison, o, frame, treated) for o in OUTCOMES],
                                              columns=EFFECT_COLUMNS)
        empty.diagnostics[comparison] = {"error": str(exc)}
        return empty
    w = iptw_weights(treated, fit.scores)
    analyses = {"primary": w["weight"], "stabilized": w["stabilized_weight"], "truncated_1_99": truncate(w["weight"])}
    effects = pd.DataFrame([_effect_row(name, comparison, outcome, frame, treated, weights)
                            for name, weights in analyses.items() for outcome in OUTCOMES], columns=EFFECT_COLUMNS)
    boot_info: dict[str, int] = {}
    if bootstrap_replicates:
        boot, boot_info = bootstrap_rows(comparison, frame, treated, effects[effects["analysis"] == "primary"],
                                         bootstrap_replicates, seed, fit, n_jobs)
        effects = pd.concat([effects, pd.DataFrame(boot, columns=EFFECT_COLUMNS)], ignore_index=True)
    kms = _kaplan_meiers(frame, treated, w["weight"])
    curves = pd.concat([_curves("primary", comparison, outcome, kms[outcome], ("tacrolimus", control_label), True)
                        for outcome in OUTCOMES], ignore_index=True)
    balance = standardized_differences(fit.design, treated, w["weight"]).assign(analysis=comparison)
    weights_table = pd.DataFrame({"patient_key": frame["patient_key"], "analysis": comparison,
                                  "propensity_score": w["propensity_score"], "weight": w["weight"],
                                  "stabilized_weight": w["stabilized_weight"]})
    diagnostics = {"c_statistic": c_statistic(treated, fit.scores), **overlap(treated, fit.scores),
                   "ess_treated": kish_ess(w.loc[treated, "weight"]), "ess_control": kish_ess(w.loc[~treated, "weight"]),
                   **{f"weight_{q}_{arm}": float(np.percentile(w.loc[mask, "weight"], pct))
                      for arm, mask in (("treated", treated), ("control", ~treated))
                      for q, pct in (("min", 0), ("median", 50), ("p99", 99), ("max", 100))},
                   "max_weight": float(w["weight"].max()), **boot_info,
                   "coefficients": {k: float(v) for k, v in fit.coefficients.items()}}
    rmst_table, e_table, cif = _extras(comparison, frame, treated, effects, ("tacrolimus", control_label), w["weight"],
                                       kms)
    return StudyResults(weights_table[WEIGHT_COLUMNS], balance[BALANCE_COLUMNS], effects, curves,
                        {comparison: diagnostics}, rmst_table, e_table, cif)


def prospective_comparison(cohort: pd.DataFrame) -> StudyResults:
    treated = cohort["group"].eq("combination")
    effects = [_effect_row("primary", PROSPECTIVE_COMPARISON, o, cohort, treated, None) for o in OUTCOMES]
    kms = _kaplan_meiers(cohort, treated, None)
    curves = pd.concat([_curves("primary", PROSPECTIVE_COMPARISON, o, kms[o], ("combination", "tacrolimus"), False)
                        for o in OUTCOMES], ignore_index=True)
    effects_table = pd.DataFrame(effects, columns=EFFECT_COLUMNS)
    rmst_table, e_table, cif = _extras(PROSPECTIVE_COMPARISON, cohort, treated, effects_table, ("combination", "tacrolimus"),
                                       None, kms)
    return StudyResults(pd.DataFrame(columns=WEIGHT_COLUMNS), pd.DataFrame(columns=BALANCE_COLUMNS), effects_table,
                        curves, {}, rmst_table, e_table, cif)


def study_results(cohort: pd.DataFrame, prospective_cohort: pd.DataFrame | None = None,
                  bootstrap_replicates: int = 0, seed: int = 20210214, n_jobs: int = 1) -> StudyResults:
    """Every comparison of the contract, stacked into the result tables. The bootstrap (if asked for) is run
    for the primary comparison only, in ``n_jobs`` processes (1: in this one; -1: one per CPU); its result does
    not depend on ``n_jobs``."""
    with single_threaded_blas():
        parts = [retrospective_comparison(cohort, name, agent,
                                          bootstrap_replicates if name == "tacrolimus_vs_conventional" else 0, seed, n_jobs)
                 for name, agent in RETROSPECTIVE_COMPARISONS.items()]
        if prospective_cohort is not None and len(prospective_cohort):
            parts.append(prospective_comparison(prospective_cohort))

    def stack(attr: str, columns: list[str]) -> pd.DataFrame:
        frames = [getattr(p, attr) for p in parts if len(getattr(p, attr))]
        return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)

    diagnostics: dict[str, dict[str, Any]] = {}
    for p in parts:
        diagnostics.update(p.diagnostics)
    return StudyResults(stack("iptw_weights", WEIGHT_COLUMNS), stack("covariate_balance", BALANCE_COLUMNS),
                        stack("effect_estimates", EFFECT_COLUMNS), stack("survival_curves", CURVE_COLUMNS), diagnostics,
                        stack("rmst_differences", RMST_COLUMNS), stack("e_values", E_VALUE_COLUMNS),
                        stack("cumulative_incidence", CIF_COLUMNS))
