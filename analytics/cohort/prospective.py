"""The prospective cohort of study-contract.md section 3: enrolment, tacrolimus with or without
low-dose pirfenidone, withdrawals and losses, and the visit values of scales, HRCT, labs and
glucocorticoid dose.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import pandas as pd

from .facts import StudyFacts
from .params import RuleParams
from .patient import PatientRecord, group_facts
from .retrospective import attrition_table

# The contract's five reasons, then death_date_unknown: §1 excludes a death without a date from every
# time-to-event analysis "with a reason", as the retrospective attrition does last.
ATTRITION_REASONS = ("enrolment_outside_window", "no_tacrolimus", "pirfenidone_other_dose", "withdrawn_before_12m",
                     "lost_to_follow_up_before_12m", "death_date_unknown")
# Visit month -> (first day, last day, nominal day) relative to index.
VISITS: dict[int, tuple[int, int, int]] = {0: (-14, 7, 0), 1: (15, 45, 30), 3: (60, 120, 90), 6: (150, 210, 180),
                                           12: (330, 400, 365)}
SCALES = ("6mwt", "mmrc", "patient_global_activity", "mmt8", "myoact", "mitax", "mdi", "cat", "hama", "hamd")
HRCT = ("hrct_score", "hrct_ground_glass", "hrct_consolidation", "hrct_reticular", "hrct_traction_bronchiectasis")
LABS = ("ferritin", "esr", "crp", "creatine_kinase")
VISIT_MEASURES = SCALES + HRCT + LABS
COHORT_COLUMNS = [
    "patient_id", "group", "index_date", "enrolment_date", "age", "sex", "diagnosis_subset", "initial_pred_mg_day",
    "plasma_exchange", "ivig", "pirfenidone_mg_day", "anti_mda5", "followup_days", "death_event", "death_days",
    "relapse_event", "relapse_days", "resp_relapse_event", "resp_relapse_days", "hrct_analysable",
]
VISIT_COLUMNS = ["patient_id", "measure", "visit_month", "nominal_day", "day", "value"]


@dataclass(frozen=True)
class ProspectiveParams:
    rules: RuleParams = field(default_factory=RuleParams)
    enrolment_start: date = date(2018, 1, 1)
    enrolment_end: date = date(2020, 12, 31)
    study_identifier: str = "http://www.chictr.org.cn|ChiCTR2100043595"
    pirfenidone_low_mg_day: tuple[float, float] = (600.0, 900.0)
    pirfenidone_start_max_days: int = 90
    withdrawal_statuses: tuple[str, ...] = ("off-study", "withdrawn")


@dataclass(frozen=True)
class ProspectiveResult:
    cohort: pd.DataFrame       # COHORT_COLUMNS
    visits: pd.DataFrame       # VISIT_COLUMNS, long format, one row per measure and visit with a value
    attrition: pd.DataFrame
    exclusions: pd.DataFrame   # patient_id, reason
    data_quality: pd.DataFrame  # cohort, issue, n_patients


def _select(patient: PatientRecord, enrolment: pd.DataFrame, pp: ProspectiveParams) -> tuple[str | None, dict[str, Any]]:
    """The first failed §3 rule (None when included) and what was learnt on the way."""
    info: dict[str, Any] = {"enrolment_date": min(enrolment["start"].dropna(), default=None)}
    enrolled = info["enrolment_date"]
    if enrolled is None or not (pp.enrolment_start <= enrolled <= pp.enrolment_end):
        return "enrolment_outside_window", info
    # Index: the earliest tacrolimus statement still running on or after enrolment.
    tac = patient.exposures("tacrolimus")
    tac = tac[tac["end"] >= enrolled] if not tac.empty else tac
    if tac.empty:
        return "no_tacrolimus", info
    index = min(tac["start"])
    info["index_date"] = index
    horizon = index + timedelta(days=pp.rules.followup_days)
    pirf = patient.exposures("pirfenidone")
    pirf = pirf[(pirf["start"] <= horizon) & (pirf["end"] >= index)] if not pirf.empty else pirf
    info["pirfenidone_mg_day"] = None
    if not pirf.empty:
        # The dose is the daily total: overlapping statements (explicit ends) add, as for glucocorticoids.
        total, covered = patient.daily_doses("pirfenidone", index, horizon)
        daily = total[covered]
        low, high = pp.pirfenidone_low_mg_day
        unknown = pirf["daily_dose_mg"].isna().any()
        if unknown:
            patient.quality.add("pirfenidone_dose_not_computable")
        first_start = min(pirf["start"])
        if unknown or not len(daily) or not ((daily >= low) & (daily <= high)).all() or \
                (first_start - index).days > pp.pirfenidone_start_max_days:
            return "pirfenidone_other_dose", info
        info["pirfenidone_mg_day"] = float(daily.max())
    death = patient.row.deceased_date if patient.row.deceased_date is not None and not pd.isna(patient.row.deceased_date) else None
    died_in_year = death is not None and death < horizon
    closed = enrolment[enrolment["status"].isin(pp.withdrawal_statuses) & enrolment["end"].notna()]
    if not died_in_year and (closed["end"] < horizon).any():
        return "withdrawn_before_12m", info
    if not died_in_year and patient.last_contact(index) < horizon:
        return "lost_to_follow_up_before_12m", info
    if bool(patient.row.deceased) and death is None:
        return "death_date_unknown", info
    return None, info


def _anti_mda5(patient: PatientRecord, index: date) -> int | None:
    """The latest anti-MDA5 result up to the end of the baseline window (index + 7 d); of a positive and a
    negative result on that same day, the positive (the order the server listed them in cannot decide)."""
    obs = patient.obs
    if obs.empty:
        return None
    o = obs[(obs["concept"] == "anti_mda5") & (obs["date"] <= index + timedelta(days=VISITS[0][1]))]
    o = o[o["value_boolean"].notna() | o["value_code"].isin(["positive", "negative"])]
    if o.empty:
        return None
    positive = [bool(b) if pd.notna(b) else c == "positive" for b, c in zip(o["value_boolean"], o["value_code"], strict=True)]
    latest = o.assign(positive=positive).sort_values(["date", "positive"], kind="stable").iloc[-1]
    return int(latest["positive"])


def visit_values(patient: PatientRecord, index: date, followup_days: int) -> list[dict[str, Any]]:
    """For each measure and visit: the observation closest to the nominal day (the earlier on a tie).

    Several results on that same day (a duplicate entry) are resolved by the lowest value, so the
    choice is deterministic and does not depend on how the hospital writes its resource ids. The
    glucocorticoid dose at a visit is the prednisolone-equivalent total on the nominal day, for visits
    within follow-up only (after death or the last contact a zero dose would be invented, not observed).
    """
    rows: list[dict[str, Any]] = []
    obs = patient.obs
    if not obs.empty:
        obs = obs[obs["concept"].isin(VISIT_MEASURES) & obs["value"].notna()]
        obs = obs.assign(day=[(d - index).days for d in obs["date"]])
    for month, (lo, hi, nominal) in VISITS.items():
        if not obs.empty:
            window = obs[obs["day"].between(lo, hi)]
            # Same-day results are ordered by value, not by resource id: ids are the hospital's choice.
            window = window.assign(dist=(window["day"] - nominal).abs()).sort_values(["concept", "dist", "day", "value"])
            for row in window.drop_duplicates("concept").itertuples(index=False):
                rows.append({"patient_id": patient.pid, "measure": row.concept, "visit_month": month,
                             "nominal_day": nominal, "day": int(row.day), "value": float(row.value)})
        if nominal > followup_days:
            continue
        gc = patient.gc_daily(index + timedelta(days=nominal), index + timedelta(days=nominal))[0]
        rows.append({"patient_id": patient.pid, "measure": "gc_pred_mg_day", "visit_month": month,
                     "nominal_day": nominal, "day": nominal, "value": float(gc)})
    return rows


def derive_prospective(facts: StudyFacts, params: ProspectiveParams) -> ProspectiveResult:
    enrolments = facts.enrolments
    in_study = enrolments[enrolments["study_identifiers"].fillna("").str.split(";").apply(
        lambda ids: params.study_identifier in ids)]
    enrolled_ids = set(in_study["patient_id"].dropna())
    grouped = group_facts(facts)
    rows, visits, exclusions = [], [], []
    quality: dict[str, set[str]] = {}
    for row in facts.patients[facts.patients["patient_id"].isin(enrolled_ids)].itertuples(index=False):
        patient = PatientRecord(row.patient_id, row, grouped, params.rules)
        reason, info = _select(patient, in_study[in_study["patient_id"] == row.patient_id], params)
        if reason is None:
            index = info["index_date"]
            fu = patient.followup(index)
            events, _ = patient.relapses(index, fu["followup_days"])
            cov = patient.covariates(index)
            cov.pop("conventional_agent")
            patient_visits = visit_values(patient, index, fu["followup_days"])
            hrct_months = {v["visit_month"] for v in patient_visits if v["measure"] == "hrct_score"}
            rows.append({"patient_id": row.patient_id,
                         "group": "combination" if info["pirfenidone_mg_day"] is not None else "tacrolimus",
                         **info, **cov, "anti_mda5": _anti_mda5(patient, index), **fu, **events,
                         "hrct_analysable": int({0, 12} <= hrct_months and not fu["death_event"])})
            visits += patient_visits
        else:
            exclusions.append({"patient_id": row.patient_id, "reason": reason})
        for issue in patient.quality:
            quality.setdefault(issue, set()).add(row.patient_id)
    excluded = pd.DataFrame(exclusions, columns=["patient_id", "reason"])
    return ProspectiveResult(
        cohort=pd.DataFrame(rows, columns=COHORT_COLUMNS).sort_values("patient_id").reset_index(drop=True),
        visits=pd.DataFrame(visits, columns=VISIT_COLUMNS),
        attrition=attrition_table("prospective", len(enrolled_ids), excluded["reason"], ATTRITION_REASONS),
        exclusions=excluded,
        data_quality=pd.DataFrame([{"cohort": "prospective", "issue": k, "n_patients": len(v)}
                                   for k, v in sorted(quality.items())], columns=["cohort", "issue", "n_patients"]),
    )
