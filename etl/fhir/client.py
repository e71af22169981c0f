"""A small, study-agnostic FHIR R4 REST client: search paging, history, counts, auth, polite retries.

Paging follows ``Bundle.link[relation=next]`` exactly as the server gives it: ``_count`` is only
a hint that servers cap silently and ``Bundle.total`` is optional, so neither is ever used to
decide when to stop. Entries that are not search matches (``search.mode`` ``include`` or
``outcome``) are not resources of the searched type and are skipped; outcome issues are kept in
the stats, because that is where a server says it ignored a search parameter.

A page link can expire mid-pull (HTTP 410 or 404 on a ``next`` URL). When the search is sorted
by ``_lastUpdated`` the client restarts that window from the last ``lastUpdated`` it saw
(inclusive) instead of starting the whole pull again; the caller de-duplicates on
(type, id, versionId), so overlap is harmless.

A server can be wrong or hostile, so: credentials go only to the FHIR server's own origin (and to
origins an operator trusts, such as a Bulk file store); a page, link or file from any other origin
is refused; a ``next`` link seen before is a paging loop; every request has a deadline for its
whole body, every search an overall one, and the total Retry-After wait of one request is capped.
Error messages name a URL's path, never its query (cohort-first queries list patient ids).
"""
from __future__ import annotations

import logging
import os
import random
import threading
import time
from concurrent.futures import Future
from typing import Any, Iterator
from urllib.parse import urljoin

import httpx

from .auth import Auth, BearerTokenAuth, NoAuth
from .responses import (
    FhirError,
    HistoryEntry,
    SearchEntry,
    SearchStats,
    issue_text,
    load_page,
    may_be_non_finite,
    operation_outcome_text,
    retry_after_seconds,
    scrub,
    wire_text,
)
from .urls import origin, redacted

log = logging.getLogger(__name__)

RETRY_STATUSES = {429, 502, 503, 504}
GONE_STATUSES = {404, 410}
MAX_RESTARTS = 50  # expired page links restarted within one search before it gives up
TRANSIENT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


def _restarted(query: dict[str, Any], last_seen: str) -> dict[str, Any]:
    """The same search from ``last_seen`` on: the lower ``_lastUpdated`` bound moves, an upper one stays."""
    bounds = query.get("_lastUpdated")
    kept = [b for b in (bounds if isinstance(bounds, list) else [bounds] if bounds else []) if not b.startswith(("ge", "gt"))]
    return {**query, "_lastUpdated": [f"ge{last_seen}", *kept]}


def _etag_version(etag: str | None) -> str | None:
    if not etag:
        return None
    return etag.removeprefix("W/").strip('"') or None


