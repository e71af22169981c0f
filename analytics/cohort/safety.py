"""Safety events of either cohort: adverse events during follow-up with their category,
seriousness and suspected drug, and drugs stopped because of an adverse event."""
from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from typing import Any, Iterable

import pandas as pd

from .facts import StudyFacts

# No FHIR resource ids in these tables: hospitals embed MRNs in them, and only patient_xref may hold FHIR ids.
# An event coded in two categories has a row in each; ``event_number`` (1, 2, … within a patient and cohort) says
# which rows are one event, so the "any" row of the safety summary counts it once.
EVENT_COLUMNS = ["patient_id", "cohort", "group", "category", "serious", "day", "suspected_drug", "event_number"]
DISCONTINUATION_COLUMNS = ["patient_id", "cohort", "group", "drug", "day"]


def _follow_up(cohort: pd.DataFrame) -> pd.DataFrame:
    return cohort[["patient_id", "group", "index_date", "followup_days"]].assign(
        end=[i + timedelta(days=int(f)) for i, f in zip(cohort["index_date"], cohort["followup_days"], strict=True)])


def safety_events(facts: StudyFacts, cohort: pd.DataFrame, cohort_name: str) -> pd.DataFrame:
    """Adverse events dated index … index + follow-up (the contract's safety window), one row per event and category.

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
    # Typed series: a cohort without events must not turn the integer columns into floats when the cohorts are joined.
    days = pd.Series([(d - i).days for d, i in zip(ae["date"], ae["index_date"], strict=True)], index=ae.index, dtype="int64")
    out = ae.assign(cohort=cohort_name, day=days, suspected_drug=suspects, serious=ae["serious"].astype(int))
    numbers = event_numbers(out["event_id"], out["patient_id"], out["day"], out["serious"], out["suspected_drug"], out["category"])
    out = out.assign(event_number=pd.Series(numbers, index=out.index, dtype="int64"))
    return sort_events(out[EVENT_COLUMNS])


def event_numbers(event_ids: Iterable[str], patients: Iterable[str], days: Iterable[int], serious: Iterable[int],
                  suspects: Iterable[str | None], categories: Iterable[str]) -> list[int]:
    """Each row's event numbered 1, 2, … within its patient, in the order of what the table shows of the event: day,
    then non-serious before serious, then suspected drug (none first, then alphabetical), then its sorted categories.

    Numbered by content, not by FHIR id: the table holds no ids and must not depend on their format. Two events
    showing the same content may take either number; their rows are the same either way."""
    rows = list(zip(event_ids, patients, days, serious, suspects, categories, strict=True))
    shown: dict[str, tuple[Any, ...]] = {}
    cats: dict[str, list[str]] = defaultdict(list)
    for event, patient, day, ser, suspect, category in rows:
        shown.setdefault(event, (patient, int(day), int(ser), suspect or ""))
        cats[event].append(category)
    number: dict[str, int] = {}
    previous, n = None, 0
    for event in sorted(shown, key=lambda e: (*shown[e], tuple(sorted(cats[e])))):
        patient = shown[event][0]
        n = n + 1 if patient == previous else 1
        number[event], previous = n, patient
    return [number[row[0]] for row in rows]


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
