"""Patient-scoped ("cohort-first") pull: seed searches find the candidate patients, then only those
patients' resources are fetched, ``patient=`` in chunks, with bounded concurrency.

Big hospitals hold millions of Observations; a study of a few hundred patients should not
download them all. The seed searches (for example Conditions with the study's codes) are given
by the caller, so this module knows nothing about any study. Servers may ignore a search
parameter they do not support (they say so in an OperationOutcome entry): the client then falls
back to one unfiltered search of that type, and the patient filter is always re-applied locally.
"""
from __future__ import annotations

import time
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

from etl.fhir.client import FhirClient
from etl.fhir.ndjson import Line, identity
from etl.fhir.references import reference_id
from etl.fhir.responses import SearchEntry, SearchStats
from etl.fhir.types import spec as type_spec
from etl.warehouse import Warehouse

from .pipeline import ValidatingLoader, validation_pool
from .report import PassEnd, Progress, TypeReport, finish_pass


@dataclass(frozen=True)
class Seed:
    resource_type: str
    params: dict[str, str]


def patient_id(resource: dict[str, Any], base: str | None = None) -> str | None:
    """The patient a resource is about, read as the cohort does (``etl.references``)."""
    rtype = resource.get("resourceType")
    if rtype == "Patient":
        return resource["id"] if isinstance(resource.get("id"), str) else None
    if not isinstance(rtype, str):
        return None
    field = type_spec(rtype).subject_field or "subject"
    return reference_id(resource.get(field), "Patient", base)


def _ignored(stats: SearchStats, param: str) -> bool:
    return any(f"'{param}'" in issue or f'"{param}"' in issue for issue in stats.outcome_issues)


def candidate_patients(client: FhirClient, seeds: Sequence[Seed], stats: SearchStats) -> set[str]:
    ids: set[str] = set()
    for seed in seeds:
        for entry in client.search(seed.resource_type, {**seed.params, "_sort": "_lastUpdated"}, stats=stats):
            pid = patient_id(entry.resource, client.base_url) if isinstance(entry.resource, dict) else None
            if pid:
                ids.add(pid)
    return ids


def _chunk_search(client: FhirClient, resource_type: str, param: str, chunk: list[str]) -> tuple[list[SearchEntry], SearchStats]:
    stats = SearchStats()
    values = ",".join(chunk if param == "_id" else [f"Patient/{p}" for p in chunk])
    # Sorted by _lastUpdated, so an expired page link restarts from the last instant seen (the client's
    # windowed restart) instead of failing every attempt.
    return list(client.search(resource_type, {param: values, "_sort": "_lastUpdated"}, stats=stats)), stats


def pull_scoped_type(client: FhirClient, warehouse: Warehouse, resource_type: str, patients: set[str], *,
                     chunk_size: int = 50, workers: int = 4, batch_size: int = 1000,
                     validators: Executor | None = None) -> TypeReport:
    """One type's resources of the candidate patients, ``patient=`` in chunks on ``workers`` threads, validated
    in the ``validators`` processes like every other sync mode (``etl.ingest.pipeline``)."""
    started = time.monotonic()
    spec = type_spec(resource_type)
    report = TypeReport(resource_type, "cohort-first", scope=f"{len(patients)} candidate patients")
    loader = ValidatingLoader(warehouse, [resource_type], batch_size, track_ids=True)
    server_total: int | None = 0

    def take(entry: SearchEntry) -> Iterator[Line]:
        resource = entry.resource
        if entry.invalid:  # not valid JSON (NaN, a lone surrogate, too deep): quarantined, as from NDJSON
            loader.loader(resource_type).add_unparseable(
                entry.text.decode(errors="replace"), "invalid JSON: not representable in JSON "
                "(NaN, Infinity, a lone surrogate or too deep a nesting)", entry.source)
            return
        if spec.patient_data and isinstance(resource, dict) and patient_id(resource, client.base_url) not in patients:
            return  # outside the scope: re-applied locally because servers may ignore the filter
        yield Line(entry.source, entry.wire(), resource_type, identity(entry.resource))

    def scoped() -> Iterator[Line]:
        nonlocal server_total
        if not spec.patient_data:
            for entry in client.search(resource_type, {"_sort": "_lastUpdated"}, stats=report.search):
                yield from take(entry)
            server_total = report.search.first_total
            return
        param = spec.patient_search or "patient"
        ordered = sorted(patients)
        chunks = [ordered[i:i + chunk_size] for i in range(0, len(ordered), chunk_size)]
        fallback = False
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for entries, stats in pool.map(lambda c: _chunk_search(client, resource_type, param, c), chunks):
                report.search.add(stats)
                if _ignored(stats, param):
                    fallback = True
                    break
                for entry in entries:
                    yield from take(entry)
                server_total = None if server_total is None or stats.first_total is None else server_total + stats.first_total
        if fallback:
            report.notes.append(f"server ignores {resource_type}?{param}=: pulled the type once and filtered locally")
            server_total = None
            for entry in client.search(resource_type, {"_sort": "_lastUpdated"}, stats=report.search):
                yield from take(entry)

    loader.load(scoped(), validators, chunk_lines=200)
    loader.flush()
    finish_pass(warehouse, loader.loader(resource_type), report, PassEnd(
        watermark=report.search.server_time, watermark_source="server clock", full=True, seen=loader.seen(resource_type),
        deletes_source=f"{client.base_url}/{resource_type} (cohort-first scope)", server_count=server_total), started)
    # In scope, the server's count is the sum of the chunk totals; without totals it cannot be asked.
    if server_total is None:
        report.notes.append("no server count for this scope")
    return report


def sync_cohort_first(client: FhirClient, warehouse: Warehouse, resource_types: Iterable[str], seeds: Sequence[Seed], *,
                      chunk_size: int = 50, workers: int = 4, batch_size: int = 1000,
                      progress: Progress | None = None, validation_workers: int | None = None) -> dict[str, TypeReport]:
    types = list(resource_types)
    warehouse.ensure_schema(types)
    stats = SearchStats()
    patients = candidate_patients(client, seeds, stats)
    if progress:
        progress(f"cohort-first: {len(patients)} candidate patients from {len(seeds)} seed searches")
    validators = validation_pool(validation_workers)
    try:
        reports = {t: pull_scoped_type(client, warehouse, t, patients, chunk_size=chunk_size, workers=workers,
                                       batch_size=batch_size, validators=validators) for t in types}
    finally:
        if validators is not None:
            validators.shutdown()
    next(iter(reports.values())).search.add(stats)
    return reports
