"""The hospital-to-tables path the invariance suite runs: flatten, facts, every cohort table."""
from __future__ import annotations

from datetime import date

import pandas as pd

from analytics.cohort.concepts import load_concept_map
from analytics.cohort.facts import build_facts
from analytics.cohort.params import RuleParams
from analytics.cohort.tables import derive_cohort_tables
from etl.fhir.types import flatten_all
from synthetic.hospital import HospitalParams
from synthetic.variants import SERVER_BASE

# Small enough for CI, yet every attrition reason, edge case and both prospective groups occur.
SMALL = HospitalParams(n_retrospective=70, n_prospective_enrolled=12, n_noise=30, attrition_per_reason=1)
CUTOFF = date(2026, 1, 1)


def cohort_tables(resources: list[dict], patient_ids: dict[str, str] | None = None) -> dict[str, pd.DataFrame]:
    """Every derived table, rows in a canonical order, FHIR patient ids mapped back through ``patient_ids``."""
    by_type: dict[str, list[dict]] = {}
    for r in resources:
        by_type.setdefault(r["resourceType"], []).append(r)
    facts = build_facts(flatten_all(by_type, base=SERVER_BASE), load_concept_map())
    tables = derive_cohort_tables(facts, RuleParams(data_cutoff=CUTOFF)).tables
    return {name: canonical(frame, patient_ids) for name, frame in tables.items()}


def canonical(frame: pd.DataFrame, patient_ids: dict[str, str] | None = None) -> pd.DataFrame:
    """Row order carries no meaning in a warehouse table: sort by every column's text."""
    if patient_ids and "patient_id" in frame.columns:
        frame = frame.assign(patient_id=frame["patient_id"].map(lambda p: patient_ids.get(p, p)))
    order = sorted(range(len(frame)), key=lambda i: tuple(str(v) for v in frame.iloc[i]))
    return frame.iloc[order].reset_index(drop=True)


def differences(expected: dict[str, pd.DataFrame], got: dict[str, pd.DataFrame]) -> dict[str, str]:
    """Per table, why ``got`` is not ``expected`` (floats equal to 1e-12 relative); empty when all are equal."""
    out = {}
    for name, frame in expected.items():
        try:
            pd.testing.assert_frame_equal(frame, got[name], check_exact=False, rtol=1e-12, check_dtype=False)
        except AssertionError as exc:
            out[name] = str(exc).splitlines()[0] + f" ({len(frame)} rows expected, {len(got[name])} got)"
    return out
