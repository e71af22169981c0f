"""Great Expectations suites run as Dagster asset checks (a thin adapter: dagster-ge requires GX < 1.0).

A failed ``critical`` expectation makes the check fail with ERROR severity, which blocks the assets
downstream; ``warning`` expectations fail with WARN and do not block.
"""
from typing import Any, Iterable, Iterator

import dagster as dg

from expectations import suites
from expectations.runner import SuiteOutcome, run_suite, run_suite_batches


def check_result(outcome: SuiteOutcome) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=not outcome.failures,
        severity=dg.AssetCheckSeverity.ERROR if outcome.blocking else dg.AssetCheckSeverity.WARN,
        metadata={"expectations_evaluated": outcome.evaluated,
                  "expectations_failed": len(outcome.failures),
                  "failing_rows": sum(f.unexpected_count for f in outcome.failures),
                  "failures": dg.MetadataValue.md(outcome.as_markdown())},
    )


def run_check(name: str, suite: suites.Suite) -> dg.AssetCheckResult:
    return check_result(run_suite(name, suite.frame, suite.expectations, suite.key_columns))


def outcome_of_batches(name: str, batches: Iterable[suites.Suite]) -> SuiteOutcome:
    """One suite over a table validated batch by batch: the suite built on the first batch is the suite of all."""
    stream: Iterator[suites.Suite] = iter(batches)
    first = next(stream)

    def frames() -> Iterator[Any]:
        yield first.frame
        for suite in stream:
            yield suite.frame

    return run_suite_batches(name, frames(), first.expectations, first.key_columns)
