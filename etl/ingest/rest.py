"""Keep the warehouse's raw tables equal to the FHIR server, incrementally, over REST search.

* First run (or ``full=True``): every resource of the type, sorted by ``_lastUpdated`` so an
  expired page link only restarts its window. Current rows the server no longer serves are
  deleted (the history table keeps them).
* Later runs: only ``_lastUpdated=ge<watermark>``; the watermark is the server's own clock at the
  start of the previous pull (``Bundle.meta.lastUpdated``), so client clock skew cannot lose
  updates.
* History first: one system-level ``_history?_since=<oldest watermark>`` gives the tombstones and
  says which types changed at all; an unchanged type is not searched, so an unchanged re-run costs
  one request. Where the server offers no ``_history``, every type is searched and
  ``reconcile=True`` (the weekly job) finds deletes by comparing every id on the server.
* Counts: after a pull that changed anything, the server's ``_summary=count`` is stored beside
  the warehouse's count for the blocking reconciliation check.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterable, Iterator

from etl.fhir.client import FhirClient
from etl.fhir.ndjson import Line, identity
from etl.fhir.responses import FhirError, SearchStats
from etl.warehouse import SeenIds, Warehouse

from .pipeline import LoadCounts, TypeLoader, ValidatingLoader, validation_pool
from .prefetch import prefetched
from .report import PassEnd, Progress, TypeReport, apply_id_reconciliation, finish_pass, record_counts

log = logging.getLogger(__name__)

HISTORY_UNSUPPORTED = {400, 403, 404, 405, 501}


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
    loader = ValidatingLoader(warehouse, [resource_type], batch_size, track_ids=not incremental)

    def lines() -> Iterator[Line]:
        for entry in client.search(resource_type, params, stats=report.search):
            yield Line(entry.source, entry.wire(), resource_type, identity(entry.resource))

    def counted(lines: Iterator[Line]) -> Iterator[Line]:
        for n, line in enumerate(lines, start=1):
            if progress and n % 10000 == 0:
                progress(f"{resource_type}: {n} received")
            yield line

    loader.load(counted(prefetched(lines())), pool, chunk_lines=200)
    loader.flush()
    type_loader = loader.loader(resource_type)
    changed = type_loader.counts.applied.writes > 0
    return finish_pass(warehouse, type_loader, report, PassEnd(
        watermark=report.search.server_time or report.search.max_last_updated or report.watermark_before,
        watermark_source="server clock" if report.search.server_time else "max lastUpdated", full=not incremental,
        seen=None if incremental else loader.seen(resource_type),
        deletes_source=f"{client.base_url}/{resource_type} (full pull)",
        touch_only=incremental and not changed, record_count=False), started)


def pull_window(client: FhirClient, warehouse: Warehouse, resource_type: str, start: str, end: str, *,
                batch_size: int = 1000, pool: Executor | None = None) -> TypeReport:
    """Every resource last updated in [start, end): a backfill slice. Upserts only, so slices are
    independent and can run in parallel; watermarks and deletes are left to the regular sync."""
    started = time.monotonic()
    warehouse.ensure_schema([resource_type])
    report = TypeReport(resource_type, "window", scope=f"_lastUpdated in [{start}, {end})")
    loader = ValidatingLoader(warehouse, [resource_type], batch_size)
    params = {"_sort": "_lastUpdated", "_lastUpdated": [f"ge{start}", f"lt{end}"]}
    loader.load((Line(e.source, e.wire(), resource_type, identity(e.resource))
                 for e in client.search(resource_type, params, stats=report.search)), pool, chunk_lines=200)
    loader.flush()
    report.load = loader.loader(resource_type).counts
    report.server_count = report.search.first_total
    report.seconds = time.monotonic() - started
    return report


@dataclass
class HistoryScan:
    """What one system-level ``_history?_since=`` said for the incrementally synced types."""
    changed: set[str] = field(default_factory=set)   # types with a version at or after their own watermark
    deletes: dict[str, LoadCounts] = field(default_factory=dict)
    stats: SearchStats = field(default_factory=SearchStats)
    newest: str | None = None  # the server's clock as far as the history shows it
    unsupported_status: int | None = None  # the HTTP status of a server that offers no _history

    @property
    def supported(self) -> bool:
        return self.unsupported_status is None


def _compare(a: str, b: str) -> int | None:
    """Server instants compared as instants (their offsets may differ); None when either does not parse."""
    try:
        x, y = datetime.fromisoformat(a), datetime.fromisoformat(b)
        return (x > y) - (x < y)
    except (ValueError, TypeError):
        return None


def _at_or_after(last_updated: str | None, watermark: str) -> bool:
    """Unknown or unparseable counts as after: the type is searched rather than a change missed."""
    order = _compare(last_updated, watermark) if last_updated else None
    return order is None or order >= 0


def _strictly_after(instant: str, watermark: str) -> bool:
    """Whether a watermark may move up to ``instant``; when either does not parse, it stays."""
    return _compare(instant, watermark) == 1


def scan_history(client: FhirClient, warehouse: Warehouse, watermarks: dict[str, str],
                 batch_size: int = 1000) -> HistoryScan:
    """Read ``_history?_since=<oldest watermark>`` once for every type: apply its tombstones and note which
    types changed, so an unchanged type needs no search at all (an unchanged re-run costs one request).

    A server without ``_history`` gives ``supported=False``: every type is then searched, and deletes wait
    for the reconciliation job."""
    scan = HistoryScan()
    loaders = {t: TypeLoader(warehouse, t, batch_size) for t in watermarks}
    try:
        for entry in client.history(min(watermarks.values()), stats=scan.stats):
            if entry.last_updated and (scan.newest is None or _strictly_after(entry.last_updated, scan.newest)):
                scan.newest = entry.last_updated
            loader = loaders.get(entry.resource_type)
            if loader is None:
                continue
            if _at_or_after(entry.last_updated, watermarks[entry.resource_type]):
                scan.changed.add(entry.resource_type)
            if entry.deleted:
                loader.delete(entry.id, entry.version_id, entry.last_updated, entry.source)
    except FhirError as exc:
        if exc.status not in HISTORY_UNSUPPORTED:
            raise
        return HistoryScan(stats=scan.stats, unsupported_status=exc.status)
    for resource_type, loader in loaders.items():
        loader.flush()
        scan.deletes[resource_type] = loader.counts
    scan.newest = scan.stats.server_time or scan.newest
    return scan


def unchanged_type(warehouse: Warehouse, resource_type: str, watermark: str, scan: HistoryScan) -> TypeReport:
    """A type the history shows untouched since its watermark: no search. The watermark moves up to the
    newest instant the history showed, so the next ``_since`` window does not keep growing."""
    report = TypeReport(resource_type, "incremental", watermark_before=watermark, watermark_after=watermark,
                        notes=["unchanged since the watermark per _history: not searched"])
    if scan.newest and _strictly_after(scan.newest, watermark):
        report.watermark_after = scan.newest
        warehouse.save_sync_state(resource_type, watermark=scan.newest, mode="incremental", full=False,
                                  watermark_source="_history")
    else:
        warehouse.touch_sync_state(resource_type)
    return report


def reconcile_type(client: FhirClient, warehouse: Warehouse, report: TypeReport, batch_size: int = 1000) -> int:
    """Full id reconciliation: every id on the server (``_elements=id``) against the current table."""
    ids = SeenIds(warehouse, report.resource_type)
    for entry in client.search(report.resource_type, {"_elements": "id"}, stats=report.search):
        if isinstance(entry.resource, dict) and isinstance(entry.resource.get("id"), str):
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
    watermarks = {} if full else {t: state["watermark"] for t in types
                                  if (state := warehouse.sync_state(t)) and state.get("watermark")}
    scan = scan_history(client, warehouse, watermarks, batch_size) if watermarks else None
    skip = set(watermarks) - scan.changed if scan is not None and scan.supported else set()
    pool = validation_pool(workers) if set(types) - skip else None
    try:
        reports = {t: unchanged_type(warehouse, t, watermarks[t], scan) if t in skip and scan is not None else
                   pull_type(client, warehouse, t, full=full, batch_size=batch_size, progress=progress, pool=pool)
                   for t in types}
    finally:
        if pool is not None:
            pool.shutdown()
    if scan is not None:
        reports[next(iter(watermarks))].search.add(scan.stats)  # the one history request, charged once
        for resource_type, deletes in scan.deletes.items():
            reports[resource_type].load.tombstones_seen += deletes.tombstones_seen
            reports[resource_type].load.applied.deleted += deletes.applied.deleted
        if not scan.supported:
            for resource_type in watermarks:
                reports[resource_type].notes.append(f"server offers no _history (HTTP {scan.unsupported_status}): "
                                                    "deletes wait for the reconciliation job")
    for report in reports.values():
        if reconcile and report.mode == "incremental":
            reconcile_type(client, warehouse, report, batch_size)
        record_counts(client, warehouse, report, force=reconcile)
    return reports
