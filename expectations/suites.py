"""The data-quality gates of the warehouse tables, as Great Expectations suites written in code.

Each suite is a function of the table (and, for raw tables, the concept map) returning the frame
to validate, its expectations and the key columns that identify failing rows. ``critical``
expectations block downstream assets; ``warning`` ones are shown but do not block.
Where GX has no built-in expectation for a rule (attrition arithmetic, unit conversion), the
rule is computed as an explicit column here and that column is expected, so the failing rows
still show.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pandas as pd

from analytics.cohort.concepts import ConceptMap
from analytics.cohort.prospective import VISITS
from etl.fhir.flatten import has_quantity_value

from .runner import CRITICAL, WARNING

SEXES = ["male", "female", "other", "unknown"]


@dataclass(frozen=True)
class Suite:
    frame: pd.DataFrame
    expectations: list[Any]
    key_columns: tuple[str, ...]


def _gx() -> Any:
    import great_expectations as gx

    return gx.expectations


def _binary(e: Any, *columns: str) -> list[Any]:
    return [e.ExpectColumnValuesToBeInSet(column=c, value_set=[0, 1], severity=CRITICAL) for c in columns]


def cohort(frame: pd.DataFrame, window: tuple[str, str], followup_days: int = 365) -> Suite:
    e = _gx()
    frame = frame.assign(index_date=pd.to_datetime(frame["index_date"]))  # GX compares datetimes, not ISO strings
    ex = [
        e.ExpectColumnValuesToBeUnique(column="patient_key", severity=CRITICAL),
        e.ExpectColumnValuesToNotBeNull(column="patient_key", severity=CRITICAL),
        e.ExpectColumnValuesToNotBeNull(column="group", severity=CRITICAL),
        e.ExpectColumnValuesToBeInSet(column="group", value_set=["tacrolimus", "conventional"], severity=CRITICAL),
        e.ExpectColumnValuesToBeInSet(column="conventional_agent", value_set=["CTX", "MTX", "AZA", "MMF", "CsA"],
                                      severity=CRITICAL),
        e.ExpectColumnValuesToNotBeNull(column="index_date", severity=CRITICAL),
        e.ExpectColumnValuesToBeBetween(column="index_date", min_value=pd.Timestamp(window[0]).to_pydatetime(),
                                        max_value=pd.Timestamp(window[1]).to_pydatetime(), severity=CRITICAL),
        e.ExpectColumnValuesToBeBetween(column="age", min_value=18, max_value=120, severity=CRITICAL),
        e.ExpectColumnValuesToBeInSet(column="sex", value_set=SEXES, severity=CRITICAL),
        e.ExpectColumnValuesToBeInSet(column="diagnosis_subset", value_set=["CADM", "ASS", "DM", "PM"], severity=CRITICAL),
        e.ExpectColumnValuesToBeBetween(column="initial_pred_mg_day", min_value=0, severity=CRITICAL),
        e.ExpectColumnValuesToBeBetween(column="initial_pred_mg_day", max_value=2000, severity=WARNING),
        e.ExpectColumnValuesToBeBetween(column="followup_days", min_value=0, max_value=followup_days, severity=CRITICAL),
        *_binary(e, "plasma_exchange", "ivig", "death_event", "relapse_event", "resp_relapse_event"),
    ]
    for outcome in ("death", "relapse", "resp_relapse"):
        ex.append(e.ExpectColumnValuesToBeBetween(column=f"{outcome}_days", min_value=0, max_value=followup_days,
                                                  severity=CRITICAL))
        ex.append(e.ExpectColumnPairValuesAToBeGreaterThanB(column_A="followup_days", column_B=f"{outcome}_days",
                                                            or_equal=True, severity=CRITICAL))
    # A conventional patient names the agent started at index; a tacrolimus patient names none.
    agent_consistent = (frame["group"] == "conventional") == frame["conventional_agent"].notna()
    frame = frame.assign(agent_matches_group=agent_consistent.astype(int))
    ex.append(e.ExpectColumnValuesToBeInSet(column="agent_matches_group", value_set=[1], severity=CRITICAL))
    return Suite(frame, ex, ("patient_key",))


def prospective_cohort(frame: pd.DataFrame, low_high: tuple[float, float] = (600, 900)) -> Suite:
    e = _gx()
    frame = frame.assign(pirfenidone_matches_group=((frame["group"] == "combination")
                                                    == frame["pirfenidone_mg_day"].notna()).astype(int))
    ex = [
        e.ExpectColumnValuesToBeUnique(column="patient_key", severity=CRITICAL),
        e.ExpectColumnValuesToBeInSet(column="group", value_set=["combination", "tacrolimus"], severity=CRITICAL),
        e.ExpectColumnValuesToNotBeNull(column="index_date", severity=CRITICAL),
        e.ExpectColumnValuesToNotBeNull(column="enrolment_date", severity=CRITICAL),
        e.ExpectColumnValuesToBeBetween(column="pirfenidone_mg_day", min_value=low_high[0], max_value=low_high[1],
                                        severity=CRITICAL),
        e.ExpectColumnValuesToBeInSet(column="pirfenidone_matches_group", value_set=[1], severity=CRITICAL),
        e.ExpectColumnValuesToBeBetween(column="followup_days", min_value=0, max_value=365, severity=CRITICAL),
        e.ExpectColumnValuesToBeInSet(column="sex", value_set=SEXES, severity=CRITICAL),
        *_binary(e, "death_event", "relapse_event", "resp_relapse_event", "hrct_analysable"),
    ]
    return Suite(frame, ex, ("patient_key",))


def prospective_visits(frame: pd.DataFrame) -> Suite:
    e = _gx()
    windows = VISITS  # month -> (first day, last day, nominal day): the cohort rule's own table
    in_window = [windows[m][0] <= d <= windows[m][1] if m in windows else False
                 for m, d in zip(frame["visit_month"], frame["day"], strict=True)]
    frame = frame.assign(day_in_visit_window=pd.Series(in_window, index=frame.index, dtype=int))
    ex = [
        e.ExpectCompoundColumnsToBeUnique(column_list=["patient_key", "measure", "visit_month"], severity=CRITICAL),
        e.ExpectColumnValuesToBeInSet(column="visit_month", value_set=list(windows), severity=CRITICAL),
        e.ExpectColumnValuesToBeInSet(column="day_in_visit_window", value_set=[1], severity=CRITICAL),
        e.ExpectColumnValuesToBeBetween(column="value", min_value=0, severity=CRITICAL),
    ]
    return Suite(frame, ex, ("patient_key", "measure", "visit_month"))


def cohort_attrition(frame: pd.DataFrame) -> Suite:
    """Each step's remaining count is the previous one minus its exclusions, per cohort."""
    e = _gx()
    frame = frame.sort_values(["cohort", "step"]).copy()
    start = frame.groupby("cohort")["n_remaining"].transform("first")
    frame["n_remaining_expected"] = start - frame.groupby("cohort")["n_excluded"].cumsum()
    ex = [
        e.ExpectColumnValuesToBeBetween(column="n_excluded", min_value=0, severity=CRITICAL),
        e.ExpectColumnValuesToBeBetween(column="n_remaining", min_value=0, severity=CRITICAL),
        e.ExpectColumnPairValuesToBeEqual(column_A="n_remaining", column_B="n_remaining_expected", severity=CRITICAL),
        e.ExpectCompoundColumnsToBeUnique(column_list=["cohort", "step"], severity=CRITICAL),
    ]
    return Suite(frame, ex, ("cohort", "step", "reason"))


