"""The sync modes behind one interface, chosen by name (``FHIR_SYNC_MODE``).

Each mode turns one ``SyncRequest`` into per-type reports. Adding a mode is one class and one
registry entry; an unknown name is refused with the list of known ones instead of silently
falling back to REST search.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from etl.fhir.client import FhirClient
from etl.warehouse import Warehouse

from .bulk import sync_bulk
from .ndjson_dir import sync_ndjson_directory
from .report import Progress, TypeReport
from .rest import sync_rest
from .scoped import Seed, sync_cohort_first


@dataclass(frozen=True)
class SyncRequest:
    warehouse: Warehouse
    resource_types: list[str]
    full: bool = False                      # ignore watermarks and pull everything again
    reconcile: bool = False                 # compare every id with the server (REST)
    progress: Progress | None = None
    ndjson_dir: str = ""                    # ndjson: the directory of *.ndjson files
    bulk_level: str = "system"              # bulk: system | patient | group
    bulk_group_id: str | None = None
    type_filters: tuple[str, ...] = ()      # bulk: _typeFilter queries
    seeds: Sequence[Seed] = ()              # cohort-first: the searches that find candidate patients
    concurrency: int = 4                    # cohort-first: parallel chunk searches


ClientFactory = Callable[[], AbstractContextManager[FhirClient]]


class SyncMode(Protocol):
    needs_server: bool

    def run(self, request: SyncRequest, client: FhirClient | None) -> dict[str, TypeReport]: ...


class IncrementalRest:
    needs_server = True

    def run(self, request: SyncRequest, client: FhirClient | None) -> dict[str, TypeReport]:
        assert client is not None  # noqa: S101 - needs_server guarantees it
        return sync_rest(client, request.warehouse, request.resource_types, full=request.full,
                         reconcile=request.reconcile, progress=request.progress)


class BulkExport:
    needs_server = True

    def run(self, request: SyncRequest, client: FhirClient | None) -> dict[str, TypeReport]:
        assert client is not None  # noqa: S101 - needs_server guarantees it
        report, reports = sync_bulk(client, request.warehouse, request.resource_types, level=request.bulk_level,
                                    group_id=request.bulk_group_id, type_filters=request.type_filters,
                                    full=request.full, progress=request.progress)
        if request.progress:
            request.progress(f"bulk export {'resumed' if report.resumed else 'done'}: {report.polls} polls, "
                             f"transactionTime {report.transaction_time}")
        return reports


class CohortFirst:
    needs_server = True

    def run(self, request: SyncRequest, client: FhirClient | None) -> dict[str, TypeReport]:
        assert client is not None  # noqa: S101 - needs_server guarantees it
        return sync_cohort_first(client, request.warehouse, request.resource_types, request.seeds,
                                 workers=request.concurrency, progress=request.progress)


class NdjsonDirectory:
    needs_server = False

    def run(self, request: SyncRequest, client: FhirClient | None) -> dict[str, TypeReport]:
        return sync_ndjson_directory(request.warehouse, request.ndjson_dir, request.resource_types)


SYNC_MODES: dict[str, SyncMode] = {"incremental": IncrementalRest(), "bulk": BulkExport(), "cohort-first": CohortFirst(),
                                   "ndjson": NdjsonDirectory()}


def sync_mode(name: str) -> SyncMode:
    try:
        return SYNC_MODES[name]
    except KeyError:
        raise ValueError(f"FHIR_SYNC_MODE must be one of {', '.join(SYNC_MODES)}, not {name!r}") from None


def run_sync(name: str, request: SyncRequest, client: ClientFactory) -> dict[str, TypeReport]:
    """Run mode ``name``; a server connection is opened only for the modes that talk to one."""
    mode = sync_mode(name)
    if not mode.needs_server:
        return mode.run(request, None)
    with client() as connected:
        return mode.run(request, connected)
