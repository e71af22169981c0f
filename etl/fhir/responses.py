"""What a FHIR server answers, as the client hands it on: errors, search statistics, entries, and the
readers for the awkward parts of a response (OperationOutcome text, Retry-After, JSON a strict parser refuses).

Kept apart from the paging and retry logic (``client``) so the Bulk client and the loaders can use
these shapes without the HTTP machinery.
"""
from __future__ import annotations

import email.utils
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import orjson


class FhirError(RuntimeError):
    """A FHIR request that failed for good; the message carries the server's OperationOutcome text."""

    def __init__(self, message: str, status: int | None = None, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.permanent = permanent  # the server's answer is wrong or hostile: retrying the run cannot help


@dataclass
class SearchStats:
    requests: int = 0
    retries: int = 0
    throttled: int = 0           # 429 answers
    retry_after_s: float = 0.0   # total time the server asked us to wait
    pages: int = 0
    restarts: int = 0            # expired page links that restarted their _lastUpdated window
    skipped_entries: dict[str, int] = field(default_factory=dict)
    outcome_issues: list[str] = field(default_factory=list)
    server_time: str | None = None  # Bundle.meta.lastUpdated of the first page: the server's clock
    first_total: int | None = None  # Bundle.total of the first page, when the server gives one
    max_last_updated: str | None = None  # the latest meta.lastUpdated among matches

    def add(self, other: "SearchStats") -> None:
        self.requests += other.requests
        self.retries += other.retries
        self.throttled += other.throttled
        self.retry_after_s += other.retry_after_s
        self.pages += other.pages
        self.restarts += other.restarts
        for mode, n in other.skipped_entries.items():
            self.skipped_entries[mode] = self.skipped_entries.get(mode, 0) + n
        self.outcome_issues.extend(other.outcome_issues)


@dataclass(frozen=True)
class SearchEntry:
    resource: Any       # the entry's resource as parsed (a dict, unless the server sent something else)
    source: str         # the page URL it came from, for quarantine and lineage
    text: bytes = b""   # the resource as JSON for the validating loader (``wire_text``)
    invalid: bool = False  # ``text`` is not valid JSON (NaN, a lone surrogate, too deep): it is quarantined

    def wire(self) -> bytes:
        return self.text or wire_text(self.resource, lenient=False)[0]


def scrub(text: str, url: str) -> str:
    """``text`` with every value of ``url``'s query (and each comma-separated part of it) replaced by '…'."""
    values = {v for _, value in parse_qsl(urlsplit(url).query) for v in (value, *value.split(","), *value.split("/"))
              if len(v) >= 3}
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, "…")
    return text


def _non_finite(constant: str) -> float:
    return float(constant)  # NaN, Infinity, -Infinity: parsed so the page can be read, then quarantined


def may_be_non_finite(content: bytes) -> bool:
    """Whether a page can hold NaN or Infinity at all: a byte search, so the per-resource walk in
    ``wire_text`` runs only for such a page, not on the hot path."""
    return b"NaN" in content or b"Infinity" in content


def load_page(content: bytes) -> Any:
    """orjson first; a body it refuses only for NaN/Infinity (which JSON forbids) is read by the standard
    library instead, so one bad resource is quarantined rather than making the whole page fail."""
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        try:
            return json.loads(content, parse_constant=_non_finite)
        except RecursionError:
            raise ValueError("the page is nested too deeply to read") from None


def wire_text(resource: Any, lenient: bool = True) -> tuple[bytes, bool]:
    """The resource as JSON bytes for the validating loader, and whether that text is invalid JSON.

    orjson cannot write everything a lenient parse can hold faithfully: a NaN or Infinity (it would
    write null), a lone surrogate, a nesting deeper than it writes. Such a resource keeps the standard
    library's text, which the loader then quarantines as invalid JSON, as it would the same NDJSON line."""
    try:
        text = orjson.dumps(resource)
        # Only a page read by the lenient fallback can hold NaN or Infinity (orjson refuses them): the walk
        # is skipped on the hot path.
        if not lenient or not _any_non_finite(resource):
            return text, False
    except TypeError:
        pass
    try:
        return json.dumps(resource, allow_nan=True).encode(), True
    except (RecursionError, ValueError):
        return b'"a resource nested too deeply to write"', True


def _any_non_finite(node: Any) -> bool:
    """Iterative, so a hostile nesting cannot exhaust the stack."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and (item != item or item in (float("inf"), float("-inf"))):
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


@dataclass(frozen=True)
class HistoryEntry:
    resource_type: str
    id: str
    version_id: str | None
    deleted: bool
    resource: dict[str, Any] | None
    last_updated: str | None
    source: str


def issue_text(issue: Any) -> str:
    """One OperationOutcome issue as text, whatever shape a server gave it."""
    if not isinstance(issue, dict):
        return str(issue)[:200]
    details = issue.get("details") if isinstance(issue.get("details"), dict) else {}
    return str(issue.get("diagnostics") or details.get("text") or issue.get("code") or "")[:200]


def operation_outcome_text(response: httpx.Response) -> str:
    """What the server said, for an error message: an OperationOutcome's issues, else the start of the body.
    Every value of the request's query is blanked out, since a server may echo it (patient ids)."""
    try:
        body = response.json()
    except ValueError:
        text = response.text[:300]
    else:
        issues = body.get("issue") if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome" else None
        text = "; ".join(issue_text(i) for i in issues) if isinstance(issues, list) else response.text[:300]
    try:
        url = str(response.request.url)
    except RuntimeError:  # a response built without its request
        url = ""
    return scrub(text, url)


def retry_after_seconds(value: str | None, cap_s: float) -> float | None:
    """Retry-After is either delta-seconds or an HTTP date; hospitals have sent hours, so it is capped."""
    if not value:
        return None
    try:
        return min(cap_s, max(0.0, float(value)))
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if parsed is None:
            return None
        return min(cap_s, max(0.0, parsed.timestamp() - time.time()))
