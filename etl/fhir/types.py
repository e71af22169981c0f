"""What this service knows about each FHIR resource type it reads, in one place.

A type's subject field (whose patient a resource is about), the R4 search parameter that selects one
patient's resources, and how it flattens into a table were spread over the plausibility rules, the
cohort-first pull and the flatteners; a new type is now one entry here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import pandas as pd

from . import flatten


@dataclass(frozen=True)
class FhirType:
    name: str
    subject_field: str | None = "subject"   # the reference to the Patient the resource is about
    patient_search: str | None = "patient"  # the search parameter for one patient's resources; None: not patient data
    flatten: Callable[..., pd.DataFrame] | None = None  # resources (+ the server's base URL) -> one table

    @property
    def patient_data(self) -> bool:
        return self.patient_search is not None


TYPES: dict[str, FhirType] = {t.name: t for t in (
    FhirType("Patient", flatten=flatten.patients, subject_field=None, patient_search="_id"),
    FhirType("Condition", flatten=flatten.conditions),
    FhirType("MedicationStatement", flatten=flatten.medication_statements),
    FhirType("Procedure", flatten=flatten.procedures),
    FhirType("Observation", flatten=flatten.observations),
    FhirType("AdverseEvent", flatten=flatten.adverse_events),
    FhirType("ResearchStudy", flatten=flatten.research_studies, subject_field=None, patient_search=None),
    FhirType("ResearchSubject", flatten=flatten.research_subjects, subject_field="individual"),
)}
RESOURCE_TYPES: tuple[str, ...] = tuple(TYPES)  # what the service pulls, in load order
SUBJECT_FIELD: dict[str, str] = {t.name: t.subject_field for t in TYPES.values() if t.subject_field}


def spec(resource_type: str) -> FhirType:
    """The type's entry; a type this service does not know is read as most R4 types are (``subject``, ``patient=``)."""
    return TYPES.get(resource_type) or FhirType(resource_type)


def flatten_all(resources_by_type: Mapping[str, Iterable[dict[str, Any]]], base: str | None = None) -> dict[str, pd.DataFrame]:
    """Every type's table (``etl.fhir.types``), keyed by resource type, plus ``Observation.component`` (HRCT
    sub-scores). ``base`` is the FHIR server's base URL, under which absolute references are read as ours."""
    materialised = {t: list(resources_by_type.get(t, [])) for t in TYPES}
    tables = {t: spec.flatten(materialised[t], base) for t, spec in TYPES.items() if spec.flatten}
    tables[flatten.OBSERVATION_COMPONENTS] = flatten.observation_components(materialised["Observation"])
    return tables
