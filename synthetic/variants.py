"""Meaning-preserving rewrites of FHIR R4 resources: the legal shapes real hospitals write.

A clinical number must not depend on coding order, extra systems, extensions, narratives, unit
spellings the contract converts, time formats, id formats or resource order. Each ``Variant``
below rewrites a whole hospital in one such way, seeded, and says whether it *preserves* the
study's facts. The invariance suite (``tests/invariance``) applies each to the synthetic hospital
and requires identical cohort tables; the few variants that must change a result are checked the
other way. The synthetic hospital itself draws a seeded mix of the preserving ones
(``messy_mix``), so every other test also runs on messy-but-legal FHIR.

Every rewrite keeps the resource valid R4 (the ingestion tests validate the mixed hospital).
One long module on purpose: the catalogue of rewrites reads in one place, each a short function.
"""
from __future__ import annotations

import copy
import hashlib
import random
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .fhir_builders import AE_SERIOUSNESS, CONDITION_VER_STATUS, ICD10, LOCAL, SNOMED, UCUM

Resource = dict[str, Any]
FOREIGN = "urn:oid:2.16.840.1.113883.3.9999.1"   # a hospital's own code system, unknown to the concept map
EXTENSION_URL = "http://hospital.example.org/fhir/StructureDefinition/local-note"
SERVER_BASE = "https://fhir.hospital.example.org/R4"
DATETIME_KEYS = ("effectiveDateTime", "onsetDateTime", "recordedDate", "performedDateTime", "deceasedDateTime", "date")
PERIOD_KEYS = ("effectivePeriod", "performedPeriod", "period")
# SNOMED codings a hospital may list beside (or before) the study's local value codes.
SNOMED_EQUIVALENT = {"respiratory": "267036007", "muscular": "68962001", "skin": "95320005", "general": "84229001",
                     "positive": "10828004", "negative": "260385009"}


@dataclass(frozen=True)
class Rewritten:
    resources: list[Resource]
    patient_ids: dict[str, str] = field(default_factory=dict)  # new FHIR Patient id -> the original one


@dataclass(frozen=True)
class Variant:
    name: str
    apply: Callable[[list[Resource], random.Random], Rewritten]
    preserves: bool = True        # False: the study's results must change
    in_messy_mix: bool = False    # drawn per resource by the synthetic hospital's default mix
    per_resource: Callable[[Resource, random.Random], list[Resource]] | None = None


def _deepcopy(resources: Iterable[Resource]) -> list[Resource]:
    return [copy.deepcopy(r) for r in resources]


def _concepts(node: Any) -> Iterable[dict[str, Any]]:
    """Every CodeableConcept (a mapping with a ``coding`` list) under ``node``, narrative excluded."""
    if isinstance(node, dict):
        if isinstance(node.get("coding"), list):
            yield node
        for key, value in node.items():
            if key not in ("text", "meta") and isinstance(value, (dict, list)):
                yield from _concepts(value)
    elif isinstance(node, list):
        for item in node:
            yield from _concepts(item)


def _references(node: Any) -> Iterable[dict[str, Any]]:
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            yield node
        for value in node.values():
            if isinstance(value, (dict, list)):
                yield from _references(value)
    elif isinstance(node, list):
        for item in node:
            yield from _references(item)


def _foreign_coding(rng: random.Random) -> dict[str, str]:
    return {"system": FOREIGN, "code": f"L{rng.randrange(10**6):06d}", "display": "hospital code"}


def each(rewrite: Callable[[Resource, random.Random], list[Resource]]) -> Callable[[list[Resource], random.Random], Rewritten]:
    """A whole-hospital variant from a per-resource rewrite (which may add resources)."""
    def apply(resources: list[Resource], rng: random.Random) -> Rewritten:
        return Rewritten([out for r in _deepcopy(resources) for out in rewrite(r, rng)])
    return apply


# -- codings ---------------------------------------------------------------------------------------

