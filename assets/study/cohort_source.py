"""Where the cohort step's facts come from: the warehouse, read in chunks of patients.

The step used to flatten every raw resource of the hospital at once (4.8 GB at 40,000 patients). Now:

1. one pass over small rows (``Warehouse.ids_by_value``: each patient reference with the ids of the resources
   that carry it, grouped by the database; for Conditions, the distinct codings per reference) finds, for
   every resource, its patient;
   and the *candidates*: patients with a Condition coded IIM (any status) or a ResearchSubject;
2. candidates are read, flattened and run through every rule a chunk of patients at a time;
3. everyone else fails the first rule (``no_iim_condition``) whatever their record holds, so only the
   resources that data quality reads (``QUALITY_TYPES``: all but ResearchSubjects) are flattened, a
   chunk at a time, and no rule is run;
4. resources without a patient and references to absent patients are counted from the pass of step 1.

``CohortBuilder`` gathers the chunks' outcomes into the same tables, row for row, as the whole hospital
in one pass (``derive_whole_hospital``, kept as the reference the equality test compares against).
No Dagster here: the asset (``cohort.py``) calls ``derive_in_chunks``.
"""
from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import orjson
import sqlalchemy as sa

from analytics.cohort.concepts import ConceptMap
from analytics.cohort.facts import build_facts
from analytics.cohort.params import RuleParams
from analytics.cohort.scope import carries_iim
from analytics.cohort.tables import (
    ChunkOutcome,
    CohortBuilder,
    CohortTables,
    chunk_outcome,
    derive_cohort_tables,
    non_candidate_outcome,
)
from etl.fhir.references import reference_id
from etl.fhir.types import SUBJECT_FIELD, TYPES, flatten_all
from etl.warehouse import Warehouse

from ..collector import collector_paused

CHUNK_PATIENTS = 1000
POOL_FROM_CHUNKS = 4  # fewer chunks run in this process: a pool is not worth its start
# Measured when the multiprocess executor spawned its steps: a worker process started with ``spawn`` too and
# imported Dagster again to unpickle its job: 4-8 CPU s per worker on the reference machine, while reading,
# flattening and deriving one candidate costs about 4 ms. On the paper-size hospital (324 candidates): 21 s for
# the step with two workers, 1.6 s inline. So the automatic choice pools only a hospital with this many
# candidates (about 10,000 patients in the paper's mix). Steps are now forked from a fork server
# (assets/executor.py) and their workers from one the step starts; not measured again.
POOL_FROM_CANDIDATES = 4000
# What data quality reads of a patient outside the candidates (analytics.cohort.facts: death without a date,
# glucocorticoid doses, observation values and units, facts of a mapped concept without a date, adverse events
# without a mapped category).
QUALITY_TYPES = ("Patient", "Condition", "MedicationStatement", "Procedure", "Observation", "AdverseEvent")


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
    """The patient a reference (the text the database read) names, exactly as the flatteners read it."""
    return reference_id({"reference": reference}, "Patient", base)


def _codings(text: Any) -> tuple[tuple[Any, Any], ...]:
    """A CodeableConcept's ``coding`` array, as (system, code) pairs, from the JSON text the database returned."""
    if not isinstance(text, str) or not text.startswith("["):
        return ()
    return tuple((c.get("system"), c.get("code")) for c in orjson.loads(text) if isinstance(c, dict))


def index_hospital(wh: Warehouse, concepts: ConceptMap, base: str | None) -> HospitalIndex:
    with collector_paused():
        return _index_hospital(wh, concepts, base)


def _index_hospital(wh: Warehouse, concepts: ConceptMap, base: str | None) -> HospitalIndex:
    index = HospitalIndex(patients=[rid for (rid,) in wh.json_index("Patient")])
    known = set(index.patients)
    # One grouping query per type, two at a time: the database reads the JSON and groups it (SQLite without
    # holding the GIL, PostgreSQL in its own process) on both cores. Merged in the types' order.
    with ThreadPoolExecutor(max_workers=2) as threads:
        passes = list(threads.map(lambda item: _index_type(wh, item[0], item[1], known, concepts, base), SUBJECT_FIELD.items()))
    every: dict[str, dict[str, list[str]]] = {}
    for rtype, (of, quality, candidates) in zip(SUBJECT_FIELD, passes, strict=True):
        every[rtype] = of
        index.candidates |= candidates
        for issue, found in quality.items():
            index.quality.setdefault(issue, set()).update(found)
    for rtype, of in every.items():
        keep_all = rtype in QUALITY_TYPES
        index.resources[rtype] = of if keep_all else {pid: ids for pid, ids in of.items() if pid in index.candidates}
    return index


