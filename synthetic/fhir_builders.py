"""Small constructors for the FHIR R4 resources the synthetic hospital emits.

They build plain dicts (the wire format) rather than fhir.resources models: the generator must be
able to produce exactly what a hospital server would send, including the quirks the pipeline has
to cope with (ICD-10 codes without the dot, year-only birth dates, doses in grams).
"""
from __future__ import annotations

from datetime import date
from typing import Any

ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
LOCAL = "urn:iim-ild:concept"
AE_SERIOUSNESS = "http://terminology.hl7.org/CodeSystem/adverse-event-seriousness"
CONDITION_VER_STATUS = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
STUDY_IDENTIFIER_SYSTEM = "http://www.chictr.org.cn"
STUDY_IDENTIFIER = "ChiCTR2100043595"

Resource = dict[str, Any]


def ref(resource_type: str, rid: str) -> dict[str, str]:
    return {"reference": f"{resource_type}/{rid}"}


def concept(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    coding: dict[str, str] = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}


def patient(pid: str, gender: str, birth_date: str, deceased: date | bool | None = None) -> Resource:
    res: Resource = {"resourceType": "Patient", "id": pid, "gender": gender, "birthDate": birth_date}
    if isinstance(deceased, bool):
        res["deceasedBoolean"] = deceased
    elif deceased is not None:
        res["deceasedDateTime"] = deceased.isoformat()
    return res


def condition(rid: str, pid: str, system: str, code: str, onset: date, *, verification: str | None = None,
              recorded_only: bool = False) -> Resource:
    res: Resource = {"resourceType": "Condition", "id": rid, "subject": ref("Patient", pid), "code": concept(system, code)}
    if recorded_only:
        res["recordedDate"] = onset.isoformat()
    else:
        res["onsetDateTime"] = onset.isoformat()
    if verification:
        res["verificationStatus"] = concept(CONDITION_VER_STATUS, verification)
    return res


def medication_statement(rid: str, pid: str, system: str, code: str, start: date, end: date | None, *,
                         dose: float, unit: str = "mg", frequency: int | None = None, period: float = 1,
                         period_unit: str = "d", status: str = "completed", single_day: bool = False,
                         status_reason: str | None = None) -> Resource:
    """A statement; ``single_day`` uses effectiveDateTime (a one-day or, when active, ongoing exposure)."""
    dosage: dict[str, Any] = {"doseAndRate": [{"doseQuantity": {"value": dose, "unit": unit, "system": UCUM, "code": unit}}]}
    if frequency is not None:
        dosage["timing"] = {"repeat": {"frequency": frequency, "period": period, "periodUnit": period_unit}}
    res: Resource = {
        "resourceType": "MedicationStatement", "id": rid, "status": status, "subject": ref("Patient", pid),
        "medicationCodeableConcept": concept(system, code), "dosage": [dosage],
    }
    if single_day:
        res["effectiveDateTime"] = start.isoformat()
    else:
        period_: dict[str, str] = {"start": start.isoformat()}
        if end is not None:
            period_["end"] = end.isoformat()
        res["effectivePeriod"] = period_
    if status_reason:
        res["statusReason"] = [concept(LOCAL, status_reason)]
    return res


def observation(rid: str, pid: str, system: str, code: str, when: date | str, **value: Any) -> Resource:
    """``value`` is one FHIR value[x] element, e.g. valueQuantity={...} or valueBoolean=True."""
    res: Resource = {
        "resourceType": "Observation", "id": rid, "status": value.pop("status", "final"),
        "code": concept(system, code), "subject": ref("Patient", pid),
        "effectiveDateTime": when if isinstance(when, str) else when.isoformat(),
    }
    res.update(value)
    return res


def quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def procedure(rid: str, pid: str, system: str, code: str, when: date, status: str = "completed") -> Resource:
    return {"resourceType": "Procedure", "id": rid, "status": status, "subject": ref("Patient", pid),
            "code": concept(system, code), "performedDateTime": when.isoformat()}


def adverse_event(rid: str, pid: str, category: str, when: date, *, serious: bool,
                  suspect: str | None = None) -> Resource:
    res: Resource = {
        "resourceType": "AdverseEvent", "id": rid, "actuality": "actual", "subject": ref("Patient", pid),
        "event": concept(LOCAL, category), "date": when.isoformat(),
        "seriousness": concept(AE_SERIOUSNESS, "serious" if serious else "non-serious"),
    }
    if suspect:
        res["suspectEntity"] = [{"instance": ref("MedicationStatement", suspect)}]
    return res


def research_study(rid: str) -> Resource:
    return {"resourceType": "ResearchStudy", "id": rid, "status": "completed",
            "identifier": [{"system": STUDY_IDENTIFIER_SYSTEM, "value": STUDY_IDENTIFIER}],
            "title": "Tacrolimus with or without low-dose pirfenidone in IIM-ILD"}


def research_subject(rid: str, pid: str, study_id: str, enrolled: date, *, status: str = "on-study",
                     end: date | None = None) -> Resource:
    period: dict[str, str] = {"start": enrolled.isoformat()}
    if end is not None:
        period["end"] = end.isoformat()
    return {"resourceType": "ResearchSubject", "id": rid, "status": status, "period": period,
            "study": ref("ResearchStudy", study_id), "individual": ref("Patient", pid)}
