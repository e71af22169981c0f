"""The text screen of the plausibility rules (etl.fhir.plausibility._clear_in_text) never changes a verdict.

With the JSON text a resource arrived as, the date/period/measurement scan is skipped when the text shows it
can find nothing; the rules must then give exactly what they give without the text. Checked on the synthetic
hospital and on seeded plausibility mutations (dates out of range anywhere, reversed periods at the top level
and nested, negative values), each written compact, pretty-printed and with every non-ASCII character escaped.
"""
from __future__ import annotations

import copy
import json
import random
from datetime import date
from typing import Any, Iterator

import orjson

from etl.fhir.plausibility import RULES, _clear_in_text, _limit, plausibility_errors
from synthetic.hospital import generate_hospital
from tests.conftest import SMALL_HOSPITAL

TODAY = date(2026, 6, 1)
ODD_DATES = ["2026-06-02", "2026-06-03T00:00:00Z", "2090-01-01", "1849-12-31", "0001", "1850", "1850-01-01", "",
             "2026-06-01T23:59:59+14:00", "２０１９-01-01", "2019-01-01"]


def _texts(resource: dict[str, Any]) -> list[bytes]:
    return [orjson.dumps(resource), json.dumps(resource, indent=1).encode(),
            json.dumps(resource, ensure_ascii=True, separators=(",", ":")).encode()]


def _slots(node: Any) -> Iterator[tuple[Any, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield node, key
            yield from _slots(value)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield node, i
            yield from _slots(item)


def _mutate(resource: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    out = copy.deepcopy(resource)
    dicts = [container for container, _ in _slots(out) if isinstance(container, dict)] or [out]
    where = rng.choice(dicts)
    kind = rng.randrange(5)
    if kind == 0:  # a date key, anywhere (meta, contained and text included)
        where[rng.choice(["birthDate", "effectiveDateTime", "date", "issued", "recordedDate", "start", "end"])] = \
            rng.choice(ODD_DATES)
    elif kind == 1:  # a period, at the top level or nested, maybe reversed
        key = rng.choice(["effectivePeriod", "period", "boundsPeriod", "onsetPeriod"])
        start, end = rng.sample(["2019-01-01", "2019-01-02", "2018-12-31T23:00:00Z", "2019"], 2)
        (out if rng.random() < 0.5 else where)[key] = {"start": start, "end": end}
    elif kind == 2:  # a value under "valueQuantity", maybe negative, anywhere
        where["valueQuantity"] = {"value": rng.choice([-1, -0.5, 0, 3, -0.0]), "unit": rng.choice(["kg", "mg", "%", "x"])}
    elif kind == 3:  # a period key holding something other than an object
        where[rng.choice(["period", "effectivePeriod"])] = rng.choice([1, "2019", [{"start": "2019-02-01", "end": "2019-01-01"}]])
    else:  # a date key spelled with an escape in the text, or a string holding a quote
        where["note"] = rng.choice(['say "end":"1700"', "birth\u0044ate", "ü"])
    return out


def _agree(resource: dict[str, Any]) -> None:
    exact = plausibility_errors(resource, TODAY)
    # every rule, called on every resource in order: plausibility_errors skips rules that cannot find anything
    assert exact == [reason for rule in RULES for reason in rule(resource, TODAY)]
    for text in _texts(resource):
        assert plausibility_errors(resource, TODAY, text) == exact, (text, exact)


def test_the_screen_lets_the_synthetic_hospital_through_without_the_scan():
    resources = generate_hospital(SMALL_HOSPITAL).resources
    for r in resources:
        _agree(r)
    clear = sum(_clear_in_text(r, orjson.dumps(r), _limit(TODAY)) for r in resources)
    assert clear > 0.9 * len(resources)  # the screen is worth having: it clears most of a hospital


def test_the_screen_never_changes_a_verdict_on_plausibility_mutations():
    seeds = generate_hospital(SMALL_HOSPITAL).resources
    rng = random.Random(20261201)
    flagged = 0
    for _ in range(3000):
        mutant = _mutate(rng.choice(seeds), rng)
        _agree(mutant)
        flagged += bool(plausibility_errors(mutant, TODAY))
    assert 300 < flagged < 2700  # both verdicts are common


def test_reasons_the_screen_must_not_hide():
    p = {"resourceType": "Patient", "id": "p1", "birthDate": "2090-01-01"}
    nested = {"resourceType": "MedicationStatement", "id": "m1", "subject": {"reference": "Patient/p1"},
              "dosage": [{"timing": {"repeat": {"boundsPeriod": {"start": "2019-02-01", "end": "2019-01-01"}}}}]}
    top = {"resourceType": "Observation", "id": "o1", "subject": {"reference": "Patient/p1"},
           "effectivePeriod": {"start": "2019-02-01", "end": "2019-01-01"}}
    negative = {"resourceType": "Observation", "id": "o2", "subject": {"reference": "Patient/p1"},
                "component": [{"valueQuantity": {"value": -2, "unit": "kg"}}]}
    escaped = b'{"resourceType":"Patient","id":"p1","birth\\u0044ate":"2090-01-01"}'
    assert plausibility_errors(p, TODAY, orjson.dumps(p)) == ["birthDate: 2090-01-01 is in the future"]
    assert plausibility_errors(nested, TODAY, orjson.dumps(nested)) == [
        "dosage[0].timing.repeat.boundsPeriod: ends (2019-01-01) before it starts (2019-02-01)"]
    assert plausibility_errors(top, TODAY, orjson.dumps(top)) == ["effectivePeriod: ends (2019-01-01) before it starts (2019-02-01)"]
    assert plausibility_errors(negative, TODAY, orjson.dumps(negative)) == ["component[0].valueQuantity: negative kg value -2"]
    assert plausibility_errors(orjson.loads(escaped), TODAY, escaped) == ["birthDate: 2090-01-01 is in the future"]
