"""The blocking expectation check of every study table that has a suite (``expectations.suites.TABLE_SUITES``),
evaluated in the step of the asset that writes the table (its promise, in words, is the table's ``check`` in
``analytics.catalog``). One step per check cost a fresh process importing Dagster and Great Expectations."""
import dagster as dg

from analytics.catalog import tables_of
from etl.warehouse import Warehouse
from expectations.suites import TABLE_SUITES, SuiteSettings

from ..gx import run_check
from ..resources import StudyResource


def check_name(table: str) -> str:
    return f"{table}_expectations"


def asset_check_specs(asset: str) -> list[dg.AssetCheckSpec]:
    """The blocking checks of one multi-asset's tables, from the catalog."""
    return [dg.AssetCheckSpec(check_name(name), asset=name, blocking=True, description=spec.check)
            for name, spec in tables_of(asset).items() if spec.check]


def table_expectations(table: str, wh: Warehouse, study: StudyResource) -> dg.AssetCheckResult:
    """The table's suite on what the warehouse now holds (read back, as analysts will read it)."""
    settings = SuiteSettings((study.window_start, study.window_end), list(study.concepts().domains["adverse_event_categories"]))
    return run_check(table, TABLE_SUITES[table](wh.read_table(table), settings))


def table_check_results(context: dg.AssetExecutionContext, wh: Warehouse, study: StudyResource):
    for key in sorted(context.selected_asset_check_keys, key=lambda k: k.name):
        result = table_expectations(key.asset_key.to_user_string(), wh, study)
        yield dg.AssetCheckResult(asset_key=key.asset_key, check_name=key.name, passed=result.passed,
                                  severity=result.severity, metadata=result.metadata, description=result.description)
