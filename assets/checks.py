"""Great Expectations gates as Dagster asset checks.

A failed ``critical`` expectation makes the check fail with ERROR severity, which blocks the
assets downstream; ``warning`` expectations fail with WARN and do not block. The failing rows
(by key) are in the check's metadata.
"""
import dagster as dg

from etl.flatten import FLATTENERS
from expectations import suites
from expectations.runner import SuiteOutcome, run_suite

from .raw import raw_asset_key
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


@dg.asset_check(asset="cohort", blocking=True, description="Unique keys, allowed values, every patient with a group "
                "and an index date in the window, age ≥ 18, event days within 0 … follow-up ≤ 365, non-negative doses.")
def cohort_expectations(warehouse: WarehouseResource, study: StudyResource) -> dg.AssetCheckResult:
    frame = warehouse.get().read_table("cohort")
    return _run("cohort", suites.cohort(frame, (study.window_start, study.window_end)))


@dg.asset_check(asset="cohort_attrition", blocking=True, description="Attrition counts add up step by step, per cohort.")
def cohort_attrition_expectations(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    return _run("cohort_attrition", suites.cohort_attrition(warehouse.get().read_table("cohort_attrition")))


@dg.asset_check(asset="prospective_cohort", blocking=True,
                description="Groups consistent with the pirfenidone dose (600–900 mg/day), dates present, flags 0/1.")
def prospective_cohort_expectations(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    return _run("prospective_cohort", suites.prospective_cohort(warehouse.get().read_table("prospective_cohort")))


@dg.asset_check(asset="prospective_visits", blocking=True,
                description="One value per patient, measure and visit, taken inside that visit's window.")
def prospective_visits_expectations(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    return _run("prospective_visits", suites.prospective_visits(warehouse.get().read_table("prospective_visits")))


@dg.asset_check(asset="safety_events", blocking=True, description="Known categories, events within follow-up.")
def safety_events_expectations(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    return _run("safety_events", suites.safety_events(warehouse.get().read_table("safety_events")))


@dg.asset_check(asset="iptw_weights", blocking=True,
                description="Propensity scores strictly inside (0, 1), ATE weights ≥ 1; weights above 50 are flagged.")
def iptw_weights_expectations(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    return _run("iptw_weights", suites.iptw_weights(warehouse.get().read_table("iptw_weights")))


@dg.asset_check(asset="effect_estimates", blocking=True,
                description="One row per analysis, comparison and outcome; CI around the HR; p in [0, 1].")
def effect_estimates_expectations(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    return _run("effect_estimates", suites.effect_estimates(warehouse.get().read_table("effect_estimates")))


def _raw_check(resource_type: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=raw_asset_key(resource_type), name=f"raw_{resource_type.lower()}_expectations", blocking=True,
                    description=f"Code sets and values of {resource_type} that the FHIR model does not enforce.")
    def _check(warehouse: WarehouseResource, study: StudyResource) -> dg.AssetCheckResult:
        frame = FLATTENERS[resource_type](warehouse.get().raw_resources(resource_type))
        return _run(f"raw_{resource_type.lower()}", suites.RAW_SUITES[resource_type](frame, study.concepts()))

    return _check


all_checks = [cohort_expectations, cohort_attrition_expectations, prospective_cohort_expectations,
              prospective_visits_expectations, safety_events_expectations, iptw_weights_expectations,
              effect_estimates_expectations, *[_raw_check(t) for t in suites.RAW_SUITES]]
