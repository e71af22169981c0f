"""The retrospective cohort of study-contract.md section 2: inclusion, exclusions in attrition
order, index date, treatment groups, covariates, follow-up, death, relapse and respiratory relapse.

Pure: facts in, tables out. Patients are identified by their FHIR id here; pseudonymisation
happens where the tables are written.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import pandas as pd

from .facts import CONVENTIONAL, IMMUNOSUPPRESSANTS, StudyFacts
from .params import RuleParams
from .patient import PatientRecord, completed_years, group_facts

ATTRITION_REASONS = (
    "no_iim_condition", "no_ild_condition", "inclusion_body_myositis", "overlap_myositis", "juvenile_dm",
    "malignancy_within_3y", "no_qualifying_immunosuppressant", "no_glucocorticoid_at_index",
    "index_outside_window", "age_under_18", "mixed_exposure", "death_date_unknown",
)
IIM_CONCEPTS = ("dermatomyositis", "polymyositis", "dermatopolymyositis_unspecified", "cadm", "antisynthetase_syndrome")
COHORT_COLUMNS = [
    "patient_id", "group", "conventional_agent", "index_date", "age", "sex", "diagnosis_subset",
    "initial_pred_mg_day", "plasma_exchange", "ivig", "followup_days", "death_event", "death_days",
    "relapse_event", "relapse_days", "resp_relapse_event", "resp_relapse_days",
]


@dataclass(frozen=True)
class RetrospectiveResult:
    cohort: pd.DataFrame          # COHORT_COLUMNS
    attrition: pd.DataFrame       # cohort, step, reason, n_excluded, n_remaining
    exclusions: pd.DataFrame      # patient_id, reason (every patient not in the cohort)
    relapse_detail: pd.DataFrame  # patient_id, kind, day, category, ferritin_esr, radiological, gc_increase
    data_quality: pd.DataFrame    # cohort, issue, n_patients


def select(patient: PatientRecord) -> tuple[str | None, date | None]:
    """The first failed rule in attrition order (None when included) and the index date if known."""
    p = patient.p
    iim = patient.dx_dates(*IIM_CONCEPTS)
    if not iim:
        return "no_iim_condition", None
    ild = patient.dx_dates("ild")
    if not ild:
        return "no_ild_condition", None
    for concept, reason in (("inclusion_body_myositis", "inclusion_body_myositis"),
                            ("overlap_myositis", "overlap_myositis"), ("juvenile_dm", "juvenile_dm")):
        if patient.dx_dates(concept):
            return reason, None
    first_iim = iim[0]
    if any(abs((d - first_iim).days) <= p.malignancy_days for d in patient.dx_dates("malignancy")):
        return "malignancy_within_3y", None
    candidates = patient.exposures(*IMMUNOSUPPRESSANTS)
    if not candidates.empty:
        candidates = candidates[candidates["start"] >= ild[0] - timedelta(days=p.ild_lookback_days)]
    if candidates.empty:
        return "no_qualifying_immunosuppressant", None
    gc = patient.exposures("glucocorticoid")
    index = None
    for start in sorted(candidates["start"].unique()):
        lo, hi = start - timedelta(days=p.gc_at_index_days), start + timedelta(days=p.gc_at_index_days)
        if not gc.empty and ((gc["start"] <= hi) & (gc["end"] >= lo)).any():
            index = start
            break
    if index is None:
        return "no_glucocorticoid_at_index", None
    if not (p.window_start <= index <= p.window_end):
        return "index_outside_window", index
    born = patient.row.birth_date
    if born is None or pd.isna(born):
        patient.quality.add("birth_date_missing")
        return "age_under_18", index
    if completed_years(born, index) < p.min_age:
        return "age_under_18", index
    agents = patient.agents_in_first_year(index)
    if "tacrolimus" in agents and agents & set(CONVENTIONAL):
        return "mixed_exposure", index
    if patient.row.deceased and (patient.row.deceased_date is None or pd.isna(patient.row.deceased_date)):
        return "death_date_unknown", index
    return None, index


def derive_retrospective(facts: StudyFacts, params: RuleParams) -> RetrospectiveResult:
    grouped = group_facts(facts)
    rows, exclusions, details = [], [], []
    quality: dict[str, set[str]] = {}
    for row in facts.patients.itertuples(index=False):
        patient = PatientRecord(row.patient_id, row, grouped, params)
        reason, index = select(patient)
        if reason is None and index is not None:
            fu = patient.followup(index)
            events, detail = patient.relapses(index, fu["followup_days"])
            group = "tacrolimus" if "tacrolimus" in patient.agents_in_first_year(index) else "conventional"
            cov = patient.covariates(index)
            if group == "tacrolimus":
                cov["conventional_agent"] = None
            rows.append({"patient_id": row.patient_id, "group": group, "index_date": index, **cov, **fu, **events})
            details += detail
        else:
            exclusions.append({"patient_id": row.patient_id, "reason": reason})
        for issue in patient.quality:
            quality.setdefault(issue, set()).add(row.patient_id)
        if row.deceased and (row.deceased_date is None or pd.isna(row.deceased_date)):
            quality.setdefault("death_date_unknown", set()).add(row.patient_id)

    for issue_row in facts.quality.itertuples(index=False):
        quality.setdefault(issue_row.issue, set()).add(issue_row.patient_id)
    cohort = pd.DataFrame(rows, columns=COHORT_COLUMNS).sort_values("patient_id").reset_index(drop=True)
    excluded = pd.DataFrame(exclusions, columns=["patient_id", "reason"])
    return RetrospectiveResult(
        cohort=cohort,
        attrition=attrition_table("retrospective", len(facts.patients), excluded["reason"], ATTRITION_REASONS),
        exclusions=excluded,
        relapse_detail=pd.DataFrame(details, columns=["patient_id", "kind", "day", "category", "ferritin_esr",
                                                      "radiological", "gc_increase"]),
        data_quality=pd.DataFrame([{"cohort": "retrospective", "issue": k, "n_patients": len(v)}
                                   for k, v in sorted(quality.items())], columns=["cohort", "issue", "n_patients"]),
    )


def attrition_table(cohort: str, n_total: int, reasons: pd.Series, order: tuple[str, ...]) -> pd.DataFrame:
    """Step 0 is everyone; each later step removes the patients whose first failed rule it is."""
    counts = reasons.value_counts()
    rows = [{"cohort": cohort, "step": 0, "reason": "all_patients", "n_excluded": 0, "n_remaining": n_total}]
    remaining = n_total
    for step, reason in enumerate(order, start=1):
        n = int(counts.get(reason, 0))
        remaining -= n
        rows.append({"cohort": cohort, "step": step, "reason": reason, "n_excluded": n, "n_remaining": remaining})
    return pd.DataFrame(rows)
