"""A number in the report and the warehouse cell it comes from.

Every number the report prints is a ``Cell``: its text and data attributes naming its source
(``data-src``: table, the row's key, column, and an aggregate where one is taken), so a reader, or a
test, can trace it back to the warehouse. Numbers of other kinds say what they are:
``data-published`` (the paper, from published.yaml), ``data-setting`` (the report's own settings),
``data-fixed`` (a constant of the method, such as the 95 of a 95% CI).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from .suppression import Mark, SmallCellPolicy

MISSING = "–"  # not estimable or not available


def _plain(value: Any) -> Any:
    """JSON-safe scalars for a source key (numpy integers, NaN as null)."""
    if value is None:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def source(table: str, column: str, where: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A cell's locator: ``where`` selects exactly one row unless ``agg`` (sum, count, min, median, max,
    ess) is given; ``join`` adds a table's columns by key (e.g. a patient's group from ``cohort``); ``json``
    is a path into a JSON text cell; ``ratio`` (a numerator and a denominator locator, ×100) is a percent."""
    spec: dict[str, Any] = {"table": table, "column": column, "where": {k: _plain(v) for k, v in (where or {}).items()}}
    spec.update({k: v for k, v in extra.items() if v is not None})
    return spec


def is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(math.isnan(float(value)))
    except (TypeError, ValueError):
        return False


def format_number(value: Any, decimals: int) -> str:
    if is_missing(value):
        return MISSING
    if math.isinf(float(value)):
        return "∞" if float(value) > 0 else "−∞"
    return f"{float(value):.{decimals}f}"


def format_p(value: Any) -> str:
    """p as the paper prints it: <0.001, four decimals below 0.01 (0.0029), else three (0.021)."""
    if is_missing(value):
        return MISSING
    p = float(value)
    if p < 0.001:
        return "<0.001"
    return f"{p:.4f}" if p < 0.01 else f"{p:.3f}"


@dataclass(frozen=True)
class Cell:
    text: str
    attrs: dict[str, str] = field(default_factory=dict)
    css: str = ""

    def __str__(self) -> str:  # what a template prints when it forgets the macro: the text, never the attributes
        return self.text


def _attrs(src: dict[str, Any], kind: str) -> dict[str, str]:
    return {"data-src": json.dumps(src, sort_keys=True, separators=(",", ":")), "data-kind": kind}


def number(value: Any, src: dict[str, Any], decimals: int) -> Cell:
    return Cell(format_number(value, decimals), _attrs(src, "number"), "na" if is_missing(value) else "")


def p_value(value: Any, src: dict[str, Any]) -> Cell:
    significant = not is_missing(value) and float(value) < 0.05
    return Cell(format_p(value), _attrs(src, "p"), "sig" if significant else ("na" if is_missing(value) else ""))


def text(value: Any, src: dict[str, Any]) -> Cell:
    return Cell(MISSING if is_missing(value) else str(value), _attrs(src, "text"))


def count(value: Any, src: dict[str, Any], policy: SmallCellPolicy, mark: Mark | None = None) -> Cell:
    """A patient count; ``mark`` comes from a partition rule, else the count's own size decides."""
    if is_missing(value):
        return Cell(MISSING, _attrs(src, "count"), "na")
    mark = mark or policy.count(int(value))
    if mark is None:
        return Cell(str(int(value)), _attrs(src, "count"))
    return Cell(policy.label(mark), {**_attrs(src, "count"), "data-suppressed": mark.value}, "suppressed")


def percent(value: Any, src: dict[str, Any], hidden_with: Mark | None, policy: SmallCellPolicy) -> Cell:
    """A percentage of patients: hidden whenever the count it is made from is."""
    if hidden_with is not None:
        return Cell(policy.label(hidden_with), {**_attrs(src, "number"), "data-suppressed": hidden_with.value}, "suppressed")
    return number(value, src, 1)


def suppressed(cell: Cell, mark: Mark, policy: SmallCellPolicy, group_n: dict[str, Any] | None = None) -> Cell:
    """``cell`` hidden by ``mark``; a small-group mark names the locator of the group's n (``data-count``)."""
    attrs = {**cell.attrs, "data-suppressed": mark.value}
    if group_n is not None:
        attrs["data-count"] = json.dumps(group_n, sort_keys=True, separators=(",", ":"))
    return Cell(policy.label(mark), attrs, "suppressed")


def fixed(value: str) -> Cell:
    """A constant of the method (the 95 of a 95% CI), not a value from the data."""
    return Cell(value, {"data-fixed": ""})


def label(value: str) -> Cell:
    """A name that happens to hold a digit (Figure 1A), not a number."""
    return Cell(value, {"data-label": ""})


def setting(value: Any, name: str) -> Cell:
    return Cell(str(value), {"data-setting": name})


def published(value: str, item_id: str, field_name: str) -> Cell:
    return Cell(value, {"data-published": item_id, "data-field": field_name})
