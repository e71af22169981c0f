"""Seeded single-field mutations of FHIR resources, for the differential test of the schema fast path.

Each mutant differs from a valid resource in one place: a field deleted, given a value of another JSON
type, an impossible or oddly formatted date, a second variant of a choice group, an unknown element, an
empty string, a "_x" primitive extension, a null, a list where an object is due or the reverse.
"""
from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from typing import Any, Iterator

# Values of every JSON type, and the edge cases of the FHIR primitives' formats.
ODD_VALUES: list[Any] = [
    True, False, 0, 1, -1, 1.0, 1.5, -0.5, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 1e30, 2**63,
    "yes", "no", "true", "1", "1.5", "", " ", "x", " x", "x ", "a  b", "a\x0bb", "a b", "\n", "Patient/p1", "#m1",
    "urn:oid:1.2.3", "urn:uuid:c757873d-ec9a-4326-a141-556f43239520", "abc", "aGVsbG8=", "!!!",
    None, [], {}, ["x"], [None], [{}], {"x": 1}, {"extension": []}, {"id": "a"},
]
DATES = [
    "2019", "2019-02", "2019-13", "2019-00", "2019-1", "0000", "0001", "9999-12-31", "2019-02-28", "2019-02-29",
    "2020-02-29", "1900-02-29", "2000-02-29", "2019-02-30", "2019-04-31", "2019-06-30", "2019-01-32", "2019-01-1",
    "2019-01-01T10:00:00", "2019-01-01T10:00:00Z", "2019-01-01T10:00Z", "2019-01-01T24:00:00Z",
    "2019-01-01T23:59:60Z", "2019-01-01T10:00:60+01:00", "2019-01-01T10:00:00+14:00", "2019-01-01T10:00:00+14:01",
    "2019-01-01T10:00:00-00:00", "2019-01-01T10:00:00.1234567Z", "2019-01-01T10:00:00.Z", "2019-01-01 10:00:00Z",
    "2019-02-29T10:00:00Z", "2020-02-29T10:00:00+02:00", "2019-01-01T10:00:00+0100", "10:00:00", "24:00:00",
    "10:00:00.5", "10:00", "2019-01-01T10:00:00z",
]
# A value of each FHIR type, for a second (or a wrong) variant of a choice group name[x].
VARIANTS: dict[str, Any] = {
    "Boolean": True, "Integer": 3, "Decimal": 1.5, "String": "x", "Code": "x", "Uri": "http://x", "Url": "http://x",
    "Canonical": "http://x", "Id": "x", "Oid": "urn:oid:1.2", "Markdown": "x", "Base64Binary": "aGVsbG8=",
    "Date": "2019-01-01", "DateTime": "2019-01-01", "Instant": "2019-01-01T00:00:00Z", "Time": "10:00:00",
    "PositiveInt": 2, "UnsignedInt": 0, "Period": {"start": "2019-01-01"}, "Quantity": {"value": 1},
    "CodeableConcept": {"text": "x"}, "Coding": {"code": "x"}, "Reference": {"reference": "Patient/p1"},
    "Age": {"value": 3}, "Range": {"low": {"value": 1}}, "Ratio": {"numerator": {"value": 1}},
    "Timing": {"event": ["2019-01-01"]}, "Attachment": {"contentType": "text/plain"}, "Annotation": {"text": "x"},
    "Identifier": {"value": "x"}, "SampledData": {"origin": {"value": 1}, "period": 1, "dimensions": 1},
    "Duration": {"value": 1}, "Money": {"value": 1}, "HumanName": {"text": "x"}, "Address": {"city": "x"},
}
KINDS = ("delete", "odd value", "date", "second variant", "wrong variant", "unknown element", "empty string",
         "primitive extension", "null", "wrap in list", "unwrap list", "empty list", "append null")


@dataclass(frozen=True)
class Mutant:
    resource: dict[str, Any]
    resource_type: str        # the type it is validated as: the seed's
    kind: str
    path: tuple[Any, ...]
    value: Any = None


