"""When the study tables are rebuilt: declaratively, once their inputs are newer and the inputs' blocking
checks have passed, so a new pull flows through to the published tables and a failed gate stops it."""
from __future__ import annotations

from datetime import timedelta

import dagster as dg

STUDY_AUTOMATION = dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()

# Nightly data: a study table older than a day and a half means a night was missed.
STUDY_FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=36), warn_window=timedelta(hours=26))