def safety_events(frame: pd.DataFrame, categories: list[str]) -> Suite:
    """``categories``: the concept map's adverse-event categories (a hospital may add its own)."""
    e = _gx()
    ex = [
        e.ExpectColumnValuesToBeInSet(column="category", value_set=categories, severity=CRITICAL),
        e.ExpectColumnValuesToBeBetween(column="day", min_value=0, max_value=365, severity=CRITICAL),
        *_binary(e, "serious"),
        e.ExpectColumnValuesToNotBeNull(column="event_number", severity=CRITICAL),
        e.ExpectColumnValuesToBeBetween(column="event_number", min_value=1, severity=CRITICAL),
        e.ExpectCompoundColumnsToBeUnique(column_list=["patient_key", "cohort", "event_number", "category"], severity=CRITICAL),
    ]
    return Suite(frame, ex, ("patient_key", "cohort", "event_number", "day"))


def iptw_weights(frame: pd.DataFrame) -> Suite:
    e = _gx()
    ex = [
        e.ExpectCompoundColumnsToBeUnique(column_list=["patient_key", "analysis"], severity=CRITICAL),
        e.ExpectColumnValuesToBeBetween(column="propensity_score", min_value=0, max_value=1, strict_min=True,
                                        strict_max=True, severity=CRITICAL),
        e.ExpectColumnValuesToBeBetween(column="weight", min_value=1, severity=CRITICAL),
        # Extreme weights make the estimate rest on a few patients (overlap problems): shown, not blocking.
        e.ExpectColumnValuesToBeBetween(column="weight", max_value=50, severity=WARNING),
    ]
    return Suite(frame, ex, ("patient_key",))


