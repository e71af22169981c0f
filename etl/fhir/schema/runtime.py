"""The fast path of validation: one jsonschema-rs validator on the generated ingest schema, compiled once per process.

``etl.fhir.validation.validation_errors`` asks ``schema_accepts`` first. The schema is built so that what it
accepts fhir.resources accepts too (``tests/etl/fhir/test_fhir_schema.py`` checks that on the synthetic hospital
and on thousands of mutations), so an accepted resource skips fhir.resources (about 100 us) altogether.
A refused one goes through the full fhir.resources check, which gives the same quarantine messages as
before; when fhir.resources accepts what the schema refused, ``json_type_errors`` says whether the
refusal is a quarantine reason of its own (a JSON value of the wrong type for its FHIR primitive, which
fhir.resources coerces: ``"yes"`` read as True, ``"60"`` kept as a string where a number is due). Every
other refusal (null elements, a contained type the schema does not carry, ``fhir_comments``, ids over 64
characters, whitespace-only strings, loosely padded base64) defers to fhir.resources' verdict.
"""
from __future__ import annotations

import logging
import threading
from importlib.metadata import version
from typing import Any

import orjson

from .generate import JSON_INTEGER, OUTPUT, load_text, parse

# A resource nested deeper than this skips the fast path: fhir.resources gives up on Python's recursion limit
# at about 240 levels (quarantined as "nested too deeply"), jsonschema-rs would not, and real resources
# are under 20 levels deep.
MAX_FAST_DEPTH = 64

log = logging.getLogger(__name__)
_lock = threading.Lock()
_compiled: tuple[Any, frozenset[str]] | None = None


class _JsonInteger:
    """``jsonInteger``: a JSON integer, not ``1.0``, which JSON Schema counts as an integer (etl.fhir.validation's
    JSON-primitive rule for ``*Integer`` elements refuses it)."""

    def __init__(self, parent_schema: Any, value: Any, schema_path: Any) -> None:
        pass

    def validate(self, instance: Any) -> None:
        if isinstance(instance, float):
            raise ValueError(f"{instance!r} is not a JSON integer")


def _load() -> tuple[Any, frozenset[str]]:
    """The compiled validator and the resource types it covers; no types (every resource takes the slow path)
    when the installed fhir.resources is not the one the schema was generated from."""
    global _compiled
    if _compiled is None:
        with _lock:
            if _compiled is None:
                import jsonschema_rs

                schema = parse(load_text(OUTPUT))
                pinned, installed = schema["x-generated"]["fhir.resources"], version("fhir.resources")
                if pinned != installed:
                    log.warning("validation without its fast path: the schema was generated for fhir.resources %s, "
                                "%s is installed (run python -m etl.fhir.schema.generate)", pinned, installed)
                    _compiled = None, frozenset()
                else:
                    validator = jsonschema_rs.validator_for(schema, keywords={JSON_INTEGER: _JsonInteger})
                    _compiled = validator, frozenset(schema["x-generated"]["resource_types"])
    return _compiled


def warm_validator() -> None:
    """Load and compile the schema now (a process about to fork its validation workers shares it with them)."""
    _load()


def _depth_at_most(node: Any, limit: int) -> bool:
    stack = [(node, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return False
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return True


def _shallow(resource: dict[str, Any], text: bytes | None) -> bool:
    """Depth at most MAX_FAST_DEPTH. The count of brackets in the text bounds the depth from above and costs
    ~0.1 us; only a resource with more brackets than that is walked."""
    if text is None:
        try:
            text = orjson.dumps(resource)
        except TypeError:  # deeper than orjson's 255 levels, or not serialisable: the slow path decides
            return False
    if text.count(b"{") + text.count(b"[") <= MAX_FAST_DEPTH:
        return True
    return _depth_at_most(resource, MAX_FAST_DEPTH)


def schema_accepts(resource: dict[str, Any], resource_type: str, text: bytes | None = None) -> bool:
    """True when the ingest schema accepts ``resource`` (so fhir.resources would too); False when it refuses,
    or the type is not in the schema, or the resource is too deep for the fast path."""
    validator, types = _compiled or _load()
    if resource_type not in types:
        return False
    if text is None or text.count(b"{") + text.count(b"[") > MAX_FAST_DEPTH:  # the common case without a call
        if not _shallow(resource, text):
            return False
    return validator.is_valid(resource)


def json_type_errors(resource: dict[str, Any], resource_type: str) -> list[str]:
    """For a resource fhir.resources accepted: the schema's refusals that are quarantine reasons, i.e. a non-null
    JSON value whose type is not the FHIR primitive's JSON type (FHIR JSON: http://hl7.org/fhir/R4/json.html)."""
    import jsonschema_rs

    validator, types = _load()
    if resource_type not in types or not _depth_at_most(resource, MAX_FAST_DEPTH):
        return []
    out = []
    for error in validator.iter_errors(resource):
        if isinstance(error.kind, jsonschema_rs.ValidationErrorKind.Type) and error.instance is not None:
            path = ".".join(str(p) for p in error.instance_path)
            out.append(f"{path}: {error.message} (FHIR JSON does not allow it; fhir.resources would coerce it)")
    return out
