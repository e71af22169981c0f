"""Run a Great Expectations 1.x suite on a DataFrame and report what failed, row by row.

dagster-ge requires GX < 1.0, so this is the thin adapter the project needs: an ephemeral GX
context per process, one pandas data asset per table, and results reduced to plain data that
the Dagster checks turn into metadata. GX is imported lazily: it takes ~3 s to import.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Sequence

import pandas as pd

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
    import great_expectations as gx

    context = _context()
    source = context.data_sources.get("warehouse")
    asset_name = f"{name}_{len(source.assets)}"
    batch = source.add_dataframe_asset(name=asset_name).add_batch_definition_whole_dataframe("whole")
    suite = context.suites.add(gx.ExpectationSuite(name=asset_name))
    for expectation in expectations:
        suite.add_expectation(expectation)
    result_format: dict[str, Any] = {"result_format": "COMPLETE"}
    keys = [k for k in key_columns if k in frame.columns]
    if keys:
        result_format["unexpected_index_column_names"] = keys
    validation = context.validation_definitions.add(gx.ValidationDefinition(name=asset_name, data=batch, suite=suite))
    result = validation.run(batch_parameters={"dataframe": frame}, result_format=result_format)
    failures = []
    for r in result.results:
        if r.success:
            continue
        config = r.expectation_config
        kwargs = config.kwargs
        column = kwargs.get("column") or ",".join(str(v) for k, v in kwargs.items() if k.startswith("column"))
        examples = r.result.get("unexpected_index_list") or [{"value": v} for v in r.result.get("partial_unexpected_list") or []]
        error = _exception_message(r.exception_info)
        if error:
            examples = [{"error": error}]
        failures.append(Failure(expectation=config.type, column=column, severity=_severity(config),
                                unexpected_count=int(r.result.get("unexpected_count") or 0),
                                examples=[{k: _plain(v) for k, v in e.items()} for e in examples[:20]]))
    return SuiteOutcome(suite=name, evaluated=len(result.results), failures=failures)


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
