"""Checks on the raw FHIR tables, evaluated inside the ingestion step: code sets and values the FHIR model does
not enforce (Great Expectations), and the server's count against the warehouse's.

They run in ``fhir_ingest``'s own step (check specs on the multi-asset) rather than as twelve steps of their
own: each step is a fresh process that imports Dagster and Great Expectations, about ten seconds apiece.
Both kinds are blocking: a failure stops the study tables downstream. A check can still be run alone
(select it without its asset): the ingestion step then evaluates it without pulling anything.
"""
import gc
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterator

import dagster as dg
import pandas as pd

from analytics.pseudonym import Pseudonyms
from etl.fhir.types import RESOURCE_TYPES, TYPES
from etl.warehouse import Warehouse, raw_table_name
from expectations import suites
from expectations.runner import SuiteOutcome

from ..collector import collector_paused
from ..gx import check_result, outcome_of_batches
from ..resources import StudyResource

# Rows of a raw table validated at once. The table is read through a streaming cursor READ_SIZE resources at a
# time and flattened as it comes, so memory holds one batch of flat rows, not the raw table: a hospital's
# Observation table has millions. GX validates only a batch's rows that might fail (``expectations.screen``), and
# a batch with none costs no GX run at all.
BATCH_ROWS = 20_000
READ_SIZE = 5_000


def raw_expectations(resource_type: str, wh: Warehouse, study: StudyResource, batch_rows: int = BATCH_ROWS) -> dg.AssetCheckResult:
    return check_result(raw_outcome(resource_type, wh, study, batch_rows))


def raw_outcome(resource_type: str, wh: Warehouse, study: StudyResource, batch_rows: int = BATCH_ROWS) -> SuiteOutcome:
    suite_of, concepts = suites.RAW_SUITES[resource_type], study.concepts()
    batches = (suite_of(frame, concepts) for frame in _flat_batches(resource_type, wh, study, batch_rows))
    return outcome_of_batches(f"raw_{resource_type.lower()}", batches)


def _flat_batches(resource_type: str, wh: Warehouse, study: StudyResource, batch_rows: int) -> Iterator[pd.DataFrame]:
    """The type's flattened, pseudonymised rows in frames of about ``batch_rows`` (always at least one frame): the
    rows of the resources its suite can look at (``suites.RAW_RESOURCES``), the others are not flattened."""
    flatten, pseudonyms = TYPES[resource_type].flatten, Pseudonyms(study.pseudonym_key)
    needed = suites.RAW_RESOURCES.get(resource_type)
    chunks = wh.raw_resource_batches(resource_type, min(READ_SIZE, batch_rows))
    pending: list[pd.DataFrame] = []
    held, emitted = 0, False
    while True:
        with collector_paused():
            resources = next(chunks, None)
            if resources is None:
                break
            if needed is not None:
                resources = [r for r in resources if needed(r)]
            frame = _pseudonymised(flatten(resources), pseudonyms)  # type: ignore[operator]
        pending.append(frame)
        held += len(frame)
        if held >= batch_rows:
            yield pd.concat(pending, ignore_index=True)
            pending, held, emitted = [], 0, True
    if pending or not emitted:
        yield pd.concat(pending, ignore_index=True) if pending else _pseudonymised(flatten([]), pseudonyms)  # type: ignore[operator]


def _pseudonymised(frame: pd.DataFrame, pseudonyms: Pseudonyms) -> pd.DataFrame:
    # Dagster's event log is read by every engineer: failing rows are named by pseudonym, never by FHIR id
    # (patient_xref, a restricted table, maps a pseudonym back). GX quotes the checked column's values too,
    # so the id column itself is replaced; a missing subject stays missing.
    return frame.assign(patient_id=[pseudonyms(p) if isinstance(p, str) else None for p in frame["patient_id"]])


def count_matches_server(resource_type: str, wh: Warehouse, study: StudyResource) -> dg.AssetCheckResult:
    counts = wh.counts(resource_type)
    if counts is None:
        return dg.AssetCheckResult(passed=False, description="no count recorded: the type was never pulled")
    expected = counts["server_count"]
    # The warehouse side is counted now, not taken from the pull's record: rows lost after the
    # pull (a manual delete, a restore from an old backup) must fail the check too.
    current, quarantined = wh.current_count(resource_type), wh.quarantined_current(resource_type)
    held = current + quarantined
    meta = {"server_count": expected if expected is not None else "unknown", "warehouse_count": current,
            "quarantined_current": quarantined, "scope": counts["scope"],
            "server_counted_at": str(counts["checked_at"])}
    if expected is None:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN, metadata=meta,
                                   description="the server gave no count for this scope; nothing to compare")
    return dg.AssetCheckResult(passed=expected == held, metadata={**meta, "difference": held - expected},
                               description=None if expected == held else
                               f"server holds {expected}, warehouse accounts for {held}: run the reconciliation job "
                               f"(full_refresh or reconcile) and read the ingestion logs")


