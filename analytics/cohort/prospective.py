"""The prospective cohort of study-contract.md section 3: enrolment, tacrolimus with or without
low-dose pirfenidone, withdrawals and losses, and the visit values of scales, HRCT, labs and
glucocorticoid dose.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Iterable

import pandas as pd

from .facts import StudyFacts
from .params import RuleParams
from .patient import PatientRecord, Row, group_facts, present, rows_of
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


def _select(patient: PatientRecord, enrolment: list[Row], pp: ProspectiveParams) -> tuple[str | None, dict[str, Any]]:
    """The first failed §3 rule (None when included) and what was learnt on the way."""
    info: dict[str, Any] = {"enrolment_date": min((e.start for e in enrolment if present(e.start)), default=None)}
    enrolled = info["enrolment_date"]
    if any(not present(e.start) for e in enrolment):  # no enrolment date to place in the window: shown, not silent
        patient.quality.add("research_subject_without_date")
    if enrolled is None or not (pp.enrolment_start <= enrolled <= pp.enrolment_end):
        return "enrolment_outside_window", info
    # Index: the earliest tacrolimus statement still running on or after enrolment.
    tac = [r for r in patient.exposures("tacrolimus") if r.end >= enrolled]
    if not tac:
        return "no_tacrolimus", info
    index = min(r.start for r in tac)
    info["index_date"] = index
    horizon = index + timedelta(days=pp.rules.followup_days)
    pirf = [r for r in patient.exposures("pirfenidone") if r.start <= horizon and r.end >= index]
    info["pirfenidone_mg_day"] = None
    if pirf:
        # The dose is the daily total: overlapping statements (explicit ends) add, as for glucocorticoids.
        total, covered = patient.daily_doses("pirfenidone", index, horizon)
        daily = total[covered]
        low, high = pp.pirfenidone_low_mg_day
        unknown = any(not present(r.daily_dose_mg) for r in pirf)
        if unknown:
            patient.quality.add("pirfenidone_dose_not_computable")
        first_start = min(r.start for r in pirf)
        if unknown or not len(daily) or not ((daily >= low) & (daily <= high)).all() or \
                (first_start - index).days > pp.pirfenidone_start_max_days:
            return "pirfenidone_other_dose", info
        info["pirfenidone_mg_day"] = float(daily.max())
    death = patient.row.deceased_date if present(patient.row.deceased_date) else None
    died_in_year = death is not None and death < horizon
    closed = [e.end for e in enrolment if e.status in pp.withdrawal_statuses and present(e.end)]
    if any(e.status in pp.withdrawal_statuses and not present(e.end) for e in enrolment):
        patient.quality.add("withdrawal_without_date")  # cannot be placed before or after 12 months: no withdrawal
    if not died_in_year and any(end < horizon for end in closed):
        return "withdrawn_before_12m", info
    if not died_in_year and patient.last_contact(index) < horizon:
        return "lost_to_follow_up_before_12m", info
    if bool(patient.row.deceased) and death is None:
        return "death_date_unknown", info
    return None, info


def _anti_mda5(patient: PatientRecord, index: date) -> int | None:
    """The latest anti-MDA5 result up to the end of the baseline window (index + 7 d); of a positive and a
    negative result on that same day, the positive (the order the server listed them in cannot decide)."""
    last_day = index + timedelta(days=VISITS[0][1])
    results = [(o.date, bool(o.value_boolean) if present(o.value_boolean) else o.value_code == "positive")
               for o in patient.obs if o.concept == "anti_mda5" and o.date <= last_day
               and (present(o.value_boolean) or o.value_code in ("positive", "negative"))]
    if not results:
        return None
    return int(max(results)[1])


def visit_values(patient: PatientRecord, index: date, followup_days: int) -> list[dict[str, Any]]:
    """For each measure and visit: the observation closest to the nominal day (the earlier on a tie).

    Several results on that same day (a duplicate entry) are resolved by the lowest value, so the
    choice is deterministic and does not depend on how the hospital writes its resource ids. The
    glucocorticoid dose at a visit is the prednisolone-equivalent total on the nominal day, for visits
    within follow-up only (after death or the last contact a zero dose would be invented, not observed).
    """
    rows: list[dict[str, Any]] = []
    measured = [((o.date - index).days, o.concept, float(o.value)) for o in patient.obs
                if o.concept in VISIT_MEASURES and present(o.value)]
    for month, (lo, hi, nominal) in VISITS.items():
        # Same-day results are ordered by value, not by resource id: ids are the hospital's choice.
        window = sorted((concept, abs(day - nominal), day, value) for day, concept, value in measured if lo <= day <= hi)
        seen: set[str] = set()
        for concept, _, day, value in window:
            if concept not in seen:
                seen.add(concept)
                rows.append({"patient_id": patient.pid, "measure": concept, "visit_month": month,
                             "nominal_day": nominal, "day": int(day), "value": value})
        if nominal > followup_days:
            continue
        gc = patient.gc_daily(index + timedelta(days=nominal), index + timedelta(days=nominal))[0]
        rows.append({"patient_id": patient.pid, "measure": "gc_pred_mg_day", "visit_month": month,
                     "nominal_day": nominal, "day": nominal, "value": float(gc)})
    return rows


@dataclass
class ProspectivePart:
    """The §3 outcomes of one set of patients, before assembly (see ``retrospective.RetrospectivePart``)."""

    enrolled: set[str] = field(default_factory=set)  # enrolled patient ids, present in the Patient table or not
    rows: list[dict[str, Any]] = field(default_factory=list)
    visits: list[dict[str, Any]] = field(default_factory=list)
    exclusions: list[dict[str, Any]] = field(default_factory=list)
    quality: dict[str, set[str]] = field(default_factory=dict)

    def cohort(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=COHORT_COLUMNS).sort_values("patient_id").reset_index(drop=True)


def prospective_part(facts: StudyFacts, params: ProspectiveParams, grouped: dict[str, dict[str, Any]] | None = None) -> ProspectivePart:
    enrolments = facts.enrolments
    # A boolean mask built as such: .apply over no enrolments gives an object Series, which would select columns.
    in_study = enrolments[pd.Series([params.study_identifier in str(ids).split(";") for ids in enrolments["study_identifiers"].fillna("")],
                                    index=enrolments.index, dtype=bool)]
    # Enrolled = in the study and in the Patient table. A subject whose patient the server lacks has no record the
    # rules could read, so it could never be excluded and the attrition would not add up to the cohort; it is
    # reported as reference_to_absent_patient in data quality instead (facts.build_facts).
    part = ProspectivePart(enrolled=set(in_study["patient_id"].dropna()) & set(facts.patients["patient_id"]))
    grouped = grouped if grouped is not None else group_facts(facts)
    enrolment_of: dict[str, list[Row]] = {}
    for e in rows_of(in_study):
        enrolment_of.setdefault(e.patient_id, []).append(e)
    for row in facts.patients[facts.patients["patient_id"].isin(part.enrolled)].itertuples(index=False):
        patient = PatientRecord(row.patient_id, row, grouped, params.rules)
        reason, info = _select(patient, enrolment_of[row.patient_id], params)
        if reason is None:
            index = info["index_date"]
            fu = patient.followup(index)
            events, _ = patient.relapses(index, fu["followup_days"])
            cov = patient.covariates(index)
            cov.pop("conventional_agent")
            patient_visits = visit_values(patient, index, fu["followup_days"])
            hrct_months = {v["visit_month"] for v in patient_visits if v["measure"] == "hrct_score"}
            part.rows.append({"patient_id": row.patient_id,
                              "group": "combination" if info["pirfenidone_mg_day"] is not None else "tacrolimus",
                              **info, **cov, "anti_mda5": _anti_mda5(patient, index), **fu, **events,
                              "hrct_analysable": int({0, 12} <= hrct_months and not fu["death_event"])})
            part.visits += patient_visits
        else:
            part.exclusions.append({"patient_id": row.patient_id, "reason": reason})
        for issue in patient.quality:
            part.quality.setdefault(issue, set()).add(row.patient_id)
    return part


def assemble_prospective(parts: Iterable[ProspectivePart]) -> ProspectiveResult:
    parts = list(parts)
    quality: dict[str, set[str]] = {}
    for part in parts:
        for issue, pids in part.quality.items():
            quality.setdefault(issue, set()).update(pids)
    excluded = pd.DataFrame([e for part in parts for e in part.exclusions], columns=["patient_id", "reason"])
    enrolled = set().union(*(part.enrolled for part in parts))
    return ProspectiveResult(
        cohort=pd.DataFrame([r for part in parts for r in part.rows], columns=COHORT_COLUMNS)
        .sort_values("patient_id").reset_index(drop=True),
        visits=pd.DataFrame([v for part in parts for v in part.visits], columns=VISIT_COLUMNS),
        attrition=attrition_table("prospective", len(enrolled), excluded["reason"], ATTRITION_REASONS),
        exclusions=excluded,
        data_quality=pd.DataFrame([{"cohort": "prospective", "issue": k, "n_patients": len(v)}
                                   for k, v in sorted(quality.items())], columns=["cohort", "issue", "n_patients"]),
    )


def derive_prospective(facts: StudyFacts, params: ProspectiveParams) -> ProspectiveResult:
    return assemble_prospective([prospective_part(facts, params)])
