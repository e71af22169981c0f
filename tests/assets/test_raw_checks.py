"""The raw tables' expectations read the table in batches (a hospital's Observation table has millions of rows):
a failing row is found whichever batch it is in, and the verdict and metadata are those of one whole frame."""
from __future__ import annotations

import great_expectations as gx
import orjson
import pandas as pd
import pytest

from analytics.pseudonym import patient_key
from assets.fhir.checks import raw_expectations
from assets.resources import StudyResource
from etl.ingest.ndjson_dir import sync_ndjson_directory
from etl.warehouse import Warehouse
from expectations.runner import CRITICAL, run_suite, run_suite_batches

KEY = "test-pseudonym-key-0123456789"


def _ferritin(i: int, unit: str = "ng/mL") -> dict:
    return {"resourceType": "Observation", "id": f"obs-{i:03d}", "status": "final",
            "subject": {"reference": f"Patient/p-{i:03d}"}, "effectiveDateTime": "2019-01-01",
            "code": {"coding": [{"system": "http://loinc.org", "code": "2276-4"}]},
            "valueQuantity": {"value": 300, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}}


def _patient(i: int, gender: str = "female") -> dict:
    return {"resourceType": "Patient", "id": f"p-{i:03d}", "gender": gender, "birthDate": "1970-01-01"}


def _load(wh: Warehouse, tmp_path, resources: list[dict]) -> None:
    export = tmp_path / "export"
    export.mkdir(exist_ok=True)
    by_type: dict[str, list[dict]] = {}
    for r in resources:
        by_type.setdefault(r["resourceType"], []).append(r)
    for rtype, rs in by_type.items():
        (export / f"{rtype}.ndjson").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rs))
    sync_ndjson_directory(wh, export, list(by_type), workers=1)


@pytest.mark.parametrize("rtype, resources, failing", [
    ("Observation", [*(_ferritin(i) for i in range(9)), _ferritin(9, unit="mmol/L")], "p-009"),
    ("Patient", [*(_patient(i) for i in range(9)), _patient(9, gender="nope")], "p-009"),
])
def test_a_failing_row_in_the_last_batch_is_found_as_in_one_frame(any_warehouse, tmp_path, rtype, resources, failing):
    _load(any_warehouse, tmp_path, resources)
    study = StudyResource(pseudonym_key=KEY)
    batched = raw_expectations(rtype, any_warehouse, study, batch_rows=2)   # five batches; the failing row is in the last
    whole = raw_expectations(rtype, any_warehouse, study, batch_rows=1000)
    assert not batched.passed and batched.metadata["failing_rows"].value == 1
    assert patient_key(failing, KEY) in batched.metadata["failures"].value
    assert (batched.passed, batched.severity, batched.metadata) == (whole.passed, whole.severity, whole.metadata)


def test_an_empty_or_absent_raw_table_is_still_checked(tmp_path):
    result = raw_expectations("Condition", Warehouse(f"sqlite:///{tmp_path / 'w.sqlite'}"), StudyResource(pseudonym_key=KEY))
    assert result.passed and result.metadata["expectations_evaluated"].value == 2


def test_raw_resources_come_in_batches_in_the_tables_order(any_warehouse, tmp_path):
    _load(any_warehouse, tmp_path, [_patient(i) for i in range(7)])
    batches = list(any_warehouse.raw_resource_batches("Patient", 3))
    assert [len(b) for b in batches] == [3, 3, 1]
    assert [r for b in batches for r in b] == any_warehouse.raw_resources("Patient")
    assert list(any_warehouse.raw_resource_batches("Condition", 3)) == []


def _unique() -> list:
    return [gx.expectations.ExpectColumnValuesToBeUnique(column="k", severity=CRITICAL)]  # a GX expectation joins one suite only


@pytest.mark.parametrize("parts", [
    [["a", "b"], ["b", "c"]],                 # a value in two batches: both its rows fail
    [["a", "a"], ["a"], ["d"]],               # duplicated within a batch, then met again
    [["a"], ["b"], ["a", "a"], ["a"]],        # the earlier lone row counts once
    [["a", None], [None, "b"]],               # missing values are not duplicates
    [["a", "b"], ["c", "d"]],                 # nothing duplicated
])
def test_uniqueness_spans_batches(parts):
    frames = [pd.DataFrame({"k": p, "n": range(len(p))}) for p in parts]
    whole = run_suite("u", pd.concat(frames, ignore_index=True), _unique(), ("k",))
    batched = run_suite_batches("u", frames, _unique(), ("k",))
    assert [(f.expectation, f.unexpected_count) for f in batched.failures] == [(f.expectation, f.unexpected_count) for f in whole.failures]
    assert [sorted(map(str, f.examples)) for f in batched.failures] == [sorted(map(str, f.examples)) for f in whole.failures]


def test_a_compound_uniqueness_is_not_split_into_batches():
    def compound() -> list:
        return [gx.expectations.ExpectCompoundColumnsToBeUnique(column_list=["k", "n"], severity=CRITICAL)]
    with pytest.raises(ValueError, match="batch by batch"):
        run_suite_batches("c", [pd.DataFrame({"k": ["a"], "n": [1]})], compound())
    assert run_suite("c", pd.DataFrame({"k": ["a", "a"], "n": [1, 1]}), compound(), ("k", "n")).failures[0].unexpected_count == 2
