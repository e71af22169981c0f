"""Bulk $export as a sync mode: run (or resume) one export and load its files through the validating loader.

The export client (``etl.fhir.bulk``) knows the protocol; this module knows what the warehouse does with
it: ``error`` files go to quarantine, ``deleted`` files are applied as tombstones, a full export
deletes what it did not list, and the next run's ``_since`` is the manifest's ``transactionTime``.
The polling URL is saved before the first poll, so a crashed run resumes the same export.
"""
from __future__ import annotations

import logging
import time
from typing import Iterator

import orjson

from etl.fhir.bulk import BulkExportClient, BulkExportError, BulkReport, ExportRequest
from etl.fhir.client import FhirClient
from etl.fhir.ndjson import Block
from etl.fhir.responses import FhirError, SearchStats
from etl.fhir.type_filter import TypeFilter, keep_function
from etl.fhir.urls import redacted
from etl.warehouse import Warehouse

from .pipeline import ValidatingLoader, validation_pool
from .report import PassEnd, Progress, TypeReport, finish_pass

log = logging.getLogger(__name__)


def error_lines_to_quarantine(loader: ValidatingLoader, blocks: Iterator[Block]) -> int:
    """Each OperationOutcome line of an ``error`` file becomes a quarantine row with its issues."""
    n = 0
    for line in (line for block in blocks for line in block.lines()):
        try:
            outcome = orjson.loads(line.text)
            issues = [i.get("diagnostics") or (i.get("details") or {}).get("text") or i.get("code", "")
                      for i in outcome.get("issue") or []]
        except (orjson.JSONDecodeError, AttributeError):
            issues = ["unreadable OperationOutcome in the export's error file"]
        loader.loader("OperationOutcome").add_unparseable(line.text.decode(errors="replace"),
                                                          "bulk export error: " + "; ".join(map(str, issues)), line.source)
        n += 1
    return n


def sync_bulk(client: FhirClient, warehouse: Warehouse, resource_types: list[str], *, level: str = "system",
              group_id: str | None = None, type_filters: tuple[str, ...] = (), full: bool = False,
              workers: int | None = None, progress: Progress | None = None,
              exporter: BulkExportClient | None = None) -> tuple[BulkReport, dict[str, TypeReport]]:
    """Run (or resume) one export of ``resource_types`` and load it; returns per-type reports."""
    exporter = exporter or BulkExportClient(client)
    warehouse.ensure_schema(resource_types)
    started = time.monotonic()
    states = {t: warehouse.sync_state(t) or {} for t in resource_types}
    watermarks = {s.get("watermark") for s in states.values()}
    since = None if full or None in watermarks or len(watermarks) != 1 else watermarks.pop()
    open_job = warehouse.open_bulk_job()
    stats = SearchStats()
    if open_job is not None:
        status_url, resumed = open_job["status_url"], True
        log.info("resuming bulk export %s kicked off at %s", redacted(status_url), open_job["kicked_off_at"])
    else:
        request = ExportRequest(level, group_id, tuple(resource_types), since, type_filters)
        status_url, resumed = exporter.kickoff(request, stats), False
        warehouse.record_bulk_job(status_url, orjson.dumps(request.__dict__).decode(), state="polling")
    report = BulkReport(status_url, resumed, stats=stats)
    try:
        manifest = exporter.poll(status_url, report, progress)
    except BulkExportError as exc:
        if exc.status in (404, 410) or exc.permanent:  # forgotten or refused: start afresh next run
            warehouse.record_bulk_job(status_url, state="expired")
        raise
    report.transaction_time = manifest.get("transactionTime")
    with_token = bool(manifest.get("requiresAccessToken"))
    filters = [TypeFilter.parse(f) for f in type_filters]
    loader = ValidatingLoader(warehouse, resource_types, keep=keep_function(filters) if filters else None,
                          track_ids=since is None and not filters)
    pool = validation_pool(workers)
    try:
        for item in manifest.get("output") or []:
            rtype = item.get("type")
            report.manifest_counts[rtype] = report.manifest_counts.get(rtype, 0) + int(item.get("count") or 0)
            if progress:
                progress(f"bulk export: loading {rtype} from {redacted(item['url'])}")
            loader.load_blocks(exporter.blocks(item["url"], with_token, rtype, report.stats), pool)
        for item in manifest.get("deleted") or []:
            loader.load_blocks(exporter.blocks(item["url"], with_token, "Bundle", report.stats), pool)
    finally:
        if pool is not None:
            pool.shutdown()
    for item in manifest.get("error") or []:
        report.errors_quarantined += error_lines_to_quarantine(loader, exporter.blocks(item["url"], with_token, None, report.stats))
    loader.flush()
    warehouse.record_bulk_job(status_url, state="done", transaction_time=report.transaction_time)
    try:
        exporter.cancel(status_url, report.stats)  # tells the server it may delete the files
    except FhirError as exc:
        log.warning("could not release bulk export files at %s: %s", redacted(status_url), exc)
    reports: dict[str, TypeReport] = {}
    full_listing = since is None and not filters  # a full export lists every id: anything else was deleted
    for rtype in resource_types:
        tr = TypeReport(rtype, "bulk" if since is None else "bulk incremental", watermark_before=states[rtype].get("watermark"),
                        scope="bulk export" + (" with _typeFilter" if filters else ""))
        if rtype == resource_types[0]:
            tr.search = report.stats
        if filters and loader.filtered_out.get(rtype):
            tr.notes.append(f"{loader.filtered_out[rtype]} resources removed by re-applying _typeFilter locally")
        reports[rtype] = finish_pass(warehouse, loader.loader(rtype), tr, PassEnd(
            watermark=report.transaction_time or states[rtype].get("watermark"), watermark_source="bulk transactionTime",
            full=since is None, seen=loader.seen(rtype) if full_listing else None, deletes_source=f"{status_url} (full export)",
            server_count=report.manifest_counts.get(rtype, 0) if full_listing else None,
            count_client=client if since is not None and not filters else None), started)
    return report, reports
