"""The schema fast path of validation (etl.fhir.schema) gives fhir.resources' verdicts, and is what is committed.

The differential test runs the synthetic hospital and a seeded mutation fuzz through both checks. The one
deliberate difference: a JSON value of the wrong type for its FHIR primitive, which fhir.resources coerces
("yes" read as True), is a quarantine reason of its own. Value sets are not (see etl/fhir/schema/runtime.py).
"""
from __future__ import annotations

import collections

import orjson
import pytest

from etl.fhir.schema import generate
from etl.fhir.schema.runtime import _load, schema_accepts
from etl.fhir.validation import _envelope_errors, fhir_resources_errors, validation_errors
from etl.ingest.worker import check_resource
from synthetic.hospital import generate_hospital
from tests.conftest import SMALL_HOSPITAL
from tests.fhir_mutations import EXTRA_SEEDS, mutants

P = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-01-01"}
OBS = {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "weight"},
       "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2019-02-01",
       "valueQuantity": {"value": 60, "unit": "kg"}}
MUTANTS = 6000
TYPE_CHANGING = {"odd value", "wrong variant", "date"}  # the mutations that can put a value of another JSON type in place


def test_committed_schema_is_what_the_generator_builds_from_the_pinned_source():
    """Regenerating from the committed npm schema and the installed fhir.resources gives the committed file,
    byte for byte: a new fhir.resources or a new ingested type fails here until the file is regenerated."""
    assert generate.serialise(generate.generate()) == generate.load_text()
    meta = generate.parse(generate.load_text())["x-generated"]
    assert meta["fhir.resources"] == generate.FHIR_RESOURCES_VERSION == "8.3.0"
    assert meta["source_sha256"] == generate.SOURCE_SHA256


def test_the_validator_is_compiled_once_per_process():
    assert _load() is _load()


def test_another_fhir_resources_version_turns_the_fast_path_off_not_wrong(monkeypatch, caplog):
    """A schema generated for other models could accept what the installed fhir.resources refuses."""
    monkeypatch.setattr("etl.fhir.schema.runtime._compiled", None)
    monkeypatch.setattr("etl.fhir.schema.runtime.version", lambda package: "8.4.0")
    assert not schema_accepts(P, "Patient")
    assert "generated for fhir.resources 8.3.0, 8.4.0 is installed" in caplog.text
    assert validation_errors({**P, "birthDate": "2019-02-29"}, "Patient") != []
    assert validation_errors(P, "Patient") == []


@pytest.mark.parametrize("resource", [P, OBS, *EXTRA_SEEDS], ids=lambda r: f"{r['resourceType']}-{r['id']}")
def test_a_valid_resource_never_reaches_fhir_resources(monkeypatch, resource):
    def refuse(resource_type):
        raise AssertionError("fhir.resources was called for a resource the schema accepts")

    monkeypatch.setattr("etl.fhir.validation._model", refuse)
    assert validation_errors(resource, resource["resourceType"], orjson.dumps(resource)) == []


@pytest.mark.parametrize("resource,phrase", [
    ({**P, "birthDate": "2019-02-29"}, "birthDate"),                                    # not a leap year
    ({**P, "birthDate": "1900-02-29"}, "birthDate"),                                    # divisible by 100, not by 400
    ({**OBS, "effectiveDateTime": "2019-04-31"}, "effectiveDateTime"),
    ({**OBS, "effectivePeriod": {"start": "2019-01-01"}}, "multiple"),                  # two variants of effective[x]
    ({**P, "extension": [{"valueString": "x"}]}, "url"),                                # Extension.url is required
    ({**{k: v for k, v in OBS.items() if k != "status"}, "_status": {"extension": []}}, "status"),
    ({**P, "name": "Lee"}, "name"),                                                     # an object (list) is due
    ({**P, "multipleBirthInteger": 2.0}, "not a JSON integer"),                         # the project's own rule
    ({**P, "_gender": {}}, "_gender"),                                                  # "_x" holds id or extension
])
def test_the_schema_refuses_what_fhir_resources_refuses_and_the_messages_are_fhir_resources(resource, phrase):
    assert not schema_accepts(resource, resource["resourceType"])
    errors = validation_errors(resource, resource["resourceType"])
    assert errors == fhir_resources_errors(resource, resource["resourceType"]) != []
    assert phrase in " ".join(errors)


@pytest.mark.parametrize("resource", [
    {**P, "birthDate": "2020-02-29"}, {**P, "birthDate": "2000-02-29"}, {**P, "birthDate": "1970-06"},
    {**P, "deceasedDateTime": "2019-06-30T23:59:60Z"},                                  # a leap second
    {**{k: v for k, v in OBS.items() if k != "status"},
     "_status": {"extension": [{"url": "http://x", "valueCode": "asked"}]}},            # a required primitive as "_x"
])
def test_partial_dates_leap_days_and_extension_stand_ins_take_the_fast_path(resource):
    assert schema_accepts(resource, resource["resourceType"])
    assert fhir_resources_errors(resource, resource["resourceType"]) == []


