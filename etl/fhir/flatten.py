"""Flatten validated FHIR R4 resources into tidy DataFrames, one row per coding.

Study-agnostic: this module knows FHIR, not the study. Codings are exploded so that concept
matching downstream is a join on (system, code). Clinical dates are the *local* calendar date
written in the resource (the first ten characters of a dateTime): converting a hospital's
"2016-03-04T01:30:00+08:00" to UTC would move that lab result to the previous day. Partial dates
are imputed to the first day of their year or month, as the contract does for birth dates.

No coded fact is read by position: FHIR lets a CodeableConcept carry any number of codings in any
order, so codes, values, statuses and reasons are kept as *every* (system, code) pair and matched
through the concept map downstream (``analytics.cohort.concepts``).
"""
from __future__ import annotations

from datetime import date
from functools import lru_cache
from typing import Any, Iterable

import pandas as pd

from .references import reference_id

Resource = dict[str, Any]
Codings = tuple[tuple[str | None, str | None], ...]
UCUM = "http://unitsofmeasure.org"


def clinical_date(value: str | None) -> date | None:
    """The calendar date of a FHIR date/dateTime; a year or year-month is imputed to its first day."""
    if not value:
        return None
    return _calendar_date(value) if isinstance(value, str) else _calendar_date.__wrapped__(value)


@lru_cache(maxsize=1 << 14)
def _calendar_date(value: str) -> date:
    """Cached: a hospital's resources share a few thousand days, and reading one was a tenth of flattening."""
    if len(value) == 4:
        return date(int(value), 1, 1)
    if len(value) == 7:
        return date(int(value[:4]), int(value[5:7]), 1)
    return date.fromisoformat(value[:10])


def codings(concept: dict[str, Any] | None) -> list[tuple[str | None, str | None]]:
    """One (system, code) per coding, for exploding a resource into one row per coding."""
    return [(c.get("system"), c.get("code")) for c in (concept or {}).get("coding") or []] or [(None, None)]


def coding_set(*concepts: dict[str, Any] | None) -> Codings:
    """Every (system, code) of the given CodeableConcepts, sorted: a value that no coding order can change."""
    pairs = {(c.get("system"), c.get("code")) for concept in concepts for c in (concept or {}).get("coding") or []
             if c.get("code") is not None}
    return tuple(sorted(pairs, key=lambda sc: (sc[0] or "", sc[1] or "")))


def quantity_unit(quantity: dict[str, Any]) -> str | None:
    """The unit of a Quantity: its UCUM ``code`` (when the system is UCUM or absent), else its ``unit`` text.

    A code in another unit system is not a UCUM spelling, so the human-readable ``unit`` is the
    better guess there; the concept map's ``units`` converts the spellings the contract names.
    """
    if quantity.get("system") in (None, UCUM):
        return quantity.get("code") or quantity.get("unit")
    return quantity.get("unit")


def dose_quantity(dosage: dict[str, Any]) -> dict[str, Any]:
    """The dose of one dosage instruction: the first ``doseAndRate`` that gives a ``doseQuantity``."""
    return next((d["doseQuantity"] for d in dosage.get("doseAndRate") or []
                 if isinstance(d, dict) and isinstance(d.get("doseQuantity"), dict)), {})