def _index_type(wh: Warehouse, rtype: str, subject: str, known: set[str], concepts: ConceptMap,
                base: str | None) -> tuple[dict[str, list[str]], dict[str, set[str]], set[str]]:
    """One type's resources by patient, the issues found and the candidates it makes (IIM Conditions, subjects).

    The database groups the resources by their subject reference (``ids_by_value``): one row per reference,
    not per resource. Two spellings of one patient (relative and absolute) are two rows, merged here."""
    of: dict[str, list[str]] = {}
    quality: dict[str, set[str]] = {}
    candidates: set[str] = set()
    patient_of: dict[Any, str | None] = {}  # reference text -> patient
    for reference, ids in wh.ids_by_value(rtype, (subject, "reference")):
        pid = patient_of[reference] = _patient(reference, base)
        if pid is None:
            quality.setdefault("resource_without_patient_subject", set()).update(f"{rtype}/{rid}" for rid in ids)
            continue
        if pid not in known:
            quality.setdefault("reference_to_absent_patient", set()).add(pid)
        if pid in of:  # another spelling of the same patient: back to the table's id order
            of[pid] = _merged(of[pid], ids)
        else:
            of[pid] = ids
        if rtype == "ResearchSubject":
            candidates.add(pid)
    if rtype == "Condition":
        iim_cache: dict[Any, bool] = {}
        for reference, key in wh.distinct_values(rtype, (subject, "reference"), ("code", "coding")):
            pid = patient_of.get(reference)
            if pid is None or pid in candidates:
                continue
            if key not in iim_cache:
                iim_cache[key] = carries_iim(concepts, _codings(key))
            if iim_cache[key]:
                candidates.add(pid)
    return of, quality, candidates


def _merged(first: list[str], second: list[str]) -> list[str]:
    """Two id lists, each in the table's order, as one. Python's order is SQLite's (BINARY) but may not be a
    PostgreSQL collation's; that only reorders one patient's resources written under two reference spellings."""
    return sorted(first + second)


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


@dataclass(frozen=True)
class _Job:
    """One chunk to derive, self-contained so that a worker process can run it."""

    url: str
    ids: dict[str, list[str]]  # type -> resource ids, in the warehouse's order within each patient
    candidates: bool
    studies: list[dict]
    base: str | None
    concepts: ConceptMap
    params: RuleParams


_WAREHOUSES: dict[str, Warehouse] = {}  # one per worker process and URL


def _warehouse(url: str) -> Warehouse:
    if url not in _WAREHOUSES:
        _WAREHOUSES[url] = Warehouse(url)
    return _WAREHOUSES[url]


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM), for the step's log and the benchmark; NaN off Linux."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return float("nan")
    return next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmHWM:")), float("nan"))


CPU_PARTS = ("read", "flatten", "facts", "rules")  # a chunk's CPU seconds, in the step's log


def _run(job: _Job, wh: Warehouse | None = None) -> tuple[ChunkOutcome, dict[str, float], float]:
    """Read, flatten and derive one chunk; the outcome, the CPU seconds of each of CPU_PARTS and the process's peak RSS."""
    with collector_paused():
        return _derive(job, wh or _warehouse(job.url))


def _derive(job: _Job, wh: Warehouse) -> tuple[ChunkOutcome, dict[str, float], float]:
    clock = [time.process_time()]  # CPU: workers share two cores with whatever else runs

    def lap() -> float:
        clock.append(time.process_time())
        return clock[-1] - clock[-2]

    resources: dict[str, list[dict]] = {}
    for rtype, ids in job.ids.items():
        found = wh.raw_resources_by_id(rtype, ids)
        resources[rtype] = [found[rid] for rid in ids if rid in found]  # a resource deleted since the index is gone
    resources["ResearchStudy"] = job.studies
    cpu = {"read": lap()}
    flat = flatten_all(resources, base=job.base)
    cpu["flatten"] = lap()
    facts = build_facts(flat, job.concepts)
    cpu["facts"] = lap()
    outcome = chunk_outcome(facts, job.params) if job.candidates else non_candidate_outcome(facts)
    cpu["rules"] = lap()
    return outcome, cpu, peak_rss_mb()


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """The chunks' workers, started the process's default way (see POOL_FROM_CANDIDATES). They import this
    checkout's modules because the step's sys.path starts with it (assets/executor.py puts it there)."""
    return ProcessPoolExecutor(max_workers=workers)


def _in_memory(url: str) -> bool:
    return url.startswith("sqlite") and sa.engine.make_url(url).database in (None, "", ":memory:")


