"""The end of one pass over one resource type, the same for every sync mode.

A full pass deletes current rows whose id it did not see and retires quarantine rows it did not see
again; every pass records its watermark (or confirms the old one) and the server's count beside the
warehouse's for the blocking reconciliation check. This was written four times, once per sync mode,
and is now ``finish_pass``. Two ends stay outside it on purpose: REST records its counts after the
history deletes and the optional reconciliation of every type (``sync_rest``), and a type the history
shows unchanged is not a pass at all (``rest.unchanged_type`` only moves its watermark).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from etl.fhir.client import FhirClient
from etl.fhir.responses import SearchStats
from etl.warehouse import SeenIds, Warehouse

from .pipeline import LoadCounts, TypeLoader

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


@dataclass(frozen=True)
class PassEnd:
    """How one pass over a type ends."""
    watermark: str | None            # where the next incremental pass starts (None: files carry no clock)
    watermark_source: str            # what the watermark is: "server clock", "bulk transactionTime", ...
    full: bool                       # the pass saw every resource of its scope
    seen: SeenIds | None = None      # a full pass's ids: current rows outside them were deleted at the source
    deletes_source: str = ""         # where those deletes are attributed in the history table
    touch_only: bool = False         # nothing changed: the stored watermark stays; only its check time moves
    server_count: int | None = None  # the source's own count when the pass knows it (files, manifest, chunk totals)
    count_client: FhirClient | None = None  # else ask this server for ``_summary=count``
    record_count: bool = True        # False: the caller records counts after later passes (REST: deletes, reconcile)


def finish_pass(warehouse: Warehouse, loader: TypeLoader, report: TypeReport, end: PassEnd, started: float) -> TypeReport:
    loader.flush()
    if end.seen is not None:
        apply_id_reconciliation(warehouse, loader, end.seen, end.deletes_source)
    report.load = loader.counts
    report.watermark_after = end.watermark
    if end.touch_only:
        warehouse.touch_sync_state(report.resource_type)
    else:
        warehouse.save_sync_state(report.resource_type, watermark=end.watermark, watermark_source=end.watermark_source,
                                  mode=report.mode, full=end.full)
    if end.record_count:
        record_counts(end.count_client, warehouse, report, end.server_count, force=True)
    report.seconds = time.monotonic() - started
    return report