Evaluate = Callable[[str, Warehouse, StudyResource], dg.AssetCheckResult]
# check name -> (resource type, how it is evaluated, what it promises)
RAW_CHECKS: dict[str, tuple[str, Evaluate, str]] = {
    **{f"raw_{t.lower()}_expectations": (t, raw_expectations, f"Code sets and values of {t} that the FHIR model does not "
                                                              "enforce.") for t in suites.RAW_SUITES},
    **{f"raw_{t.lower()}_count_matches_server": (t, count_matches_server, f"The server's count of {t} equals the "
                                                 "warehouse's current rows plus the ids whose latest version is in "
                                                 "quarantine.") for t in RESOURCE_TYPES},
}


def raw_check_specs() -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec(name, asset=dg.AssetKey(raw_table_name(t)), blocking=True, description=description)
            for name, (t, _, description) in RAW_CHECKS.items()]


def check_pool(context: dg.AssetExecutionContext) -> ProcessPoolExecutor | None:
    """One process to share the expectation checks with, forked now: at the step's start, before the sync starts
    any thread (forking while another thread holds a lock can deadlock the child), from a process that has Great
    Expectations imported already (the fork server preloads it), so its first check starts at once.

    Why: after the load, the checks read every raw table back, one table after another, on one core of two; at
    200,000 patients that was about a third of the step. Shared between this process and one more, they take
    about half the time. One more, not two: each process that checks holds its own batches and GX context (about
    150 MB), and this one is idle otherwise. None (checks inline, as before) on one core, inside a daemonic
    process (a Celery prefork worker), or when fewer than two expectation checks are selected."""
    selected = [k for k in context.selected_asset_check_keys if RAW_CHECKS[k.name][1] is raw_expectations]
    if (os.cpu_count() or 1) < 2 or len(selected) < 2 or multiprocessing.current_process().daemon:
        return None
    # Frozen across the fork: the child's garbage collector then leaves this process's objects alone instead of
    # writing to every page of them, which made its copy of this process's heap its own (measured: ~100 MB).
    gc.freeze()
    try:
        pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork"))
        pool.submit(int).result()  # the process starts (forks) now, not at the first check
    finally:
        gc.unfreeze()
    return pool


def _outcome_in_worker(resource_type: str, url: str, pseudonym_key: str, concept_map_path: str) -> SuiteOutcome:
    # Its own engine: a database connection must never be shared across a fork.
    wh = Warehouse(url)
    try:
        return raw_outcome(resource_type, wh, StudyResource(pseudonym_key=pseudonym_key, concept_map_path=concept_map_path))
    finally:
        wh.engine.dispose()


def split_by_rows(sizes: dict[str, int]) -> tuple[list[str], list[str]]:
    """The names in two shares of about equal rows (largest first, each to the share with fewer rows so far):
    the first for the other process, the second for this one."""
    there: list[str] = []
    here: list[str] = []
    rows = [0, 0]
    for name in sorted(sizes, key=lambda n: (-sizes[n], n)):
        side = 0 if rows[0] <= rows[1] else 1
        (there if side == 0 else here).append(name)
        rows[side] += sizes[name]
    return there, here


def raw_check_results(context: dg.AssetExecutionContext, wh: Warehouse, study: StudyResource,
                      pool: ProcessPoolExecutor | None = None):
    """The result of every selected raw check, in a stable order. With ``pool`` (``check_pool``) the expectation
    checks are shared with its process by the tables' rows; this process does its share, then yields every
    result in order: the same results as inline (tested)."""
    keys = sorted(context.selected_asset_check_keys, key=lambda k: k.name)
    done: dict[str, dg.AssetCheckResult] = {}
    if pool is not None:
        sizes = {k.name: wh.current_count(RAW_CHECKS[k.name][0]) for k in keys if RAW_CHECKS[k.name][1] is raw_expectations}
        there, here = split_by_rows(sizes)
        running = {name: pool.submit(_outcome_in_worker, RAW_CHECKS[name][0], wh.url, study.pseudonym_key,
                                     study.concept_map_path) for name in there}
        for name in here:
            done[name] = raw_expectations(RAW_CHECKS[name][0], wh, study)
        for name, future in running.items():
            done[name] = check_result(future.result())
    for key in keys:
        resource_type, evaluate, _ = RAW_CHECKS[key.name]
        result = done.pop(key.name) if key.name in done else evaluate(resource_type, wh, study)
        yield dg.AssetCheckResult(asset_key=key.asset_key, check_name=key.name, passed=result.passed,
                                  severity=result.severity, metadata=result.metadata, description=result.description)
