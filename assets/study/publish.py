"""Publishing a study asset's tables and figures, the same way for every study asset.

Each frame is checked against its catalog entry (``analytics.catalog``: a table whose columns drifted
from the documented ones is refused, not written), written with its primary key, recorded in the
provenance table, and the analyst views over it are recreated. Figures go to one directory and are
embedded in the UI one way. The assets themselves only compute and call these.
"""
from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Iterable, Mapping

import dagster as dg
import pandas as pd

from analytics.catalog import CATALOG, tables_of
from etl.warehouse import Warehouse

from ..metadata import table_metadata
from ..resources import StudyResource
from .automation import STUDY_AUTOMATION, STUDY_FRESHNESS
from .provenance import record_provenance
from .views import refresh_views

STUDY_GROUP = "study"


class CatalogMismatch(ValueError):
    """A table's frame does not have exactly the columns its catalog entry documents."""


def asset_specs(asset: str, *, kinds: set[str], deps: Iterable[Any]) -> list[dg.AssetSpec]:
    """The specs of one multi-asset's tables, from the catalog."""
    return [dg.AssetSpec(name, description=spec.description, group_name=STUDY_GROUP, kinds=kinds,
                         automation_condition=STUDY_AUTOMATION, freshness_policy=STUDY_FRESHNESS, deps=list(deps))
            for name, spec in tables_of(asset).items()]


def check_columns(name: str, frame: pd.DataFrame) -> None:
    expected = list(CATALOG[name].columns)
    if [str(c) for c in frame.columns] != expected:
        raise CatalogMismatch(f"table {name}: columns {list(frame.columns)} differ from its catalog entry {expected} "
                              "(analytics/catalog.py documents every published column)")


def write_tables(wh: Warehouse, run_id: str, study: StudyResource, tables: Mapping[str, pd.DataFrame],
                 parameters: dict[str, Any]) -> None:
    for name, frame in tables.items():
        check_columns(name, frame)
    for name, frame in tables.items():
        wh.replace_table(name, frame, list(CATALOG[name].key) or None)
    record_provenance(wh, run_id, study, list(tables), parameters)
    refresh_views(wh, set(tables) | {"provenance"})


def table_result(name: str, frame: pd.DataFrame, *, preview: bool = True, preview_rows: int = 10,
                 extra: dict[str, Any] | None = None) -> dg.MaterializeResult:
    """The table's UI metadata: row count, column schema with the catalog's meanings, a preview (pseudonymised
    tables only), and anything the asset adds."""
    meta = table_metadata(frame, preview=preview, descriptions=CATALOG[name].columns, preview_rows=preview_rows)
    return dg.MaterializeResult(asset_key=name, metadata={**meta, **(extra or {})})


def save_figure(study: StudyResource, filename: str, png: bytes) -> Path:
    path = Path(study.figures_directory()) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return path


def image_markdown(png: bytes, alt: str) -> str:
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"
