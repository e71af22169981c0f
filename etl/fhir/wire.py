"""Checks on the JSON text a resource arrived as, which a parsed object can no longer show.

* Duplicate keys: JSON parsers disagree on which value wins, so ``{"id":"dupA","id":"dupB"}`` could be
  validated as one resource and read by an analyst's parser as another. Such a resource is refused.
* Control characters (``\\u0000`` and the other C0 codes but tab, CR and LF): FHIR strings forbid them,
  and PostgreSQL cannot store a NUL.
* Size: one resource above ``MAX_RESOURCE_BYTES`` (a 50 MB string, say) is refused before anything else.
"""
from __future__ import annotations

import json
import re
from typing import Any

import orjson

MAX_RESOURCE_BYTES = 4 * 1024 * 1024  # the study's types carry no attachments; a FHIR server's own limits are similar
# An escape \u00XX preceded by an even number of backslashes (so not an escaped backslash followed by "u00").
_CONTROL = re.compile(rb"(?:^|[^\\])(?:\\\\)*\\u00(?:0[0-8bcefBCEF]|1[0-9a-fA-F])")
_KEY = re.compile(rb'"\s*:')


def _compact(parsed: Any) -> bytes | None:
    try:
        return orjson.dumps(parsed)
    except TypeError:
        return None


def _keys(node: Any) -> int:
    if isinstance(node, dict):
        return len(node) + sum(_keys(v) for v in node.values() if isinstance(v, (dict, list)))
    if isinstance(node, list):
        return sum(_keys(v) for v in node if isinstance(v, (dict, list)))
    return 0


def _duplicates(text: bytes) -> list[str]:
    found: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in items:
            if key in seen:
                found.append(key)
            seen.add(key)
        return dict(items)

    json.loads(text, object_pairs_hook=pairs)
    return found


def oversize_error(n_bytes: int) -> str | None:
    """The one size rule, for a parsed resource and for an NDJSON line too long to be worth parsing."""
    if n_bytes > MAX_RESOURCE_BYTES:
        return f"resource is over the {MAX_RESOURCE_BYTES / 1e6:.0f} MB limit ({n_bytes / 1e6:.1f} MB or more)"
    return None


def _clear_without_escapes(text: bytes, canonical: bytes) -> bool:
    """True when ``text``, which holds no backslash, has no repeated key. Without a backslash no string can hold a
    quote or a control character, so every '"' followed by ':' (whitespace between allowed) closes a key, and in
    ``canonical`` (the parsed object written compact, as for the content hash, which the worker makes anyway)
    each '":' is one key of the parsed object: equal counts mean no object lost a repeated key in parsing.
    Two byte counts instead of writing the object out again and comparing (about 5 us a resource)."""
    spaced = b'" ' in text or b'"\n' in text or b'"\t' in text or b'"\r' in text
    keys = len(_KEY.findall(text)) if spaced else text.count(b'":')
    return keys == canonical.count(b'":')


def wire_errors(text: bytes, parsed: Any, canonical: bytes | None = None) -> list[str]:
    """Why the JSON ``text`` (already parsed into ``parsed``) must not be loaded; empty when it may.
    ``canonical``: ``etl.records.canonical_json(parsed)`` when the caller has it; it makes the common text (no
    backslash) cheap to clear."""
    too_big = oversize_error(len(text))
    if too_big:
        return [too_big]
    if canonical is not None and b"\\" not in text and _clear_without_escapes(text, canonical):
        return []  # no backslash: no escaped control character either
    errors = []
    if b"\\u00" in text and _CONTROL.search(text):
        errors.append("a string holds a control character (such as U+0000), which FHIR strings forbid")
    # Text that is exactly the compact serialisation of the parsed object has no repeated key (REST resources,
    # which the client writes itself, and compact NDJSON). Otherwise: every key is followed by '"' and ':';
    # when the text has more of those than the object has keys, a string contains '":' or a key was
    # repeated, and only then is the slower exact parse needed.
    if _compact(parsed) != text and sum(1 for _ in _KEY.finditer(text)) > _keys(parsed):
        duplicated = _duplicates(text)
        if duplicated:
            errors.append(f"duplicate JSON keys {sorted(set(duplicated))}: parsers disagree on which value counts")
    return errors