def extra_coding_first(r: Resource, rng: random.Random) -> list[Resource]:
    for concept in _concepts(r):
        concept["coding"].insert(0, _foreign_coding(rng))
    return [r]


def extra_coding_last(r: Resource, rng: random.Random) -> list[Resource]:
    for concept in _concepts(r):
        concept["coding"].append(_foreign_coding(rng))
    return [r]


def codings_shuffled(r: Resource, rng: random.Random) -> list[Resource]:
    for concept in _concepts(r):
        concept["coding"].insert(rng.randrange(len(concept["coding"]) + 1), _foreign_coding(rng))
        rng.shuffle(concept["coding"])
    return [r]


def snomed_value_first(r: Resource, rng: random.Random) -> list[Resource]:
    """Issue 12's hospital: a SNOMED coding (e.g. 267036007 Dyspnea) before our local value code."""
    value = r.get("valueCodeableConcept")
    if value:
        ours = [c.get("code") for c in value["coding"] if c.get("system") == LOCAL]
        snomed = [{"system": SNOMED, "code": SNOMED_EQUIVALENT[c]} for c in ours if c in SNOMED_EQUIVALENT]
        value["coding"][:0] = snomed
    return [r]


def icd10_dot_toggled(r: Resource, rng: random.Random) -> list[Resource]:
    """ICD-10-CM with and without the dot (M33.10 / M3310), which the contract matches alike."""
    for concept in _concepts(r):
        for c in concept["coding"]:
            code = c.get("code")
            if c.get("system") == ICD10 and code:
                c["code"] = code.replace(".", "") if "." in code else (code[:3] + "." + code[3:] if len(code) > 3 else code)
    return [r]


def misleading_displays(r: Resource, rng: random.Random) -> list[Resource]:
    """Displays and CodeableConcept.text are never matched, whatever they say."""
    for concept in _concepts(r):
        concept["text"] = rng.choice(["refuted", "respiratory relapse", "serious", "not taken"])
        for c in concept["coding"]:
            c["display"] = rng.choice(["entered-in-error", "tacrolimus", "skin", "positive"])
    return [r]


def identifiers_reordered(r: Resource, rng: random.Random) -> list[Resource]:
    extra = [{"system": "https://clinicaltrials.gov", "value": f"NCT{rng.randrange(10**8):08d}"},
             {"use": "secondary", "system": "urn:oid:2.16.840.1.113883.3.9999.2", "value": f"X{rng.randrange(10**6)}"}]
    if r["resourceType"] in ("ResearchStudy", "Patient", "Observation", "Condition"):
        identifiers = r.get("identifier", []) + extra
        rng.shuffle(identifiers)
        r["identifier"] = identifiers
    return [r]


def explicit_confirmed_verification(r: Resource, rng: random.Random) -> list[Resource]:
    """A Condition without verificationStatus is counted; so is one that says `confirmed` (behind a local coding)."""
    if r["resourceType"] == "Condition" and "verificationStatus" not in r:
        r["verificationStatus"] = {"coding": [_foreign_coding(rng), {"system": CONDITION_VER_STATUS, "code": "confirmed"}]}
        r["clinicalStatus"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                           "code": "active"}]}
    return [r]


# -- structure -------------------------------------------------------------------------------------

def dosage_lines_by_sequence(r: Resource, rng: random.Random) -> list[Resource]:
    """FHIR orders dosage instructions by ``sequence``: number the lines (if they are not yet), add a later
    text-only line, and shuffle the array. The first instruction is the same."""
    if r["resourceType"] == "MedicationStatement" and r.get("dosage"):
        lines = r["dosage"]
        if not all(isinstance(line.get("sequence"), int) for line in lines):
            for i, line in enumerate(lines, start=1):
                line["sequence"] = i
        lines.append({"sequence": max(line["sequence"] for line in lines) + 1, "text": "then as directed by the clinic"})
        while lines[0]["sequence"] == min(line["sequence"] for line in lines):
            rng.shuffle(lines)
    return [r]


