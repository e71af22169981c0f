"""Metamorphic invariance (issue 12): a hospital rewritten in another legal FHIR shape gives the same
cohort tables, every one of them; a rewrite that changes a fact changes them.

The variants live in ``synthetic/variants.py``; every one runs on the whole (small) synthetic hospital.
"""
from __future__ import annotations

import random

import orjson
import pytest

from analytics.cohort.tables import COHORT_TABLES
from etl.ingest.pipeline import check_resource
from synthetic.hospital import generate_hospital
from synthetic.variants import BY_NAME, VARIANTS

from .pipeline import SMALL, cohort_tables, differences

PRESERVING = [v.name for v in VARIANTS if v.preserves]


@pytest.fixture(scope="module")
def hospital():
    return generate_hospital(SMALL)


@pytest.fixture(scope="module")
def baseline(hospital):
    return cohort_tables(hospital.resources)


def test_the_suite_has_enough_variants_and_no_table_is_trivially_equal(baseline):
    assert len(PRESERVING) >= 15
    assert set(baseline) == set(COHORT_TABLES)
    empty = [name for name, frame in baseline.items() if frame.empty]
    assert not empty, f"an empty table cannot show a difference: {empty}"
    cohort = baseline["cohort"]
    for outcome in ("death_event", "relapse_event", "resp_relapse_event"):
        assert 0 < cohort[outcome].sum() < len(cohort), outcome
    assert 0 < baseline["safety_events"]["serious"].sum() < len(baseline["safety_events"])


@pytest.mark.parametrize("name", PRESERVING)
def test_a_meaning_preserving_rewrite_leaves_every_table_identical(name, hospital, baseline):
    rewritten = BY_NAME[name].apply(hospital.resources, random.Random(name))
    assert rewritten.resources != hospital.resources, "the variant must rewrite something"
    assert differences(baseline, cohort_tables(rewritten.resources, rewritten.patient_ids)) == {}


@pytest.mark.parametrize("name, table, column", [
    ("drop_local_value_codings", "cohort", "resp_relapse_event"),
    ("seriousness_in_a_foreign_system", "safety_events", "serious"),
    ("grams_without_conversion", "cohort", "initial_pred_mg_day"),
    ("references_to_another_server", "cohort", "group"),
])
def test_a_rewrite_that_changes_a_fact_changes_the_tables(name, table, column, hospital, baseline):
    rewritten = BY_NAME[name].apply(hospital.resources, random.Random(name))
    got = cohort_tables(rewritten.resources, rewritten.patient_ids)
    assert table in differences(baseline, got)
    if len(got[table]) == len(baseline[table]):
        assert not got[table][column].equals(baseline[table][column])


def test_the_synthetic_hospital_is_messy_by_default_and_means_the_same(hospital):
    """Its default dialect (a seeded mix of the variants) must not move the tables from the clean hospital."""
    clean = generate_hospital(type(SMALL)(**{**SMALL.__dict__, "messy": False}))
    assert clean.resources != hospital.resources
    assert differences(cohort_tables(clean.resources), cohort_tables(hospital.resources)) == {}


@pytest.mark.parametrize("name", PRESERVING)
def test_every_rewrite_passes_every_ingestion_check(name, hospital):
    """Legal shapes only: a rewrite that produced invalid or implausible FHIR would be quarantined, not tested."""
    patients = {r["id"] for r in hospital.resources if r["resourceType"] == "Patient"}
    sample = sorted(patients)[:6]
    keep = [r for r in hospital.resources if r["resourceType"] in ("Patient", "ResearchStudy") and r["id"] in sample
            or r["resourceType"] == "ResearchStudy"
            or any(f"Patient/{p}" == (r.get("subject") or r.get("individual") or {}).get("reference") for p in sample)]
    for r in BY_NAME[name].apply(keep, random.Random(name)).resources:
        assert check_resource(r, r["resourceType"], orjson.dumps(r)) == [], (name, r)
