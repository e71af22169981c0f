"""Pull one resource type from a FHIR server into the warehouse, validating every resource."""
from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from .fhir_client import FhirClient, SearchStats
from .validation import validation_errors
from .warehouse import QuarantineRow, RawRow, Warehouse


@dataclass
class IngestReport:
    resource_type: str
    received: int = 0
    loaded: int = 0
    quarantined: int = 0
    duplicates: int = 0
    search: SearchStats = field(default_factory=SearchStats)

    def as_metadata(self) -> dict[str, int | float]:
        return {"received": self.received, "loaded": self.loaded, "quarantined": self.quarantined,
                "duplicates_collapsed": self.duplicates, "requests": self.search.requests,
                "pages": self.search.pages, "retries": self.search.retries,
                "retry_after_seconds": round(self.search.retry_after_s, 3)}


def _version_key(row: RawRow) -> tuple[int, str]:
    try:
        version = int(row.version_id or 0)
    except ValueError:
        version = 0
    return version, row.last_updated or ""


def ingest_resource_type(client: FhirClient, warehouse: Warehouse, resource_type: str) -> IngestReport:
    """Full pull of ``resource_type``: every match is either loaded or quarantined, never dropped.

    A resource that shows up twice (pages can shift while a server is being written to) is kept
    once, at its highest versionId.
    """
    report = IngestReport(resource_type)
    rows: dict[str, RawRow] = {}
    quarantined: list[QuarantineRow] = []
    for entry in client.search(resource_type, stats=report.search):
        report.received += 1
        resource = entry.resource
        errors = validation_errors(resource, resource_type)
        if errors:
            rid = resource.get("id") if isinstance(resource, dict) else None
            quarantined.append(QuarantineRow(resource_type, rid, orjson.dumps(resource).decode(), errors, entry.source))
            continue
        meta = resource.get("meta") or {}
        row = RawRow(resource["id"], meta.get("versionId"), meta.get("lastUpdated"), resource, entry.source)
        previous = rows.get(row.id)
        if previous is not None:
            report.duplicates += 1
            if _version_key(previous) >= _version_key(row):
                continue
        rows[row.id] = row
    warehouse.replace_raw(resource_type, rows.values(), quarantined)
    report.loaded, report.quarantined = len(rows), len(quarantined)
    return report