@pytest.mark.parametrize("resource,path", [
    ({**P, "communication": [{"language": {"text": "en"}, "preferred": "yes"}]}, "communication.0.preferred"),
    ({**OBS, "code": {"coding": [{"code": "x", "userSelected": "no"}]}}, "code.coding.0.userSelected"),
    ({**OBS, "valueQuantity": {"value": "60", "unit": "kg"}}, "valueQuantity.value"),
    ({**P, "birthDate": 0}, "birthDate"),                                                # a Unix time, to pydantic
])
def test_a_json_value_of_the_wrong_type_is_a_quarantine_reason_though_fhir_resources_coerces_it(resource, path):
    """fhir.resources reads "no" as True, keeps "60" as a string and 0 as 1970-01-01; FHIR JSON allows none."""
    assert fhir_resources_errors(resource, resource["resourceType"]) == []
    errors = validation_errors(resource, resource["resourceType"])
    assert len(errors) == 1 and errors[0].startswith(f"{path}: ") and "is not of type" in errors[0]
    assert check_resource(resource, resource["resourceType"]) == errors  # so the loader quarantines it


@pytest.mark.parametrize("resource", [
    {**P, "gender": "nope"},                                   # the raw_patient expectation flags it, as before
    {**OBS, "status": "done"},
    {**P, "name": [{"given": ["Ann", None], "family": "Lee"}]},  # FHIR's placeholder in a primitive array
])
def test_codes_outside_required_value_sets_are_no_quarantine_reason_and_take_the_fast_path(resource):
    """fhir.resources does not enforce value sets and the official schema lists only some of them (Patient.gender,
    not MedicationStatement.status): code sets stay with the expectations and the concept map."""
    assert schema_accepts(resource, resource["resourceType"])
    assert validation_errors(resource, resource["resourceType"]) == fhir_resources_errors(resource, resource["resourceType"]) == []


@pytest.mark.parametrize("resource", [
    {**P, "gender": None},                                     # null: read as absent, as before
    {**P, "fhir_comments": "x"},                               # fhir.resources' own key
    {**P, "meta": {"versionId": "v" * 65}},                    # R4 caps id at 64, fhir.resources at 255
    {**P, "contained": [{"resourceType": "Group", "id": "g", "type": "person", "actual": True}]},  # not in the schema
])
def test_what_only_the_schema_refuses_otherwise_keeps_fhir_resources_verdict(resource):
    assert not schema_accepts(resource, resource["resourceType"])
    assert validation_errors(resource, resource["resourceType"]) == fhir_resources_errors(resource, resource["resourceType"]) == []


@pytest.mark.parametrize("resource,detail", [
    ({**P, "contained": [{"resourceType": "Foo", "id": "x"}]}, "KeyError 'R4.FooType'"),
    ({**P, "_gender": "1"}, "AttributeError 'int' object has no attribute 'get'"),
])
def test_input_that_crashes_fhir_resources_is_a_reason_not_a_crash(resource, detail):
    """Found by the fuzz: fhir.resources 8.3 raises KeyError or AttributeError on these (it crashed the sync)."""
    assert validation_errors(resource, "Patient") == [f"not a readable FHIR R4 resource (fhir.resources failed: {detail})"]


def test_the_fast_path_and_fhir_resources_agree_on_the_hospital_and_on_single_field_mutations():
    """Every synthetic resource is accepted by both. Of the mutants: whatever the schema accepts, fhir.resources
    accepts; whatever fhir.resources refuses gets fhir.resources' own messages; the only other difference is a
    value of the wrong JSON type, and only a mutation that puts one in place makes it."""
    seeds = generate_hospital(SMALL_HOSPITAL).resources + EXTRA_SEEDS * 20
    for r in seeds:
        assert schema_accepts(r, r["resourceType"]) and fhir_resources_errors(r, r["resourceType"]) == [], r["id"]
    tally: collections.Counter[str] = collections.Counter()
    unsafe, different_messages, deliberate = [], [], []
    for m in mutants(seeds, MUTANTS, seed=20260214):
        text = orjson.dumps(m.resource)
        today = fhir_resources_errors(m.resource, m.resource_type, text)
        fast = not _envelope_errors(m.resource, m.resource_type) and schema_accepts(m.resource, m.resource_type, text)
        hybrid = validation_errors(m.resource, m.resource_type, text)
        tally["valid" if not today else "invalid"] += 1
        tally["fast"] += fast
        if fast and today:
            unsafe.append((m.kind, m.path, m.value, today))
        if today and hybrid != today:
            different_messages.append((m.kind, m.path, hybrid, today))
        if not today and hybrid:
            deliberate.append((m.kind, m.path, hybrid))
    assert unsafe == []
    assert different_messages == []
    assert {kind for kind, _, _ in deliberate} <= TYPE_CHANGING, deliberate
    assert all("is not of type" in e for _, _, errors in deliberate for e in errors), deliberate
    # The fuzz means something: both verdicts are common, and the fast path takes most valid mutants.
    assert tally["invalid"] > MUTANTS / 4 and tally["valid"] > MUTANTS / 4
    assert tally["fast"] > 0.6 * (tally["valid"] - len(deliberate)), tally
