"""Plausibility rules that a structurally valid R4 resource can still fail.

fhir.resources checks structure (types, cardinality, formats) but not sense: a birth date in
2090, a negative dose, a dose in millilitres where a mass is needed, an Observation about no
patient. Clinical pipelines that skip these checks publish them. Each rule returns readable
reasons; a resource with any reason is quarantined like a structurally invalid one.
"""
from __future__ import annotations

import re
from datetime import date, timedelta
from functools import lru_cache
from typing import Any, Callable

from .flatten import quantity_unit
from .paths import Link, render_path
from .references import reference_shape
from .types import SUBJECT_FIELD
from .units import MASS_TO_MG

DATE_KEYS = {"birthDate", "deceasedDateTime", "onsetDateTime", "abatementDateTime", "recordedDate",
             "effectiveDateTime", "performedDateTime", "issued", "date", "dateAsserted", "detected"}
PERIOD_KEYS = {"effectivePeriod", "performedPeriod", "onsetPeriod", "abatementPeriod", "period", "boundsPeriod"}
NON_NEGATIVE_UNITS = {*("kg", "g", "mg", "ug", "mcg", "ng"), "cm", "m", "%", "[lb_av]"}
MAX_SINGLE_DOSE_MG = 100_000.0  # 100 g in one administration: above any drug this pipeline reads (IVIG included)
# The plausible ranges, in one place (the README's reliability section lists them):
EARLIEST_DATE = "1850-01-01"     # no clinical date, birth date included, before this
BODY_WEIGHT_CODES = {("http://loinc.org", "29463-7"), ("http://loinc.org", "3141-9")}
BODY_WEIGHT_KG = (0.2, 700.0)    # a newborn to the heaviest recorded humans
WEIGHT_TO_KG = {"kg": 1.0, "g": 1e-3, "[lb_av]": 0.45359237}



def _any_of(keys: set[str]) -> bytes:
    return b"|".join(re.escape(key.encode()) for key in sorted(keys, key=lambda k: (-len(k), k)))


# The text-level screen for the scan below (``_clear_in_text``), one regular expression so that the text is read
# once: the string value of every date key (and of any "start"/"end"), every object-valued period key, every
# negative "value". (bytes.find per key, or one expression per rule, cost as much as the scan.)
# The lookahead on the letters those keys begin with lets most quotes fail at once (7.3 -> 5.3 us a resource).
_SCREENED = DATE_KEYS | PERIOD_KEYS | {"start", "end", "value"}
_SCREEN = re.compile(rb'"(?=[' + "".join(sorted({key[0] for key in _SCREENED})).encode() + rb'])(?:(?:'
                     + _any_of(DATE_KEYS | {"start", "end"}) + rb')"\s*:\s*"([^"]*)"|(?:'
                     + _any_of(PERIOD_KEYS) + rb')"\s*:\s*(\{)|value"\s*:\s*(-))')
_PATIENT_REFERENCE = re.compile(r"Patient/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?")


def _scan(node: Any, link: Link | None, parent: str, limit: str, out: list[str]) -> None:
    """One pass over the resource for the date, period and measurement rules. Paths are rendered
    only for a failure: formatting one per element cost more than the rules themselves."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("meta", "text", "contained"):
                continue
            if isinstance(value, str):
                if key in DATE_KEYS or (key in ("start", "end") and parent in PERIOD_KEYS):
                    if value[:10] > limit:
                        out.append(f"{render_path((link, key))}: {value} is in the future")
                    elif value[:10] < EARLIEST_DATE:
                        out.append(f"{render_path((link, key))}: {value} is before {EARLIEST_DATE[:4]}")
                continue
            if key in PERIOD_KEYS and isinstance(value, dict):
                start, end = value.get("start"), value.get("end")
                if isinstance(start, str) and isinstance(end, str) and end[:10] < start[:10]:
                    out.append(f"{render_path((link, key))}: ends ({end}) before it starts ({start})")
            elif key == "valueQuantity" and isinstance(value, dict):
                number, unit = value.get("value"), quantity_unit(value)
                if isinstance(number, (int, float)) and number < 0 and unit in NON_NEGATIVE_UNITS:
                    out.append(f"{render_path((link, key))}: negative {unit} value {number:g}")
            if isinstance(value, (dict, list)):
                _scan(value, (link, key), key, limit, out)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            if isinstance(item, (dict, list)):
                _scan(item, (link, i), parent, limit, out)


def _clear_in_text(resource: dict[str, Any], text: bytes, limit: str) -> bool:
    """True when the JSON ``text`` that ``resource`` was parsed from shows that the scan can find nothing.

    The scan walked every element of every resource in Python and was a quarter of a validation worker's time;
    one regular expression over the text screens in C at about half its cost. It looks at more than the
    scan does (inside meta, text and contained too; any "start"/"end"; any negative "value"), so whatever
    the scan would report makes it say False, and the scan then runs for the exact messages. Without a backslash
    in the text every quote delimits a string and no key is spelled with an escape, so what it matches is
    what the parsed resource holds. Periods: when every object-valued period key in the text is one of the
    resource's top-level keys, those are all the scan would compare."""
    if b"\\" in text:
        return False
    high, low = limit.encode(), EARLIEST_DATE.encode()
    objects = 0
    for value, brace, minus in _SCREEN.findall(text):
        if minus:
            return False
        if brace:
            objects += 1
        elif not value.isascii() or value[:10] > high or value[:10] < low:
            return False
    if not objects:  # no period key holds an object anywhere in the text, so none does in the resource
        return True
    top = [value for key in PERIOD_KEYS if isinstance(value := resource.get(key), dict)]
    if objects != len(top):
        return False
    for period in top:
        start, end = period.get("start"), period.get("end")
        if isinstance(start, str) and isinstance(end, str) and end[:10] < start[:10]:
            return False
    return True


