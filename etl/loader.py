"""Validate resources and load them in batches: every resource ends loaded or quarantined.

The same loader serves every source (REST search pages, history tombstones, Bulk NDJSON files,
an NDJSON directory), so the accounting is identical whichever way the data came in.
Batches keep memory flat however large the hospital is.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import orjson

from .plausibility import plausibility_errors
from .validation import validation_errors
from .warehouse import ApplyResult, QuarantineRow, RawRow, Tombstone, Warehouse
from .wire import wire_errors


def check_resource(resource: Any, expected_type: str, text: bytes | None = None) -> list[str]:
    """Structural R4 errors first; plausibility only for a structurally valid resource. With ``text`` (the JSON
    the resource arrived as, from NDJSON, Bulk or a REST page) the text itself is checked too (``etl.wire``).
    Nothing a resource holds can make this raise: a nesting too deep for Python's stack is a quarantine reason."""
    try:
        errors = wire_errors(text, resource) if text is not None else []
        errors = errors or validation_errors(resource, expected_type, text)
        return errors or plausibility_errors(resource)
    except RecursionError:
        return ["nested too deeply to validate (Python's recursion limit); FHIR resources are far shallower"]


def _quarantine_text(resource: Any, text: bytes | None) -> str:
    """The text a quarantined resource is kept as; anything that cannot be written as JSON still leaves a row."""
    if text is not None:
        return text.decode(errors="replace")
    try:
        return orjson.dumps(resource).decode()
    except TypeError:  # too deep for orjson, or a lone surrogate
        try:
            return json.dumps(resource, allow_nan=True)
        except (RecursionError, ValueError):
            return "(not writable as JSON: nested too deeply)"


@dataclass
class LoadCounts:
    received: int = 0
    quarantined_seen: int = 0
    tombstones_seen: int = 0
    applied: ApplyResult = field(default_factory=ApplyResult)

    def as_metadata(self) -> dict[str, int]:
        a = self.applied
        return {"received": self.received, "inserted": a.inserted, "updated": a.updated, "unchanged": a.unchanged,
                "stale_versions": a.stale, "deleted": a.deleted, "quarantined": self.quarantined_seen,
                "quarantined_new": a.quarantined, "conflicts": a.conflicts}


class TypeLoader:
    """Collects one resource type's rows, tombstones and quarantine rows; writes every ``batch_size``."""

    def __init__(self, warehouse: Warehouse, resource_type: str, batch_size: int = 1000) -> None:
        self.warehouse = warehouse
        self.resource_type = resource_type
        self.batch_size = batch_size
        self.counts = LoadCounts()
        self._rows: list[RawRow] = []
        self._tombstones: list[Tombstone] = []
        self._quarantine: list[QuarantineRow] = []

    def _pending(self) -> int:
        return len(self._rows) + len(self._tombstones) + len(self._quarantine)

    def add(self, resource: Any, source: str, errors: list[str] | None = None, text: bytes | None = None) -> bool:
        """Offer one parsed resource; ``errors`` may be given when validation ran elsewhere (a worker), ``text``
        (the JSON it came as) lets the checks on the text itself run too."""
        self.counts.received += 1
        errors = check_resource(resource, self.resource_type, text) if errors is None else errors
        if errors:
            rid = resource.get("id") if isinstance(resource, dict) else None
            version = ((resource.get("meta") or {}).get("versionId") if isinstance(resource, dict)
                       and isinstance(resource.get("meta"), dict) else None)
            self._add_quarantine(QuarantineRow(self.resource_type, rid if isinstance(rid, str) else None,
                                               _quarantine_text(resource, text), errors, source, version))
            return False
        self._rows.append(RawRow.of(resource, source))
        self._maybe_flush()
        return True

    def add_row(self, row: RawRow) -> None:
        """A resource a worker already validated and serialised."""
        self.counts.received += 1
        self._rows.append(row)
        self._maybe_flush()

    def add_unparseable(self, text: str, reason: str, source: str) -> None:
        self.counts.received += 1
        self._add_quarantine(QuarantineRow(self.resource_type, None, text, [reason], source))

    def _add_quarantine(self, row: QuarantineRow) -> None:
        self.counts.quarantined_seen += 1
        self._quarantine.append(row)
        self._maybe_flush()

    def delete(self, resource_id: str, version_id: str | None, last_updated: str | None, source: str) -> None:
        self.counts.tombstones_seen += 1
        self._tombstones.append(Tombstone(resource_id, version_id, last_updated, source))
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if self._pending() >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self._pending():
            return
        self.counts.applied.add(self.warehouse.apply(self.resource_type, self._rows, self._tombstones, self._quarantine))
        self._rows, self._tombstones, self._quarantine = [], [], []
