"""Typed child rows of a raw resource: every coding, every Observation component, every dosage.

They are written in the same transaction as the raw JSON they come from, so an analyst can join
``fhir_coding`` on (system, code) without parsing JSON, and they can never disagree with it.
"""
from __future__ import annotations

from typing import Any, Iterator

CODING, COMPONENT, DOSAGE = "fhir_coding", "fhir_observation_component", "fhir_dosage"
CHILD_TABLES = (CODING, COMPONENT, DOSAGE)


def _codings(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "coding" and isinstance(value, list):
                for coding in value:
                    if isinstance(coding, dict):
                        yield path, coding
            elif key not in ("text", "div", "contained"):
                yield from _codings(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for item in node:
            yield from _codings(item, path)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def child_rows(resource_type: str, resource: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    rid = resource["id"]
    rows: dict[str, list[dict[str, Any]]] = {
        CODING: [{"resource_type": resource_type, "resource_id": rid, "path": path, "system": c.get("system"),
                  "code": c.get("code"), "display": c.get("display")} for path, c in _codings(resource, "")],
        COMPONENT: [], DOSAGE: []}
    if resource_type == "Observation":
        for i, comp in enumerate(resource.get("component") or []):
            coding = next(iter((comp.get("code") or {}).get("coding") or []), {})
            quantity = comp.get("valueQuantity") or {}
            rows[COMPONENT].append({"observation_id": rid, "position": i, "system": coding.get("system"),
                                    "code": coding.get("code"), "value": _number(quantity.get("value")),
                                    "unit": quantity.get("code") or quantity.get("unit"),
                                    "value_string": comp.get("valueString")})
    if resource_type == "MedicationStatement":
        for i, dosage in enumerate(resource.get("dosage") or []):
            dose = next(iter(dosage.get("doseAndRate") or []), {}).get("doseQuantity") or {}
            repeat = (dosage.get("timing") or {}).get("repeat") or {}
            rows[DOSAGE].append({"statement_id": rid, "position": i, "dose_value": _number(dose.get("value")),
                                 "dose_unit": dose.get("code") or dose.get("unit"), "frequency": repeat.get("frequency"),
                                 "period": _number(repeat.get("period")), "period_unit": repeat.get("periodUnit"),
                                 "text": dosage.get("text")})
    return rows
