"""The duplicate-key check's fast path (counting keys in the text against the canonical JSON the worker writes for the
content hash) must find exactly what the exact parse finds, in every way the same JSON can be spelled."""
import json

import orjson
import pytest

from etl.fhir.wire import wire_errors
from etl.records import canonical_json

PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "name": [{"family": "Lee", "given": ["Ann"]}],
           "meta": {"versionId": "3", "lastUpdated": "2024-01-01T00:00:00Z"}}
DUPLICATED = {
    "top level": b'{"resourceType":"Patient","id":"dupA","id":"dupB","gender":"female"}',
    "nested object": b'{"resourceType":"Patient","id":"p1","name":[{"family":"Lee","family":"Li"}]}',
    "pretty-printed": b'{\n  "resourceType": "Patient",\n  "id": "p1",\n  "gender": "female",\n  "gender": "male"\n}',
    "space before the colon": b'{"resourceType" : "Patient", "id" : "p1", "gender" : "female", "gender" : "male"}',
    "with an escape (slow path)": b'{"resourceType":"Patient","id":"p1","gender":"fe\\u006dale","gender":"male"}',
}
CLEAN = {
    "compact": orjson.dumps(PATIENT),
    "pretty-printed": json.dumps(PATIENT, indent=2).encode(),
    "space before the colon": json.dumps(PATIENT, separators=(", ", " : ")).encode(),
    "same key in two objects": b'{"resourceType":"Patient","id":"p1","meta":{"id":"m"},"name":[{"id":"a"},{"id":"b"}]}',
    "ASCII-escaped": json.dumps({**PATIENT, "gender": "f\u00e9male"}, ensure_ascii=True).encode(),
}


@pytest.mark.parametrize("text", DUPLICATED.values(), ids=DUPLICATED.keys())
def test_a_repeated_key_is_refused_with_and_without_the_canonical_json(text):
    parsed = orjson.loads(text)
    assert wire_errors(text, parsed, canonical_json(parsed)) == wire_errors(text, parsed)
    assert len(wire_errors(text, parsed, canonical_json(parsed))) == 1
    assert "duplicate JSON keys" in wire_errors(text, parsed, canonical_json(parsed))[0]


@pytest.mark.parametrize("text", CLEAN.values(), ids=CLEAN.keys())
def test_the_same_resource_spelled_any_way_passes(text):
    parsed = orjson.loads(text)
    assert wire_errors(text, parsed, canonical_json(parsed)) == []
    assert wire_errors(text, parsed) == []


def test_a_control_character_is_still_found_with_the_canonical_json():
    text = orjson.dumps({**PATIENT, "name": [{"text": "Ann\u0000Lee"}]})
    parsed = orjson.loads(text)
    assert wire_errors(text, parsed, canonical_json(parsed)) == [
        "a string holds a control character (such as U+0000), which FHIR strings forbid"]
