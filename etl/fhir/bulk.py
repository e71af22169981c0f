"""FHIR Bulk Data Access v2 ($export) client: kick-off, polling, and streaming the files in blocks of whole lines.

Kick-off (system, Patient or Group level) with ``Prefer: respond-async``; polling honours
``Retry-After`` (seconds or HTTP date, capped) and otherwise backs off exponentially, reporting
``X-Progress``; the manifest's files are streamed (with the token only when
``requiresAccessToken`` is true); ``error`` files go to quarantine; ``deleted`` files are applied
as tombstones; the next run's ``_since`` is the manifest's ``transactionTime``. The polling URL is
saved in the warehouse before the first poll, so a crashed run resumes the same export instead
of starting a new one (exports of big hospitals take days).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import httpx
import orjson

from .client import FhirClient
from .ndjson import BLOCK_BYTES, Block, blocks_of
from .responses import FhirError, SearchStats, operation_outcome_text, retry_after_seconds
from .urls import redacted

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


class BulkExportError(FhirError):
    """The export failed on the server, or was cancelled, or timed out."""


@dataclass
class ExportRequest:
    level: str = "system"            # system | patient | group
    group_id: str | None = None
    types: tuple[str, ...] = ()
    since: str | None = None
    type_filters: tuple[str, ...] = ()

    def path(self) -> str:
        if self.level == "system":
            return "$export"
        if self.level == "patient":
            return "Patient/$export"
        if self.level == "group" and self.group_id:
            return f"Group/{self.group_id}/$export"
        raise ValueError(f"unknown export level {self.level!r} (or a group export without a group id)")

    def params(self) -> dict[str, str]:
        params = {"_outputFormat": "application/fhir+ndjson"}
        if self.types:
            params["_type"] = ",".join(self.types)
        if self.since:
            params["_since"] = self.since
        if self.type_filters:
            params["_typeFilter"] = ",".join(self.type_filters)
        return params


@dataclass
class BulkReport:
    status_url: str
    resumed: bool
    transaction_time: str | None = None
    polls: int = 0
    progress: list[str] = field(default_factory=list)
    manifest_counts: dict[str, int] = field(default_factory=dict)
    errors_quarantined: int = 0
    stats: SearchStats = field(default_factory=SearchStats)


def _well_formed(manifest: Any) -> bool:
    if not isinstance(manifest, dict) or not isinstance(manifest.get("output"), list):
        return False
    for key in ("output", "error", "deleted"):
        items = manifest.get(key) or []
        if not isinstance(items, list) or not all(isinstance(i, dict) and isinstance(i.get("url"), str) for i in items):
            return False
        if any(not isinstance(i.get("count", 0), int) or isinstance(i.get("count"), bool) for i in items):
            return False
    return True


class BulkExportClient:
    def __init__(self, client: FhirClient, *, poll_cap_s: float = 120.0, initial_poll_s: float = 1.0,
                 timeout_s: float = 7 * 24 * 3600.0, sleep: Callable[[float], None] = time.sleep,
                 block_bytes: int = BLOCK_BYTES, file_deadline_s: float = 6 * 3600.0) -> None:
        self.client = client
        self.file_deadline_s = file_deadline_s  # one output file, all its bytes (a dripping file store stops here)
        self.block_bytes = block_bytes
        self.poll_cap_s = poll_cap_s
        self.initial_poll_s = initial_poll_s
        self.timeout_s = timeout_s
        self.sleep = sleep

    def kickoff(self, request: ExportRequest, stats: SearchStats) -> str:
        response = self.client.send("GET", f"{self.client.base_url}/{request.path()}", stats, params=request.params(),
                                    headers={"Prefer": "respond-async", "Accept": "application/fhir+json"},
                                    ok=(202,), parse_json=False)
        location = response.headers.get("Content-Location")
        if not location:
            raise BulkExportError("bulk kick-off answered 202 without a Content-Location polling URL")
        # Checked before the job is recorded: a foreign polling URL must not wedge every later run.
        self.client.check_origin(location, "the Bulk status URL")
        return location

    def poll(self, status_url: str, report: BulkReport, progress: Progress | None = None) -> dict[str, Any]:
        """Poll until the manifest is ready; returns it."""
        deadline = time.monotonic() + self.timeout_s
        delay = self.initial_poll_s
        while True:
            report.polls += 1
            try:
                response = self.client.send("GET", status_url, report.stats, ok=(200, 202), parse_json=False)
            except FhirError as exc:
                raise BulkExportError(f"bulk export failed: {exc}", exc.status, permanent=exc.permanent) from None
            if response.status_code == 200:
                try:
                    manifest = orjson.loads(response.content)
                except orjson.JSONDecodeError:
                    manifest = None
                if not _well_formed(manifest):
                    raise BulkExportError(f"bulk status {redacted(status_url)} answered 200 without a well-formed manifest "
                                          "(output, error and deleted must list objects with a url)", permanent=True)
                return manifest
            status = response.headers.get("X-Progress", "in progress")
            report.progress.append(status)
            if progress:
                progress(f"bulk export: {status}")
            if time.monotonic() > deadline:
                raise BulkExportError(f"bulk export still running after {self.timeout_s:.0f}s; resume it later")
            wait = retry_after_seconds(response.headers.get("Retry-After"), self.poll_cap_s)
            if wait is None:
                wait, delay = delay, min(self.poll_cap_s, delay * 2)
            report.stats.retry_after_s += wait
            self.sleep(wait)

    def cancel(self, status_url: str, stats: SearchStats | None = None) -> None:
        self.client.send("DELETE", status_url, stats or SearchStats(), ok=(200, 202, 204, 404), parse_json=False)

    def _timed_chunks(self, response: httpx.Response, url: str, deadline: float) -> Iterator[bytes]:
        """The body in pieces of about ``block_bytes``, the deadline checked at every network read (a size-based
        ``iter_bytes`` would wait for a whole piece of a dripping file before anything could be checked)."""
        pending: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            if time.monotonic() > deadline:
                raise BulkExportError(f"GET {redacted(url)}: the file did not arrive within {self.file_deadline_s:.0f}s "
                                      "(file deadline)")
            pending.append(chunk)
            size += len(chunk)
            if size >= self.block_bytes:
                yield b"".join(pending)
                pending, size = [], 0
        if pending:
            yield b"".join(pending)

    def blocks(self, url: str, with_token: bool, type_hint: str | None, stats: SearchStats) -> Iterator[Block]:
        """Stream one output file in blocks of whole lines. A broken download restarts and skips the
        lines already yielded; a block that ends mid-line is held back until its line is complete."""
        # A manifest may point anywhere: files are read (and given the token) only on trusted origins.
        self.client.check_origin(url, "the Bulk output file")
        deadline = time.monotonic() + self.file_deadline_s
        done, attempt = 0, 0
        while True:
            stats.requests += 1
            try:
                headers = {"Accept": "application/fhir+ndjson"}
                if with_token:
                    headers.update(self.client.auth.headers(self.client._http))
                with self.client._http.stream("GET", url, headers=headers) as response:
                    self.client.check_origin(str(response.url), "a redirect of the Bulk output file to")
                    if response.status_code != 200:
                        response.read()
                        if response.status_code in (429, 500, 502, 503, 504) and attempt < self.client.max_retries:
                            raise httpx.NetworkError(f"HTTP {response.status_code}")
                        raise BulkExportError(f"GET {redacted(url)} -> HTTP {response.status_code}: {operation_outcome_text(response)}",
                                              response.status_code)
                    for block in blocks_of(self._timed_chunks(response, url, deadline), url, type_hint):
                        if block.last_line <= done:
                            continue
                        yield block if block.first_line > done else block.from_line(done + 1)
                        done = block.last_line
                    return
            except (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError):
                attempt += 1
                stats.retries += 1
                if attempt > self.client.max_retries:
                    raise BulkExportError(f"GET {redacted(url)} kept failing after {attempt} attempts") from None
                self.sleep(min(self.poll_cap_s, self.initial_poll_s * 2 ** attempt))