def derive_in_chunks(wh: Warehouse, concepts: ConceptMap, params: RuleParams, base: str | None = None,
                     chunk_patients: int = CHUNK_PATIENTS, workers: int | None = None,
                     timings: dict[str, float] | None = None) -> tuple[CohortTables, list[str]]:
    """Every cohort table, reading at most ``chunk_patients`` patients' resources at a time (per worker);
    and every Patient id (for ``patient_xref``), in the warehouse's order.

    With ``POOL_FROM_CHUNKS`` chunks or more, chunks run in ``workers`` processes (default: up to 2 cores when
    there are ``POOL_FROM_CANDIDATES`` candidates, else this process);
    outcomes are gathered in chunk order, so the tables do not depend on the number of workers."""
    timings = timings if timings is not None else {}
    started, cpu_started = time.perf_counter(), time.process_time()
    index = index_hospital(wh, concepts, base)
    timings["index_s"], timings["index_cpu_s"] = time.perf_counter() - started, time.process_time() - cpu_started
    studies = wh.raw_resources("ResearchStudy")
    patient_types = [t for t in TYPES if TYPES[t].patient_data]
    known = set(index.patients)
    candidates = [p for p in index.patients if p in index.candidates] + sorted(index.candidates - known)
    # Everyone else, and the patients that resources name but the Patient table lacks: data quality still reads
    # their resources (the whole-hospital path does).
    absent = sorted({pid for t in QUALITY_TYPES for pid in index.resources.get(t, {})} - known - index.candidates)
    others = [p for p in index.patients if p not in index.candidates] + absent

    def job(patients: Sequence[str], types: Sequence[str], is_candidate: bool) -> _Job:
        ids = {t: list(patients) if t == "Patient" else index.ids(t, patients) for t in types}
        return _Job(wh.url, ids, is_candidate, studies if is_candidate else [], base, concepts, params)

    if workers is None:
        workers = min(2, os.cpu_count() or 1) if len(candidates) >= POOL_FROM_CANDIDATES else 1

    def size(patients: Sequence[str]) -> int:  # at most chunk_patients, and small enough to give every worker a chunk
        return max(1, min(chunk_patients, -(-len(patients) // workers)))

    # At least one candidate chunk, even of nobody: a hospital without candidates still gets typed empty tables.
    phases = {"candidates": [job(c, patient_types, True) for c in (_chunks(candidates, size(candidates)) if candidates else [[]])],
              "others": [job(c, QUALITY_TYPES, False) for c in _chunks(others, size(others))]}
    # No pool in a daemonic process (a Celery prefork worker runs steps in one, and daemons may not have children).
    pooled = (workers > 1 and sum(map(len, phases.values())) >= POOL_FROM_CHUNKS and not _in_memory(wh.url)
              and not multiprocessing.current_process().daemon)
    pool = None
    if pooled:
        # The parent's pooled connections are closed first, so a forked child inherits no live one.
        wh.engine.dispose()
        pool = worker_pool(workers)
    builder = CohortBuilder(params)
    timings.update({f"{part}_cpu_s": 0.0 for part in CPU_PARTS}, worker_peak_rss_mb=0.0)
    # One queue for both phases: a worker that finishes the last candidate chunk goes on to the others' chunks
    # instead of idling until its sibling has finished too. candidates_s runs until the last candidate chunk is
    # gathered (the others' chunks run meanwhile), chunks_s until every chunk is.
    labelled = [(phase, job) for phase, jobs in phases.items() for job in jobs]
    try:
        started = time.perf_counter()
        results = pool.map(_run, [job for _, job in labelled]) if pool else (_run(job, wh) for _, job in labelled)
        for (phase, _), (outcome, cpu, peak) in zip(labelled, results, strict=True):
            builder.outcomes.append(outcome)
            for part, seconds in cpu.items():
                timings[f"{part}_cpu_s"] += seconds
            timings["worker_peak_rss_mb"] = max(timings["worker_peak_rss_mb"], peak)
            if phase == "candidates":
                timings["candidates_s"] = time.perf_counter() - started
        timings["chunks_s"] = time.perf_counter() - started
    finally:
        if pool:
            pool.shutdown()
    timings["candidates"] = len(index.candidates)
    timings["workers"] = workers if pool else 1
    return builder.build(index.quality), index.patients


def derive_whole_hospital(wh: Warehouse, concepts: ConceptMap, params: RuleParams,
                          base: str | None = None) -> tuple[CohortTables, list[str]]:
    """The same tables from every raw resource at once: memory grows with the hospital. The reference
    the chunked path is tested against (tests/assets/test_cohort_chunks.py) and the benchmark's baseline."""
    facts = build_facts(flatten_all({rtype: wh.raw_resources(rtype) for rtype in TYPES}, base=base), concepts)
    return derive_cohort_tables(facts, params), list(facts.patients["patient_id"])
