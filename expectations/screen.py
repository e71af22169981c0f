"""Which rows of a batch could fail a suite: a screen run in pandas before Great Expectations.

A GX validation run costs about as much per row as the rest of a raw check does, and a raw table's rows almost
all pass. So a batch is screened first, and GX validates only the rows that might fail one of its
expectations (the others cannot change a verdict, a count or an example: every screened expectation is
decided row by row). The screen may keep rows that pass; it never drops one that GX would fail. An expectation
it does not know, or one with settings that make the verdict depend on the other rows (``mostly``, a row
condition), keeps every row, and so does any error while screening: GX then sees the whole batch, as before.
"""
from __future__ import annotations

import operator
from numbers import Real
from typing import Any, Sequence

import numpy as np
import pandas as pd

NOT_NULL = "expect_column_values_to_not_be_null"
IN_SET = "expect_column_values_to_be_in_set"
BETWEEN = "expect_column_values_to_be_between"
UNIQUE = "expect_column_values_to_be_unique"
# The settings each kind may carry and still be screened; anything else keeps every row.
SCREENED = {NOT_NULL: {"column"}, IN_SET: {"column", "value_set"}, UNIQUE: {"column"},
            BETWEEN: {"column", "min_value", "max_value", "strict_min", "strict_max"}}


def suspects(frame: pd.DataFrame, expectations: Sequence[Any]) -> pd.DataFrame:
    """The rows of ``frame`` that might fail one of ``expectations``, in their order, with the frame's columns
    and column types (GX chooses how to compare by a column's type)."""
    keep = np.zeros(len(frame), dtype=bool)
    for expectation in expectations:
        try:
            rows = _might_fail(frame, expectation)
            if rows is None:
                return frame
            keep |= rows
        except Exception:  # noqa: BLE001 - a value the screen cannot judge goes to GX, which reports it
            return frame
    return frame[keep]


def _might_fail(frame: pd.DataFrame, expectation: Any) -> np.ndarray | None:
    """A mask over ``frame`` of the rows that could fail ``expectation``; None when every row could."""
    config = expectation.configuration
    kwargs = {k: v for k, v in config.kwargs.items() if v is not None}
    allowed = SCREENED.get(config.type)
    if allowed is None or not set(kwargs) <= allowed or getattr(expectation, "mostly", 1) != 1 \
            or getattr(expectation, "row_condition", None) or kwargs.get("column") not in frame.columns:
        return None
    column = frame[kwargs["column"]]
    if config.type == NOT_NULL:
        return column.isna().to_numpy()
    if config.type == IN_SET:
        return (~column.isin(kwargs["value_set"])).to_numpy()  # GX's own test; a missing value is kept, GX skips it
    if config.type == UNIQUE:
        return column.duplicated(keep=False).to_numpy()  # within the batch; across batches the runner compares
    low, high = kwargs.get("min_value", -np.inf), kwargs.get("max_value", np.inf)
    if not all(_number(b) for b in (low, high)):
        return None
    above = operator.gt if kwargs.get("strict_min") else operator.ge
    below = operator.lt if kwargs.get("strict_max") else operator.le
    # A value that is not a plain number (a string, a boolean, a missing value) goes to GX, which fails, skips or
    # rejects it; so does one outside the bounds as GX reads them (a strict bound is itself outside).
    if pd.api.types.is_float_dtype(column) or (pd.api.types.is_integer_dtype(column) and not pd.api.types.is_bool_dtype(column)):
        return (~(above(column, low) & below(column, high))).to_numpy(dtype=bool, na_value=True)
    return np.fromiter((not (_number(v) and above(v, low) and below(v, high)) for v in column), dtype=bool, count=len(column))


def _number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and not (isinstance(value, float) and np.isnan(value))