def components_reordered(r: Resource, rng: random.Random) -> list[Resource]:
    if r.get("component"):
        r["component"] = [*reversed(r["component"]),
                          {"code": {"coding": [_foreign_coding(rng)]}, "valueString": "reader's remark"}]
    return [r]


def _extension(rng: random.Random) -> list[dict[str, Any]]:
    return [{"url": EXTENSION_URL, "valueString": f"note {rng.randrange(1000)}"}]


def _add_extensions(node: Any, rng: random.Random) -> None:
    if isinstance(node, dict):
        for key, value in list(node.items()):
            if key in ("extension", "text", "meta"):
                continue
            if isinstance(value, (dict, list)):
                _add_extensions(value, rng)
        node.setdefault("extension", []).extend(_extension(rng))
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, dict):
                _add_extensions(item, rng)


def unknown_extensions(r: Resource, rng: random.Random) -> list[Resource]:
    """Non-modifier extensions on the resource, on every element, and on primitives (``_status``)."""
    _add_extensions(r, rng)
    for key in ("status", "birthDate", "effectiveDateTime", "gender"):
        if key in r:
            r["_" + key] = {"extension": _extension(rng)}
    return [r]


def narrative_and_meta(r: Resource, rng: random.Random) -> list[Resource]:
    r["text"] = {"status": "generated",
                 "div": '<div xmlns="http://www.w3.org/1999/xhtml">Respiratory relapse, refuted, entered in error</div>'}
    r["meta"] = {**r.get("meta", {}), "source": "#lab-system-7", "profile": ["http://hospital.example.org/fhir/StructureDefinition/x"],
                 "tag": [{"system": "urn:hospital:tags", "code": "imported"}]}
    return [r]


def _rewrite_references(resources: list[Resource], rewrite: Callable[[str, str], str]) -> list[Resource]:
    for r in resources:
        for ref in _references(r):
            kind, _, rid = ref["reference"].partition("/")
            ref["reference"] = rewrite(kind, rid)
    return resources


def absolute_references(resources: list[Resource], rng: random.Random) -> Rewritten:
    return Rewritten(_rewrite_references(_deepcopy(resources), lambda kind, rid: f"{SERVER_BASE}/{kind}/{rid}"))


def references_to_another_server(resources: list[Resource], rng: random.Random) -> Rewritten:
    """Absolute references to a server that is not ours: another hospital's `Patient/x` is not our x."""
    return Rewritten(_rewrite_references(_deepcopy(resources), lambda kind, rid: f"https://evil.example.org/fhir/{kind}/{rid}"))


def versioned_references(resources: list[Resource], rng: random.Random) -> Rewritten:
    return Rewritten(_rewrite_references(_deepcopy(resources), lambda kind, rid: f"{kind}/{rid}/_history/{rng.randint(1, 9)}"))


# -- units and times --------------------------------------------------------------------------------

# unit -> (the other unit, value in it, the pipeline's canonical value from the old unit, and from the new)
UNIT_REWRITES: dict[str, tuple[str, Callable[[float], float], Callable[[float], float], Callable[[float], float]]] = {
    "ng/mL": ("ug/L", lambda x: x, lambda x: x, lambda x: x),
    "mg/dL": ("mg/L", lambda x: x * 10, lambda x: x * 10, lambda x: x),
    "kg": ("[lb_av]", lambda x: x / 0.45359237, lambda x: x, lambda x: x * 0.45359237),
    "mg": ("g", lambda x: x / 1000, lambda x: x, lambda x: x * 1000),
}