def _slots(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any, Any]]:
    """(path, container, key) of every value below ``node``, the resource's resourceType excepted."""
    if isinstance(node, dict):
        for key, value in node.items():
            if path or key != "resourceType":
                yield (*path, key), node, key
                yield from _slots(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield (*path, i), node, i
            yield from _slots(value, (*path, i))


def _choice(key: str) -> tuple[str, str] | None:
    for type_name in sorted(VARIANTS, key=len, reverse=True):
        if key.endswith(type_name) and len(key) > len(type_name) and key[0].islower():
            return key[: -len(type_name)], type_name
    return None


def mutate(resource: dict[str, Any], rng: random.Random) -> Mutant:
    """One single-field mutation of a copy of ``resource``."""
    out = copy.deepcopy(resource)
    slots = list(_slots(out))
    path, container, key = rng.choice(slots)
    kind = rng.choice(KINDS)
    value: Any = None
    if kind == "delete":
        del container[key]
    elif kind == "odd value":
        value = container[key] = copy.deepcopy(rng.choice(ODD_VALUES))
    elif kind == "date":
        value = container[key] = rng.choice(DATES)
    elif kind in ("second variant", "wrong variant") and isinstance(key, str) and _choice(key):
        prefix, _ = _choice(key)
        other = rng.choice(sorted(VARIANTS))
        if kind == "wrong variant":  # the same value under another type's name
            container[prefix + other] = container.pop(key)
        else:
            container[prefix + other] = copy.deepcopy(VARIANTS[other])
        value = prefix + other
    elif kind == "unknown element" and isinstance(container, dict):
        value = rng.choice(["foo", "_foo", "fhir_comments", "valueFoo", "Extension", f"{key}Extra", "resourceType"])
        container[value] = rng.choice(["x", 1, {"x": 1}, ["x"]])
    elif kind == "empty string":
        value = container[key] = ""
    elif kind == "primitive extension" and isinstance(key, str):
        value = rng.choice([{}, {"id": "a"}, {"extension": []}, {"extension": [{"url": "http://x", "valueString": "y"}]},
                            {"extension": [{"valueString": "y"}]}, "x", [None], None])
        if rng.random() < 0.5:
            del container[key]
        container["_" + key.lstrip("_")] = copy.deepcopy(value)
    elif kind == "null":
        container[key] = None
    elif kind == "wrap in list":
        container[key] = [container[key]]
    elif kind == "unwrap list" and isinstance(container[key], list) and container[key]:
        container[key] = container[key][0]
    elif kind == "empty list":
        container[key] = []
    elif kind == "append null" and isinstance(container[key], list):
        container[key].append(None)
    else:  # the kind does not apply at this slot: a plain deletion instead
        kind = "delete"
        del container[key]
    return Mutant(out, resource["resourceType"], kind, path, value)


def mutants(seeds: list[dict[str, Any]], n: int, seed: int) -> Iterator[Mutant]:
    rng = random.Random(seed)
    for _ in range(n):
        yield mutate(rng.choice(seeds), rng)


# Valid resources in shapes the synthetic hospital does not write: contained resources, primitive
# extensions standing for required values, extensions of many value types, arrays of primitives with nulls.
EXTRA_SEEDS: list[dict[str, Any]] = [
    {"resourceType": "MedicationStatement", "id": "m1", "status": "active", "subject": {"reference": "Patient/p1"},
     "contained": [{"resourceType": "Medication", "id": "med", "code": {"text": "tacrolimus"},
                    "ingredient": [{"itemCodeableConcept": {"text": "x"}, "isActive": True,
                                    "strength": {"numerator": {"value": 1, "unit": "mg"}, "denominator": {"value": 1}}}]},
                   {"resourceType": "Practitioner", "id": "dr", "name": [{"family": "Lee", "given": ["Ann", None],
                                                                           "_given": [None, {"id": "g2"}]}]}],
     "medicationReference": {"reference": "#med"}, "effectiveDateTime": "2019-01-01T10:00:00+01:00",
     "dosage": [{"sequence": 1, "timing": {"repeat": {"frequency": 2, "period": 1, "periodUnit": "d"}},
                 "asNeededBoolean": False, "doseAndRate": [{"doseQuantity": {"value": 5, "unit": "mg"}}]}]},
    {"resourceType": "Observation", "id": "o1", "_status": {"extension": [{"url": "http://x", "valueCode": "asked"}]},
     "code": {"coding": [{"system": "http://loinc.org", "code": "1-8", "userSelected": True}]},
     "subject": {"reference": "Patient/p1"}, "effectivePeriod": {"start": "2019-01", "end": "2019-02-03"},
     "valueInteger": 4, "interpretation": [{"text": "x"}], "issued": "2019-01-01T10:00:00.123Z",
     "component": [{"code": {"text": "a"}, "valueBoolean": True}, {"code": {"text": "b"}, "valueTime": "10:00:00"},
                   {"code": {"text": "c"}, "valueRange": {"low": {"value": 1}, "high": {"value": 2}}}]},
    {"resourceType": "Patient", "id": "p1", "active": True, "gender": "other", "birthDate": "1970-06",
     "multipleBirthInteger": 2, "deceasedBoolean": False,
     "extension": [{"url": "http://x/a", "valueDecimal": 1.25}, {"url": "http://x/b", "valuePositiveInt": 3},
                   {"url": "http://x/c", "valueDate": "2000-02-29"}, {"url": "http://x/d", "valueInstant": "2019-01-01T00:00:00Z"},
                   {"url": "http://x/e", "extension": [{"url": "f", "valueCoding": {"code": "x"}}]},
                   {"url": "http://x/g", "valueBase64Binary": "aGVsbG8="}, {"url": "http://x/h", "valueUnsignedInt": 0}],
     "name": [{"use": "official", "family": "Lee", "given": ["Ann"], "period": {"start": "2001"}}],
     "telecom": [{"system": "email", "value": "a@b.c", "rank": 1}],
     "communication": [{"language": {"text": "en"}, "preferred": True}],
     "photo": [{"contentType": "image/png", "data": "aGVsbG8=", "size": 5, "creation": "2019-01-01T10:00:00Z"}],
     "meta": {"versionId": "3", "lastUpdated": "2019-01-01T10:00:00.5+02:00", "profile": ["http://x"]},
     "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"}},
    {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"}, "code": {"text": "x"},
     "onsetAge": {"value": 40, "unit": "a"}, "abatementString": "later", "recordedDate": "2019-01-01T10:00:00Z",
     "note": [{"authorString": "x", "text": "y", "time": "2019-01-01T10:00:00Z"}]},
    {"resourceType": "AdverseEvent", "id": "a1", "actuality": "actual", "subject": {"reference": "Patient/p1"},
     "date": "2019-01-01", "suspectEntity": [{"instance": {"reference": "#med"}}],
     "contained": [{"resourceType": "Medication", "id": "med", "code": {"text": "x"}}]},
    {"resourceType": "Procedure", "id": "pr1", "status": "completed", "subject": {"reference": "Patient/p1"},
     "performedPeriod": {"start": "2019-01-01T10:00:00Z"}, "instantiatesUri": ["http://x"]},
    {"resourceType": "ResearchSubject", "id": "rs1", "status": "on-study", "study": {"reference": "ResearchStudy/s"},
     "individual": {"reference": "Patient/p1"}, "period": {"start": "2019-01-01"}},
]
