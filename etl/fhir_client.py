"""A small, study-agnostic FHIR R4 REST client: search paging, bearer auth, polite retries.

Paging follows ``Bundle.link[relation=next]`` exactly as the server gives it: ``_count`` is only
a hint that servers cap silently and ``Bundle.total`` is optional, so neither is ever used to
decide when to stop. Entries that are not search matches (``search.mode`` ``include`` or
``outcome``) are not resources of the searched type and are skipped.
"""
from __future__ import annotations

import email.utils
import logging
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import httpx
import orjson

log = logging.getLogger(__name__)

RETRY_STATUSES = {429, 502, 503, 504}


class FhirError(RuntimeError):
    """A FHIR request that failed for good; the message carries the server's OperationOutcome text."""


@dataclass
class SearchStats:
    requests: int = 0
    retries: int = 0
    retry_after_s: float = 0.0
    pages: int = 0
    skipped_entries: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchEntry:
    resource: dict[str, Any]
    source: str  # the page URL it came from, for quarantine and lineage


def _operation_outcome_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        return "; ".join(i.get("diagnostics") or i.get("details", {}).get("text", "") or i.get("code", "")
                         for i in body.get("issue", []))
    return response.text[:500]


def _retry_after_seconds(value: str | None, cap_s: float) -> float | None:
    """Retry-After is either delta-seconds or an HTTP date; hospitals have sent hours, so it is capped."""
    if not value:
        return None
    try:
        return min(cap_s, max(0.0, float(value)))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        if parsed is None:
            return None
        return min(cap_s, max(0.0, parsed.timestamp() - time.time()))


class FhirClient:
    """Synchronous client for one FHIR base URL.

    The bearer token is read from an environment variable by name, so it never passes through
    Dagster config, run metadata or exception text.
    """

    def __init__(self, base_url: str, *, bearer_token_env: str | None = None, page_size: int = 500,
                 timeout_s: float = 60.0, max_retries: int = 5, backoff_s: float = 0.5, retry_after_cap_s: float = 300.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.page_size = page_size
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.retry_after_cap_s = retry_after_cap_s
        headers = {"Accept": "application/fhir+json"}
        token = os.environ.get(bearer_token_env) if bearer_token_env else None
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(headers=headers, timeout=timeout_s, transport=transport, follow_redirects=True)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "FhirClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get(self, url: str, params: dict[str, str] | None, stats: SearchStats) -> dict[str, Any]:
        attempt = 0
        while True:
            stats.requests += 1
            try:
                response = self._http.get(url, params=params)
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                if attempt >= self.max_retries:
                    raise FhirError(f"GET {url} failed after {attempt + 1} attempts: {exc.__class__.__name__}") from None
                wait = None
            else:
                if response.status_code == 200:
                    try:
                        return orjson.loads(response.content)
                    except orjson.JSONDecodeError:
                        if attempt >= self.max_retries:
                            raise FhirError(f"GET {url}: response body is not valid JSON") from None
                        wait = None
                elif response.status_code in RETRY_STATUSES and attempt < self.max_retries:
                    wait = _retry_after_seconds(response.headers.get("Retry-After"), self.retry_after_cap_s)
                    if wait is not None:
                        stats.retry_after_s += wait
                else:
                    raise FhirError(f"GET {url} -> HTTP {response.status_code}: {_operation_outcome_text(response)}")
            attempt += 1
            stats.retries += 1
            # Exponential back-off with full jitter unless the server said how long to wait.
            time.sleep(wait if wait is not None else random.uniform(0, self.backoff_s * 2 ** attempt))

    def search(self, resource_type: str, params: dict[str, str] | None = None,
               stats: SearchStats | None = None) -> Iterator[SearchEntry]:
        """Yield every match of a type-level search, page by page."""
        stats = stats if stats is not None else SearchStats()
        url: str | None = f"{self.base_url}/{resource_type}"
        query: dict[str, str] | None = {"_count": str(self.page_size), **(params or {})}
        while url:
            bundle = self._get(url, query, stats)
            stats.pages += 1
            if bundle.get("resourceType") != "Bundle":
                raise FhirError(f"GET {url} returned a {bundle.get('resourceType')!r}, not a Bundle")
            for entry in bundle.get("entry") or []:
                mode = (entry.get("search") or {}).get("mode", "match")
                resource = entry.get("resource")
                if mode != "match" or resource is None:
                    stats.skipped_entries[mode] = stats.skipped_entries.get(mode, 0) + 1
                    if mode == "outcome" and resource:
                        log.warning("search outcome from %s: %s", url, resource.get("issue"))
                    continue
                yield SearchEntry(resource, url)
            url = next((link.get("url") for link in bundle.get("link") or [] if link.get("relation") == "next"), None)
            query = None  # the next link carries its own query, used exactly as given
