"""Great Expectations gates as Dagster asset checks.

A failed ``critical`` expectation makes the check fail with ERROR severity, which blocks the
assets downstream; ``warning`` expectations fail with WARN and do not block. The failing rows
(by key) are in the check's metadata.
"""
from typing import Callable

import dagster as dg
import pandas as pd

from etl.flatten import FLATTENERS
from etl.pseudonym import patient_key
from expectations import suites
from expectations.runner import SuiteOutcome, run_suite

from .raw import RESOURCE_TYPES, raw_asset_key
from .resources import StudyResource, WarehouseResource


def check_result(outcome: SuiteOutcome) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=not outcome.failures,
        severity=dg.AssetCheckSeverity.ERROR if outcome.blocking else dg.AssetCheckSeverity.WARN,
        metadata={"expectations_evaluated": outcome.evaluated,
                  "expectations_failed": len(outcome.failures),
                  "failing_rows": sum(f.unexpected_count for f in outcome.failures),
                  "failures": dg.MetadataValue.md(outcome.as_markdown())},
    )


def _run(name: str, suite: suites.Suite) -> dg.AssetCheckResult:
    return check_result(run_suite(name, suite.frame, suite.expectations, suite.key_columns))


# Table -> (suite built from the table and the study settings, what the check promises).
TABLE_SUITES: dict[str, tuple[Callable[[pd.DataFrame, StudyResource], suites.Suite], str]] = {
    "cohort": (lambda f, study: suites.cohort(f, (study.window_start, study.window_end)),
               "Unique keys, allowed values, every patient with a group and an index date in the window, age ≥ 18, "
               "event days within 0 … follow-up ≤ 365, non-negative doses."),
    "cohort_attrition": (lambda f, _: suites.cohort_attrition(f), "Attrition counts add up step by step, per cohort."),
    "prospective_cohort": (lambda f, _: suites.prospective_cohort(f),
                           "Groups consistent with the pirfenidone dose (600–900 mg/day), dates present, flags 0/1."),
    "prospective_visits": (lambda f, _: suites.prospective_visits(f),
                           "One value per patient, measure and visit, taken inside that visit's window."),
    "safety_events": (lambda f, study: suites.safety_events(f, list(study.concepts().domains["adverse_event_categories"])),
                      "Categories of the concept map, events within follow-up."),
    "iptw_weights": (lambda f, _: suites.iptw_weights(f),
                     "Propensity scores strictly inside (0, 1), ATE weights ≥ 1; weights above 50 are flagged."),
    "effect_estimates": (lambda f, _: suites.effect_estimates(f),
                         "One row per analysis, comparison and outcome; CI around the HR; p in [0, 1]."),
    "scale_changes": (lambda f, _: suites.probabilities(f, ["p_vs_baseline", "p_adjusted", "p_between_groups"],
                                                        ("scale", "group", "visit_month")), "p-values within [0, 1]."),
    "hrct_changes": (lambda f, _: suites.probabilities(f, ["p_within", "p_between_delta"], ("measure", "group")),
                     "p-values within [0, 1]."),
    "safety_summary": (lambda f, _: suites.probabilities(f, ["p_value"], ("cohort", "group", "category")),
                       "Percentages within 0-100, p-values within [0, 1]."),
}


def _table_check(table: str) -> dg.AssetChecksDefinition:
    build, description = TABLE_SUITES[table]

    @dg.asset_check(asset=table, name=f"{table}_expectations", blocking=True, description=description)
    def _check(warehouse: WarehouseResource, study: StudyResource) -> dg.AssetCheckResult:
        return _run(table, build(warehouse.get().read_table(table), study))

    return _check


def _raw_check(resource_type: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=raw_asset_key(resource_type), name=f"raw_{resource_type.lower()}_expectations", blocking=True,
                    description=f"Code sets and values of {resource_type} that the FHIR model does not enforce.")
    def _check(warehouse: WarehouseResource, study: StudyResource) -> dg.AssetCheckResult:
        frame = FLATTENERS[resource_type](warehouse.get().raw_resources(resource_type))
        # Dagster's event log is read by every engineer: failing rows are named by pseudonym, never by FHIR id
        # (patient_xref, a restricted table, maps a pseudonym back). GX quotes the checked column's values too,
        # so the id column itself is replaced; a missing subject stays missing.
        frame = frame.assign(patient_id=[patient_key(p, study.pseudonym_key) if isinstance(p, str) else None
                                         for p in frame["patient_id"]])
        return _run(f"raw_{resource_type.lower()}", suites.RAW_SUITES[resource_type](frame, study.concepts()))

    return _check


def _count_check(resource_type: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=raw_asset_key(resource_type), name=f"raw_{resource_type.lower()}_count_matches_server",
                    blocking=True, description=(f"The server's count of {resource_type} equals the warehouse's current "
                                                 f"rows plus the ids whose latest version is in quarantine."))
    def _check(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        wh = warehouse.get()
        counts = wh.counts(resource_type)
        if counts is None:
            return dg.AssetCheckResult(passed=False, description="no count recorded: the type was never pulled")
        expected = counts["server_count"]
        # The warehouse side is counted now, not taken from the pull's record: rows lost after the
        # pull (a manual delete, a restore from an old backup) must fail the check too.
        current, quarantined = wh.current_count(resource_type), wh.quarantined_current(resource_type)
        held = current + quarantined
        meta = {"server_count": expected if expected is not None else "unknown", "warehouse_count": current,
                "quarantined_current": quarantined, "scope": counts["scope"],
                "server_counted_at": str(counts["checked_at"])}
        if expected is None:
            return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN, metadata=meta,
                                       description="the server gave no count for this scope; nothing to compare")
        return dg.AssetCheckResult(passed=expected == held, metadata={**meta, "difference": held - expected},
                                   description=None if expected == held else
                                   f"server holds {expected}, warehouse accounts for {held}: run the reconciliation job "
                                   f"(full_refresh or reconcile) and read the ingestion logs")

    return _check


table_checks = {table: _table_check(table) for table in TABLE_SUITES}
all_checks = [*table_checks.values(), *[_raw_check(t) for t in suites.RAW_SUITES],
              *[_count_check(t) for t in RESOURCE_TYPES]]