def equivalent_units(r: Resource, rng: random.Random) -> list[Resource]:
    """Quantities in another unit the contract converts: ug/L ferritin, mg/L CRP, pounds, doses in grams.

    Only where the pipeline's conversion gives back the very same canonical number, so that the
    suite can ask for identical tables rather than tables equal up to rounding."""
    quantities = [r.get("valueQuantity")] + [((d.get("doseAndRate") or [{}])[0]).get("doseQuantity") for d in r.get("dosage") or []]
    for q in quantities:
        if not q or q.get("code") not in UNIT_REWRITES or not isinstance(q.get("value"), (int, float)):
            continue
        code, to_new, canonical_old, canonical_new = UNIT_REWRITES[q["code"]]
        value = to_new(float(q["value"]))
        if canonical_new(value) == canonical_old(float(q["value"])):
            q.update({"value": value, "code": code, "unit": {"ug/L": "µg/L", "[lb_av]": "lb"}.get(code, code), "system": UCUM})
    return [r]


def _with_time(day: str, rng: random.Random, late: bool) -> str:
    zone = rng.choice(["Z", "+00:00", "+08:00", "-05:00"])
    clock = rng.choice(["23:59:59", "22:10:00.5"]) if late else rng.choice(["00:00:00", "08:30:00.000", "12:00:00"])
    return f"{day}T{clock}{zone}"


def datetime_formats(r: Resource, rng: random.Random) -> list[Resource]:
    """Dates written as dateTimes with seconds, milliseconds, Z or an offset: the local date is unchanged."""
    for key in DATETIME_KEYS:
        if isinstance(r.get(key), str) and len(r[key]) == 10:
            r[key] = _with_time(r[key], rng, late=rng.random() < 0.5)
    for key in PERIOD_KEYS:
        period = r.get(key)
        if isinstance(period, dict):
            for end, late in (("start", False), ("end", True)):
                if isinstance(period.get(end), str) and len(period[end]) == 10:
                    period[end] = _with_time(period[end], rng, late)
    return [r]


def ongoing_as_effective_datetime(r: Resource, rng: random.Random) -> list[Resource]:
    """An active statement with an open period is the same exposure as an active effectiveDateTime;
    a one-day period is the same as a non-active effectiveDateTime."""
    period = r.get("effectivePeriod")
    if r["resourceType"] != "MedicationStatement" or not period:
        return [r]
    if "end" not in period and r.get("status") == "active":
        r["effectiveDateTime"] = period["start"]
        del r["effectivePeriod"]
    elif period.get("end") == period.get("start") and r.get("status") != "active":
        r["effectiveDateTime"] = period["start"]
        del r["effectivePeriod"]
    return [r]


# -- resources the contract tells us to ignore ----------------------------------------------------

def _copy_id(r: Resource, tag: str) -> str:
    return f"{r['id'][:56]}.{tag}{hashlib.sha1(r['id'].encode()).hexdigest()[:4]}"


def preliminary_then_final(r: Resource, rng: random.Random) -> list[Resource]:
    """A preliminary result with another value beside the final one of the same code and day (superseded)."""
    if r["resourceType"] != "Observation" or r.get("status") != "final":
        return [r]
    prelim = copy.deepcopy(r)
    prelim.update(id=_copy_id(r, "p"), status="preliminary")
    if isinstance(prelim.get("valueQuantity"), dict):
        prelim["valueQuantity"]["value"] = prelim["valueQuantity"]["value"] * 3 + 1
    elif "valueBoolean" in prelim:
        prelim["valueBoolean"] = not prelim["valueBoolean"]
    elif "valueInteger" in prelim:
        prelim["valueInteger"] += 7
    elif "valueCodeableConcept" in prelim:
        prelim["valueCodeableConcept"] = {"coding": [{"system": LOCAL, "code": "respiratory"}]}
    return [prelim, r] if rng.random() < 0.5 else [r, prelim]


def _later(value: str, days: int) -> str:
    from datetime import date, timedelta
    return (date.fromisoformat(value[:10]) + timedelta(days=days)).isoformat()