class FhirClient:
    """Synchronous client for one FHIR base URL (thread-safe: one httpx connection pool).

    TLS verification is always on for https. Credentials come from an :class:`~etl.fhir.auth.Auth`
    that reads them from environment variables when a request is made.
    """

    def __init__(self, base_url: str, *, auth: Auth | None = None, bearer_token_env: str | None = None,
                 page_size: int = 500, timeout_s: float = 60.0, max_retries: int = 6, backoff_s: float = 0.5,
                 retry_after_cap_s: float = 300.0, max_wait_s: float = 900.0, request_deadline_s: float = 600.0,
                 search_deadline_s: float = 24 * 3600.0, trusted_origins: tuple[str, ...] = (),
                 transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.origin = origin(self.base_url)
        # Origins an operator trusts with data and credentials besides the server's own (a Bulk file store).
        self.trusted_origins = frozenset({self.origin, *(origin(o) for o in trusted_origins)})
        self.page_size = page_size
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.retry_after_cap_s = retry_after_cap_s    # one Retry-After is honoured up to this
        self.max_wait_s = max_wait_s                  # all waits of one request together, at most this
        self.request_deadline_s = request_deadline_s  # one request, body included (a dripping server)
        self.search_deadline_s = search_deadline_s    # one search, all its pages
        if auth is None:
            auth = BearerTokenAuth(bearer_token_env) if bearer_token_env and os.environ.get(bearer_token_env) else NoAuth()
        self.auth = auth
        self._http = httpx.Client(headers={"Accept": "application/fhir+json"}, timeout=timeout_s,
                                  transport=transport, follow_redirects=True, verify=True)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "FhirClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_origin(self, url: str, what: str) -> None:
        """Refuse data from, and credentials to, an origin that is neither the server's nor trusted."""
        if origin(url) not in self.trusted_origins:
            raise FhirError(f"refused: {what} {redacted(url)} is not on the FHIR server's origin {self.origin} "
                            f"(trust another origin with FHIR_TRUSTED_ORIGINS)", permanent=True)

    def _delay(self, attempt: int, wait: float | None) -> float:
        """Exponential back-off with full jitter unless the server said how long to wait."""
        return wait if wait is not None else random.uniform(0, self.backoff_s * 2 ** attempt)  # noqa: S311 - jitter

    def _request(self, method: str, url: str, params: dict[str, str] | None, headers: dict[str, str]) -> httpx.Response:
        """One HTTP exchange whose whole body must arrive within ``request_deadline_s``: httpx's timeout is
        per read, so a server dripping a byte a second would otherwise never time out."""
        deadline = time.monotonic() + self.request_deadline_s
        with self._http.stream(method, url, params=params, headers=headers) as response:
            self.check_origin(str(response.url), "a redirect to")
            chunks = []
            # Raw (still compressed) bytes: the Response rebuilt below carries the server's Content-Encoding
            # and decodes them once when read (collecting decoded bytes would make it decode them twice).
            try:
                for chunk in response.iter_raw():
                    chunks.append(chunk)
                    if time.monotonic() > deadline:
                        raise FhirError(f"{method} {redacted(url)}: the body did not arrive within "
                                        f"{self.request_deadline_s:.0f}s (request deadline)")
            except httpx.StreamConsumed:  # a transport that answered with its body already in memory
                response.read()
                return response
            return httpx.Response(response.status_code, headers=response.headers, content=b"".join(chunks),
                                  request=response.request)

    def send(self, method: str, url: str, stats: SearchStats, *, params: dict[str, str] | None = None,
             headers: dict[str, str] | None = None, with_auth: bool = True, ok: tuple[int, ...] = (200,),
             parse_json: bool = True) -> httpx.Response:
        """One request with retries: 429/502/503/504, timeouts, resets and unreadable bodies are retried;
        a 401 refreshes the credential once; any other status outside ``ok`` fails fast. The URL must be on
        the server's (or a trusted) origin; the waits of all attempts together stay under ``max_wait_s``."""
        return self._exchange(method, url, stats, params=params, headers=headers, with_auth=with_auth, ok=ok,
                              parse_json=parse_json)[0]

    def _exchange(self, method: str, url: str, stats: SearchStats, *, params: dict[str, str] | None = None,
                  headers: dict[str, str] | None = None, with_auth: bool = True, ok: tuple[int, ...] = (200,),
                  parse_json: bool = True, closed: threading.Event | None = None) -> tuple[httpx.Response, Any]:
        """``send``, and the body it parsed (None when it parsed none), so that a page is parsed once: the parse
        that tells a truncated body from a whole one was thrown away and the page parsed again, about a quarter
        of the client's CPU while paging. ``closed``: set when nobody wants the answer any more (a search read
        ahead, then closed): no further attempt is made, and a wait between attempts ends."""
        self.check_origin(url, "a request to")
        attempt, reauthed, waited = 0, False, 0.0
        where = redacted(url)
        while True:
            if closed is not None and closed.is_set():
                raise FhirError(f"{method} {where}: not sent, the search was closed")
            stats.requests += 1
            wait: float | None = None
            try:
                request_headers = {**(self.auth.headers(self._http) if with_auth else {}), **(headers or {})}
                response = self._request(method, url, params, request_headers)
                if response.status_code in ok:
                    # a truncated body is a transient failure
                    body = load_page(response.content) if parse_json and response.content else None
                    return response, body
            except TRANSIENT_ERRORS as exc:
                if attempt >= self.max_retries:
                    raise FhirError(f"{method} {where} failed after {attempt + 1} attempts: {exc.__class__.__name__}") from None
            except ValueError:  # orjson's and json's decode errors, a truncated or garbled body
                if attempt >= self.max_retries:
                    raise FhirError(f"{method} {where}: response body is not valid JSON") from None
            else:
                status = response.status_code
                if status == 401 and with_auth and not reauthed:
                    reauthed = True
                    self.auth.invalidate()
                    continue
                if status not in RETRY_STATUSES or attempt >= self.max_retries:
                    raise FhirError(f"{method} {where} -> HTTP {status}: {operation_outcome_text(response)}", status)
                if status == 429:
                    stats.throttled += 1
                wait = retry_after_seconds(response.headers.get("Retry-After"), self.retry_after_cap_s)
                if wait is not None:
                    stats.retry_after_s += wait
            attempt += 1
            stats.retries += 1
            seconds = self._delay(attempt, wait)
            if waited + seconds > self.max_wait_s:
                raise FhirError(f"{method} {where}: another wait of {seconds:.0f}s after {waited:.0f}s would pass the "
                                f"bound; waits are capped at {self.retry_after_cap_s:.0f}s each and {self.max_wait_s:.0f}s "
                                "per request")
            if closed is not None:
                closed.wait(seconds)
            else:
                time.sleep(seconds)
            waited += seconds

    def _bundle(self, url: str, params: dict[str, str] | None, stats: SearchStats) -> dict[str, Any]:
        return self._page(url, params, stats)[0]

    def _page(self, url: str, params: dict[str, str] | None, stats: SearchStats,
              closed: threading.Event | None = None) -> tuple[dict[str, Any], bool]:
        """A Bundle page, and whether it may hold NaN or Infinity (``may_be_non_finite``)."""
        response, bundle = self._exchange("GET", url, stats, params=params, closed=closed)
        content = response.content
        if not content:
            bundle = load_page(content)  # raises, as for any body that is not JSON
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            kind = bundle.get("resourceType") if isinstance(bundle, dict) else type(bundle).__name__
            raise FhirError(f"GET {redacted(url)} returned a {kind!r}, not a Bundle", permanent=True)
        if not isinstance(bundle.get("entry", []), list) or not isinstance(bundle.get("link", []), list):
            raise FhirError(f"GET {redacted(url)} returned a Bundle whose entry or link is not a list", permanent=True)
        if stats.pages == 0:
            meta = bundle.get("meta") if isinstance(bundle.get("meta"), dict) else {}
            stats.server_time = meta.get("lastUpdated") if isinstance(meta.get("lastUpdated"), str) else None
            stats.first_total = bundle.get("total") if isinstance(bundle.get("total"), int) else None
        stats.pages += 1
        return bundle, may_be_non_finite(content)

    def _next_link(self, bundle: dict[str, Any], page_url: str, seen: set[str], started: float) -> str | None:
        """The ``next`` link, resolved against the page, on the server's origin, never one already read."""
        link = next((link.get("url") for link in bundle.get("link") or []
                     if isinstance(link, dict) and link.get("relation") == "next"), None)
        if not link:
            return None
        try:
            url = urljoin(page_url, str(link))
        except ValueError:  # e.g. an unclosed IPv6 bracket: refused, never followed
            raise FhirError(f"the next link of page {len(seen)} is not a URL", permanent=True) from None
        self.check_origin(url, "the next page link")
        if url in seen:
            raise FhirError(f"paging loop: the next link of page {len(seen)} repeats a page already read ({redacted(url)})",
                            permanent=True)
        self._check_deadline(started, len(seen))
        seen.add(url)
        return url

    def _check_deadline(self, started: float, pages: int) -> None:
        if time.monotonic() - started > self.search_deadline_s:
            raise FhirError(f"search deadline: still paging after {self.search_deadline_s:.0f}s ({pages} pages)")

    @staticmethod
    def _entries(bundle: dict[str, Any]) -> Iterator[tuple[str, Any]]:
        """(search mode, resource) per entry; an entry that is not an object is passed on as its resource,
        so the loader quarantines it instead of the page failing."""
        for entry in bundle.get("entry") or []:
            if not isinstance(entry, dict):
                yield "match", entry
                continue
            search = entry.get("search") if isinstance(entry.get("search"), dict) else {}
            mode = search.get("mode", "match") if isinstance(search.get("mode", "match"), str) else "match"
            yield mode, entry.get("resource")

    def search(self, resource_type: str, params: dict[str, Any] | None = None,
               stats: SearchStats | None = None) -> Iterator[SearchEntry]:
        """Yield every match of a type-level search, page by page."""
        stats = stats if stats is not None else SearchStats()
        base_query = {"_count": str(self.page_size), **(params or {})}
        restartable = base_query.get("_sort") == "_lastUpdated"
        url: str | None = f"{self.base_url}/{resource_type}"
        query: dict[str, str] | None = base_query
        seen: set[str] = set()
        started = time.monotonic()
        # One page read ahead: the next page is requested as soon as this one is parsed, so the server prepares it
        # while this page's entries are handed on (the server idled for that time, about a sixth of a REST pull).
        # Its result, or its error, is taken where the request used to be made, after this page's entries, so a
        # restart, a failure and the entries yielded before them are as without it. One request at a time.
        closed = threading.Event()
        try:
            yield from self._search_pages(resource_type, url, query, base_query, restartable, stats, seen, started, closed)
        finally:
            closed.set()  # a page still being read ahead stops at its next attempt or wait; nothing waits for it

    def _read_ahead(self, url: str, stats: SearchStats, closed: threading.Event) -> "Future[tuple[dict[str, Any], bool]]":
        """``_page`` of ``url`` in a daemon thread: one the process never waits for at exit (a pool's threads are
        joined at exit, so a search closed early kept the process alive until a slow page had arrived)."""
        future: Future[tuple[dict[str, Any], bool]] = Future()

        def read() -> None:
            try:
                future.set_result(self._page(url, None, stats, closed))
            except BaseException as exc:  # handed to the search, which raises it where the request used to be made
                future.set_exception(exc)

        threading.Thread(target=read, name="fhir-read-ahead", daemon=True).start()
        return future

    def _search_pages(self, resource_type: str, url: str | None, query: dict[str, str] | None, base_query: dict[str, str],
                      restartable: bool, stats: SearchStats, seen: set[str], started: float,
                      closed: threading.Event) -> Iterator[SearchEntry]:
        last_seen: str | None = None
        restarted_from: str | None = None
        in_order = True  # the server really sorts by _lastUpdated (a restart from last_seen would skip nothing)
        pending: Future[tuple[dict[str, Any], bool]] | None = None
        while url:
            try:
                bundle, non_finite = pending.result() if pending is not None else self._page(url, query, stats)
            except FhirError as exc:
                pending = None
                if not (exc.status in GONE_STATUSES and query is None and restartable and last_seen):
                    raise
                if not in_order:
                    raise FhirError(f"a {resource_type} page link expired and the server does not sort by _lastUpdated, "
                                    "so the search cannot resume without losing resources", exc.status, permanent=True) from None
                if last_seen == restarted_from or stats.restarts >= MAX_RESTARTS:
                    raise FhirError(f"{resource_type} page links keep expiring without progress ({stats.restarts} restarts)",
                                    exc.status, permanent=True) from None
                restarted_from = last_seen
                stats.restarts += 1
                log.warning("a %s page link expired (HTTP %s); restarting from _lastUpdated=ge%s", resource_type,
                            exc.status, last_seen)
                url, query = f"{self.base_url}/{resource_type}", _restarted(base_query, last_seen)
                seen.clear()
                continue
            try:
                next_url, link_error = self._next_link(bundle, url, seen, started), None
            except Exception as exc:  # noqa: BLE001 - raised after this page's entries, as before the read-ahead
                next_url, link_error = None, exc
            pending = self._read_ahead(next_url, stats, closed) if next_url else None
            for mode, resource in self._entries(bundle):
                if mode != "match" or resource is None:
                    stats.skipped_entries[mode] = stats.skipped_entries.get(mode, 0) + 1
                    if mode == "outcome" and isinstance(resource, dict) and isinstance(resource.get("issue"), list):
                        for issue in resource["issue"]:
                            said = scrub(issue_text(issue), url)
                            stats.outcome_issues.append(said)
                            log.warning("search outcome from %s: %s", redacted(url), said)
                    continue
                if isinstance(resource, dict) and isinstance(resource.get("meta"), dict):
                    updated = resource["meta"].get("lastUpdated")
                    if isinstance(updated, str) and last_seen and updated < last_seen:
                        in_order = False
                    if isinstance(updated, str) and updated > (last_seen or ""):
                        last_seen = updated
                        if updated > (stats.max_last_updated or ""):
                            stats.max_last_updated = updated
                yield SearchEntry(resource, url, *wire_text(resource, non_finite))
            if link_error is not None:
                raise link_error
            if next_url:
                self._check_deadline(started, len(seen) - 1)  # the time this page's entries took counts, as before
            url = next_url
            query = None  # the next link carries its own query, used exactly as given

    def count(self, resource_type: str, params: dict[str, str] | None = None,
              stats: SearchStats | None = None) -> int:
        """The server's count of matches (``_summary=count``); fails when the server gives no total."""
        stats = stats if stats is not None else SearchStats()
        bundle = self._bundle(f"{self.base_url}/{resource_type}", {**(params or {}), "_summary": "count"}, stats)
        if not isinstance(bundle.get("total"), int):
            raise FhirError(f"{resource_type}?_summary=count returned no Bundle.total")
        return int(bundle["total"])

    def history(self, since: str, resource_type: str | None = None, stats: SearchStats | None = None,
                page_size: int = 1000) -> Iterator[HistoryEntry]:
        """Every version written since ``since`` (system or type level ``_history``), deletes included."""
        stats = stats if stats is not None else SearchStats()
        url: str | None = f"{self.base_url}/{resource_type + '/' if resource_type else ''}_history"
        query: dict[str, str] | None = {"_since": since, "_count": str(page_size)}
        seen: set[str] = set()
        started = time.monotonic()
        while url:
            bundle = self._bundle(url, query, stats)
            for entry in bundle.get("entry") or []:
                if not isinstance(entry, dict):
                    continue
                request = entry.get("request") if isinstance(entry.get("request"), dict) else {}
                response = entry.get("response") if isinstance(entry.get("response"), dict) else {}
                resource = entry.get("resource")
                target = request.get("url") or entry.get("fullUrl") or ""
                target = target.split("?")[0] if isinstance(target, str) else ""
                parts = [p for p in target.split("/") if p]
                if isinstance(resource, dict):
                    rtype, rid = resource.get("resourceType"), resource.get("id")
                elif len(parts) >= 2:
                    rtype, rid = parts[-2], parts[-1]
                else:
                    continue
                if not isinstance(rtype, str) or not isinstance(rid, str) or not rtype or not rid:
                    continue
                meta = resource.get("meta") if isinstance(resource, dict) and isinstance(resource.get("meta"), dict) else {}
                yield HistoryEntry(rtype, rid, meta.get("versionId") or _etag_version(response.get("etag")),
                                   request.get("method") == "DELETE", resource if isinstance(resource, dict) else None,
                                   meta.get("lastUpdated") or response.get("lastModified"), url)
            url = self._next_link(bundle, url, seen, started)
            query = None

