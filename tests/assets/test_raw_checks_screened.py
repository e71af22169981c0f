"""The raw checks flatten only the resources a suite can look at (``suites.RAW_RESOURCES``), give GX only the rows
that might fail (``expectations.screen``) and skip batches with none: on a messy hospital with failures in
several batches, every verdict, severity, count, example and example order is the one GX gives when every
resource is flattened and every row of every batch validated (the path before), and rows are named by
pseudonym only."""
from __future__ import annotations

import os
import re

import dagster as dg
import great_expectations as gx
import orjson
import pandas as pd
import pytest
import sqlalchemy as sa

from analytics.pseudonym import patient_key
from assets.fhir.checks import raw_expectations
from assets.resources import StudyResource
from etl.ingest.ndjson_dir import sync_ndjson_directory
from etl.warehouse import Warehouse
from expectations import runner, suites
from expectations.runner import CRITICAL, WARNING, _validate, run_suite_batches
from expectations.screen import suspects

KEY = "test-pseudonym-key-0123456789"
LOINC, RXNORM = "http://loinc.org", "http://www.nlm.nih.gov/research/umls/rxnorm"
TYPES = ["Patient", "Condition", "MedicationStatement", "Observation"]


def _patient(i: int, gender: str = "female") -> dict:
    return {"resourceType": "Patient", "id": f"p-{i:03d}", "gender": gender, "birthDate": "1970-01-01"}


def _subject(i: int) -> dict:
    return {"reference": f"Patient/p-{i:03d}"}


def _observation(i: int, **changes) -> dict:
    return {"resourceType": "Observation", "id": f"obs-{i:03d}", "status": "final", "subject": _subject(i),
            "effectiveDateTime": "2019-01-01",
            # the study's coding second: concepts are matched by (system, code), never by position
            "code": {"coding": [{"system": "urn:local", "code": "fer"}, {"system": LOINC, "code": "2276-4"}]},
            "valueQuantity": {"value": 300, "unit": "ng/mL", "system": "http://unitsofmeasure.org", "code": "ng/mL"},
            **changes}


def _statement(i: int, **changes) -> dict:
    return {"resourceType": "MedicationStatement", "id": f"ms-{i:03d}", "status": "active", "subject": _subject(i),
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "42316"}, {"system": "urn:local", "code": "tac"}]},
            "effectiveDateTime": "2019-01-01",
            "dosage": [{"doseAndRate": [{"doseQuantity": {"value": 2, "unit": "mg", "system": "http://unitsofmeasure.org",
                                                          "code": "mg"}}]}], **changes}


def _condition(i: int, **changes) -> dict:
    return {"resourceType": "Condition", "id": f"c-{i:03d}", "subject": _subject(i), "onsetDateTime": "2018-05-01",
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "M33.10"}]}, **changes}


def _dose(value: float, unit: str, sequence: int | None = None) -> dict:
    line: dict = {"doseAndRate": [{"doseQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org",
                                                    "code": unit}}]}
    return {**line, "sequence": sequence} if sequence is not None else line


