"""Where the cohort step's facts come from: the warehouse, read in chunks of patients.

The step used to flatten every raw resource of the hospital at once (4.8 GB at 40,000 patients). Now:

1. one streamed pass over small rows (``Warehouse.json_index``: each resource's id, its patient reference
   and, for Conditions, their codings, read by the database) finds, for every resource, its patient;
   and the *candidates*: patients with a Condition coded IIM (any status) or a ResearchSubject;
2. candidates are read, flattened and run through every rule a chunk of patients at a time;
3. everyone else fails the first rule (``no_iim_condition``) whatever their record holds, so only the
   resources that data quality reads (their Patient, MedicationStatements and Observations) are
   flattened, a chunk at a time, and no rule is run;
4. resources without a patient and references to absent patients are counted from the pass of step 1.

``CohortBuilder`` gathers the chunks' outcomes into the same tables, row for row, as the whole hospital
in one pass (``derive_whole_hospital``, kept as the reference the equality test compares against).
No Dagster here: the asset (``cohort.py``) calls ``derive_in_chunks``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import orjson

from analytics.cohort.concepts import ConceptMap
from analytics.cohort.facts import build_facts
from analytics.cohort.params import RuleParams
from analytics.cohort.scope import carries_iim
from analytics.cohort.tables import CohortBuilder, CohortTables, derive_cohort_tables
from etl.fhir.references import parse_reference
from etl.fhir.types import SUBJECT_FIELD, TYPES, flatten_all
from etl.warehouse import Warehouse

CHUNK_PATIENTS = 1000
# What data quality reads of a patient outside the candidates (analytics.cohort.facts: death without a date,
# glucocorticoid doses, observation values and units).
QUALITY_TYPES = ("Patient", "MedicationStatement", "Observation")


@dataclass
class HospitalIndex:
    """Who each resource is about, for the whole hospital, in a few small strings per resource."""

    patients: list[str] = field(default_factory=list)  # every Patient id, in the warehouse's order
    candidates: set[str] = field(default_factory=set)  # referenced patient ids, in the Patient table or not
    resources: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # type -> patient -> ids, in table order
    quality: dict[str, set[str]] = field(default_factory=dict)  # issues found without reading any resource whole

    def ids(self, resource_type: str, patients: Sequence[str]) -> list[str]:
        of = self.resources.get(resource_type, {})
        return [rid for pid in patients for rid in of.get(pid, ())]


def _patient(reference: Any, base: str | None) -> str | None:
    """The patient a reference names, read exactly as the flatteners read it (``reference_id``)."""
    parsed = parse_reference(reference if isinstance(reference, str) else None, base)
    return parsed[1] if parsed and parsed[0] == "Patient" else None


def _codings(text: Any) -> tuple[tuple[Any, Any], ...]:
    """A CodeableConcept's ``coding`` array, as (system, code) pairs, from the JSON text the database returned."""
    if not isinstance(text, str) or not text.startswith("["):
        return ()
    return tuple((c.get("system"), c.get("code")) for c in orjson.loads(text) if isinstance(c, dict))


def index_hospital(wh: Warehouse, concepts: ConceptMap, base: str | None) -> HospitalIndex:
    index = HospitalIndex(patients=[rid for (rid,) in wh.json_index("Patient")])
    known = set(index.patients)
    every: dict[str, dict[str, list[str]]] = {}
    for rtype, subject in SUBJECT_FIELD.items():
        of: dict[str, list[str]] = {}
        paths = [(subject, "reference")] + ([("code", "coding")] if rtype == "Condition" else [])
        iim_cache: dict[Any, bool] = {}
        for rid, reference, *codings in wh.json_index(rtype, *paths):
            pid = _patient(reference, base)
            if pid is None:
                index.quality.setdefault("resource_without_patient_subject", set()).add(f"{rtype}/{rid}")
                continue
            if pid not in known:
                index.quality.setdefault("reference_to_absent_patient", set()).add(pid)
            of.setdefault(pid, []).append(rid)
            if rtype == "Condition" and pid not in index.candidates:
                key = codings[0]
                if key not in iim_cache:
                    iim_cache[key] = carries_iim(concepts, _codings(key))
                if iim_cache[key]:
                    index.candidates.add(pid)
            elif rtype == "ResearchSubject":
                index.candidates.add(pid)
        every[rtype] = of
    for rtype, of in every.items():
        keep_all = rtype in QUALITY_TYPES
        index.resources[rtype] = of if keep_all else {pid: ids for pid, ids in of.items() if pid in index.candidates}
    return index


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _read(wh: Warehouse, index: HospitalIndex, types: Sequence[str], patients: Sequence[str]) -> dict[str, list[dict]]:
    """The chunk's resources of each type, in the warehouse's order within each patient."""
    out = {}
    for rtype in types:
        ids = list(patients) if rtype == "Patient" else index.ids(rtype, patients)
        found = wh.raw_resources_by_id(rtype, ids)
        out[rtype] = [found[rid] for rid in ids if rid in found]  # a resource deleted since the index is gone
    return out


def derive_in_chunks(wh: Warehouse, concepts: ConceptMap, params: RuleParams, base: str | None = None,
                     chunk_patients: int = CHUNK_PATIENTS) -> tuple[CohortTables, list[str]]:
    """Every cohort table, reading at most ``chunk_patients`` patients' resources at a time; and every
    Patient id (for ``patient_xref``), in the warehouse's order."""
    index = index_hospital(wh, concepts, base)
    studies = wh.raw_resources("ResearchStudy")
    builder = CohortBuilder(params)
    patient_types = [t for t in TYPES if TYPES[t].patient_data]
    known = set(index.patients)
    candidates = [p for p in index.patients if p in index.candidates] + sorted(index.candidates - known)
    # At least one chunk, even of nobody: a hospital without candidates still gets typed empty tables.
    for chunk in _chunks(candidates, chunk_patients) if candidates else [[]]:
        resources = _read(wh, index, patient_types, chunk)
        resources["ResearchStudy"] = studies
        builder.add(build_facts(flatten_all(resources, base=base), concepts))
    others = [p for p in index.patients if p not in index.candidates]
    for chunk in _chunks(others, chunk_patients):
        builder.add_non_candidates(build_facts(flatten_all(_read(wh, index, QUALITY_TYPES, chunk), base=base), concepts))
    return builder.build(index.quality), index.patients


def derive_whole_hospital(wh: Warehouse, concepts: ConceptMap, params: RuleParams,
                          base: str | None = None) -> tuple[CohortTables, list[str]]:
    """The same tables from every raw resource at once: memory grows with the hospital. The reference
    the chunked path is tested against (tests/assets/test_cohort_chunks.py) and the benchmark's baseline."""
    facts = build_facts(flatten_all({rtype: wh.raw_resources(rtype) for rtype in TYPES}, base=base), concepts)
    return derive_cohort_tables(facts, params), list(facts.patients["patient_id"])
