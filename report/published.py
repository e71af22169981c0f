"""The paper's numbers (published.yaml) and their reproduced counterparts read from the warehouse.

A locator names a table, a ``where`` that selects one row (or many, with ``agg``), a column, and
optionally a ``join`` (columns of another table by key) or a ``json`` path into a JSON text cell.
The report resolves every locator with ``resolve``; each printed number carries its locator, so
it can be checked against the warehouse.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from typing import Any, Mapping

import numpy as np
import pandas as pd
import yaml

from analytics.balance import kish_ess

PUBLISHED_FILE = "published.yaml"
KINDS = ("count", "number", "p", "hr", "proportion")
AGGREGATES = {"sum": lambda s: s.sum(), "count": lambda s: s.size, "nunique": lambda s: s.nunique(),
              "min": lambda s: s.min(), "max": lambda s: s.max(), "median": lambda s: s.median(),
              "ess": lambda s: kish_ess(s) if len(s) else math.nan, "same": lambda s: _same(s)}
ALPHA = 0.05


class LocatorError(ValueError):
    """A locator that does not name exactly one value: a wrong published.yaml entry or a changed table."""


class NoSuchRows(LookupError):
    """A locator's rows are not in this warehouse (a category no patient has): shown as missing, not an error."""


def _same(values: pd.Series) -> Any:
    """The one value every row holds (a p-value repeated on each level of a variable)."""
    distinct = values.drop_duplicates()
    if len(distinct) > 1 and not (distinct.isna().all()):
        raise LocatorError(f"rows hold different values {distinct.tolist()[:5]}, not one")
    return distinct.iloc[0] if len(distinct) else math.nan


@dataclass(frozen=True)
class PublishedItem:
    id: str
    section: str
    what: str
    kind: str
    published: dict[str, str]
    reproduced: dict[str, Any] | None
    note: str = ""


@lru_cache(maxsize=1)
def load_published() -> tuple[str, tuple[PublishedItem, ...]]:
    """The paper's title and its numbers, checked: a typo in the file is an error naming the item."""
    data = yaml.safe_load(files("report").joinpath(PUBLISHED_FILE).read_text(encoding="utf-8"))
    items, seen = [], set()
    for raw in data["items"]:
        item = PublishedItem(**raw)
        if item.id in seen:
            raise ValueError(f"{PUBLISHED_FILE}: duplicate id {item.id}")
        seen.add(item.id)
        if item.kind not in KINDS:
            raise ValueError(f"{PUBLISHED_FILE}: {item.id}: kind must be one of {KINDS}, not {item.kind!r}")
        wanted = {"hr": {"hr", "lower", "upper"}, "proportion": {"k", "n"}}.get(item.kind, {"value"})
        if not wanted <= set(item.published) or not all(isinstance(v, str) for v in item.published.values()):
            raise ValueError(f"{PUBLISHED_FILE}: {item.id}: published needs {sorted(wanted)} as the paper prints them (strings)")
        if item.reproduced is None and not item.note:
            raise ValueError(f"{PUBLISHED_FILE}: {item.id}: an item without a reproduced value needs a note saying why")
        items.append(item)
    return data["paper"], tuple(items)


def rows(tables: Mapping[str, pd.DataFrame], locator: Mapping[str, Any]) -> pd.DataFrame:
    """The rows a locator's table, join and ``where`` select."""
    name = locator["table"]
    if name not in tables:
        raise LocatorError(f"table {name} is not in the warehouse")
    frame = tables[name]
    if locator.get("join"):
        join = locator["join"]
        frame = frame.merge(tables[join["table"]][[join["on"], *join["columns"]]], on=join["on"], how="left")
    mask = pd.Series(True, index=frame.index)
    for column, value in (locator.get("where") or {}).items():
        if column not in frame.columns:
            raise LocatorError(f"{name} has no column {column}")
        mask &= frame[column].isna() if value is None else frame[column].astype(str) == str(value)
    return frame[mask]


def resolve(tables: Mapping[str, pd.DataFrame], locator: Mapping[str, Any]) -> Any:
    """The one value a locator names (NaN for an aggregate over no rows)."""
    selected = rows(tables, locator)
    column = locator["column"]
    if column not in selected.columns:
        raise LocatorError(f"{locator['table']} has no column {column}")
    agg = locator.get("agg")
    if agg:
        if agg not in AGGREGATES:
            raise LocatorError(f"unknown aggregate {agg!r}")
        return AGGREGATES[agg](selected[column])
    if len(selected) == 0:
        raise NoSuchRows(f"{locator['table']} where {locator.get('where')}: no rows")
    if len(selected) != 1:
        raise LocatorError(f"{locator['table']} where {locator.get('where')}: {len(selected)} rows, not one")
    value = selected[column].iloc[0]
    for key in locator.get("json") or []:
        value = (json.loads(value) if isinstance(value, str) else value)[key]
    return value


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def published_p(text: str) -> tuple[float, str]:
    """("<0.05" -> (0.05, "<"), "n.s." -> (0.05, ">="), "0.002" -> (0.002, "="))."""
    if text == "n.s.":
        return ALPHA, ">="
    if text.startswith("<"):
        return float(text[1:]), "<"
    return float(text), "="


def agreement(item: PublishedItem, reproduced: Mapping[str, Any]) -> str:
    """How the reproduced value relates to the published one. Another hospital's data are expected to differ
    in value; what can agree is direction and significance, so that is what is judged."""
    if item.reproduced is None:
        return "not comparable"
    if "missing" in reproduced:
        return "not in this warehouse"
    values = {k: _number(v) for k, v in reproduced.items()}
    if any(np.isnan(v) for v in values.values()):
        return "not estimable"
    if item.kind == "hr":
        if values["lower"] <= float(item.published["hr"]) <= values["upper"]:
            return "published HR inside reproduced CI"
        return "published HR outside reproduced CI"
    if item.kind == "p":
        bound, relation = published_p(item.published["value"])
        published_significant = {"=": bound < ALPHA, "<": bound <= ALPHA, ">=": False}[relation]
        same = published_significant == (values["value"] < ALPHA)
        return "same significance" if same else "different significance"
    if item.kind == "proportion":
        same = values["k"] == float(item.published["k"]) and values["n"] == float(item.published["n"])
        return "equal" if same else "different"
    published = _number(item.published["value"])
    return "equal" if not np.isnan(published) and values["value"] == published else "different"


def reproduce(item: PublishedItem, tables: Mapping[str, pd.DataFrame]) -> dict[str, Any]:
    """The reproduced value(s) of an item with their locators: {field: (value, locator)}."""
    loc = item.reproduced
    if loc is None:
        return {}
    try:
        return _reproduce(item, loc, tables)
    except NoSuchRows:
        return {"missing": (math.nan, {})}


def _reproduce(item: PublishedItem, loc: dict[str, Any], tables: Mapping[str, pd.DataFrame]) -> dict[str, Any]:
    if item.kind == "hr":
        columns = {"hr": "hazard_ratio", "lower": "ci_lower", "upper": "ci_upper"}
        return {f: (resolve(tables, {**loc, "column": c}), {**loc, "column": c}) for f, c in columns.items()}
    if item.kind == "proportion":
        return {f: (resolve(tables, loc[f]), loc[f]) for f in ("k", "n")}
    return {"value": (resolve(tables, loc), dict(loc))}
