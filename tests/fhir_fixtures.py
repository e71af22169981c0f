"""Tiny FHIR fixtures for rule tests: one reference patient that is in the cohort, to which each
test adds or changes the one fact it is about."""
from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from analytics.cohort.concepts import load_concept_map
from analytics.cohort.facts import StudyFacts, build_facts
from analytics.cohort.params import RuleParams
from analytics.cohort.retrospective import RetrospectiveResult, derive_retrospective
from etl.fhir.types import flatten_all
from synthetic import fhir_builders as fb
from synthetic.fhir_builders import ICD10, LOCAL, LOINC, RXNORM

INDEX = date(2016, 3, 1)
PID = "p1"
TACROLIMUS, CTX, MTX, PREDNISONE, PREDNISOLONE = "42316", "3002", "6851", "8640", "8638"


def day(d: int) -> date:
    return INDEX + timedelta(days=d)


class Ids:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self, kind: str = "r") -> str:
        self.n += 1
        return f"{PID}-{kind}{self.n}"


new_id = Ids()


def drug(code: str, start: int, end: int | None, dose: float = 50, **kw: Any) -> dict:
    return fb.medication_statement(new_id("ms"), PID, RXNORM, code, day(start), None if end is None else day(end),
                                   dose=dose, frequency=1, **kw)


def obs_quantity(loinc: str, d: int, value: float, unit: str) -> dict:
    return fb.observation(new_id("obs"), PID, LOINC, loinc, day(d), valueQuantity=fb.quantity(value, unit))


def exacerbation(d: int, category: str = "muscular") -> dict:
    return fb.observation(new_id("obs"), PID, LOCAL, "symptom-exacerbation", day(d),
                          valueCodeableConcept=fb.concept(LOCAL, category))


def radiological(d: int, positive: bool = True) -> dict:
    return fb.observation(new_id("obs"), PID, LOCAL, "radiological-progression", day(d), valueBoolean=positive)


def reference_patient(*, birth: str = "1966-01-15", deceased: date | bool | None = None, ild: bool = True,
                      agent: str = TACROLIMUS, gc: tuple[int, int] | None = (-5, 400), weight: float | None = 60.0,
                      last_contact: int = 370) -> list[dict]:
    """In the cohort: DM with ILD, tacrolimus from INDEX with prednisone 50 mg/day, full follow-up."""
    res = [fb.patient(PID, "female", birth, deceased),
           fb.condition(new_id("cond"), PID, ICD10, "M33.10", day(-60))]
    if ild:
        res.append(fb.condition(new_id("cond"), PID, ICD10, "J84.10", day(-30)))
    res.append(drug(agent, 0, None, dose=1.5, status="active"))
    if gc:
        res.append(drug(PREDNISONE, gc[0], gc[1], dose=50))
    if weight is not None:
        res.append(obs_quantity("29463-7", -3, weight, "kg"))
    res += [obs_quantity("2276-4", -2, 500, "ng/mL"), obs_quantity("4537-7", -2, 30, "mm/h"),
            obs_quantity("4537-7", last_contact, 25, "mm/h")]
    return res


def facts_of(resources: list[dict]) -> StudyFacts:
    by_type: dict[str, list[dict]] = {}
    for r in resources:
        by_type.setdefault(r["resourceType"], []).append(r)
    return build_facts(flatten_all(by_type), load_concept_map())


def derive(resources: list[dict], **params: Any) -> RetrospectiveResult:
    params.setdefault("data_cutoff", date(2025, 1, 1))
    return derive_retrospective(facts_of(resources), RuleParams(**params))


def only_row(result: RetrospectiveResult) -> dict:
    assert len(result.cohort) == 1, f"expected the patient in the cohort, excluded as {result.exclusions.to_dict('records')}"
    return result.cohort.iloc[0].to_dict()


def reason(result: RetrospectiveResult) -> str | None:
    ex = result.exclusions
    return None if ex.empty else str(ex["reason"].iloc[0])
