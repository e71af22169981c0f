"""Re-apply a Bulk ``_typeFilter`` locally.

Servers may ignore ``_typeFilter`` (the Bulk Data IG lets them), so the same filter is applied
again to what comes back. Only a few common search parameters can be evaluated without a search
engine; a filter naming any other parameter is not applied locally, and the caller is told so.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from .references import reference_shape
from .types import spec as type_spec

TOKEN_PATHS = {"code": "code", "category": "category", "clinical-status": "clinicalStatus",
               "verification-status": "verificationStatus", "status": "status", "gender": "gender"}
REFERENCE_PARAMS = {"patient", "subject"}  # ``patient`` reads the type's subject field (``etl.fhir.types``)


def _codings(value: Any) -> list[dict[str, Any]]:
    items = value if isinstance(value, list) else [value]
    return [c for item in items if isinstance(item, dict) for c in item.get("coding") or []]


def _token_matches(resource: dict[str, Any], element: str, wanted: str) -> bool:
    value = resource.get(element)
    for alternative in wanted.split(","):
        system, sep, code = alternative.rpartition("|")
        if isinstance(value, str):
            if value == (code if sep else alternative):
                return True
            continue
        for coding in _codings(value):
            if coding.get("code") == (code if sep else alternative) and (not sep or not system or coding.get("system") == system):
                return True
    return False


@dataclass(frozen=True)
class TypeFilter:
    resource_type: str
    params: tuple[tuple[str, str], ...]

    @staticmethod
    def parse(text: str) -> "TypeFilter":
        rtype, _, query = text.partition("?")
        return TypeFilter(rtype, tuple(parse_qsl(query, keep_blank_values=True)))

    def unsupported(self) -> list[str]:
        return [name for name, _ in self.params if name not in TOKEN_PATHS and name not in REFERENCE_PARAMS]

    def matches(self, resource: dict[str, Any]) -> bool:
        for name, value in self.params:
            if name in TOKEN_PATHS and not _token_matches(resource, TOKEN_PATHS[name], value):
                return False
            if name in REFERENCE_PARAMS:
                # Bulk files come from the server that was asked: any well-formed reference shape is its own.
                field = (type_spec(self.resource_type).subject_field or "subject") if name == "patient" else "subject"
                target = reference_shape((resource.get(field) or {}).get("reference"))
                if target is None or not any(_names(v, target) for v in value.split(",")):
                    return False
        return True


def _names(value: str, target: tuple[str, str]) -> bool:
    """Does a search value (``Patient/p1``, an absolute URL, or a bare id) name ``target``?"""
    wanted = reference_shape(value) if "/" in value else (None, value)
    return wanted is not None and wanted[1] == target[1] and wanted[0] in (None, target[0])


def keep_function(filters: list[TypeFilter]):
    """A predicate (type, resource) -> keep: a type with filters keeps what any of its filters matches."""
    by_type: dict[str, list[TypeFilter]] = {}
    for f in filters:
        by_type.setdefault(f.resource_type, []).append(f)

    def keep(resource_type: str, resource: dict[str, Any]) -> bool:
        fs = by_type.get(resource_type)
        return not fs or any(f.matches(resource) for f in fs)

    return keep
