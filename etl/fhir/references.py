"""FHIR literal references, read one way everywhere (flattening, plausibility, scoping, filters).

A reference may be relative (``Patient/p1``), versioned (``Patient/p1/_history/3``) or absolute
(``https://host/fhir/Patient/p1``). An absolute one names *our* resource only when it starts with
the FHIR server's base URL: ``https://evil.example.org/fhir/Patient/p1`` is another server's p1,
and with no base known an absolute reference cannot be shown to be ours. Anything that is not
exactly ``Type/id`` after that (``Patient/../Patient/p1``, an id outside R4's
``[A-Za-z0-9-.]{1,64}``, a ``urn:uuid:``) is not read as a reference at all.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")


def parse_reference(reference: Any, base: str | None = None) -> tuple[str, str] | None:
    """(resource type, id) of a literal reference to a resource on the server at ``base``, else None."""
    if not isinstance(reference, str) or not reference:
        return None
    return _parse_text(reference, base)


@lru_cache(maxsize=1 << 16)
def _parse_text(reference: str, base: str | None) -> tuple[str, str] | None:
    """Cached: a patient's reference is read once per resource about them, dozens of times per patient."""
    if "://" in reference:
        prefix = (base or "").rstrip("/") + "/"
        if not base or not reference.startswith(prefix):
            return None
        reference = reference[len(prefix):]
    path, _, version = reference.partition("/_history/")
    if version and not ID.fullmatch(version):
        return None
    parts = path.split("/")
    if len(parts) != 2 or not TYPE.fullmatch(parts[0]) or not ID.fullmatch(parts[1]) or parts[1] in (".", ".."):
        return None
    return parts[0], parts[1]


def reference_id(reference: dict[str, Any] | None, resource_type: str, base: str | None = None) -> str | None:
    """The id in a Reference element that points to a ``resource_type`` on our server, else None."""
    parsed = parse_reference((reference or {}).get("reference") if isinstance(reference, dict) else None, base)
    return parsed[1] if parsed and parsed[0] == resource_type else None


def reference_shape(reference: Any) -> tuple[str, str] | None:
    """(type, id) of a well-formed literal reference on *any* server, for checks that do not know the base
    (ingestion's plausibility); whose server it names is decided where the base is known."""
    if isinstance(reference, str) and "://" in reference:
        scheme_host, _, path = reference.partition("://")[2].partition("/")
        path, _, version = path.partition("/_history/")
        parts = path.split("/")
        if not scheme_host or len(parts) < 2 or any(p in (".", "..", "") for p in parts):
            return None
        return parse_reference("/".join(parts[-2:]) + (f"/_history/{version}" if version else ""))
    return parse_reference(reference)