def effect_estimates(frame: pd.DataFrame) -> Suite:
    e = _gx()
    ex = [
        e.ExpectCompoundColumnsToBeUnique(column_list=["analysis", "comparison", "outcome"], severity=CRITICAL),
        e.ExpectColumnValuesToBeBetween(column="hazard_ratio", min_value=0, strict_min=True, severity=CRITICAL),
        e.ExpectColumnPairValuesAToBeGreaterThanB(column_A="hazard_ratio", column_B="ci_lower", or_equal=True,
                                                  ignore_row_if="either_value_is_missing", severity=CRITICAL),
        e.ExpectColumnPairValuesAToBeGreaterThanB(column_A="ci_upper", column_B="hazard_ratio", or_equal=True,
                                                  ignore_row_if="either_value_is_missing", severity=CRITICAL),
        e.ExpectColumnValuesToBeBetween(column="p_value", min_value=0, max_value=1, severity=CRITICAL),
        e.ExpectColumnValuesToBeInSet(column="outcome", value_set=["death", "relapse", "resp_relapse"], severity=CRITICAL),
    ]
    return Suite(frame, ex, ("analysis", "comparison", "outcome"))


def probabilities(frame: pd.DataFrame, columns: list[str], keys: tuple[str, ...]) -> Suite:
    """Result tables of tests: every p-value (and percentage) within its range."""
    e = _gx()
    ex = [e.ExpectColumnValuesToBeBetween(column=c, min_value=0, max_value=1, severity=CRITICAL) for c in columns]
    if "percent" in frame.columns:
        ex.append(e.ExpectColumnValuesToBeBetween(column="percent", min_value=0, max_value=100, severity=CRITICAL))
    return Suite(frame, ex, keys)


# -- raw tables (flattened: code sets and values that fhir.resources does not enforce) -------------
# Failing raw rows are named by patient only (no resource id), and the check replaces ``patient_id`` by the
# patient's pseudonym first: check metadata lands in Dagster's event log, which every engineer reads.
RAW_KEYS = ("patient_id",)

def raw_patient(frame: pd.DataFrame, concepts: ConceptMap) -> Suite:
    e = _gx()
    ex = [e.ExpectColumnValuesToBeUnique(column="patient_id", severity=CRITICAL),
          e.ExpectColumnValuesToBeInSet(column="gender", value_set=SEXES, severity=CRITICAL)]
    return Suite(frame, ex, RAW_KEYS)


