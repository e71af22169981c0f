"""The contract's parameters (study-contract.md §2-3); every one is a setting."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date


@dataclass(frozen=True)
class RuleParams:
    """Windows and thresholds of the retrospective cohort and the rules both cohorts share."""

    window_start: date = date(2014, 1, 1)
    window_end: date = date(2020, 9, 30)
    data_cutoff: date = field(default_factory=date.today)
    followup_days: int = 365
    min_age: int = 18
    malignancy_days: int = 1095
    ild_lookback_days: int = 30
    gc_at_index_days: int = 30
    covariate_window_days: int = 30
    relapse_window_days: int = 14
    lab_fold: float = 2.0
    baseline_before_days: int = 30
    baseline_after_days: int = 7
    gc_increase_mg_per_kg: float = 0.5

