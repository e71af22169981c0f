"""Metadata that makes a warehouse table legible in the Dagster UI: row count, column schema,
and a markdown preview (pseudonymised tables only: FHIR ids never reach the UI)."""
from __future__ import annotations

from typing import Any

import dagster as dg
import pandas as pd


def _sql_type(dtype: Any) -> str:
    if pd.api.types.is_bool_dtype(dtype):
        return "boolean"
    if pd.api.types.is_integer_dtype(dtype):
        return "integer"
    if pd.api.types.is_float_dtype(dtype):
        return "float"
    return "text"


def table_metadata(frame: pd.DataFrame, *, preview: bool, descriptions: dict[str, str] | None = None,
                   preview_rows: int = 10) -> dict[str, Any]:
    descriptions = descriptions or {}
    schema = dg.TableSchema(columns=[dg.TableColumn(name=str(c), type=_sql_type(frame[c].dtype),
                                                    description=descriptions.get(str(c))) for c in frame.columns])
    meta: dict[str, Any] = {"dagster/row_count": len(frame), "dagster/column_schema": schema}
    if preview and len(frame):
        meta["preview"] = dg.MetadataValue.md(frame.head(preview_rows).to_markdown(index=False, floatfmt=".4g"))
    return meta
