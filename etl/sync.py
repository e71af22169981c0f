"""Keep the warehouse's raw tables equal to the FHIR server, incrementally, over REST search.

* First run (or ``full=True``): every resource of the type, sorted by ``_lastUpdated`` so an
  expired page link only restarts its window. Current rows the server no longer serves are
  deleted (the history table keeps them).
* Later runs: only ``_lastUpdated=ge<watermark>``; the watermark is the server's own clock at the
  start of the previous pull (``Bundle.meta.lastUpdated``), so client clock skew cannot lose
  updates, and an unchanged server answers with one empty page.
* Deletes: tombstones from system-level ``_history?_since=<watermark>`` where the server offers
  it; where it doesn't, ``reconcile=True`` (the weekly job) compares every id on the server.
* Counts: after a pull that changed anything, the server's ``_summary=count`` is stored beside
  the warehouse's count for the blocking reconciliation check.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from concurrent.futures import Executor
from typing import Any, Callable, Iterable, Iterator

import orjson

from .fhir_client import FhirClient, FhirError, SearchStats
from .loader import LoadCounts, TypeLoader
from .ndjson import Line, NdjsonLoader, validation_pool
from .warehouse import SeenIds, Warehouse

log = logging.getLogger(__name__)

HISTORY_UNSUPPORTED = {400, 403, 404, 405, 501}
Progress = Callable[[str], None]


@dataclass
class TypeReport:
    resource_type: str
    mode: str
    load: LoadCounts = field(default_factory=LoadCounts)
    search: SearchStats = field(default_factory=SearchStats)
    watermark_before: str | None = None
    watermark_after: str | None = None
    server_count: int | None = None
    warehouse_count: int | None = None
    quarantined_current: int | None = None
    scope: str = "all resources of the type"
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.load.applied.writes > 0

    def as_metadata(self) -> dict[str, Any]:
        rate = self.load.received / self.seconds if self.seconds > 0 else 0.0
        meta: dict[str, Any] = {"mode": self.mode, **self.load.as_metadata(), "requests": self.search.requests,
                                "pages": self.search.pages, "retries": self.search.retries,
                                "throttled_429": self.search.throttled,
                                "retry_after_seconds": round(self.search.retry_after_s, 3),
                                "expired_page_restarts": self.search.restarts,
                                "resources_per_second": round(rate, 1), "seconds": round(self.seconds, 2),
                                "watermark": self.watermark_after or "", "scope": self.scope}
        if self.server_count is not None:
            meta["server_count"] = self.server_count
        if self.warehouse_count is not None:
            meta["warehouse_count"] = self.warehouse_count
            meta["quarantined_current"] = self.quarantined_current or 0
        if self.notes:
            meta["notes"] = "; ".join(self.notes)
        return meta


def record_counts(client: FhirClient | None, warehouse: Warehouse, report: TypeReport,
                  server_count: int | None = None, *, force: bool = False) -> None:
    """Store server vs warehouse counts; asks the server only when something may have changed."""
    previous = warehouse.counts(report.resource_type)
    if previous is not None and not (force or report.changed or report.load.tombstones_seen):
        report.server_count, report.warehouse_count = previous.get("server_count"), previous.get("warehouse_count")
        report.quarantined_current = previous.get("quarantined_current")
        return
    if server_count is None and client is not None:
        server_count = client.count(report.resource_type, stats=report.search)
    row = warehouse.save_counts(report.resource_type, report.scope, server_count)
    report.server_count, report.warehouse_count = server_count, row["warehouse_count"]
    report.quarantined_current = row["quarantined_current"]


def apply_id_reconciliation(warehouse: Warehouse, loader: TypeLoader, seen: SeenIds, source: str, *,
                            content_pass: bool = True) -> int:
    """After a full pass: delete current rows whose id the pass did not see. Quarantine rows are
    retired when a content pass did not see them again, or (``content_pass=False``, an id-only
    listing) when their id is gone from the server."""
    loader.flush()
    removed = 0
    for chunk in warehouse.ids_missing_from(seen):
        for rid in chunk:
            loader.delete(rid, None, None, source)
        removed += len(chunk)
    loader.flush()
    if content_pass:
        warehouse.retire_quarantine(loader.resource_type, seen.started)
    else:
        warehouse.retire_quarantine_missing_from(seen)
    return removed


def pull_type(client: FhirClient, warehouse: Warehouse, resource_type: str, *, full: bool = False,
              batch_size: int = 1000, progress: Progress | None = None, pool: Executor | None = None) -> TypeReport:
    """One type's search pull (full or since its watermark) into the warehouse.

    Pages are fetched in this thread while ``pool``'s worker processes validate the previous ones,
    so the network wait and the validation overlap."""
    started = time.monotonic()
    state = warehouse.sync_state(resource_type) or {}
    incremental = not full and bool(state.get("watermark"))
    report = TypeReport(resource_type, "incremental" if incremental else "full", watermark_before=state.get("watermark"))
    params = {"_sort": "_lastUpdated"}
    if incremental:
        params["_lastUpdated"] = f"ge{state['watermark']}"
    loader = NdjsonLoader(warehouse, [resource_type], batch_size, track_ids=not incremental)

    def lines() -> Iterator[Line]:
        for n, entry in enumerate(client.search(resource_type, params, stats=report.search), start=1):
            if progress and n % 10000 == 0:
                progress(f"{resource_type}: {n} received")
            yield Line(entry.source, orjson.dumps(entry.resource), resource_type)

    loader.load(lines(), pool, chunk_lines=200)
    loader.flush()
    type_loader = loader.loader(resource_type)
    if not incremental:
        apply_id_reconciliation(warehouse, type_loader, loader.seen_ids[resource_type],
                                f"{client.base_url}/{resource_type} (full pull)")
    report.load = type_loader.counts
    report.watermark_after = report.search.server_time or report.search.max_last_updated or report.watermark_before
    if report.changed or not incremental:
        warehouse.save_sync_state(resource_type, watermark=report.watermark_after, mode=report.mode, full=not incremental,
                                  watermark_source="server clock" if report.search.server_time else "max lastUpdated")
    else:
        warehouse.touch_sync_state(resource_type)
    report.seconds = time.monotonic() - started
    return report


def pull_window(client: FhirClient, warehouse: Warehouse, resource_type: str, start: str, end: str, *,
                batch_size: int = 1000, pool: Executor | None = None) -> TypeReport:
    """Every resource last updated in [start, end): a backfill slice. Upserts only, so slices are
    independent and can run in parallel; watermarks and deletes are left to the regular sync."""
    started = time.monotonic()
    warehouse.ensure_schema([resource_type])
    report = TypeReport(resource_type, "window", scope=f"_lastUpdated in [{start}, {end})")
    loader = NdjsonLoader(warehouse, [resource_type], batch_size)
    params = {"_sort": "_lastUpdated", "_lastUpdated": [f"ge{start}", f"lt{end}"]}
    loader.load((Line(e.source, orjson.dumps(e.resource), resource_type)
                 for e in client.search(resource_type, params, stats=report.search)), pool, chunk_lines=200)
    loader.flush()
    report.load = loader.loader(resource_type).counts
    report.server_count = report.search.first_total
    report.seconds = time.monotonic() - started
    return report


def apply_history_deletes(client: FhirClient, warehouse: Warehouse, reports: dict[str, TypeReport],
                          batch_size: int = 1000) -> bool:
    """Apply tombstones from ``_history?_since=`` (one system-level request for all types).

    Returns False when the server offers no history; deletes then wait for the reconciliation job."""
    since = [r.watermark_before for r in reports.values() if r.mode == "incremental" and r.watermark_before]
    if not since:
        return True
    stats = SearchStats()
    loaders = {t: TypeLoader(warehouse, t, batch_size) for t in reports}
    try:
        for entry in client.history(min(since), stats=stats):
            if entry.deleted and entry.resource_type in loaders:
                loaders[entry.resource_type].delete(entry.id, entry.version_id, entry.last_updated, entry.source)
    except FhirError as exc:
        if exc.status not in HISTORY_UNSUPPORTED:
            raise
        for report in reports.values():
            report.notes.append(f"server offers no _history (HTTP {exc.status}): deletes wait for the reconciliation job")
        return False
    finally:
        first = next(iter(reports.values()))
        first.search.add(stats)  # the one history request is charged to the first type
    for resource_type, loader in loaders.items():
        loader.flush()
        reports[resource_type].load.tombstones_seen += loader.counts.tombstones_seen
        reports[resource_type].load.applied.deleted += loader.counts.applied.deleted
    return True


def reconcile_type(client: FhirClient, warehouse: Warehouse, report: TypeReport, batch_size: int = 1000) -> int:
    """Full id reconciliation: every id on the server (``_elements=id``) against the current table."""
    ids = SeenIds(warehouse, report.resource_type)
    for entry in client.search(report.resource_type, {"_elements": "id"}, stats=report.search):
        if isinstance(entry.resource.get("id"), str):
            ids.add(entry.resource["id"])
    loader = TypeLoader(warehouse, report.resource_type, batch_size)
    removed = apply_id_reconciliation(warehouse, loader, ids, f"{client.base_url}/{report.resource_type}?_elements=id",
                                      content_pass=False)
    report.load.tombstones_seen += loader.counts.tombstones_seen
    report.load.applied.deleted += loader.counts.applied.deleted
    return removed


def sync_rest(client: FhirClient, warehouse: Warehouse, resource_types: Iterable[str], *, full: bool = False,
              reconcile: bool = False, batch_size: int = 1000, progress: Progress | None = None,
              workers: int | None = None) -> dict[str, TypeReport]:
    types = list(resource_types)
    warehouse.ensure_schema(types)
    pool = validation_pool(workers)
    try:
        reports = {t: pull_type(client, warehouse, t, full=full, batch_size=batch_size, progress=progress, pool=pool)
                   for t in types}
    finally:
        if pool is not None:
            pool.shutdown()
    apply_history_deletes(client, warehouse, reports, batch_size)
    for report in reports.values():
        if reconcile and report.mode == "incremental":
            reconcile_type(client, warehouse, report, batch_size)
        record_counts(client, warehouse, report, force=reconcile)
    return reports
