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

import pandas as pd

from .balance import kish_ess, standardized_differences
from .cox import CoxConvergenceError, fit_cox
from .km import weighted_km
from .logrank import iptw_logrank, logrank
from .propensity import (PropensityModelError, c_statistic, design_matrix, fit_propensity, iptw_weights, overlap,
                         truncate)

OUTCOMES = ("death", "relapse", "resp_relapse")
RETROSPECTIVE_COMPARISONS: dict[str, str | None] = {
    "tacrolimus_vs_conventional": None, "tacrolimus_vs_CTX": "CTX", "tacrolimus_vs_MTX": "MTX",
    "tacrolimus_vs_AZA": "AZA"}
PROSPECTIVE_COMPARISON = "combination_vs_tacrolimus"
EFFECT_COLUMNS = ["analysis", "comparison", "outcome", "hazard_ratio", "ci_lower", "ci_upper", "p_value", "logrank_p",
                  "n_treated", "n_control", "events_treated", "events_control"]
CURVE_COLUMNS = ["analysis", "comparison", "outcome", "group", "time_days", "survival", "ci_lower", "ci_upper",
                 "n_at_risk"]
WEIGHT_COLUMNS = ["patient_key", "analysis", "propensity_score", "weight", "stabilized_weight"]
BALANCE_COLUMNS = ["analysis", "covariate", "smd_unweighted", "smd_weighted"]


@dataclass
class StudyResults:
    iptw_weights: pd.DataFrame
    covariate_balance: pd.DataFrame
    effect_estimates: pd.DataFrame
    survival_curves: pd.DataFrame
    diagnostics: dict[str, dict[str, Any]] = field(default_factory=dict)


def _not_estimable(analysis: str, comparison: str, outcome: str, frame: pd.DataFrame, treated: pd.Series) -> dict[str, Any]:
    event = frame[f"{outcome}_event"]
    return {"analysis": analysis, "comparison": comparison, "outcome": outcome,
            "n_treated": int(treated.sum()), "n_control": int((~treated).sum()),
            "events_treated": int(event[treated].sum()), "events_control": int(event[~treated].sum()),
            "hazard_ratio": math.nan, "ci_lower": math.nan, "ci_upper": math.nan, "p_value": math.nan,
            "logrank_p": math.nan}


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
    row["logrank_p"] = (iptw_logrank(time, event, treated.astype(int), weights).p_value if weights is not None
                        else logrank(time, event, treated.astype(int)).p_value)
    return row


def _curves(analysis: str, comparison: str, outcome: str, frame: pd.DataFrame, treated: pd.Series,
            labels: tuple[str, str], weights: pd.Series | None) -> pd.DataFrame:
    parts = []
    for flag, label in ((True, labels[0]), (False, labels[1])):
        m = treated == flag
        if not m.any():
            continue
        km = weighted_km(frame.loc[m, f"{outcome}_days"], frame.loc[m, f"{outcome}_event"],
                         None if weights is None else weights[m], variance="robust" if weights is not None else "greenwood")
        parts.append(km.assign(analysis=analysis, comparison=comparison, outcome=outcome, group=label))
    return pd.concat(parts, ignore_index=True)[CURVE_COLUMNS] if parts else pd.DataFrame(columns=CURVE_COLUMNS)


def retrospective_comparison(cohort: pd.DataFrame, comparison: str, agent: str | None) -> StudyResults:
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
    effects = [_effect_row(name, comparison, outcome, frame, treated, weights)
               for name, weights in analyses.items() for outcome in OUTCOMES]
    curves = pd.concat([_curves("primary", comparison, outcome, frame, treated, ("tacrolimus", control_label),
                                w["weight"]) for outcome in OUTCOMES], ignore_index=True)
    balance = standardized_differences(design_matrix(frame), treated, w["weight"]).assign(analysis=comparison)
    weights_table = pd.DataFrame({"patient_key": frame["patient_key"], "analysis": comparison,
                                  "propensity_score": w["propensity_score"], "weight": w["weight"],
                                  "stabilized_weight": w["stabilized_weight"]})
    diagnostics = {"c_statistic": c_statistic(treated, fit.scores), **overlap(treated, fit.scores),
                   "ess_treated": kish_ess(w.loc[treated, "weight"]), "ess_control": kish_ess(w.loc[~treated, "weight"]),
                   "max_weight": float(w["weight"].max()),
                   "coefficients": {k: float(v) for k, v in fit.coefficients.items()}}
    return StudyResults(weights_table[WEIGHT_COLUMNS], balance[BALANCE_COLUMNS], pd.DataFrame(effects, columns=EFFECT_COLUMNS),
                        curves, {comparison: diagnostics})


def prospective_comparison(cohort: pd.DataFrame) -> StudyResults:
    treated = cohort["group"].eq("combination")
    effects = [_effect_row("primary", PROSPECTIVE_COMPARISON, o, cohort, treated, None) for o in OUTCOMES]
    curves = pd.concat([_curves("primary", PROSPECTIVE_COMPARISON, o, cohort, treated, ("combination", "tacrolimus"), None)
                        for o in OUTCOMES], ignore_index=True)
    return StudyResults(pd.DataFrame(columns=WEIGHT_COLUMNS), pd.DataFrame(columns=BALANCE_COLUMNS),
                        pd.DataFrame(effects, columns=EFFECT_COLUMNS), curves)


def study_results(cohort: pd.DataFrame, prospective_cohort: pd.DataFrame | None = None) -> StudyResults:
    """Every comparison of the contract, stacked into the four result tables."""
    parts = [retrospective_comparison(cohort, name, agent) for name, agent in RETROSPECTIVE_COMPARISONS.items()]
    if prospective_cohort is not None and len(prospective_cohort):
        parts.append(prospective_comparison(prospective_cohort))

    def stack(attr: str, columns: list[str]) -> pd.DataFrame:
        frames = [getattr(p, attr) for p in parts if len(getattr(p, attr))]
        return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)

    diagnostics: dict[str, dict[str, Any]] = {}
    for p in parts:
        diagnostics.update(p.diagnostics)
    return StudyResults(stack("iptw_weights", WEIGHT_COLUMNS), stack("covariate_balance", BALANCE_COLUMNS),
                        stack("effect_estimates", EFFECT_COLUMNS), stack("survival_curves", CURVE_COLUMNS), diagnostics)
