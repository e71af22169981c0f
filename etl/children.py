"""Typed child rows of a raw resource: every coding, every Observation component, every dosage.

They are written in the same transaction as the raw JSON they come from, so an analyst can join
``fhir_coding`` on (system, code) without parsing JSON, and they can never disagree with it.
"""
from __future__ import annotations

from typing import Any

from .flatten import dose_quantity, quantity_unit
from .paths import Link, render_path

CODING, COMPONENT, DOSAGE = "fhir_coding", "fhir_observation_component", "fhir_dosage"
CHILD_TABLES = (CODING, COMPONENT, DOSAGE)


def _codings(node: Any, keys: Link | None, out: list[tuple[Link | None, dict[str, Any]]]) -> None:
    """Every Coding with the chain of keys above it (list positions are not part of a coding's path)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "coding" and isinstance(value, list):
                for coding in value:
                    if isinstance(coding, dict):
                        out.append((keys, coding))
            elif key not in ("text", "div", "contained") and isinstance(value, (dict, list)):
                _codings(value, (keys, key), out)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, (dict, list)):
                _codings(item, keys, out)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


COLUMNS = {
    CODING: ("resource_type", "resource_id", "path", "system", "code", "display"),
    COMPONENT: ("observation_id", "position", "system", "code", "value", "unit", "value_string"),
    DOSAGE: ("statement_id", "position", "dose_value", "dose_unit", "frequency", "period", "period_unit", "text"),
}


def child_rows(resource_type: str, resource: dict[str, Any]) -> dict[str, list[tuple[Any, ...]]]:
    """Rows per child table, as tuples in ``COLUMNS`` order (cheap to pickle from a validation worker)."""
    rid = resource["id"]
    found: list[tuple[Link | None, dict[str, Any]]] = []
    _codings(resource, None, found)
    rows: dict[str, list[tuple[Any, ...]]] = {
        CODING: [(resource_type, rid, render_path(keys), c.get("system"), c.get("code"), c.get("display"))
                 for keys, c in found]}
    if resource_type == "Observation":
        rows[COMPONENT] = []
        for i, comp in enumerate(resource.get("component") or []):
            coding = next(iter((comp.get("code") or {}).get("coding") or []), {})
            quantity = comp.get("valueQuantity") or {}
            rows[COMPONENT].append((rid, i, coding.get("system"), coding.get("code"), _number(quantity.get("value")),
                                    quantity_unit(quantity), comp.get("valueString")))
    if resource_type == "MedicationStatement":
        rows[DOSAGE] = []
        for i, dosage in enumerate(resource.get("dosage") or []):
            dose = dose_quantity(dosage)
            repeat = (dosage.get("timing") or {}).get("repeat") or {}
            rows[DOSAGE].append((rid, i, _number(dose.get("value")), quantity_unit(dose),
                                 repeat.get("frequency"), _number(repeat.get("period")), repeat.get("periodUnit"),
                                 dosage.get("text")))
    return rows