def entered_in_error_copies(r: Resource, rng: random.Random) -> list[Resource]:
    """A copy that the contract ignores by its status, dated later (so it must not even count as a contact)."""
    kind, shift = r["resourceType"], rng.randint(20, 200)
    twin = copy.deepcopy(r)
    twin["id"] = _copy_id(r, "x")
    for key in DATETIME_KEYS:
        if isinstance(twin.get(key), str) and len(twin[key]) >= 10 and key != "deceasedDateTime":
            twin[key] = _later(twin[key], shift)
    for key in PERIOD_KEYS:
        period = twin.get(key) or {}
        for end in ("start", "end"):
            if isinstance(period.get(end), str):
                period[end] = _later(period[end], shift)
    if kind == "Observation":
        twin["status"] = rng.choice(["entered-in-error", "cancelled"])
        if isinstance(twin.get("valueQuantity"), dict):
            twin["valueQuantity"]["value"] = twin["valueQuantity"]["value"] * 3  # wrong, yet plausible
        if "valueCodeableConcept" in twin:
            twin["valueCodeableConcept"] = {"coding": [{"system": LOCAL, "code": "respiratory"}]}
    elif kind == "MedicationStatement":
        twin["status"] = rng.choice(["entered-in-error", "not-taken"])
        twin["medicationCodeableConcept"] = {"coding": [_foreign_coding(rng), {"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                                                                "code": "42316"}]}
    elif kind == "Condition":
        twin["verificationStatus"] = {"coding": [_foreign_coding(rng),
                                                 {"system": CONDITION_VER_STATUS, "code": rng.choice(["entered-in-error", "refuted"])}]}
        twin.pop("clinicalStatus", None)
    elif kind == "AdverseEvent":
        twin["actuality"] = "potential"
        twin["seriousness"] = {"coding": [{"system": AE_SERIOUSNESS, "code": "serious"}]}
    elif kind == "Procedure":
        twin["status"] = "not-done"
    else:
        return [r]
    return [r, twin]


# -- ids and order ---------------------------------------------------------------------------------

def _renamed(resources: list[Resource], new_id: Callable[[str, str], str]) -> Rewritten:
    out = _deepcopy(resources)
    ids = {(r["resourceType"], r["id"]): new_id(r["resourceType"], r["id"]) for r in out}
    if len(set(ids.values())) != len(ids):
        raise ValueError("an id rewrite must stay one-to-one")
    for r in out:
        r["id"] = ids[(r["resourceType"], r["id"])]
    _rewrite_references(out, lambda kind, rid: f"{kind}/{ids.get((kind, rid), rid)}")
    return Rewritten(out, {new: old for (kind, old), new in ids.items() if kind == "Patient"})


def uuid_ids(resources: list[Resource], rng: random.Random) -> Rewritten:
    return _renamed(resources, lambda kind, rid: str(uuid.uuid5(uuid.NAMESPACE_URL, f"{kind}/{rid}")))


def long_ids(resources: list[Resource], rng: random.Random) -> Rewritten:
    """Ids of exactly 64 characters, R4's maximum."""
    return _renamed(resources, lambda kind, rid: (hashlib.sha256(f"{kind}/{rid}".encode()).hexdigest() * 2)[:64])


def dotted_ids(resources: list[Resource], rng: random.Random) -> Rewritten:
    return _renamed(resources, lambda kind, rid: "A." + hashlib.md5(f"{kind}/{rid}".encode()).hexdigest()[:12] + "-x.1")


def resource_order_shuffled(resources: list[Resource], rng: random.Random) -> Rewritten:
    out = _deepcopy(resources)
    rng.shuffle(out)
    return Rewritten(out)


# -- variants that must change a result (the suite's negative controls) ---------------------------

def drop_local_value_codings(r: Resource, rng: random.Random) -> list[Resource]:
    """Our `respiratory` coding removed, SNOMED kept: without a concept-map entry this is not ours."""
    value = r.get("valueCodeableConcept")
    if value and any(c.get("system") == LOCAL for c in value["coding"]):
        snomed_value_first(r, rng)
        value["coding"] = [c for c in value["coding"] if c.get("system") != LOCAL] or [_foreign_coding(rng)]
    return [r]


def seriousness_in_a_foreign_system(r: Resource, rng: random.Random) -> list[Resource]:
    if r.get("seriousness"):
        r["seriousness"] = {"coding": [{"system": FOREIGN, "code": c.get("code")} for c in r["seriousness"]["coding"]]}
    return [r]


def grams_without_conversion(r: Resource, rng: random.Random) -> list[Resource]:
    """The unit relabelled `g` but the number left in mg: a 1000-fold dose, which must show."""
    for d in r.get("dosage") or []:
        q = ((d.get("doseAndRate") or [{}])[0]).get("doseQuantity")
        if q and q.get("code") == "mg":
            q.update(code="g", unit="g")
    return [r]


def _per(name: str, fn: Callable[[Resource, random.Random], list[Resource]], *, mix: bool = True, preserves: bool = True) -> Variant:
    return Variant(name, each(fn), preserves=preserves, in_messy_mix=mix and preserves, per_resource=fn)


VARIANTS: tuple[Variant, ...] = (
    _per("extra_coding_first", extra_coding_first),
    _per("extra_coding_last", extra_coding_last),
    _per("codings_shuffled", codings_shuffled),
    _per("snomed_value_first", snomed_value_first),
    _per("icd10_dot_toggled", icd10_dot_toggled),
    _per("misleading_displays", misleading_displays),
    _per("identifiers_reordered", identifiers_reordered),
    _per("explicit_confirmed_verification", explicit_confirmed_verification),
    _per("dosage_lines_by_sequence", dosage_lines_by_sequence),
    _per("components_reordered", components_reordered),
    _per("unknown_extensions", unknown_extensions),
    _per("narrative_and_meta", narrative_and_meta),
    _per("equivalent_units", equivalent_units),
    _per("datetime_formats", datetime_formats),
    _per("ongoing_as_effective_datetime", ongoing_as_effective_datetime),
    _per("preliminary_then_final", preliminary_then_final),
    _per("entered_in_error_copies", entered_in_error_copies),
    Variant("absolute_references", absolute_references),
    Variant("versioned_references", versioned_references),
    Variant("uuid_ids", uuid_ids),
    Variant("long_ids", long_ids),
    Variant("dotted_ids", dotted_ids),
    Variant("resource_order_shuffled", resource_order_shuffled),
    _per("drop_local_value_codings", drop_local_value_codings, preserves=False),
    _per("seriousness_in_a_foreign_system", seriousness_in_a_foreign_system, preserves=False),
    _per("grams_without_conversion", grams_without_conversion, preserves=False),
    Variant("references_to_another_server", references_to_another_server, preserves=False),
)
BY_NAME = {v.name: v for v in VARIANTS}


def messy_mix(resources: list[Resource], seed: int, share: float = 0.35) -> list[Resource]:
    """The synthetic hospital's default dialect: each resource, with probability ``share``, rewritten by
    one or two preserving variants drawn with its own seeded generator (so the clinical content, and the
    generator's truth, do not move)."""
    return messy_stream(seed, share)(resources)


def messy_stream(seed: int, share: float = 0.35) -> Callable[[list[Resource]], list[Resource]]:
    """``messy_mix`` for a hospital handed over in pieces: call the returned function on consecutive pieces;
    together they come out exactly as ``messy_mix`` of the whole (one generator, advanced resource by resource)."""
    rng = random.Random(seed)
    pool = [v.per_resource for v in VARIANTS if v.in_messy_mix and v.per_resource is not None]

    def rewrite_piece(resources: list[Resource]) -> list[Resource]:
        out: list[Resource] = []
        for r in resources:
            batch = [r]
            if rng.random() < share:
                for rewrite in rng.sample(pool, rng.choice((1, 2))):
                    batch = [x for item in batch for x in rewrite(copy.deepcopy(item), rng)]
            out += batch
        return out

    return rewrite_piece
