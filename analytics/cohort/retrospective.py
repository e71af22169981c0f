"""The retrospective cohort of study-contract.md section 2: inclusion, exclusions in attrition
order, index date, treatment groups, covariates, follow-up, death, relapse and respiratory relapse.

Pure: facts in, tables out. Patients are identified by their FHIR id here; pseudonymisation
happens where the tables are written.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Iterable, Mapping

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
    # Inclusion and the exclusions without a window ask only whether a diagnosis exists: an undated Condition counts.
    if not patient.has_dx(*IIM_CONCEPTS):
        return "no_iim_condition", None
    if not patient.has_dx("ild"):
        return "no_ild_condition", None
    for concept, reason in (("inclusion_body_myositis", "inclusion_body_myositis"),
                            ("overlap_myositis", "overlap_myositis"), ("juvenile_dm", "juvenile_dm")):
        if patient.has_dx(concept):
            return reason, None
    # The rules measured from a date read dated Conditions only: without a dated IIM, or for an undated malignancy,
    # the 3-year window cannot be placed and does not exclude; without a dated ILD no statement can qualify.
    iim = patient.dx_dates(*IIM_CONCEPTS)
    if iim and any(abs((d - iim[0]).days) <= p.malignancy_days for d in patient.dx_dates("malignancy")):
        return "malignancy_within_3y", None
    if patient.has_dx("malignancy") and (not iim or patient.has_undated_dx("malignancy")):
        # A malignancy that cannot be placed in the window: not excluded, and shown (the attrition cannot say so).
        patient.quality.add("malignancy_window_not_evaluable")
    ild = patient.dx_dates("ild")
    if not ild:
        # Only undated ILD: no look-back can be measured, so no statement qualifies; shown, since the attrition
        # reason alone would read as "no immunosuppressant".
        patient.quality.add("ild_lookback_not_evaluable")
        return "no_qualifying_immunosuppressant", None
    earliest = ild[0] - timedelta(days=p.ild_lookback_days)
    candidates = [r for r in patient.exposures(*IMMUNOSUPPRESSANTS) if r.start >= earliest]
    if not candidates:
        return "no_qualifying_immunosuppressant", None
    gc = patient.exposures("glucocorticoid")
    index = None
    for start in sorted({r.start for r in candidates}):
        lo, hi = start - timedelta(days=p.gc_at_index_days), start + timedelta(days=p.gc_at_index_days)
        if any(g.start <= hi and g.end >= lo for g in gc):
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
    if death_date_unknown(patient.row):
        return "death_date_unknown", index
    return None, index


def death_date_unknown(row: Any) -> bool:
    """A patient recorded as deceased without a date (§1: excluded from time-to-event analyses, counted)."""
    return bool(row.deceased) and (row.deceased_date is None or pd.isna(row.deceased_date))


@dataclass
class RetrospectivePart:
    """The rule outcomes of one set of patients (a chunk of the hospital, or all of it), before assembly.

    Quality is kept as sets of patients, not counts: a patient's issues may be found in more than one
    part (an absent patient referenced from two chunks), and the table counts each patient once."""

    n_patients: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    exclusions: list[dict[str, Any]] = field(default_factory=list)
    details: list[dict[str, Any]] = field(default_factory=list)
    quality: dict[str, set[str]] = field(default_factory=dict)

    def cohort(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=COHORT_COLUMNS).sort_values("patient_id").reset_index(drop=True)


def retrospective_part(facts: StudyFacts, params: RuleParams, grouped: dict[str, dict[str, Any]] | None = None) -> RetrospectivePart:
    """Every rule for the patients of ``facts``, with every data-quality issue found in them (``grouped``:
    ``group_facts(facts)``, when the caller has it already)."""
    grouped = grouped if grouped is not None else group_facts(facts)
    part = RetrospectivePart(n_patients=len(facts.patients))
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
            part.rows.append({"patient_id": row.patient_id, "group": group, "index_date": index, **cov, **fu, **events})
            part.details += detail
        else:
            part.exclusions.append({"patient_id": row.patient_id, "reason": reason})
        for issue in patient.quality:
            part.quality.setdefault(issue, set()).add(row.patient_id)
    add_fact_quality(part.quality, facts)
    return part


def without_iim_or_ild_codes(facts: StudyFacts) -> RetrospectivePart:
    """Patients known (from their Conditions' codings, ``scope.carries_iim``) to have no Condition coded IIM
    under any status: each fails the first rule, ``no_iim_condition``, whatever else their record holds, so no
    rule is run. (The selection is IIM only: an ILD code alone does not make a candidate; the name is kept for
    its callers.) ``facts`` need only hold what data quality reads (patients, conditions, medications, procedures,
    observations, adverse events: ``assets.study.cohort_source.QUALITY_TYPES``)."""
    part = RetrospectivePart(n_patients=len(facts.patients),
                             exclusions=[{"patient_id": pid, "reason": "no_iim_condition"} for pid in facts.patients["patient_id"]])
    add_fact_quality(part.quality, facts)
    return part


def add_fact_quality(quality: dict[str, set[str]], facts: StudyFacts) -> None:
    """The issues every patient is checked for, in the cohort or not: a death without a date and the facts
    that could not be read (``StudyFacts.quality``)."""
    for row in facts.patients.itertuples(index=False):
        if death_date_unknown(row):
            quality.setdefault("death_date_unknown", set()).add(row.patient_id)
    for issue_row in facts.quality.itertuples(index=False):
        quality.setdefault(issue_row.issue, set()).add(issue_row.patient_id)


def assemble_retrospective(parts: Iterable[RetrospectivePart], more_quality: Mapping[str, set[str]] | None = None) -> RetrospectiveResult:
    """The retrospective tables from the parts, in their order (patients in hospital order within each)."""
    parts = list(parts)
    quality: dict[str, set[str]] = {k: set(v) for k, v in (more_quality or {}).items()}
    for part in parts:
        for issue, pids in part.quality.items():
            quality.setdefault(issue, set()).update(pids)
    cohort = (pd.DataFrame([r for part in parts for r in part.rows], columns=COHORT_COLUMNS)
              .sort_values("patient_id").reset_index(drop=True))
    excluded = pd.DataFrame([e for part in parts for e in part.exclusions], columns=["patient_id", "reason"])
    return RetrospectiveResult(
        cohort=cohort,
        attrition=attrition_table("retrospective", sum(part.n_patients for part in parts), excluded["reason"], ATTRITION_REASONS),
        exclusions=excluded,
        relapse_detail=pd.DataFrame([d for part in parts for d in part.details],
                                    columns=["patient_id", "kind", "day", "category", "ferritin_esr", "radiological", "gc_increase"]),
        data_quality=pd.DataFrame([{"cohort": "retrospective", "issue": k, "n_patients": len(v)}
                                   for k, v in sorted(quality.items())], columns=["cohort", "issue", "n_patients"]),
    )


def derive_retrospective(facts: StudyFacts, params: RuleParams) -> RetrospectiveResult:
    return assemble_retrospective([retrospective_part(facts, params)])


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
