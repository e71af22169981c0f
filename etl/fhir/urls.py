"""Origins and log-safe URLs, shared by the FHIR client and its authentication."""
from __future__ import annotations

from urllib.parse import urlsplit


def origin(url: str) -> str:
    """scheme://host:port of a URL: the unit credentials and data are trusted by (as in browsers)."""
    parts = urlsplit(str(url))
    try:
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme, 0)
    except ValueError:  # a port out of range or not a number: an origin nobody trusts
        return f"invalid://{parts.netloc}"
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


def redacted(url: str) -> str:
    """A URL without its query and fragment, for messages: search parameters can list patient ids, and
    a Bulk file URL can carry a signature."""
    parts = urlsplit(str(url))
    return f"{parts.scheme}://{parts.netloc}{parts.path}" + ("?…" if parts.query else "")
