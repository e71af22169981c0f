"""The cohort tables today equal those of the code before issue 16 rewrote the rules for scale.

tests/assets/test_cohort_chunks.py compares the chunked path with the whole-hospital path, but both share
today's rules; this compares today's rules with the old ones, on the synthetic hospitals of
tests/fixtures/cohort_before (the tables the code at its commit ``BEFORE`` computed; make_fixture.py says how).

Cells are compared exactly (type and repr of every value, every column's dtype, row order). The only
differences allowed are the intentional fixes made since, each undone below by name, for the rows it explains:
- ``safety_events.event_number`` is a new column (98390f5): dropped before comparing;
- a death on the index day or before it is no longer an event on day 0 but shown in data quality
  (``death_on_index_day``, ``death_before_index``): these hospitals have none, which is checked;
- undated facts and adverse events of no mapped category are counted in data quality (8675f85, 7cd52bb): these
  hospitals have none, so the equality below shows it;
- the other fixes cannot act on these hospitals, which ``test_the_fixes_that_could_change_a_table_have_nothing_to_act_on``
  checks: a subjectless resource no longer counted as a NaN patient (f43a0c7, the ``.dropna()`` calls in facts.py),
  a suspect looked up by (patient, statement) (61bdf8c), ResearchSubjects of absent patients not enrolled
  (bb3622b), same-day ties of baseline labs and weights decided by the lowest value (6680a11).
"""
from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from analytics.cohort.concepts import load_concept_map
from analytics.cohort.facts import build_facts
from analytics.cohort.params import RuleParams
from analytics.cohort.tables import COHORT_TABLES, derive_cohort_tables
from etl.fhir.types import flatten_all
from synthetic.variants import SERVER_BASE
from tests.fixtures.cohort_before.make_fixture import CUTOFF, digest, hospitals, load_fixture, serialise

BASELINE_CONCEPTS = ("ferritin", "esr")


@pytest.fixture(scope="module")
def before() -> dict[str, Any]:
    return load_fixture()


@pytest.fixture(scope="module")
def inputs() -> dict[str, list[dict]]:
    return hospitals()


def derive_now(resources: list[dict]) -> tuple[dict[str, pd.DataFrame], Any]:
    by_type: dict[str, list[dict]] = {}
    for r in resources:
        by_type.setdefault(r["resourceType"], []).append(r)
    flat = flatten_all(by_type, base=SERVER_BASE)
    facts = build_facts(flat, load_concept_map())
    return derive_cohort_tables(facts, RuleParams(data_cutoff=CUTOFF)).tables, (flat, facts)


def without_intentional_fixes(tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    out = dict(tables)
    # 98390f5: safety_events gained event_number (which rows are one event); the old table had no such column.
    out["safety_events"] = tables["safety_events"].drop(columns=["event_number"])
    # A death on the index day or before it is no event now; these hospitals have none (else the old tables differ).
    quality = tables["cohort_data_quality"]
    assert not quality["issue"].isin(["death_on_index_day", "death_before_index"]).any()
    return out


def differences(name: str, old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs, as (table, patient, column, old, new) lines a reader can follow to a rule."""
    if old["columns"] != new["columns"]:
        return [f"{name}: columns {old['columns']} before, {new['columns']} now"]
    out = [f"{name}.{c}: dtype {a} before, {b} now" for c, a, b in zip(old["columns"], old["dtypes"], new["dtypes"], strict=True)
           if a != b]
    if len(old["rows"]) != len(new["rows"]):
        gone = [r for r in old["rows"] if r not in new["rows"]]
        added = [r for r in new["rows"] if r not in old["rows"]]
        return out + [f"{name}: {len(old['rows'])} rows before, {len(new['rows'])} now; only before: {gone[:5]}; "
                      f"only now: {added[:5]}"]
    key = old["columns"].index("patient_id") if "patient_id" in old["columns"] else None
    for a, b in zip(old["rows"], new["rows"], strict=True):
        for column, x, y in zip(old["columns"], a, b, strict=True):
            if x != y:
                who = a[key] if key is not None else a[:3]
                out.append(f"{name}: patient {who}, {column}: {x} before, {y} now")
    return out


@pytest.mark.parametrize("hospital", ["paper", "small_messy"])
def test_every_cohort_table_is_as_before_issue_16(hospital, before, inputs):
    fixture = before["hospitals"][hospital]
    assert digest(inputs[hospital]) == fixture["sha256"], (
        "the synthetic generator changed since the fixture was made: regenerate it (tests/fixtures/cohort_before/make_fixture.py)")
    tables, _ = derive_now(inputs[hospital])
    now = without_intentional_fixes(tables)
    assert set(fixture["tables"]) == set(COHORT_TABLES)
    found = [line for name in COHORT_TABLES for line in differences(name, fixture["tables"][name], serialise(now[name]))]
    assert found == [], "\n".join(found[:40])
    assert len(tables["cohort"]) > 50 and not tables["safety_events"].empty and not tables["prospective_visits"].empty


@pytest.mark.parametrize("hospital", ["paper", "small_messy"])
def test_the_fixes_that_could_change_a_table_have_nothing_to_act_on(hospital, inputs):
    """Why the comparison above may ask for equality despite the other fixes since issue 16: nothing in these
    hospitals is what they changed the reading of."""
    _, (flat, facts) = derive_now(inputs[hospital])
    known = set(facts.patients["patient_id"])
    # f43a0c7 (.dropna() in facts.py): no resource without a patient subject.
    for rtype in ("Condition", "MedicationStatement", "Procedure", "Observation", "AdverseEvent", "ResearchSubject"):
        assert flat[rtype]["patient_id"].notna().all(), rtype
    # bb3622b: no ResearchSubject of a patient the Patient table lacks.
    assert set(facts.enrolments["patient_id"]) <= known
    # 61bdf8c: every suspect statement is the patient's own (a lookup by statement alone gives the same drug).
    own = set(zip(facts.exposures["patient_id"], facts.exposures["statement_id"], strict=True))
    ids = set(facts.exposures["statement_id"])
    for pid, suspects in zip(facts.adverse_events["patient_id"], facts.adverse_events["suspect_statement_ids"], strict=True):
        assert all((pid, s) in own for s in suspects or () if s in ids)
    # 6680a11: no same-day tie of different values where the rules read one: a baseline lab in a cohort patient's
    # baseline window (index - 30 ... index + 7), or a body weight of a cohort patient on any day.
    tables, _ = derive_now(inputs[hospital])
    index = dict(zip(tables["cohort"]["patient_id"], tables["cohort"]["index_date"], strict=True))
    obs = facts.observations[facts.observations["patient_id"].isin(index) & facts.observations["value"].notna()]
    days = pd.Series([(d - index[p]).days for p, d in zip(obs["patient_id"], obs["date"], strict=True)], index=obs.index)
    read = obs[obs["concept"].isin(BASELINE_CONCEPTS) & days.between(-30, 7) | (obs["concept"] == "body_weight")]
    per_day = read.groupby(["patient_id", "concept", "date"])["value"].nunique()
    assert (per_day <= 1).all(), per_day[per_day > 1].head().to_dict()