def first_dosage(dosages: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The contract's ``dosage[0]``: the instruction with the lowest ``sequence`` when every line has one
    (FHIR gives the order there, not in the array), else the first line."""
    lines = [d for d in dosages or [] if isinstance(d, dict)]
    if lines and all(isinstance(d.get("sequence"), int) for d in lines):
        return min(lines, key=lambda d: d["sequence"])
    return lines[0] if lines else {}


def _frame(rows: Iterable[tuple[Any, ...]], columns: list[str]) -> pd.DataFrame:
    """Rows are tuples in the columns' order: pandas reads a list of tuples several times faster than a list of
    dicts, into the same columns and dtypes (both become one object array that pandas then converts)."""
    return pd.DataFrame(list(rows), columns=columns)


PATIENT_COLUMNS = ["patient_id", "gender", "birth_date", "deceased_date", "deceased"]


def patients(resources: Iterable[Resource], base: str | None = None) -> pd.DataFrame:
    def row(r: Resource) -> tuple[Any, ...]:
        deceased_dt = r.get("deceasedDateTime")
        return (r["id"], r.get("gender"), r.get("birthDate"), clinical_date(deceased_dt),
                bool(deceased_dt) or bool(r.get("deceasedBoolean")))
    return _frame((row(r) for r in resources), PATIENT_COLUMNS)


CONDITION_COLUMNS = ["condition_id", "patient_id", "system", "code", "date", "recorded_date", "verification_codings"]


def conditions(resources: Iterable[Resource], base: str | None = None) -> pd.DataFrame:
    def rows(r: Resource) -> Iterable[tuple[Any, ...]]:
        when = clinical_date(r.get("onsetDateTime")) or clinical_date(r.get("recordedDate"))
        status = coding_set(r.get("verificationStatus"))
        rid, pid, recorded = r["id"], reference_id(r.get("subject"), "Patient", base), clinical_date(r.get("recordedDate"))
        for system, code in codings(r.get("code")):
            yield rid, pid, system, code, when, recorded, status
    return _frame((x for r in resources for x in rows(r)), CONDITION_COLUMNS)


MEDICATION_COLUMNS = ["statement_id", "patient_id", "status", "system", "code", "start", "end", "effective_kind",
                      "dose_value", "dose_unit", "frequency", "period", "period_unit", "status_reason_codings"]


def medication_statements(resources: Iterable[Resource], base: str | None = None) -> pd.DataFrame:
    def rows(r: Resource) -> Iterable[dict[str, Any]]:
        period = r.get("effectivePeriod")
        if period is not None:
            kind, start, end = "period", clinical_date(period.get("start")), clinical_date(period.get("end"))
        elif r.get("effectiveDateTime"):
            kind, start, end = "datetime", clinical_date(r["effectiveDateTime"]), None
        else:
            kind, start, end = None, None, None
        dosage = first_dosage(r.get("dosage"))
        dose = dose_quantity(dosage)
        repeat = (dosage.get("timing") or {}).get("repeat") or {}
        reasons = coding_set(*(r.get("statusReason") or []))
        rid, pid, status = r["id"], reference_id(r.get("subject"), "Patient", base), r.get("status")
        dose_value, dose_unit = dose.get("value"), quantity_unit(dose)
        frequency, every, unit = repeat.get("frequency"), repeat.get("period"), repeat.get("periodUnit")
        for system, code in codings(r.get("medicationCodeableConcept")):
            yield (rid, pid, status, system, code, start, end, kind, dose_value, dose_unit, frequency, every, unit,
                   reasons)
    return _frame((x for r in resources for x in rows(r)), MEDICATION_COLUMNS)


PROCEDURE_COLUMNS = ["procedure_id", "patient_id", "status", "system", "code", "date"]


def procedures(resources: Iterable[Resource], base: str | None = None) -> pd.DataFrame:
    def rows(r: Resource) -> Iterable[tuple[Any, ...]]:
        when = clinical_date(r.get("performedDateTime")) or clinical_date((r.get("performedPeriod") or {}).get("start"))
        rid, pid, status = r["id"], reference_id(r.get("subject"), "Patient", base), r.get("status")
        for system, code in codings(r.get("code")):
            yield rid, pid, status, system, code, when
    return _frame((x for r in resources for x in rows(r)), PROCEDURE_COLUMNS)


OBSERVATION_COLUMNS = ["observation_id", "patient_id", "status", "system", "code", "date", "value_quantity",
                       "value_unit", "value_boolean", "value_integer", "value_codings"]


def _value_columns(obj: Resource) -> tuple[Any, ...]:
    """value_quantity, value_unit, value_boolean, value_integer, value_codings."""
    quantity = obj.get("valueQuantity") or {}
    return (quantity.get("value"), quantity_unit(quantity), obj.get("valueBoolean"), obj.get("valueInteger"),
            coding_set(obj.get("valueCodeableConcept")))


def has_quantity_value(resource: Resource) -> bool:
    """Whether ``observations`` gives the resource a ``value_quantity``: for a reader that needs only those rows
    and need not flatten the rest."""
    return (resource.get("valueQuantity") or {}).get("value") is not None


def observations(resources: Iterable[Resource], base: str | None = None) -> pd.DataFrame:
    def rows(r: Resource) -> Iterable[tuple[Any, ...]]:
        when = clinical_date(r.get("effectiveDateTime")) or clinical_date((r.get("effectivePeriod") or {}).get("start"))
        values = _value_columns(r)
        rid, pid, status = r["id"], reference_id(r.get("subject"), "Patient", base), r.get("status")
        for system, code in codings(r.get("code")):
            yield (rid, pid, status, system, code, when, *values)
    return _frame((x for r in resources for x in rows(r)), OBSERVATION_COLUMNS)


COMPONENT_COLUMNS = ["observation_id", "system", "code", "value_quantity", "value_unit", "value_boolean",
                     "value_integer", "value_codings"]


def observation_components(resources: Iterable[Resource], base: str | None = None) -> pd.DataFrame:
    def rows(r: Resource) -> Iterable[tuple[Any, ...]]:
        for comp in r.get("component") or []:
            values = _value_columns(comp)
            for system, code in codings(comp.get("code")):
                yield (r["id"], system, code, *values)
    return _frame((x for r in resources for x in rows(r)), COMPONENT_COLUMNS)


ADVERSE_EVENT_COLUMNS = ["event_id", "patient_id", "actuality", "system", "code", "date", "seriousness_codings",
                         "suspect_statement_ids"]


def adverse_events(resources: Iterable[Resource], base: str | None = None) -> pd.DataFrame:
    def rows(r: Resource) -> Iterable[tuple[Any, ...]]:
        seriousness = coding_set(r.get("seriousness"))
        # Ids of suspected MedicationStatements, however the reference is written (relative, absolute, versioned).
        suspects = tuple(sorted({sid for s in r.get("suspectEntity") or []
                                 if (sid := reference_id(s.get("instance"), "MedicationStatement", base))}))
        rid, pid, actuality = r["id"], reference_id(r.get("subject"), "Patient", base), r.get("actuality")
        when = clinical_date(r.get("date"))
        for system, code in codings(r.get("event")):
            yield rid, pid, actuality, system, code, when, seriousness, suspects
    return _frame((x for r in resources for x in rows(r)), ADVERSE_EVENT_COLUMNS)


RESEARCH_SUBJECT_COLUMNS = ["subject_id", "patient_id", "study_id", "status", "start", "end"]


def research_subjects(resources: Iterable[Resource], base: str | None = None) -> pd.DataFrame:
    def row(r: Resource) -> tuple[Any, ...]:
        period = r.get("period") or {}
        return (r["id"], reference_id(r.get("individual"), "Patient", base), reference_id(r.get("study"), "ResearchStudy", base),
                r.get("status"), clinical_date(period.get("start")), clinical_date(period.get("end")))
    return _frame((row(r) for r in resources), RESEARCH_SUBJECT_COLUMNS)


RESEARCH_STUDY_COLUMNS = ["study_id", "identifier_system", "identifier_value"]


def research_studies(resources: Iterable[Resource], base: str | None = None) -> pd.DataFrame:
    def rows(r: Resource) -> Iterable[tuple[Any, ...]]:
        for ident in r.get("identifier") or [{}]:
            yield r["id"], ident.get("system"), ident.get("value")
    return _frame((x for r in resources for x in rows(r)), RESEARCH_STUDY_COLUMNS)


OBSERVATION_COMPONENTS = "Observation.component"
