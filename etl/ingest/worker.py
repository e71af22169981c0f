"""What a validation worker does with one line of FHIR JSON: parse, check, and hand back a row ready to
write or the reasons to quarantine it. Runs in worker processes, so it imports no database code.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import date
from typing import Any, Iterable, NamedTuple

import orjson

from etl.fhir.ndjson import Block, Line
from etl.fhir.plausibility import plausibility_errors
from etl.fhir.validation import validation_errors
from etl.fhir.wire import oversize_error, wire_errors
from etl.records import canonical_json, content_hash


def check_resource(resource: Any, expected_type: str, text: bytes | None = None, today: date | None = None,
                   canonical: bytes | None = None) -> list[str]:
    """Structural R4 errors first; plausibility only for a structurally valid resource. With ``text`` (the JSON
    the resource arrived as, from NDJSON, Bulk or a REST page) the text itself is checked too (``etl.wire``);
    ``canonical`` (``canonical_json(resource)``, which a valid resource's hash needs anyway) makes that cheaper.
    Nothing a resource holds can make this raise: a nesting too deep for Python's stack is a quarantine reason."""
    try:
        errors = wire_errors(text, resource, canonical) if text is not None else []
        errors = errors or validation_errors(resource, expected_type, text)
        return errors or plausibility_errors(resource, today, text)
    except RecursionError:
        return ["nested too deeply to validate (Python's recursion limit); FHIR resources are far shallower"]


def quarantine_text(resource: Any, text: bytes | None) -> str:
    """The text a quarantined resource is kept as; anything that cannot be written as JSON still leaves a row."""
    if text is not None:
        return text.decode(errors="replace")
    try:
        return orjson.dumps(resource).decode()
    except TypeError:  # too deep for orjson, or a lone surrogate
        try:
            return json.dumps(resource, allow_nan=True)
        except (RecursionError, ValueError):
            return "(not writable as JSON: nested too deeply)"


@dataclass(frozen=True)
class Checked:
    source: str
    resource_type: str | None
    text: bytes
    errors: tuple[str, ...]
    tombstone: tuple[str, str | None] | None = None  # (id, versionId) for a deleted-resource entry
    known: tuple[str, str | None] | None = None  # the line's (id, versionId) when its sender knew them

    def __reduce__(self) -> tuple:
        return Checked, (self.source, self.resource_type, self.text, self.errors, self.tombstone, self.known)


# What crosses back from a worker: valid resources as plain tuples in RawRow's field order (id, versionId, lastUpdated,
# None for the parsed resource, source, text, digest), consecutive ones of a type gathered in one ``Run``; anything
# else (errors, tombstones) as its Checked. Rebuilding a Checked and its RawRow per resource cost the loading process
# about 8 us per resource; a tuple about 1 us; a run lets that process take a block's rows with a few calls, not
# several per resource (the loading process is the one that limits the step).
RowFields = tuple[str, "str | None", "str | None", None, str, str, str]
ValidRow = tuple[str, RowFields]  # (resource type, row): check_text's answer for a valid resource


class Run(NamedTuple):
    """Valid resources of one type that arrived one after the other, in order."""

    resource_type: str
    rows: list[RowFields]

    def __reduce__(self) -> tuple:
        return Run, (self.resource_type, self.rows)


Result = Checked | ValidRow
Item = Checked | Run


def runs(results: Iterable[Result]) -> list[Item]:
    """``results`` in order, consecutive valid rows of a type gathered into one ``Run``."""
    out: list[Item] = []
    current: Run | None = None
    for result in results:
        if type(result) is tuple:
            if current is not None and current.resource_type == result[0]:
                current.rows.append(result[1])
            else:
                current = Run(result[0], [result[1]])
                out.append(current)
        else:
            out.append(result)
            current = None
    return out


def check_text(source: str, text: bytes, type_hint: str | None, known: tuple[str, str | None] | None = None,
               today: date | None = None) -> list[Result]:
    """Parse and validate one NDJSON line (runs in a worker). A Bulk ``deleted`` Bundle yields tombstones.
    ``today`` (for the date rules) may be read once per block: ``date.today()`` cost 2 us a resource."""
    too_big = oversize_error(len(text))
    if too_big:  # not even parsed (an endless line arrives cut just over the limit)
        return [Checked(source, type_hint, text[:1000], (too_big,), known=known)]
    try:
        resource = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return [Checked(source, type_hint, text, (f"invalid JSON: {exc}",), known=known)]
    actual = resource.get("resourceType") if isinstance(resource, dict) else None
    if actual == "Bundle" and resource.get("type") in ("transaction", "batch", "history") and type_hint in (None, "Bundle"):
        out: list[Result] = []
        for entry in resource.get("entry") or []:
            request = entry.get("request") or {}
            parts = [p for p in (request.get("url") or "").split("?")[0].split("/") if p]
            if request.get("method") == "DELETE" and len(parts) >= 2:
                out.append(Checked(source, parts[-2], b"", (), (parts[-1], None)))
        return out
    expected = type_hint or (actual if isinstance(actual, str) else None) or "Unknown"
    try:  # written once: the duplicate-key check counts its keys, and a valid resource's content hash is taken of it
        canonical = canonical_json(resource)
    except TypeError:  # too deep for orjson, or a lone surrogate: the checks take their slower paths
        canonical = None
    errors = tuple(check_resource(resource, expected, text, today, canonical))
    if errors:
        return [Checked(source, expected, text, errors)]
    meta = resource.get("meta") or {}
    digest = hashlib.sha256(canonical).hexdigest() if canonical is not None else content_hash(resource)
    return [(expected, (resource["id"], meta.get("versionId"), meta.get("lastUpdated"), None, source, text.decode(), digest))]


def check_line(line: Line, today: date | None = None) -> list[Result]:
    return check_text(line.source, line.text, line.type_hint, line.known, today)


def check_chunk(lines: list[Line]) -> list[Item]:
    today = date.today()
    return runs(c for line in lines for c in check_line(line, today))


def check_block(block: Block) -> list[Item]:
    """Every line of a block, without making a ``Line`` for each (``Block.lines`` does the same, one object a line)."""
    prefix, hint, today = f"{block.path}:", block.type_hint, date.today()
    return runs(result for offset, line in enumerate(block.data.split(b"\n"), block.first_line) if (text := line.strip())
                for result in check_text(prefix + str(offset), text, hint, None, today))
