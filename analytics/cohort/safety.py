"""Safety events of either cohort: adverse events during follow-up with their category,
seriousness and suspected drug, and drugs stopped because of an adverse event."""
from __future__ import annotations

from datetime import timedelta

import pandas as pd

from .facts import StudyFacts

# No FHIR resource ids in these tables: hospitals embed MRNs in them, and only patient_xref may hold FHIR ids.
EVENT_COLUMNS = ["patient_id", "cohort", "group", "category", "serious", "day", "suspected_drug"]
DISCONTINUATION_COLUMNS = ["patient_id", "cohort", "group", "drug", "day"]


def _follow_up(cohort: pd.DataFrame) -> pd.DataFrame:
    return cohort[["patient_id", "group", "index_date", "followup_days"]].assign(
        end=[i + timedelta(days=int(f)) for i, f in zip(cohort["index_date"], cohort["followup_days"], strict=True)])


def safety_events(facts: StudyFacts, cohort: pd.DataFrame, cohort_name: str) -> pd.DataFrame:
    """Adverse events dated index … index + follow-up (the contract's safety window), one row each.

    ``suspected_drug`` names the concept of each suspected MedicationStatement (';'-joined);
    a suspect given as a Medication, or a statement outside the concept map, is not named.
    """
    # Looked up by (patient, statement): a suspect naming another patient's statement is not named (the contract's
    # suspect is the patient's own drug), and the table cannot depend on which patients share a chunk.
    ae = facts.adverse_events.merge(_follow_up(cohort), on="patient_id")
    ae = ae[(ae["date"] >= ae["index_date"]) & (ae["date"] <= ae["end"])]
    # One concept per statement, its first row's (a loop over the event patients' statements: deduplicating the
    # chunk's whole exposure table in pandas cost more than every other step of this function).
    with_events = set(ae["patient_id"])
    drug_of: dict[tuple[str, str], str] = {}
    ex = facts.exposures
    for key, concept in zip(zip(ex["patient_id"].tolist(), ex["statement_id"].tolist(), strict=True), ex["concept"].tolist(), strict=True):
        if key[0] in with_events and key not in drug_of:
            drug_of[key] = concept
    suspects = [";".join(sorted({drug_of[(pid, sid)] for sid in ids or () if (pid, sid) in drug_of})) or None
                for pid, ids in zip(ae["patient_id"], ae["suspect_statement_ids"], strict=True)]
    out = ae.assign(cohort=cohort_name, day=[(d - i).days for d, i in zip(ae["date"], ae["index_date"], strict=True)],
                    suspected_drug=suspects, serious=ae["serious"].astype(int))
    return sort_events(out[EVENT_COLUMNS])


def sort_events(events: pd.DataFrame) -> pd.DataFrame:
    """The table's row order, the same whether the events were found in one pass or in chunks of patients."""
    return events.sort_values(EVENT_COLUMNS, na_position="first").reset_index(drop=True)


def drug_discontinuations(facts: StudyFacts, cohort: pd.DataFrame, cohort_name: str) -> pd.DataFrame:
    """Statements stopped for an adverse event (statusReason adverse-event) ending during follow-up."""
    # astype(bool): an empty object column used as a mask would select columns, not rows.
    stopped = facts.exposures[facts.exposures["stopped_for_adverse_event"].astype(bool)].rename(columns={"end": "stop", "concept": "drug"})
    ex = stopped.merge(_follow_up(cohort), on="patient_id")
    ex = ex[(ex["stop"] >= ex["index_date"]) & (ex["stop"] <= ex["end"])]
    out = ex.assign(cohort=cohort_name, day=[(d - i).days for d, i in zip(ex["stop"], ex["index_date"], strict=True)])
    return sort_discontinuations(out[DISCONTINUATION_COLUMNS])


def sort_discontinuations(stops: pd.DataFrame) -> pd.DataFrame:
    """By patient and day; a multi-key sort is stable, so one patient's rows keep their order from ``facts``."""
    return stops.sort_values(["patient_id", "day"]).reset_index(drop=True)
