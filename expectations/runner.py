"""Run a Great Expectations 1.x suite on a DataFrame and report what failed, row by row.

dagster-ge requires GX < 1.0, so this is the thin adapter the project needs: an ephemeral GX
context per process, one pandas data asset per table, and results reduced to plain data that
the Dagster checks turn into metadata. GX is imported lazily: it takes ~3 s to import.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterable, Sequence

import pandas as pd

from .screen import UNIQUE, suspects

CRITICAL, WARNING = "critical", "warning"


@dataclass(frozen=True)
class Failure:
    expectation: str
    column: str
    severity: str
    unexpected_count: int
    examples: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class SuiteOutcome:
    suite: str
    evaluated: int
    failures: list[Failure]

    @property
    def blocking(self) -> bool:
        return any(f.severity == CRITICAL for f in self.failures)

    def as_markdown(self) -> str:
        if not self.failures:
            return f"All {self.evaluated} expectations of `{self.suite}` passed."
        lines = ["| severity | expectation | column | failing rows | examples |", "|---|---|---|---|---|"]
        for f in self.failures:
            examples = "; ".join(", ".join(f"{k}={v}" for k, v in e.items()) for e in f.examples[:5])
            lines.append(f"| {f.severity} | {f.expectation} | {f.column} | {f.unexpected_count} | {examples} |")
        return "\n".join(lines)


@lru_cache(maxsize=1)
def _context() -> Any:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    context.data_sources.add_pandas(name="warehouse")
    return context


def run_suite(name: str, frame: pd.DataFrame, expectations: Sequence[Any], key_columns: Sequence[str] = ()) -> SuiteOutcome:
    """Validate ``frame`` against ``expectations`` (GX Expectation objects, severity set on each)."""
    return _validate(name, [frame], expectations, key_columns)


def run_suite_batches(name: str, frames: Iterable[pd.DataFrame], expectations: Sequence[Any],
                      key_columns: Sequence[str] = ()) -> SuiteOutcome:
    """Validate a table that arrives in batches (a raw table of millions of rows) as if it were one frame.

    Every batch is validated by the same GX suite and the results are added up: row-wise expectations
    (values in a set, between bounds, not null, pair comparisons) give the same failing rows either way.
    A column's uniqueness spans batches, so values are also compared with earlier batches' (held as a set of
    that column's values only); a compound-uniqueness expectation cannot be split and is refused.

    GX sees only the rows of a batch that might fail (``expectations.screen``), and a batch with none is not
    given to GX at all (the first always is: its results name the suite's expectations): the outcome is the
    same, failing rows, examples and their order included."""
    for expectation in expectations:
        if _kind(expectation) in ROW_SETS:
            raise ValueError(f"{_kind(expectation)} cannot be evaluated batch by batch; validate the whole frame")
    return _validate(name, frames, expectations, key_columns, screened=True)


def _validate(name: str, frames: Iterable[pd.DataFrame], expectations: Sequence[Any], key_columns: Sequence[str],
              screened: bool = False) -> SuiteOutcome:
    validation = _validation(name, expectations)
    totals: list[_Total] | None = None
    unique = _CrossBatchUnique()
    for frame in frames:
        keys = [k for k in key_columns if k in frame.columns]
        checked = suspects(frame, expectations) if screened else frame
        if totals is not None and checked.empty:
            # Nothing in this batch can fail: GX would report every expectation met. Uniqueness still looks back.
            for total in totals:
                column = total.config.kwargs.get("column")
                if total.config.type == UNIQUE and column in frame.columns:
                    unique.add(total, frame, column, keys)
            continue
        result_format: dict[str, Any] = {"result_format": "COMPLETE"}
        if keys:
            result_format["unexpected_index_column_names"] = keys
        result = validation.run(batch_parameters={"dataframe": checked}, result_format=result_format)
        if totals is None:
            totals = [_Total(r.expectation_config) for r in result.results]
        for total, r in zip(totals, result.results, strict=True):
            total.add(r)
            column = r.expectation_config.kwargs.get("column")
            if r.expectation_config.type == UNIQUE and column in frame.columns and not _exception_message(r.exception_info):
                unique.add(total, frame, column, keys)
    failures = [t.failure() for t in totals or [] if not t.success]
    return SuiteOutcome(suite=name, evaluated=len(totals or []), failures=failures)


ROW_SETS = {"expect_compound_columns_to_be_unique"}  # a verdict over all rows together, not batch by batch
MAX_EXAMPLES = 20


def _kind(expectation: Any) -> str:
    return str(expectation.expectation_type)


def _validation(name: str, expectations: Sequence[Any]) -> Any:
    """One GX validation definition per suite, re-run on each batch (GX is imported, and its context built, once)."""
    import great_expectations as gx

    context = _context()
    source = context.data_sources.get("warehouse")
    asset_name = f"{name}_{len(source.assets)}"
    batch = source.add_dataframe_asset(name=asset_name).add_batch_definition_whole_dataframe("whole")
    suite = context.suites.add(gx.ExpectationSuite(name=asset_name))
    for expectation in expectations:
        suite.add_expectation(expectation)
    return context.validation_definitions.add(gx.ValidationDefinition(name=asset_name, data=batch, suite=suite))


class _Total:
    """One expectation's result added up over the batches."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.success = True
        self.unexpected_count = 0
        self.examples: list[dict[str, Any]] = []
        self.error: str | None = None

    def add(self, r: Any) -> None:
        self.success = self.success and bool(r.success)
        self.unexpected_count += int(r.result.get("unexpected_count") or 0)
        error = _exception_message(r.exception_info)
        if error and self.error is None:
            self.error = error
        examples = r.result.get("unexpected_index_list") or [{"value": v} for v in r.result.get("partial_unexpected_list") or []]
        self.add_examples(examples)

    def add_examples(self, examples: Sequence[dict[str, Any]]) -> None:
        room = MAX_EXAMPLES - len(self.examples)
        self.examples += [{k: _plain(v) for k, v in e.items()} for e in examples[:max(room, 0)]]

    def failure(self) -> Failure:
        kwargs = self.config.kwargs
        column = kwargs.get("column") or ",".join(str(v) for k, v in kwargs.items() if k.startswith("column"))
        return Failure(expectation=self.config.type, column=column, severity=_severity(self.config),
                       unexpected_count=self.unexpected_count,
                       examples=[{"error": self.error}] if self.error else self.examples)


class _CrossBatchUnique:
    """Duplicates of a column's values across batches (GX sees duplicates within a batch).

    GX counts every row of a duplicated value; so does this: a value met again in a later batch adds that
    batch's rows (unless GX counted them already, being duplicates there too) and, once, its earlier lone row."""

    def __init__(self) -> None:
        self.seen: dict[tuple[int, str], dict[Any, bool]] = {}  # (expectation, column) -> value -> all its rows counted

    def add(self, total: _Total, frame: pd.DataFrame, column: str, keys: Sequence[str]) -> None:
        seen = self.seen.setdefault((id(total), column), {})
        values = frame[column].dropna()
        counts = values.value_counts(sort=False)
        again = [v for v in counts.index if v in seen]
        extra = 0
        for v in again:
            if not seen[v]:
                extra += 1  # the earlier batch's lone row: a duplicate after all
                if list(keys) == [column]:
                    total.add_examples([{column: v}])
            if counts[v] == 1:
                extra += 1  # this batch's lone row: GX did not count it
        if again:
            rows = frame.loc[values.index[values.isin(again)]]
            lone = rows[rows[column].map(counts) == 1]
            total.add_examples(lone[list(keys)].to_dict("records") if keys else [{"value": v} for v in lone[column]])
        for v, n in counts.items():
            seen[v] = v in again or n > 1
        if extra:
            total.success = False
            total.unexpected_count += extra


def _exception_message(info: Any) -> str | None:
    """GX reports an expectation that could not be evaluated as a failure with no failing rows; say why."""
    if not isinstance(info, dict):
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    messages = [str(v.get("exception_message")) for v in info.values() if isinstance(v, dict) and v.get("raised_exception")]
    return "; ".join(messages) or None


def _severity(config: Any) -> str:
    severity = getattr(config, "severity", None)
    return str(getattr(severity, "value", severity) or CRITICAL)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
