"""The benchmarks read a step's timings from Dagster's own event log: when it started, when its last asset was
materialized (its blocking checks follow) and when it ended, to the sub-second."""
from __future__ import annotations

import time
from pathlib import Path

import dagster as dg

from benchmarks.hospital import steps_of_last_run

CHECKS_TAKE_S = 0.3


@dg.multi_asset(specs=[dg.AssetSpec("raw_a"), dg.AssetSpec("raw_b")],
                check_specs=[dg.AssetCheckSpec("a_ok", asset="raw_a", blocking=True)])
def load_then_check():
    yield dg.MaterializeResult(asset_key="raw_a")
    yield dg.MaterializeResult(asset_key="raw_b")
    time.sleep(CHECKS_TAKE_S)  # the checks
    yield dg.AssetCheckResult(asset_key="raw_a", check_name="a_ok", passed=True)


def materialized_in(home: Path, asset: dg.AssetsDefinition) -> bool:
    """Materialize ``asset`` in a Dagster instance of its own at ``home``, as the benchmarks' runs are."""
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        return dg.materialize([asset], instance=instance).success
    finally:
        instance.dispose()


def test_a_step_splits_into_its_load_and_its_checks_at_its_last_materialization(tmp_path):
    assert materialized_in(tmp_path, load_then_check)

    [step] = steps_of_last_run(tmp_path)

    assert (step.key, step.status, step.tables, step.retried) == ("load_then_check", "success", ["raw_a", "raw_b"], False)
    assert step.materialized is not None
    assert step.start <= step.materialized <= step.end
    assert CHECKS_TAKE_S <= step.end - step.materialized < CHECKS_TAKE_S + 5


ATTEMPTS: list[int] = []


@dg.asset
def flaky():
    ATTEMPTS.append(1)
    if len(ATTEMPTS) == 1:
        raise dg.RetryRequested(max_retries=1, seconds_to_wait=0)


def test_a_step_that_ran_twice_says_so(tmp_path):
    assert materialized_in(tmp_path, flaky)

    [step] = steps_of_last_run(tmp_path)

    assert len(ATTEMPTS) == 2 and step.status == "success" and step.retried
