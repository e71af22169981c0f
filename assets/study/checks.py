"""The blocking expectation check of every study table that has a suite (``expectations.suites.TABLE_SUITES``);
what each promises is written once, in the table's catalog entry."""
import dagster as dg

from analytics.catalog import CATALOG
from expectations.suites import TABLE_SUITES, SuiteSettings

from ..gx import run_check
from ..resources import StudyResource, WarehouseResource


def _table_check(table: str) -> dg.AssetChecksDefinition:
    build = TABLE_SUITES[table]

    @dg.asset_check(asset=table, name=f"{table}_expectations", blocking=True, description=CATALOG[table].check)
    def _check(warehouse: WarehouseResource, study: StudyResource) -> dg.AssetCheckResult:
        settings = SuiteSettings((study.window_start, study.window_end),
                                 list(study.concepts().domains["adverse_event_categories"]))
        return run_check(table, build(warehouse.get().read_table(table), settings))

    return _check


table_checks = {table: _table_check(table) for table in TABLE_SUITES}