def _hospital() -> tuple[list[dict], dict[str, dict]]:
    """Resources the loader accepts, and the raw rows written past it afterwards (a negative dose and a dose in
    millilitres: the loader quarantines both, the checks are the last line against an older or edited warehouse)."""
    resources = [
        *(_patient(i) for i in range(8)), _patient(3, gender="nope") | {"id": "p-103"}, _patient(9, gender="unknown"),
        *(_condition(i) for i in range(6)), _condition(6, onsetDateTime=None) | {"id": "c-106"},
        _condition(7, subject={"reference": "https://elsewhere.example.org/fhir/Patient/p-007"}),
        *(_observation(i) for i in range(12)),
        _observation(20, valueQuantity={"value": 5, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"}),
        _observation(21, subject={"reference": "https://elsewhere.example.org/fhir/Patient/p-021"}),
        _observation(22, valueQuantity=None, valueString="high"),
        _observation(23, valueQuantity={"value": 4, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"}),
        _observation(24, valueQuantity={"unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"}),
        *(_statement(i) for i in range(10)), _statement(10, effectiveDateTime=None),
        _statement(11, subject={"reference": "https://elsewhere.example.org/fhir/Patient/p-011"}),
        _statement(12), _statement(13), _statement(14),
    ]
    edited = {
        # the instruction with the lowest sequence is the contract's dosage[0], wherever it stands in the array
        "ms-012": _statement(12, dosage=[_dose(5, "mg", 2), _dose(-3, "mg", 1)]),
        "ms-013": _statement(13, dosage=[_dose(4, "mL")]),
        "ms-014": _statement(14, dosage=[_dose(-1, "mL")]),
    }
    return [{k: v for k, v in r.items() if v is not None} for r in resources], edited


def _load(wh: Warehouse, tmp_path) -> None:
    resources, edited = _hospital()
    export = tmp_path / "export"
    export.mkdir()
    for rtype in TYPES:
        (export / f"{rtype}.ndjson").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in resources if r["resourceType"] == rtype))
    sync_ndjson_directory(wh, export, TYPES, workers=1)
    table = wh.tables.raw("MedicationStatement")
    with wh.engine.begin() as conn:
        for rid, resource in edited.items():
            conn.execute(sa.update(table).where(table.c.id == rid).values(resource=orjson.dumps(resource).decode()))


def _unscreened(frame: pd.DataFrame, expectations) -> pd.DataFrame:
    return frame  # every row of every batch goes to GX: the path before the screen


def _outcome(result) -> tuple:
    return result.passed, result.severity, {k: v.value for k, v in result.metadata.items()}


@pytest.mark.parametrize("batch_rows", [2, 3, 1000])
def test_screened_checks_equal_gx_on_every_row_and_name_patients_by_pseudonym(any_warehouse, tmp_path, monkeypatch, batch_rows):
    _load(any_warehouse, tmp_path)
    study = StudyResource(pseudonym_key=KEY)
    screened = {t: _outcome(raw_expectations(t, any_warehouse, study, batch_rows=batch_rows)) for t in TYPES}
    monkeypatch.setattr(runner, "suspects", _unscreened)
    monkeypatch.setattr(suites, "RAW_RESOURCES", {})  # and every resource is flattened
    every_row = {t: _outcome(raw_expectations(t, any_warehouse, study, batch_rows=batch_rows)) for t in TYPES}
    assert screened == every_row

    def failing(rtype: str) -> list[tuple[str, int]]:
        table = screened[rtype][2]["failures"]
        return [(m[1], int(m[2])) for m in re.finditer(r"^\| \w+ \| (\w+) \| \w+ \| (\d+) \|", table, flags=re.M)]

    def pseudonyms(rtype: str) -> set[str]:
        return set(re.findall(r"patient_id=(\w+)", screened[rtype][2]["failures"]))

    assert failing("Patient") == [("expect_column_values_to_be_in_set", 1)]
    assert pseudonyms("Patient") == {patient_key("p-103", KEY)}
    assert failing("Condition") == [("expect_column_values_to_not_be_null", 1), ("expect_column_values_to_not_be_null", 1)]
    assert failing("MedicationStatement") == [("expect_column_values_to_not_be_null", 1),
                                              ("expect_column_values_to_be_between", 2),
                                              ("expect_column_values_to_be_in_set", 2),
                                              ("expect_column_values_to_not_be_null", 1)]
    assert pseudonyms("MedicationStatement") == {patient_key(p, KEY) for p in ("p-010", "p-012", "p-013", "p-014")} | {"None"}
    assert failing("Observation") == [("expect_column_values_to_be_in_set", 2), ("expect_column_values_to_not_be_null", 1)]
    assert pseudonyms("Observation") == {patient_key("p-020", KEY), patient_key("p-023", KEY), "None"}
    assert [screened[t][:2] for t in TYPES] == [(False, dg.AssetCheckSeverity.ERROR)] * 4  # each has a critical failure
    assert not any("p-0" in screened[t][2]["failures"] or "p-1" in screened[t][2]["failures"] for t in TYPES)


@pytest.mark.parametrize("parts", [
    [["a", "b", "x"], ["b", "c"], ["d"], ["a", "e"]],   # duplicates across batches, a failing value in the first
    [["a", "a"], ["a"], ["d", "x"]],                    # duplicated within a batch, met again, then a failing value
    [["a"], ["b"], ["c"]],                              # nothing fails: later batches are not given to GX at all
    [["x", None], [None, "b"], ["b", "x"]],             # missing values are neither duplicates nor out of the set
])
def test_the_screen_changes_no_count_example_or_example_order(parts):
    def suite() -> list:
        e = gx.expectations
        return [e.ExpectColumnValuesToBeUnique(column="k", severity=CRITICAL),
                e.ExpectColumnValuesToBeInSet(column="k", value_set=["a", "b", "c", "d", "e"], severity=CRITICAL),
                e.ExpectColumnValuesToBeBetween(column="n", min_value=1, max_value=3, strict_max=True, severity=WARNING),
                e.ExpectColumnValuesToNotBeNull(column="k", severity=WARNING)]
    frames = [pd.DataFrame({"k": p, "n": [float(i + j) for i in range(len(p))], "id": [f"{j}-{i}" for i in range(len(p))]})
              for j, p in enumerate(parts)]
    screened = run_suite_batches("s", frames, suite(), ("id",))
    every_row = _validate("s", frames, suite(), ("id",))
    assert screened == every_row
    assert screened.failures  # n = 0 (below 1) in every case, and 3 (a strict bound) in most


def test_a_value_gx_cannot_compare_reaches_gx_and_is_reported_as_before():
    def suite() -> list:
        return [gx.expectations.ExpectColumnValuesToBeBetween(column="n", min_value=0, severity=CRITICAL)]
    frames = [pd.DataFrame({"n": [1.0, 2.0], "id": ["a", "b"]}), pd.DataFrame({"n": [3, "three"], "id": ["c", "d"]})]
    screened = run_suite_batches("t", frames, suite(), ("id",))
    assert screened == _validate("t", frames, suite(), ("id",))
    assert screened.failures and "error" in screened.failures[0].examples[0]


def test_the_screen_keeps_exactly_the_rows_that_might_fail_and_every_row_for_what_it_does_not_know():
    e = gx.expectations
    frame = pd.DataFrame({"k": ["a", "zz", None, "a", "b"], "n": [1.0, 0.5, 2.0, float("nan"), 3.0]})
    suite = [e.ExpectColumnValuesToBeInSet(column="k", value_set=["a", "b"]),
             e.ExpectColumnValuesToBeBetween(column="n", min_value=1, max_value=3, strict_max=True)]
    # "zz" is out of the set, None might be (GX skips it), 0.5 and NaN are outside [1, 3], 3.0 is a bound
    assert list(suspects(frame, suite).index) == [1, 2, 3, 4]
    assert list(suspects(frame, [e.ExpectColumnValuesToBeUnique(column="k")]).index) == [0, 3]
    assert suspects(frame, [e.ExpectColumnValuesToNotBeNull(column="k")]).index.tolist() == [2]
    assert suspects(frame, [e.ExpectColumnValuesToBeInSet(column="k", value_set=["a"], mostly=0.5)]) is frame
    assert suspects(frame, [e.ExpectColumnValuesToMatchRegex(column="k", regex="a")]) is frame


def test_checks_shared_with_a_forked_process_give_the_inline_results_in_the_same_order(any_warehouse, tmp_path, monkeypatch):
    """``check_pool``: the expectation checks are shared by rows between the step's process and one forked process
    with its own database connection; every result (verdict, severity, metadata, failing rows by pseudonym) and
    their order equal the inline evaluation's, on a hospital whose checks fail in several tables."""
    from types import SimpleNamespace

    import assets.fhir.checks as checks

    _load(any_warehouse, tmp_path)
    study = StudyResource(pseudonym_key=KEY)
    keys = {dg.AssetCheckKey(dg.AssetKey(f"raw_{t.lower()}"), name) for name, (t, _, _) in checks.RAW_CHECKS.items() if t in TYPES}
    context = SimpleNamespace(selected_asset_check_keys=keys)

    def results(pool) -> list[tuple]:
        return [(r.check_name, r.passed, r.severity, {k: v.value for k, v in r.metadata.items()})
                for r in checks.raw_check_results(context, any_warehouse, study, pool)]

    inline = results(None)
    pool = checks.check_pool(context)
    assert pool is not None
    there, here = checks.split_by_rows({f"raw_{t.lower()}_expectations": any_warehouse.current_count(t) for t in TYPES})
    assert there and here
    real = checks.raw_outcome
    ran_here: list[str] = []

    def recorded(resource_type, *args, **kwargs):  # in this process only: the other forked before the patch
        ran_here.append(f"raw_{resource_type.lower()}_expectations")
        return real(resource_type, *args, **kwargs)

    monkeypatch.setattr(checks, "raw_outcome", recorded)
    try:
        pooled = results(pool)
        children = {p.pid for p in pool._processes.values()}
    finally:
        pool.shutdown()
    assert pooled == inline
    assert sorted(ran_here) == sorted(here)  # the other share ran in the forked process
    assert [name for name, *_ in inline] == sorted(k.name for k in keys)
    assert {name for name, passed, *_ in inline if not passed} >= {f"raw_{t.lower()}_expectations" for t in TYPES}
    assert len(children) == 1 and os.getpid() not in children


def test_the_tables_are_shared_by_rows_largest_first():
    from assets.fhir.checks import split_by_rows

    assert split_by_rows({"obs": 3_000_000, "ms": 1_900_000, "cond": 400_000, "pat": 200_000, "ae": 100_000}) == (
        ["obs"], ["ms", "cond", "pat", "ae"])
    assert split_by_rows({"a": 5, "b": 5, "c": 3, "d": 2}) == (["a", "c"], ["b", "d"])
    assert split_by_rows({"only": 7}) == (["only"], [])


def test_no_second_process_for_a_single_expectation_check():
    from types import SimpleNamespace

    from assets.fhir.checks import check_pool

    one = SimpleNamespace(selected_asset_check_keys={dg.AssetCheckKey(dg.AssetKey("raw_patient"), "raw_patient_expectations"),
                                                     dg.AssetCheckKey(dg.AssetKey("raw_patient"), "raw_patient_count_matches_server")})
    assert check_pool(one) is None
