"""Load NDJSON (one FHIR resource per line): Bulk export files, or a directory handed over by hospital IT.

Validation is the expensive step (~12k resources/s per core with fhir.resources), so it runs in
worker processes: the loading process cuts files into blocks of whole lines, the workers split,
parse, validate, hash and flatten them, and send back rows ready to write. Memory stays flat: a
bounded number of blocks is in flight. Every line ends loaded or quarantined with its file and
line number.
"""
from __future__ import annotations

import multiprocessing
import os
import re
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, TypeVar

import orjson

from .children import child_rows
from .loader import TypeLoader, check_resource
from .warehouse import RawRow, SeenIds, Warehouse, content_hash
from .wire import MAX_RESOURCE_BYTES, oversize_error

if TYPE_CHECKING:
    from .sync import TypeReport

CHUNK_LINES = 500
BLOCK_BYTES = 1 << 18  # ~700 lines of a typical export: small enough to keep both workers busy
T = TypeVar("T")
FILE_TYPE = re.compile(r"^(?P<type>[A-Z][A-Za-z]+)(?:[._-].*)?\.ndjson$")


@dataclass(frozen=True)
class Line:
    source: str               # file or URL, with ":<line number>"
    text: bytes
    type_hint: str | None     # from the file name or manifest entry

    def __reduce__(self) -> tuple:  # a plain tuple crosses the process boundary ~5x cheaper than dataclass state
        return Line, (self.source, self.text, self.type_hint)


@dataclass(frozen=True)
class Block:
    """Whole lines of one NDJSON file in one bytes object. The parent only reads and cuts blocks;
    splitting them into lines happens in the workers, so no per-line object is made or pickled
    on the parent's side (per-line objects cost the parent more than a tenth of validation)."""
    path: str                 # file or URL
    first_line: int           # the line number of the block's first line
    data: bytes
    type_hint: str | None

    @property
    def last_line(self) -> int:
        return self.first_line + self.data.count(b"\n") - self.data.endswith(b"\n")

    def from_line(self, number: int) -> "Block":
        """The same block without its lines before line ``number`` (a resumed download re-sends them)."""
        start = 0
        for _ in range(number - self.first_line):
            start = self.data.index(b"\n", start) + 1
        return Block(self.path, number, self.data[start:], self.type_hint)

    def lines(self) -> Iterator[Line]:
        for offset, text in enumerate(self.data.split(b"\n")):
            text = text.strip()
            if text:
                yield Line(f"{self.path}:{self.first_line + offset}", text, self.type_hint)


@dataclass(frozen=True)
class Checked:
    source: str
    resource_type: str | None
    text: bytes
    errors: tuple[str, ...]
    tombstone: tuple[str, str | None] | None = None  # (id, versionId) for a deleted-resource entry
    row: RawRow | None = None  # a valid resource, serialised and hashed by the worker

    def __reduce__(self) -> tuple:
        return Checked, (self.source, self.resource_type, self.text, self.errors, self.tombstone, self.row)


def check_line(line: Line) -> list[Checked]:
    """Parse and validate one NDJSON line (runs in a worker). A Bulk ``deleted`` Bundle yields tombstones."""
    too_big = oversize_error(len(line.text))
    if too_big:  # not even parsed (an endless line arrives cut just over the limit)
        return [Checked(line.source, line.type_hint, line.text[:1000], (too_big,))]
    try:
        resource = orjson.loads(line.text)
    except orjson.JSONDecodeError as exc:
        return [Checked(line.source, line.type_hint, line.text, (f"invalid JSON: {exc}",))]
    actual = resource.get("resourceType") if isinstance(resource, dict) else None
    if actual == "Bundle" and resource.get("type") in ("transaction", "batch", "history") and line.type_hint in (None, "Bundle"):
        out = []
        for entry in resource.get("entry") or []:
            request = entry.get("request") or {}
            parts = [p for p in (request.get("url") or "").split("?")[0].split("/") if p]
            if request.get("method") == "DELETE" and len(parts) >= 2:
                out.append(Checked(line.source, parts[-2], b"", (), (parts[-1], None)))
        return out
    expected = line.type_hint or (actual if isinstance(actual, str) else None) or "Unknown"
    errors = tuple(check_resource(resource, expected, line.text))
    if errors:
        return [Checked(line.source, expected, line.text, errors)]
    meta = resource.get("meta") or {}
    row = RawRow(resource["id"], meta.get("versionId"), meta.get("lastUpdated"), None, line.source,
                 text=line.text.decode(), digest=content_hash(resource), children=child_rows(expected, resource))
    return [Checked(line.source, expected, b"", (), row=row)]


def check_chunk(lines: list[Line]) -> list[Checked]:
    return [c for line in lines for c in check_line(line)]


def check_block(block: Block) -> list[Checked]:
    return [checked for line in block.lines() for checked in check_line(line)]


