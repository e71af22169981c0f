"""The NDJSON hand-over as a sync mode: a directory of ``*.ndjson`` files that hospital IT exported.

The files are the source of truth, so ids not in them are deleted, and the count the reconciliation
check compares with is the number of distinct resources in the files.
"""
from __future__ import annotations

import time
from pathlib import Path

from etl.fhir.ndjson import file_blocks, type_from_file_name
from etl.fhir.types import RESOURCE_TYPES
from etl.warehouse import Warehouse

from .pipeline import ValidatingLoader, validation_pool
from .report import PassEnd, TypeReport, finish_pass


def files_to_read(files: list[Path], resource_types: list[str]) -> tuple[list[Path], set[str]]:
    """The files this run reads, and the selectable types whose files it leaves alone. A file named after a type
    holds only that type (a line of another type in it is quarantined under the file's type), so when that type
    is one the service pulls (``RESOURCE_TYPES``) but this run did not select, nothing in the file belongs to the
    run: it is left for its own asset (a backfill of one type read and quarantined the whole hospital's other
    files as "not requested"). Files named for no type, or for a type the service does not pull, are read: what
    they hold is loaded or quarantined with its reason, as before."""
    selected = set(resource_types)
    keep: list[Path] = []
    others: set[str] = set()
    for path in files:
        hint = type_from_file_name(path)
        if hint in RESOURCE_TYPES and hint not in selected:
            others.add(hint)
        else:
            keep.append(path)
    return keep, others


def sync_ndjson_directory(warehouse: Warehouse, directory: str | Path, resource_types: list[str],
                          workers: int | None = None) -> dict[str, TypeReport]:
    if not directory:
        raise ValueError("FHIR_SYNC_MODE=ndjson needs FHIR_NDJSON_DIR, the directory holding the *.ndjson files")
    started = time.monotonic()
    warehouse.ensure_schema(resource_types)
    files = sorted(Path(directory).rglob("*.ndjson"))
    if not files:
        raise FileNotFoundError(f"no *.ndjson files under {directory}")
    files, other_types = files_to_read(files, resource_types)
    loader = ValidatingLoader(warehouse, resource_types, track_ids=True)
    pool = validation_pool(workers)
    try:
        loader.load_blocks((block for path in files for block in file_blocks(path, type_from_file_name(path))), pool)
    finally:
        if pool is not None:
            pool.shutdown()
    loader.flush()
    reports = {}
    for rtype in resource_types:
        seen = loader.seen(rtype)
        distinct = len(seen) + loader.without_id.get(rtype, 0)
        report = TypeReport(rtype, "ndjson", scope=f"NDJSON files under {directory}")
        if other_types:  # shown with the asset's materialization, so the run says what it left alone
            report.notes.append(f"not read: the files of {', '.join(sorted(other_types))} (not selected in this run)")
        reports[rtype] = finish_pass(warehouse, loader.loader(rtype), report, PassEnd(
            watermark=None, watermark_source="none (files)", full=True, seen=seen,
            deletes_source=f"{directory} (NDJSON)", server_count=distinct), started)
    return reports
