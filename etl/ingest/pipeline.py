"""The validating loader: every resource from any source ends loaded or quarantined, in batches.

The same pipeline serves every sync mode (REST pages, history tombstones, Bulk files, an NDJSON
directory, cohort-first chunks), so the accounting is identical whichever way the data came in:
lines go to validation workers (``etl.ingest.worker``), come back as rows ready to write (plain tuples:
the loading process is the one that limits the step), and are routed to one ``TypeLoader`` per type,
which writes every ``batch_size``. Memory stays flat: a bounded number of blocks is in flight.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Callable, Iterable, Iterator, TypeVar

import orjson

from etl.fhir.ndjson import Block, Line
from etl.fhir.schema.runtime import warm_validator
from etl.warehouse import ApplyResult, QuarantineRow, RawRow, SeenIds, Tombstone, Warehouse

from .worker import Item, Run, check_block, check_chunk, check_resource, quarantine_text

CHUNK_LINES = 500
T = TypeVar("T")


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
                                               quarantine_text(resource, text), errors, source, version))
            return False
        self._rows.append(RawRow.of(resource, source))
        self._maybe_flush()
        return True

    def add_row(self, row: RawRow) -> None:
        """A resource a worker already validated and serialised."""
        self.counts.received += 1
        self._rows.append(row)
        self._maybe_flush()

    def add_rows(self, rows: list[RawRow]) -> None:
        """``add_row`` of each, in order, with the same batches (a batch is written as soon as it is full)."""
        self.counts.received += len(rows)
        start = 0
        while start < len(rows):
            room = max(self.batch_size - self._pending(), 1)
            self._rows.extend(rows[start:start + room])
            start += room
            self._maybe_flush()

    def add_unparseable(self, text: str, reason: str, source: str, *, resource_id: str | None = None,
                        version_id: str | None = None) -> None:
        self.counts.received += 1
        self._add_quarantine(QuarantineRow(self.resource_type, resource_id, text, [reason], source, version_id))

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


def _chunks(lines: Iterable[Line], size: int) -> Iterator[list[Line]]:
    iterator = iter(lines)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _ordered_map(pool: Executor | None, check: Callable[[T], list[Item]], chunks: Iterable[T],
                 window: int) -> Iterator[list[Item]]:
    """``pool.map`` with a bounded number of chunks in flight (``Executor.map`` submits everything at once)."""
    if pool is None:
        for chunk in chunks:
            yield check(chunk)
        return
    pending = []
    for chunk in chunks:
        pending.append(pool.submit(check, chunk))
        if len(pending) >= window:
            yield pending.pop(0).result()
    for future in pending:
        yield future.result()


class ValidatingLoader:
    """Validates lines (in ``pool``'s workers when given) and routes them to one TypeLoader per resource type."""

    def __init__(self, warehouse: Warehouse, allowed_types: Iterable[str] | None = None, batch_size: int = 2000,
                 keep: Callable[[str, dict], bool] | None = None, track_ids: bool = False) -> None:
        self.warehouse = warehouse
        self.allowed = set(allowed_types) if allowed_types is not None else None
        self.batch_size = batch_size
        self.keep = keep
        self.loaders: dict[str, TypeLoader] = {}
        self.lines_per_type: dict[str, int] = {}
        self.filtered_out: dict[str, int] = {}
        self.track_ids = track_ids  # a full pass's ids, to find deletes (spilled to the warehouse)
        self.seen_ids: dict[str, SeenIds] = {}
        if track_ids:  # before any line is read: the pass's start time retires quarantine rows not seen again
            for rtype in self.allowed or ():
                self.seen(rtype)
        self.without_id: dict[str, int] = {}

    def seen(self, resource_type: str) -> SeenIds:
        if resource_type not in self.seen_ids:
            self.seen_ids[resource_type] = SeenIds(self.warehouse, resource_type)
        return self.seen_ids[resource_type]

    def loader(self, resource_type: str) -> TypeLoader:
        if resource_type not in self.loaders:
            self.warehouse.ensure_schema([resource_type])
            self.loaders[resource_type] = TypeLoader(self.warehouse, resource_type, self.batch_size)
        return self.loaders[resource_type]

    def take(self, checked: Item) -> None:
        if type(checked) is Run:  # valid resources, as a worker sends them
            rtype, rows = checked.resource_type, list(map(RawRow._make, checked.rows))
            if self.keep is None and (self.allowed is None or rtype in self.allowed):
                # the common case, a run at a time: this process is the one that limits the step
                self.lines_per_type[rtype] = self.lines_per_type.get(rtype, 0) + len(rows)
                if self.track_ids:
                    self.seen(rtype).extend([row.id for row in rows])
                loader = self.loaders.get(rtype)
                (loader if loader is not None else self.loader(rtype)).add_rows(rows)
            else:
                for row in rows:
                    self._take_valid(rtype, row)
            return
        rtype = checked.resource_type or "Unknown"
        if checked.tombstone is not None:
            if self.allowed is None or rtype in self.allowed:
                self.loader(rtype).delete(checked.tombstone[0], checked.tombstone[1], None, checked.source)
            return
        if self.allowed is not None and rtype not in self.allowed:
            # A resource of a type we did not ask for is still accounted for: quarantined, not dropped.
            self.loader(rtype).add_unparseable(checked.text.decode(errors="replace"),
                                               f"resource type {rtype} was not requested", checked.source)
            return
        self.lines_per_type[rtype] = self.lines_per_type.get(rtype, 0) + 1
        loader = self.loader(rtype)
        if checked.errors:
            try:
                resource = orjson.loads(checked.text)
            except orjson.JSONDecodeError:
                rid, version = checked.known or (None, None)
                if rid is not None and self.track_ids:
                    self.seen(rtype).add(rid)  # still on the server: a bad version, not a delete
                elif rid is None:
                    self.without_id[rtype] = self.without_id.get(rtype, 0) + 1
                loader.add_unparseable(checked.text.decode(errors="replace"), checked.errors[0], checked.source,
                                       resource_id=rid, version_id=version)
                return
            if self.track_ids and isinstance(resource, dict) and isinstance(resource.get("id"), str):
                self.seen(rtype).add(resource["id"])
            else:
                self.without_id[rtype] = self.without_id.get(rtype, 0) + 1
            loader.add(resource, checked.source, list(checked.errors))
            return
        raise RuntimeError(f"a line with neither a row nor a reason: {checked.source}")  # check_text gives one or the other

    def _take_valid(self, rtype: str, row: RawRow) -> None:
        if self.allowed is not None and rtype not in self.allowed:
            # A resource of a type we did not ask for is still accounted for: quarantined, not dropped.
            self.loader(rtype).add_unparseable(row.json_text(), f"resource type {rtype} was not requested", row.source)
            return
        self.lines_per_type[rtype] = self.lines_per_type.get(rtype, 0) + 1
        if self.keep is not None and not self.keep(rtype, orjson.loads(row.json_text())):
            self.filtered_out[rtype] = self.filtered_out.get(rtype, 0) + 1
            self.lines_per_type[rtype] -= 1
            return
        if self.track_ids:
            self.seen(rtype).add(row.id)
        self.loader(rtype).add_row(row)

    def load(self, lines: Iterable[Line], pool: Executor | None = None, chunk_lines: int = CHUNK_LINES,
             window: int = 4) -> None:
        for checked_chunk in _ordered_map(pool, check_chunk, _chunks(lines, chunk_lines), window):
            for checked in checked_chunk:
                self.take(checked)

    def load_blocks(self, blocks: Iterable[Block], pool: Executor | None = None, window: int = 8) -> None:
        """``window`` blocks in flight (about 2 MB): enough that the workers keep busy while this
        process writes a batch."""
        for checked_chunk in _ordered_map(pool, check_block, blocks, window):
            for checked in checked_chunk:
                self.take(checked)

    def flush(self) -> None:
        for loader in self.loaders.values():
            loader.flush()


def validation_pool(workers: int | None = None) -> ProcessPoolExecutor | None:
    """Worker processes for validation; None (validate inline) on a single core, or inside a
    daemonic process (a Celery prefork worker runs steps in one, and daemons may not have children).

    The workers are started here, before the caller starts any thread (the REST prefetch thread, the
    cohort-first chunk searches): with the fork start method a pool forks all its workers at its first
    task, and forking while other threads hold locks can deadlock the child."""
    workers = workers if workers is not None else (os.cpu_count() or 1)
    if workers <= 1 or multiprocessing.current_process().daemon:
        return None
    # The compiled schema, loaded before the fork so that the workers share it instead of each building its own
    # (0.07 s of CPU and about 19 MB each; this process validates a few resources itself anyway).
    warm_validator()
    pool = ProcessPoolExecutor(max_workers=workers)
    pool.submit(int).result()
    return pool