def raw_medicationstatement(frame: pd.DataFrame, concepts: ConceptMap) -> Suite:
    e = _gx()
    mapped = concepts.annotate("medications", frame)
    ex = [
        e.ExpectColumnValuesToNotBeNull(column="patient_id", severity=CRITICAL),
        e.ExpectColumnValuesToBeBetween(column="dose_value", min_value=0, severity=CRITICAL),
        e.ExpectColumnValuesToBeInSet(column="dose_unit", value_set=["mg", "g", "ug", "mcg"], severity=WARNING),
        e.ExpectColumnValuesToNotBeNull(column="start", severity=WARNING),
    ]
    return Suite(mapped, ex, RAW_KEYS)


def raw_observation(frame: pd.DataFrame, concepts: ConceptMap) -> Suite:
    """Quantities of study concepts must be in a unit the concept map converts to canonical."""
    e = _gx()
    mapped = concepts.annotate("observations", frame)
    quantities = mapped[mapped["value_quantity"].notna() & mapped["concept"].isin(list(concepts.units))]
    convertible = [unit in concepts.units[c].convert for c, unit in zip(quantities["concept"], quantities["value_unit"], strict=True)]
    quantities = quantities.assign(unit_convertible=pd.Series(convertible, index=quantities.index, dtype=int))
    ex = [e.ExpectColumnValuesToBeInSet(column="unit_convertible", value_set=[1], severity=WARNING),
          e.ExpectColumnValuesToNotBeNull(column="patient_id", severity=CRITICAL)]
    return Suite(quantities, ex, (*RAW_KEYS, "concept", "value_unit"))


def raw_condition(frame: pd.DataFrame, concepts: ConceptMap) -> Suite:
    e = _gx()
    ex = [e.ExpectColumnValuesToNotBeNull(column="patient_id", severity=CRITICAL),
          e.ExpectColumnValuesToNotBeNull(column="date", severity=WARNING)]
    return Suite(frame, ex, RAW_KEYS)


RAW_SUITES: dict[str, Callable[[pd.DataFrame, ConceptMap], Suite]] = {
    "Patient": raw_patient, "MedicationStatement": raw_medicationstatement, "Observation": raw_observation,
    "Condition": raw_condition,
}
# The resources whose rows a raw suite can look at, where that is fewer than all: the check flattens only these
# (most of a hospital's Observations are not quantities). A type absent here gives its suite every resource.
RAW_RESOURCES: dict[str, Callable[[dict[str, Any]], bool]] = {"Observation": has_quantity_value}


@dataclass(frozen=True)
class SuiteSettings:
    """What a study table's suite needs beyond the table: the study window and the concept map's AE categories."""
    window: tuple[str, str]
    categories: list[str]


# The suite of each study table that has one (its promise, in words, is the table's ``check`` in analytics.catalog).
TABLE_SUITES: dict[str, Callable[[pd.DataFrame, SuiteSettings], Suite]] = {
    "cohort": lambda f, s: cohort(f, s.window),
    "cohort_attrition": lambda f, _: cohort_attrition(f),
    "prospective_cohort": lambda f, _: prospective_cohort(f),
    "prospective_visits": lambda f, _: prospective_visits(f),
    "safety_events": lambda f, s: safety_events(f, s.categories),
    "iptw_weights": lambda f, _: iptw_weights(f),
    "effect_estimates": lambda f, _: effect_estimates(f),
    "scale_changes": lambda f, _: probabilities(f, ["p_vs_baseline", "p_adjusted", "p_between_groups"],
                                                ("scale", "group", "visit_month")),
    "hrct_changes": lambda f, _: probabilities(f, ["p_within", "p_between_delta"], ("measure", "group")),
    "safety_summary": lambda f, _: probabilities(f, ["p_value"], ("cohort", "group", "category")),
}