def blocks_of(chunks: Iterable[bytes], path: str, type_hint: str | None = None) -> Iterator[Block]:
    """Blocks of whole lines from bytes cut anywhere (file reads, an HTTP body); a chunk that ends
    mid-line keeps its tail for the next block, and a line longer than a chunk makes a longer block."""
    number, carry, overlong = 1, b"", False
    for data in chunks:
        if overlong:
            # The rest of a line already longer than any resource may be: dropped up to its newline (the part
            # kept is quarantined for its size), so one endless line costs neither memory nor quadratic copies.
            cut = data.find(b"\n")
            if cut < 0:
                continue
            data, overlong = data[cut:], False
        data = carry + data
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            carry = data
            if len(carry) > MAX_RESOURCE_BYTES:
                yield Block(path, number, carry[:MAX_RESOURCE_BYTES + 1], type_hint)
                carry, overlong = b"", True
            continue
        block, carry = data[:cut], data[cut:]
        yield Block(path, number, block, type_hint)
        number += block.count(b"\n")
    if carry.strip():
        yield Block(path, number, carry, type_hint)


def file_blocks(path: Path, type_hint: str | None = None, size: int = BLOCK_BYTES) -> Iterator[Block]:
    with path.open("rb") as handle:
        yield from blocks_of(iter(lambda: handle.read(size), b""), str(path), type_hint)


def type_from_file_name(path: Path) -> str | None:
    match = FILE_TYPE.match(path.name)
    return match.group("type") if match and match.group("type") != "Bundle" else None


def _chunks(lines: Iterable[Line], size: int) -> Iterator[list[Line]]:
    iterator = iter(lines)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _ordered_map(pool: Executor | None, check: Callable[[T], list[Checked]], chunks: Iterable[T],
                 window: int) -> Iterator[list[Checked]]:
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


class NdjsonLoader:
    """Routes checked lines to one TypeLoader per resource type."""

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
                self._seen(rtype)
        self.without_id: dict[str, int] = {}

    def _seen(self, resource_type: str) -> SeenIds:
        if resource_type not in self.seen_ids:
            self.seen_ids[resource_type] = SeenIds(self.warehouse, resource_type)
        return self.seen_ids[resource_type]

    def loader(self, resource_type: str) -> TypeLoader:
        if resource_type not in self.loaders:
            self.warehouse.ensure_schema([resource_type])
            self.loaders[resource_type] = TypeLoader(self.warehouse, resource_type, self.batch_size)
        return self.loaders[resource_type]

    def take(self, checked: Checked) -> None:
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
                self.without_id[rtype] = self.without_id.get(rtype, 0) + 1
                loader.add_unparseable(checked.text.decode(errors="replace"), checked.errors[0], checked.source)
                return
            if self.track_ids and isinstance(resource, dict) and isinstance(resource.get("id"), str):
                self._seen(rtype).add(resource["id"])
            else:
                self.without_id[rtype] = self.without_id.get(rtype, 0) + 1
            loader.add(resource, checked.source, list(checked.errors))
            return
        row = checked.row
        if row is None:  # a checked valid line always carries its row (check_line)
            raise RuntimeError(f"a valid line without its row: {checked.source}")
        if self.keep is not None and not self.keep(rtype, orjson.loads(row.json_text())):
            self.filtered_out[rtype] = self.filtered_out.get(rtype, 0) + 1
            self.lines_per_type[rtype] -= 1
            return
        if self.track_ids:
            self._seen(rtype).add(row.id)
        loader.add_row(row)

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
    daemonic process (a Celery prefork worker runs steps in one, and daemons may not have children)."""
    workers = workers if workers is not None else (os.cpu_count() or 1)
    if workers <= 1 or multiprocessing.current_process().daemon:
        return None
    return ProcessPoolExecutor(max_workers=workers)


def sync_ndjson_directory(warehouse: Warehouse, directory: str | Path, resource_types: list[str],
                          workers: int | None = None) -> dict[str, "TypeReport"]:
    """The NDJSON hand-over as a sync: the files are the source of truth, so ids not in them are deleted."""
    from .sync import TypeReport, apply_id_reconciliation

    if not directory:
        raise ValueError("FHIR_SYNC_MODE=ndjson needs FHIR_NDJSON_DIR, the directory holding the *.ndjson files")
    started = time.monotonic()
    warehouse.ensure_schema(resource_types)
    files = sorted(Path(directory).rglob("*.ndjson"))
    if not files:
        raise FileNotFoundError(f"no *.ndjson files under {directory}")
    loader = NdjsonLoader(warehouse, resource_types, track_ids=True)
    pool = validation_pool(workers)
    try:
        loader.load_blocks((block for path in files for block in file_blocks(path, type_from_file_name(path))), pool)
    finally:
        if pool is not None:
            pool.shutdown()
    loader.flush()
    reports = {}
    for rtype in resource_types:
        type_loader = loader.loader(rtype)
        apply_id_reconciliation(warehouse, type_loader, loader._seen(rtype), f"{directory} (NDJSON)")
        report = TypeReport(rtype, "ndjson", load=type_loader.counts, scope=f"NDJSON files under {directory}")
        report.watermark_after = None
        warehouse.save_sync_state(rtype, watermark=None, watermark_source="none (files)", mode="ndjson", full=True)
        distinct = len(loader._seen(rtype)) + loader.without_id.get(rtype, 0)
        row = warehouse.save_counts(rtype, report.scope, distinct)
        report.server_count, report.warehouse_count = row["server_count"], row["warehouse_count"]
        report.quarantined_current = row["quarantined_current"]
        report.seconds = time.monotonic() - started
        reports[rtype] = report
    return reports