@lru_cache(maxsize=4)
def _limit(today: date) -> str:
    return (today + timedelta(days=1)).isoformat()


def dates_periods_measurements(resource: dict[str, Any], today: date, text: bytes | None = None) -> list[str]:
    """``text``, the JSON the resource was parsed from, lets a resource the text shows to be clear skip the scan."""
    limit = _limit(today)
    if text is not None and _clear_in_text(resource, text, limit):
        return []
    out: list[str] = []
    _scan(resource, None, "", limit, out)
    return out


def subject_reference(resource: dict[str, Any], today: date) -> list[str]:
    field = SUBJECT_FIELD.get(resource.get("resourceType", ""))
    if field is None:
        return []
    reference = (resource.get(field) or {}).get("reference")
    if isinstance(reference, str) and (same := _PATIENT_REFERENCE.fullmatch(reference)) and same.group(1) not in (".", ".."):
        return []  # the common relative form, without reference_shape's general parse
    if not reference:
        return [f"{field}: missing (the resource belongs to no patient)"]
    parsed = reference_shape(reference)
    if parsed is None or parsed[0] != "Patient":
        return [f"{field}: not a Patient reference of the form Patient/<id> (relative, absolute or versioned)"]
    return []


def doses(resource: dict[str, Any], today: date) -> list[str]:
    if resource.get("resourceType") != "MedicationStatement":
        return []
    out = []
    for i, dosage in enumerate(resource.get("dosage") or []):
        for j, dose_rate in enumerate(dosage.get("doseAndRate") or []):
            dose = dose_rate.get("doseQuantity")
            if not isinstance(dose, dict) or dose.get("value") is None:
                continue
            where = f"dosage[{i}].doseAndRate[{j}].doseQuantity"
            value = float(dose["value"])
            unit = quantity_unit(dose)
            if value < 0:
                out.append(f"{where}: negative dose {value:g}")
            if unit not in MASS_TO_MG:
                out.append(f"{where}: unit {unit!r} is not a mass unit, so the dose cannot be expressed in mg")
            elif value * MASS_TO_MG[unit] > MAX_SINGLE_DOSE_MG:
                out.append(f"{where}: {value:g} {unit} is above {MAX_SINGLE_DOSE_MG / 1000:g} g in one dose")
    return out


def life_and_body(resource: dict[str, Any], today: date) -> list[str]:
    """A death before birth; a body weight outside what a human can weigh (10^30 kg was accepted once)."""
    out = []
    born, died = resource.get("birthDate"), resource.get("deceasedDateTime")
    if isinstance(born, str) and isinstance(died, str) and died[:len(born)] < born[:len(died)]:
        out.append(f"deceasedDateTime {died} is before birthDate {born}")
    quantity = resource.get("valueQuantity")
    if not isinstance(quantity, dict) or not isinstance(quantity.get("value"), (int, float)):
        return out
    codes = {(c.get("system"), c.get("code")) for c in (resource.get("code") or {}).get("coding") or [] if isinstance(c, dict)}
    if codes & BODY_WEIGHT_CODES:
        factor = WEIGHT_TO_KG.get(quantity_unit(quantity) or "")
        if factor is not None and not BODY_WEIGHT_KG[0] <= quantity["value"] * factor <= BODY_WEIGHT_KG[1]:
            out.append(f"valueQuantity: a body weight of {quantity['value']:g} {quantity_unit(quantity)} is outside "
                       f"{BODY_WEIGHT_KG[0]:g}-{BODY_WEIGHT_KG[1]:g} kg")
    return out


RULES: tuple[Callable[[dict[str, Any], date], list[str]], ...] = (dates_periods_measurements, subject_reference, doses,
                                                                  life_and_body)


def plausibility_errors(resource: dict[str, Any], today: date | None = None, text: bytes | None = None) -> list[str]:
    """Every rule of ``RULES``, in order. ``text``: the JSON ``resource`` was parsed from, when there is one; only the
    first rule (the scan) can use it (see ``dates_periods_measurements``)."""
    today = today or date.today()
    out = dates_periods_measurements(resource, today, text)
    out += subject_reference(resource, today)
    # RULES' other two, called only where they can find something (the loop over RULES cost about 2 us a resource):
    if resource.get("resourceType") == "MedicationStatement":  # doses reads nothing else
        out += doses(resource, today)
    if "valueQuantity" in resource or "deceasedDateTime" in resource:  # life_and_body needs one of these
        out += life_and_body(resource, today)
    return out
